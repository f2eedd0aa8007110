"""Delayed batching (paper figure 4): batch size, latency and throughput against the
wait timeout, for the linear SVM and the Spark SVM at a fixed load.

Setup (clipper-facts.md): one replica per model with the prototype's fitted profile, AIMD
batching with a delayed-batching wait timeout of 0-10 ms (the batch is held until the
oldest query has waited that long or the cap is reached), 20 ms objective, constant 20K
qps, 1M queries in the paper (200K here in the full run: the numbers settle well before).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipperlab.engine import BatchingConfig
from clipperlab.report.plots import grid, save, style_axis
from clipperlab.simulator.parallel import pmap

from . import _sim
from .config import knob
from .framework import Claim, Results
from .measures import RAW, batch_stats, latency_stats, raw_batches, split_raw, window

NAME = "fig4"
TITLE = "Delayed batching: wait timeout vs batch size, latency, throughput"
KEYS = ("model", "wait_ms")


@dataclass(frozen=True, kw_only=True)
class Config:
    seed: int = knob(0, "random seed of the workload and the simulation (>= 0)")
    models: tuple[str, ...] = knob(
        ("linear-svm", "spark-svm"), "models (prototype profile names without the prefix), "
        "joined with '+'"
    )
    source: str = knob(
        "prototype", "which shipped profiles: prototype (the paper's fits) or measured "
        "(this machine)"
    )
    wait_ms: tuple[float, ...] = knob(
        (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10), "delayed-batching wait timeouts to run, joined "
        "with '+' (ms)"
    )
    rate_qps: float = knob(20_000.0, "offered load, constant arrivals (queries/s)")
    n_queries: int = knob(200_000, "queries per simulated run")
    slo_ms: float = knob(20.0, "latency objective of the application (ms)")
    policy: str = knob("aimd", "batching policy under the wait timeout (aimd, quantile, ...)")
    warmup_frac: float = knob(
        0.2, "share of the run left out of the measures as warm-up (0 to <1)"
    )
    jobs: int = knob(
        0, "simulations run at once on processes (0: one per CPU; 1: in this process)"
    )


def default_config(quick: bool) -> Config:
    if quick:
        return Config(wait_ms=(0, 2, 4, 6, 8, 10), n_queries=40_000)
    return Config()


def check_config(cfg: Config) -> None:
    if cfg.rate_qps <= 0:
        raise ValueError(f"rate_qps must be > 0, got {cfg.rate_qps}")
    if cfg.n_queries < 100:
        raise ValueError(f"n_queries must be >= 100, got {cfg.n_queries}")
    if any(w < 0 for w in cfg.wait_ms):
        raise ValueError(f"wait_ms must be >= 0, got {cfg.wait_ms}")
    if cfg.slo_ms <= 0:
        raise ValueError(f"slo_ms must be > 0, got {cfg.slo_ms}")
    if not 0 <= cfg.warmup_frac < 1:
        raise ValueError(f"warmup_frac must be in [0, 1), got {cfg.warmup_frac}")


def _point(args: tuple[Config, str, float]) -> dict[str, Any]:
    cfg, model, wait = args
    prof = _sim.load_profile(_sim.profile_name(model, cfg.source))
    bc = BatchingConfig(policy=cfg.policy, wait_timeout_s=wait / 1e3)
    res = _sim.run_single(
        prof, bc, rate_qps=cfg.rate_qps, n_queries=cfg.n_queries,
        slo_s=cfg.slo_ms / 1e3, seed=cfg.seed,
    )
    q, b = res.queries, res.batches
    arr = q["arrival_at"].to_numpy()
    lat = q["latency_s"].to_numpy()
    dflt = q["default"].to_numpy(dtype=bool)
    start, _ = window(arr, cfg.warmup_frac)
    ok = (b["status"] == "done").to_numpy()
    return {
        "model": model,
        "wait_ms": float(wait),
        **latency_stats(arr, lat, dflt, warmup_frac=cfg.warmup_frac),
        **batch_stats(
            b["sent_at"].to_numpy()[ok], b["done_at"].to_numpy()[ok],
            b["size"].to_numpy()[ok], start_at=start,
        ),
        RAW: raw_batches(b, model_name=model, wait_ms=float(wait)),
    }


def run(cfg: Config) -> Results:
    check_config(cfg)
    points = [(cfg, m, float(w)) for m in cfg.models for w in cfg.wait_ms]
    table, raw = split_raw(pmap(_point, points, cfg.jobs, desc=NAME))
    return Results(table=table, raw={"batches": raw} if raw is not None else {})


def plot(results: Results, out_dir: Path) -> list[Path]:
    t = results.table
    fig, axes = grid(3, 3)
    panels = [
        ("mean_batch", "mean batch size", "batch size (queries)"),
        ("p99_ms", "p99 (solid) and mean (dashed) latency", "latency (ms)"),
        ("throughput_qps", "throughput", "answered queries/s"),
    ]
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
    for ax, (col, title, ylabel) in zip(axes, panels, strict=True):
        for i, (model, g) in enumerate(t.groupby("model", sort=False)):
            c = palette[i % len(palette)]
            ax.plot(g["wait_ms"], g[col], marker="o", color=c, label=str(model))
            if col == "p99_ms":
                ax.plot(g["wait_ms"], g["mean_ms"], ls="--", color=c, alpha=0.7)
        style_axis(ax, title=title, xlabel="wait timeout (ms)", ylabel=ylabel)
        ax.set_ylim(bottom=0, top=max(1.0, float(t[col].max())) * 1.15)
    return [save(fig, out_dir / "fig4.png", suptitle="Delayed batching (AIMD, 20 ms SLO)",
                 legend_axes=axes[:1])]


def _at(t: pd.DataFrame, model: str, wait: float, col: str) -> float:
    g = t[(t["model"] == model) & (t["wait_ms"] == wait)]
    return float(g[col].iloc[0]) if len(g) else float("nan")


def claims(results: Results, cfg: Config) -> list[Claim]:
    t = results.table
    out = []
    w_max = max(cfg.wait_ms)
    w0 = min(cfg.wait_ms)
    paper_thr = {
        "spark-svm": "a large throughput gain from the wait (paper's text, no number in "
                     "clipper-facts.md)",
        "linear-svm": "no throughput gain from the wait (paper's text, no number in "
                      "clipper-facts.md)",
    }
    for model in cfg.models:
        b0, b1 = _at(t, model, w0, "mean_batch"), _at(t, model, w_max, "mean_batch")
        p0, p1 = _at(t, model, w0, "p99_ms"), _at(t, model, w_max, "p99_ms")
        th0, th1 = _at(t, model, w0, "throughput_qps"), _at(t, model, w_max, "throughput_qps")
        ratio = b1 / b0 if b0 and np.isfinite(b0) else float("nan")
        out.append(Claim(
            f"{model}: mean batch size, wait {w0:g} -> {w_max:g} ms",
            "grows with the wait timeout",
            f"{b0:.0f} -> {b1:.0f} ({ratio:.1f}x)",
        ))
        out.append(Claim(
            f"{model}: p99 latency, wait {w0:g} -> {w_max:g} ms",
            "grows with the wait timeout",
            f"{p0:.1f} -> {p1:.1f} ms",
        ))
        out.append(Claim(
            f"{model}: throughput at {cfg.rate_qps:,.0f} qps offered, wait {w0:g} -> "
            f"{w_max:g} ms",
            paper_thr.get(model, "-"),
            f"{th0:,.0f} -> {th1:,.0f} qps (the fitted profile serves the load at any wait)",
        ))
    return out
