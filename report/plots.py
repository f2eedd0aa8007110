"""Plotting helpers: matplotlib on the Agg backend (no display), one look for all figures.

Rules: figures are PNG at 120 dpi, one file per paper figure (subplots inside), titles
say what is plotted and the units are in the axis labels.  Import this module before
``matplotlib.pyplot`` anywhere in ``experiments/`` so the backend is set first.

``save`` gives every figure the same finish, so figure modules draw data and nothing else:
- one legend for the figure, below the panels (outside the data): the entries of
  ``legend_axes``, each label once, in the order first drawn;
- log axes labelled with plain numbers (1, 10, 100, not 10^0);
- while ``stamped(text)`` is active (quick runs), the text in red above the figure and in
  the PNG's ``Description`` field, so a preview is never mistaken for a full run.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

__all__ = ["COLORS", "grid", "plain_number", "save", "stamped", "style_axis"]

_STAMP: contextvars.ContextVar[str] = contextvars.ContextVar("clipperlab_plot_stamp", default="")

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
    "100 Gbps": "#2ca02c",
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


@contextlib.contextmanager
def stamped(text: str) -> Iterator[None]:
    """Figures saved inside this block carry ``text`` (see the module's rules)."""
    token = _STAMP.set(text)
    try:
        yield
    finally:
        _STAMP.reset(token)


def plain_number(value: float, _pos: Any = None) -> str:
    """A tick label without exponents: 0.5, 1, 10, 1,000, 1,000,000."""
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else ""
    if abs(value) >= 1 and float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) >= 1e-4 else f"{value:.1e}"


def _leading(value: float) -> int:
    """The first significant digit of ``value`` (0 for 0)."""
    if value <= 0 or not math.isfinite(value):
        return 0
    return int(round(value / 10 ** math.floor(math.log10(value)), 6))


def _plain_log_labels(ax: Any) -> None:
    for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
        if scale != "log":
            continue
        axis.set_major_formatter(FuncFormatter(plain_number))
        lo, hi = sorted(axis.get_view_interval())
        # Under two decades a few minor ticks carry labels too (2, 5, 20, 50...).
        span = hi / lo if lo > 0 else math.inf
        leading: tuple[int, ...] = (
            tuple(range(2, 10)) if span < 3 else (2, 3, 5) if span < 10
            else (2, 5) if span < 100 else ()
        )
        axis.set_minor_formatter(
            FuncFormatter(lambda v, _p, keep=leading: plain_number(v) if _leading(v) in keep
                          else "")
            if leading else NullFormatter()
        )


def _figure_legend(
    fig: Any, legend_axes: Sequence[Any], title: str, extra: Sequence[tuple[Any, str]]
) -> Any:
    entries: dict[str, Any] = {}
    for ax in legend_axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label and not label.startswith("_"):
                entries.setdefault(label, handle)
    for handle, label in extra:
        entries.setdefault(label, handle)
    if not entries:
        return None
    longest = max(len(label) for label in entries)
    width_pt = fig.get_figwidth() * 72
    ncol = max(1, min(len(entries), int(width_pt // (longest * 5.5 + 40))))
    return fig.legend(
        list(entries.values()), list(entries), loc="upper center", bbox_to_anchor=(0.5, 0.0),
        ncol=ncol, fontsize=8, frameon=False, title=title or None, title_fontsize=8,
    )


def save(
    fig: Any, path: Path, *, suptitle: str = "", legend_axes: Sequence[Any] = (),
    legend_title: str = "", legend_extra: Sequence[tuple[Any, str]] = (),
) -> Path:
    """Save ``fig`` as PNG at ``path`` and close it (see the module's rules).
    ``legend_extra``: (handle, label) pairs for things no axis draws with a label (what a
    bar's colour means: ``matplotlib.patches.Patch(color=...)``)."""
    for ax in fig.axes:
        _plain_log_labels(ax)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    _figure_legend(fig, legend_axes, legend_title, legend_extra)
    stamp = _STAMP.get()
    metadata: dict[str, str] = {}
    if stamp:
        fig.text(0.5, 1.0, stamp, ha="center", va="bottom", color="#d62728",
                 fontsize=11, fontweight="bold")
        metadata["Description"] = stamp
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", pad_inches=0.15, metadata=metadata)
    plt.close(fig)
    return path
