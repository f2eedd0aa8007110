"""Batching strategies under overload (paper figure 3): peak throughput and p99 latency
per model for no batching, AIMD, quantile regression, and the TF-Serving-, Triton- and
BentoML-shaped baselines.

Setup (clipper-facts.md): the six models' prototype profiles, one replica each, a 20 ms
objective, constant arrivals far above capacity (100K qps offered; 10M queries in the
paper, 1M per point here in the full run, the first half left out as warm-up).  Every
policy is the engine's: ``none``, ``aimd``, ``quantile`` (AIMD for
``quantile_fit_after`` batches, then the p99 line's cap), ``tfserving``, ``triton``,
``bentoml``.  The peers have no adaptive cap, so each is given ``peer_max_batch_size``;
0 (the default) means "tuned by hand for this model", which we take as the largest size
whose profiled p99 fits the objective, what a careful operator of those servers would
set after profiling.  ``policies`` also takes controllers of one's own, named
``package.module:Class`` or ``path/to/file.py:Class`` (``--set
policies=aimd+examples/custom_controller.py:PowerOfTwo``); they get AIMD's settings.

What is measured, after a warm-up share of the run: the container's throughput (queries
processed per second) and the p99 batch latency, as the paper's figure reports them; and,
beside them, what clients got: answers in time per second (goodput) and the p99 latency of
every reply.  Under overload the engine's earliest-deadline-first queue serves the oldest
queries, which are by then too late, so goodput collapses unless the queue is bounded
(``max_queue``, refused queries are answered at once with a 503-style default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipperlab.engine import BatchingConfig, ConfigError
from clipperlab.engine.batching import controller_class
from clipperlab.report.plots import COLORS, grid, save, style_axis
from clipperlab.simulator.parallel import pmap

from . import _sim
from .config import knob
from .framework import Claim, Results
from .measures import RAW, batch_stats, latency_stats, raw_batches, split_raw, window

NAME = "fig3"
TITLE = "Batching strategies: peak throughput and p99 latency under overload"
KEYS = ("model", "policy")
POLICIES = ("none", "aimd", "quantile", "tfserving", "triton", "bentoml")
PEERS = ("tfserving", "triton", "bentoml")


@dataclass(frozen=True, kw_only=True)
class Config:
    seed: int = knob(0, "random seed of the workload and the simulation (>= 0)")
    models: tuple[str, ...] = knob(
        _sim.PAPER_MODELS, "models (prototype profile names without the prefix), joined with '+'"
    )
    source: str = knob(
        "prototype", "which shipped profiles: prototype (the paper's fits) or measured "
        "(this machine)"
    )
    policies: tuple[str, ...] = knob(
        POLICIES, "batching policies: none, aimd, quantile, tfserving, triton, bentoml, or "
        "package.module:Class / path.py:Class"
    )
    rate_qps: float = knob(
        100_000.0, "offered load, constant arrivals far above capacity (queries/s)"
    )
    n_queries: int = knob(1_000_000, "queries per simulated run")
    slo_ms: float = knob(20.0, "latency objective of the application (ms)")
    quantile_fit_after: int = knob(
        500, "batches run with AIMD before quantile regression fits its line"
    )
    peer_max_batch_size: int = knob(
        0, "batch cap of the tfserving/triton/bentoml peers (0: the largest size whose "
        "profiled p99 fits the objective)"
    )
    peer_wait_ms: float = knob(0.0, "batching wait timeout of the peers (ms)")
    max_queue: int = knob(
        0, "queued queries per model beyond which new ones are refused at once (0: unbounded)"
    )
    warmup_frac: float = knob(
        0.5, "share of the run left out of the measures as warm-up (0 to <1)"
    )
    jobs: int = knob(
        0, "simulations run at once on processes (0: one per CPU; 1: in this process)"
    )


def default_config(quick: bool) -> Config:
    if quick:
        # Three models, and a run too short for AIMD to finish growing (it adds 2 a
        # batch from 1: about 5 s at 100K qps for the linear SVM).
        return Config(models=("linear-svm", "random-forest", "kernel-svm"),
                      n_queries=40_000, quantile_fit_after=50)
    return Config()


def check_config(cfg: Config) -> None:
    for p in cfg.policies:
        if p not in POLICIES:
            try:
                controller_class(p)  # a controller of one's own: module:Class, file.py:Class
            except ConfigError as e:
                raise ValueError(f"policies: {e}") from None
    if cfg.rate_qps <= 0 or cfg.slo_ms <= 0:
        raise ValueError("rate_qps and slo_ms must be > 0")
    if cfg.n_queries < 100:
        raise ValueError(f"n_queries must be >= 100, got {cfg.n_queries}")
    if cfg.max_queue < 0:
        raise ValueError(f"max_queue must be >= 0 (0: unbounded), got {cfg.max_queue}")
    if cfg.peer_max_batch_size < 0:
        raise ValueError(f"peer_max_batch_size must be >= 0, got {cfg.peer_max_batch_size}")


def tuned_cap(prof: Any, slo_s: float) -> int:
    """Largest batch size whose profiled p99 fits ``slo_s`` (at least 1)."""
    lo, hi = 1, 1
    while hi < (1 << 16) and prof.quantile_s(hi, 0.99) <= slo_s:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if prof.quantile_s(mid, 0.99) <= slo_s:
            lo = mid
        else:
            hi = mid
    return lo


def batching_for(policy: str, cfg: Config, prof: Any) -> BatchingConfig:
    slo_s = cfg.slo_ms / 1e3
    mq = cfg.max_queue or None
    if policy in ("none", "aimd") or policy not in POLICIES:  # custom: it sets its own cap
        return BatchingConfig(policy=policy, max_queue=mq)
    if policy == "quantile":
        return BatchingConfig(policy="quantile", fit_after_batches=cfg.quantile_fit_after,
                              max_queue=mq)
    cap = cfg.peer_max_batch_size or tuned_cap(prof, slo_s)
    return BatchingConfig(policy=policy, max_batch_size=cap,
                          wait_timeout_s=cfg.peer_wait_ms / 1e3, max_queue=mq)


def _point(args: tuple[Config, str, str]) -> dict[str, Any]:
    cfg, model, policy = args
    prof = _sim.load_profile(_sim.profile_name(model, cfg.source))
    bc = batching_for(policy, cfg, prof)
    res = _sim.run_single(
        prof, bc, rate_qps=cfg.rate_qps, n_queries=cfg.n_queries, slo_s=cfg.slo_ms / 1e3,
        seed=cfg.seed,
    )
    q, b = res.queries, res.batches
    arr = q["arrival_at"].to_numpy()
    start, _ = window(arr, cfg.warmup_frac)
    ok = (b["status"] == "done").to_numpy()
    return {
        "model": model,
        "policy": policy,
        "cap": bc.max_batch_size if policy in PEERS else np.nan,
        **latency_stats(arr, q["latency_s"].to_numpy(), q["default"].to_numpy(dtype=bool),
                        warmup_frac=cfg.warmup_frac),
        **batch_stats(b["sent_at"].to_numpy()[ok], b["done_at"].to_numpy()[ok],
                      b["size"].to_numpy()[ok], start_at=start),
        RAW: raw_batches(b, model_name=model, policy=policy),
    }


def run(cfg: Config) -> Results:
    check_config(cfg)
    points = [(cfg, m, p) for m in cfg.models for p in cfg.policies]
    table, raw = split_raw(pmap(_point, points, cfg.jobs, desc=NAME))
    return Results(table=table, raw={"batches": raw} if raw is not None else {})


def plot(results: Results, out_dir: Path) -> list[Path]:
    t = results.table
    models = list(dict.fromkeys(t["model"]))
    policies = list(dict.fromkeys(t["policy"]))
    fig, axes = grid(4, 2, width_in=7.0, height_in=3.4)
    panels = [
        ("processed_qps", "container throughput (paper's measure)", "queries/s (log)", True),
        ("batch_p99_ms", "p99 batch latency (paper's measure)", "ms", False),
        ("throughput_qps", "goodput: answers in time", "queries/s (log)", True),
        ("default_share", "share of replies that are defaults", "share", False),
    ]
    x = np.arange(len(models))
    w = 0.8 / max(1, len(policies))
    for ax, (col, title, ylabel, log) in zip(axes, panels, strict=True):
        log = log and bool((t[col].to_numpy(dtype=float) > 0).any())  # log of all-zero fails
        for i, pol in enumerate(policies):
            g = t[t["policy"] == pol].set_index("model").reindex(models)
            vals = g[col].to_numpy(dtype=float)
            if log:
                vals = np.where(vals > 0, vals, np.nan)
            label = pol.rpartition(":")[2]  # a custom controller by its class name
            ax.bar(x + i * w, vals, w, color=COLORS.get(pol), label=label)
        ax.set_xticks(x + 0.4 - w / 2, models, rotation=20, fontsize=8)
        if log:
            ax.set_yscale("log")
        elif col.endswith("_ms"):
            ax.axhline(20.0, color="k", ls=":", lw=1)
        style_axis(ax, title=title, ylabel=ylabel)
    return [save(fig, out_dir / "fig3.png",
                 suptitle="Batching strategies under overload (one replica, 20 ms SLO)",
                 legend_axes=axes[:1])]


def _v(t: pd.DataFrame, model: str, policy: str, col: str) -> float:
    g = t[(t["model"] == model) & (t["policy"] == policy)]
    return float(g[col].iloc[0]) if len(g) else math.nan


def claims(results: Results, cfg: Config) -> list[Claim]:
    t = results.table
    out: list[Claim] = []
    slo_s = cfg.slo_ms / 1e3
    for model in cfg.models:
        prof = _sim.load_profile(_sim.profile_name(model, cfg.source))
        alpha, beta = prof.fit if prof.fit else (math.nan, math.nan)
        b_star = max(1, math.floor((slo_s - beta) / alpha)) if alpha > 0 else 1
        # The fit is a p99 line: a batch of b* takes at most the SLO, so the container's
        # peak is at least b*/SLO (more: the mean batch is faster than the p99).
        implied = b_star / slo_s
        ours = " / ".join(
            f"{p} {_v(t, model, p, 'processed_qps'):,.0f}"
            for p in ("none", "aimd", "quantile") if p in cfg.policies
        )
        out.append(Claim(
            f"{model}: container throughput, none / AIMD / QR (qps)",
            f"fit {alpha * 1e6:.1f} us/item + {beta * 1e3:.2f} ms: cap {b_star}, "
            f"peak >= {implied:,.0f}; far above no batching",
            ours,
        ))
    if "aimd" in cfg.policies:
        out.append(Claim(
            "p99 batch latency, AIMD (ms)",
            "near the 20 ms objective",
            ", ".join(f"{m} {_v(t, m, 'aimd', 'batch_p99_ms'):.1f}" for m in cfg.models),
        ))
    if {"aimd", "none"} <= set(cfg.policies):
        gains = [_v(t, m, "aimd", "processed_qps") / _v(t, m, "none", "processed_qps")
                 for m in cfg.models]
        out.append(Claim(
            "throughput gain of AIMD over no batching",
            "implied by the fits: large where the fixed cost dominates, small for kernel SVM",
            ", ".join(f"{m} {g:.1f}x" for m, g in zip(cfg.models, gains, strict=True)),
        ))
    for pol in ("aimd", "bentoml"):
        if pol in cfg.policies:
            out.append(Claim(
                f"goodput (answers in time), {pol} (qps)",
                "not reported",
                ", ".join(f"{m} {_v(t, m, pol, 'throughput_qps'):,.0f}" for m in cfg.models),
            ))
    for pol in (p for p in cfg.policies if p not in POLICIES):
        out.append(Claim(
            f"{pol.rpartition(':')[2]} (yours): container throughput (qps) / p99 batch (ms)",
            "not in the paper",
            ", ".join(f"{m} {_v(t, m, pol, 'processed_qps'):,.0f} / "
                      f"{_v(t, m, pol, 'batch_p99_ms'):.1f}" for m in cfg.models),
        ))
    if "quantile" in cfg.policies and "batches" in t:
        # Batches over the whole run, from those in the measured window (an estimate).
        slow = [m for m in cfg.models
                if _v(t, m, "quantile", "batches") / (1 - cfg.warmup_frac)
                < cfg.quantile_fit_after]
        if slow:
            out.append(Claim(
                "quantile regression fitted?",
                f"after {cfg.quantile_fit_after} AIMD batches",
                f"never for {', '.join(slow)} (fewer batches in the whole run): QR = AIMD there",
            ))
    return out
