"""Plotting helpers: matplotlib on the Agg backend (no display), one look for all figures.

Rules: figures are PNG at 120 dpi, one file per paper figure (subplots inside), titles
say what is plotted and the units are in the axis labels.  Import this module before
``matplotlib.pyplot`` anywhere in ``experiments/`` so the backend is set first.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["COLORS", "grid", "save", "style_axis"]

DPI = 120
# A colour per series name, stable across figures (tab10 order).
COLORS: dict[str, str] = {
    "none": "#7f7f7f",
    "aimd": "#1f77b4",
    "quantile": "#ff7f0e",
    "tfserving": "#2ca02c",
    "triton": "#d62728",
    "bentoml": "#9467bd",
    "fixed": "#8c564b",
    "1 Gbps": "#d62728",
    "10 Gbps": "#1f77b4",
    "deadline": "#1f77b4",
    "wait for all": "#d62728",
}


def grid(
    n: int, ncols: int = 3, *, width_in: float = 4.0, height_in: float = 3.0,
    sharex: bool = False, sharey: bool = False,
) -> tuple[Any, list[Any]]:
    """A figure with ``n`` axes laid out ``ncols`` wide; unused axes are hidden."""
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(width_in * ncols, height_in * nrows), squeeze=False,
        sharex=sharex, sharey=sharey,
    )
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def style_axis(ax: Any, *, title: str = "", xlabel: str = "", ylabel: str = "") -> None:
    if title:
        ax.set_title(title, fontsize=10)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)


def save(fig: Any, path: Path, *, suptitle: str = "", legend_axes: Sequence[Any] = ()) -> Path:
    """Save ``fig`` as PNG at ``path`` and close it."""
    for ax in legend_axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
