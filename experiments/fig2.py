"""Batch latency against batch size per model (paper figure 2), from the shipped latency
profiles: the Clipper prototype's fits (``prototype-*``: p99 lines from
clipper-facts.md with a lognormal shape around them) and the profiles measured on this
machine (``measured-*``: in-process compute time of scikit-learn and torch models on one
thread, ``python -m clipperlab.simulator.measure_profiles``).

No simulation: for each profile and batch size the table gives the mean, p50 and p99
latency the simulator would draw from, and the profile's p99 line ``alpha*b + beta``.  The
paper's point is that latency grows about linearly with the batch size, with a fixed cost
``beta`` that batching amortises and a per-item cost ``alpha`` that differs by orders of
magnitude between models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipperlab.report.plots import grid, save, style_axis
from clipperlab.simulator.prototype import PROTOTYPE_FITS

from . import _sim
from .config import knob
from .framework import Claim, Results

NAME = "fig2"
TITLE = "Batch latency vs batch size per model (profiles)"
KEYS = ("profile", "batch_size")


@dataclass(frozen=True, kw_only=True)
class Config:
    seed: int = knob(0, "random seed of the workload and the simulation (>= 0)")
    profiles: tuple[str, ...] = knob(
        (), "profiles to tabulate by name (empty: every shipped profile of the sources)"
    )
    sources: tuple[str, ...] = knob(
        ("prototype", "measured", "synthetic"), "profile sources to include when profiles "
        "is empty: prototype, measured, synthetic"
    )
    max_batch: int = knob(1024, "largest batch size tabulated (batch sizes: powers of 2 up to it)")


def default_config(quick: bool) -> Config:
    return Config()


def check_config(cfg: Config) -> None:
    if cfg.max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {cfg.max_batch}")


def split_name(profile: str) -> tuple[str, str]:
    """``prototype-linear-svm`` -> (``prototype``, ``linear-svm``)."""
    source, _, model = profile.partition("-")
    return (source, model) if model else ("", profile)


def selected(cfg: Config) -> list[str]:
    names = list(cfg.profiles) or _sim.list_profiles()
    known = set(_sim.list_profiles())
    for n in names:
        if n not in known and not n.endswith(".json"):
            raise ValueError(f"profile {n!r} is not shipped; shipped: {', '.join(sorted(known))}")
    if not cfg.profiles:
        names = [n for n in names if split_name(n)[0] in cfg.sources]
    return names


def batch_sizes(max_batch: int) -> list[int]:
    sizes = sorted({1, *(2 ** k for k in range(int(math.log2(max_batch)) + 1)), max_batch})
    return [b for b in sizes if b <= max_batch]


def run(cfg: Config) -> Results:
    check_config(cfg)
    rows: list[dict[str, Any]] = []
    for name in selected(cfg):
        prof = _sim.load_profile(name)
        source, model = split_name(prof.name)
        alpha, beta = prof.fit if prof.fit else (math.nan, math.nan)
        for b in batch_sizes(cfg.max_batch):
            rows.append({
                "profile": prof.name, "source": source, "model": model, "kind": prof.kind,
                "batch_size": b,
                "mean_ms": prof.mean_s(b) * 1e3,
                "p50_ms": prof.quantile_s(b, 0.5) * 1e3,
                "p99_ms": prof.quantile_s(b, 0.99) * 1e3,
                "line_p99_ms": (alpha * b + beta) * 1e3,
                "alpha_us": alpha * 1e6, "beta_us": beta * 1e6,
                "hardware": prof.tags.get("hardware", ""),
            })
    return Results(table=pd.DataFrame(rows))


def plot(results: Results, out_dir: Path) -> list[Path]:
    t = results.table
    models = list(dict.fromkeys(t["model"]))
    fig, axes = grid(len(models), 4, width_in=3.3, height_in=2.8)
    styles = {"prototype": "#1f77b4", "measured": "#d62728", "synthetic": "#2ca02c"}
    for ax, model in zip(axes, models, strict=True):
        for source, g in t[t["model"] == model].groupby("source", sort=False):
            c = styles.get(str(source), "#7f7f7f")
            ax.plot(g["batch_size"], g["p99_ms"], color=c, marker=".", label=f"{source} p99")
            ax.plot(g["batch_size"], g["p50_ms"], color=c, ls="--", label=f"{source} p50")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        style_axis(ax, title=model, xlabel="batch size", ylabel="latency (ms)")
    return [save(fig, out_dir / "fig2.png",
                 suptitle="Batch latency vs batch size: prototype fits and this machine",
                 legend_axes=axes)]


def claims(results: Results, cfg: Config) -> list[Claim]:
    t = results.table
    out: list[Claim] = []
    fits = t.drop_duplicates("profile")
    for model, paper in PROTOTYPE_FITS.items():  # the paper's three fits per model
        alphas = "/".join(f"{a:g}" for a, _ in paper)
        betas = "/".join(f"{b / 1e3:.2f}" for _, b in paper)
        ours = []
        for _, r in fits[fits["model"] == model].iterrows():
            g = t[t["profile"] == r["profile"]]
            # A per-item cost from the medians, robust to a noisy p99: slope of p50
            # between the smallest and the largest measured size.
            lo, hi = g.iloc[0], g.iloc[-1]
            slope_us = (hi["p50_ms"] - lo["p50_ms"]) / max(1, hi["batch_size"] - lo["batch_size"])
            ours.append(f"{r['source']}: {r['alpha_us']:.1f} us + {r['beta_us'] / 1e3:.2f} ms"
                        f" (p50 slope {slope_us * 1e3:.1f} us/item)")
        out.append(Claim(
            f"{model}: p99 line alpha (us/item) + beta (ms)",
            f"{alphas} us + {betas} ms (three fits)",
            "; ".join(ours) if ours else "no profile",
        ))
    meas = fits[fits["source"] == "measured"]
    if len(meas):
        ratio = []
        for _, r in meas.iterrows():
            g = t[t["profile"] == r["profile"]]
            ratio.append(float(np.median(g["p99_ms"] / g["mean_ms"])))
        out.append(Claim(
            "p99 / mean batch latency (measured profiles, median over sizes)",
            "about 1.2-1.5x (Spark SVM up to 5x)",
            ", ".join(f"{m} {x:.2f}" for m, x in zip(meas["model"], ratio, strict=True)),
        ))
    return out
