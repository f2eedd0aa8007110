"""Replica scaling over the network (paper figure 5): 1-4 GPU replicas of a conv-net-like
model with a static batch of 512 and 6,272-byte inputs (784 doubles), over 1 vs 10 Gbps.

Setup (clipper-facts.md): each replica runs on a host of its own; each host's link and the
frontend's NIC have the given bandwidth, and every batch's inputs cross both (the
frontend's NIC is shared by all replicas, which is what caps the 1 Gbps runs: 1e9 / 8 /
6,272 = 19,930 queries/s whatever the number of replicas).  Each point runs twice: under
overload (``overload_qps`` offered; by default twice the frontend NIC's cap) for the peak
aggregate and per-replica throughput (queries the replicas processed per second, as the
paper measures it), and at ``latency_load`` times that measured peak for the mean and p99
latency (under overload the earliest-deadline-first queue pins every latency at the
objective).

The replicas' profile is ``measured-gpu-mnist-cnn``: the paper's MNIST conv net (TF Deep
MNIST, 784 doubles in) measured on an NVIDIA H200 by ``calibration.gpu_profiles`` (the
container's predict in process; the network is this figure's links).  At batch 512 it runs
in 1.1 ms (about 460K queries/s a replica), 20x the paper's GPUs: a 512-query batch's
3.2 MB take 2.6 ms on a 10 Gbps link, so one replica already gets 130K queries/s and two
reach the 10 Gbps NIC's 199K.  The 100 Gbps runs show the paper's linear scaling on
today's GPU.  ``synthetic-convnet-gpu`` (assumed: a p99 line of 40 us per item + 4 ms,
about 20K queries/s a replica at batch 512, the paper's scale) or any other shipped profile
can be named by ``profile``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.ticker import FuncFormatter

from clipperlab.engine import BatchingConfig
from clipperlab.report.plots import COLORS, grid, save, style_axis
from clipperlab.simulator.parallel import pmap

from . import _sim
from .config import knob
from .framework import Claim, Results
from .measures import RAW, batch_stats, latency_stats, raw_batches, split_raw, window

NAME = "fig5"
TITLE = "Scaling GPU replicas over 1, 10 and 100 Gbps: throughput and latency"
KEYS = ("network_gbps", "replicas")

INPUT_SHAPE = (784,)  # MNIST as doubles: 6,272 bytes a query


@dataclass(frozen=True, kw_only=True)
class Config:
    seed: int = knob(0, "random seed of the workload and the simulation (>= 0)")
    replicas: tuple[int, ...] = knob((1, 2, 3, 4), "replica counts to run, joined with '+'")
    network_gbps: tuple[float, ...] = knob(
        (1.0, 10.0, 100.0), "link bandwidths to run, joined with '+' (Gbit/s)"
    )
    batch_size: int = knob(512, "static batch size of every replica (queries)")
    profile: str = knob(
        "measured-gpu-mnist-cnn", "latency profile of the replicas (a shipped profile name)"
    )
    slo_ms: float = knob(100.0, "latency objective of the application (ms)")
    overload_qps: float = knob(
        0.0, "offered load of the throughput run, above capacity (queries/s; "
        "0: twice the frontend NIC's cap at each bandwidth)"
    )
    latency_load: float = knob(
        0.8, "load of the latency run, as a share of the measured peak (0-1)"
    )
    n_queries: int = knob(1_200_000, "queries per simulated run")
    warmup_frac: float = knob(
        0.3, "share of the run left out of the measures as warm-up (0 to <1)"
    )
    jobs: int = knob(
        0, "simulations run at once on processes (0: one per CPU; 1: in this process)"
    )


def default_config(quick: bool) -> Config:
    if quick:
        return Config(n_queries=60_000)
    return Config()


def check_config(cfg: Config) -> None:
    if any(r < 1 for r in cfg.replicas):
        raise ValueError(f"replicas must be >= 1, got {cfg.replicas}")
    if any(g <= 0 for g in cfg.network_gbps):
        raise ValueError(f"network_gbps must be > 0, got {cfg.network_gbps}")
    if cfg.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {cfg.batch_size}")
    if not 0 < cfg.latency_load <= 1:
        raise ValueError(f"latency_load must be in (0, 1], got {cfg.latency_load}")
    if cfg.overload_qps < 0 or cfg.slo_ms <= 0 or cfg.n_queries < 100:
        raise ValueError("overload_qps must be >= 0, slo_ms > 0, n_queries >= 100")


def nic_cap_qps(gbps: float) -> float:
    """Queries/s of 6,272-byte inputs a NIC of ``gbps`` carries."""
    return gbps * 1e9 / 8 / (INPUT_SHAPE[0] * 8)


def convnet_profile(cfg: Config) -> Any:
    return _sim.load_profile(cfg.profile)


def _run(cfg: Config, replicas: int, gbps: float, rate_qps: float) -> dict[str, Any]:
    link = _sim.Link(bandwidth_bps=gbps * 1e9)
    res = _sim.run_single(
        convnet_profile(cfg),
        BatchingConfig(policy="fixed", max_batch_size=cfg.batch_size),
        rate_qps=rate_qps, n_queries=cfg.n_queries, slo_s=cfg.slo_ms / 1e3, seed=cfg.seed,
        replicas=replicas, link=link, frontend_link=link,
        inputs=_sim.SyntheticTensors(shape=INPUT_SHAPE, dtype="float64"),
    )
    q, b = res.queries, res.batches
    arr = q["arrival_at"].to_numpy()
    start, _ = window(arr, cfg.warmup_frac)
    ok = (b["status"] == "done").to_numpy()
    return {
        **latency_stats(arr, q["latency_s"].to_numpy(), q["default"].to_numpy(dtype=bool),
                        warmup_frac=cfg.warmup_frac),
        **batch_stats(b["sent_at"].to_numpy()[ok], b["done_at"].to_numpy()[ok],
                      b["size"].to_numpy()[ok], start_at=start),
        RAW: raw_batches(b, network_gbps=gbps, replicas=replicas, offered_qps=rate_qps),
    }


def _point(args: tuple[Config, int, float]) -> dict[str, Any]:
    cfg, replicas, gbps = args
    peak = _run(cfg, replicas, gbps, cfg.overload_qps or 2 * nic_cap_qps(gbps))
    load = cfg.latency_load * peak["processed_qps"]
    at = _run(cfg, replicas, gbps, load)
    return {
        "network_gbps": gbps,
        "replicas": replicas,
        "throughput_qps": peak["processed_qps"],
        "per_replica_qps": peak["processed_qps"] / replicas,
        "overload_goodput_qps": peak["throughput_qps"],
        "batch_mean_ms": peak["batch_mean_ms"],
        "latency_load_qps": load,
        "mean_ms": at["mean_ms"],
        "p99_ms": at["p99_ms"],
        "default_share": at["default_share"],
        "mean_batch": at["mean_batch"],
        RAW: pd.concat([peak[RAW], at[RAW]], ignore_index=True),
    }


def run(cfg: Config) -> Results:
    check_config(cfg)
    points = [(cfg, r, g) for g in cfg.network_gbps for r in cfg.replicas]
    table, raw = split_raw(pmap(_point, points, cfg.jobs, desc=NAME))
    return Results(table=table, raw={"batches": raw} if raw is not None else {})


def plot(results: Results, out_dir: Path) -> list[Path]:
    t = results.table
    fig, axes = grid(4, 4, width_in=3.4, height_in=3.0)
    panels = [
        ("throughput_qps", "aggregate throughput", "queries/s"),
        ("per_replica_qps", "per-replica throughput", "queries/s"),
        ("mean_ms", "mean latency", "ms"),
        ("p99_ms", "p99 latency", "ms"),
    ]
    for ax, (col, title, ylabel) in zip(axes, panels, strict=True):
        for gbps, g in t.groupby("network_gbps", sort=True):
            label = f"{gbps:g} Gbps"
            ax.plot(g["replicas"], g[col], marker="o", color=COLORS.get(label), label=label)
        style_axis(ax, title=title, xlabel="replicas", ylabel=ylabel)
        ax.set_xticks(sorted(t["replicas"].unique()))
        if col.endswith("_qps"):  # bandwidths 100x apart: a log axis shows every line
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        else:
            ax.set_ylim(bottom=0)
    return [save(fig, out_dir / "fig5.png",
                 suptitle="GPU replicas, static batch 512, 6,272-byte inputs",
                 legend_axes=axes[:1])]


def claims(results: Results, cfg: Config) -> list[Claim]:
    t = results.table
    out: list[Claim] = []
    for gbps, g in t.groupby("network_gbps", sort=True):
        g = g.sort_values("replicas")
        thr = ", ".join(f"{r}: {v:,.0f}" for r, v in zip(g["replicas"], g["throughput_qps"],
                                                         strict=True))
        thr += f" (the frontend NIC's cap: {nic_cap_qps(gbps):,.0f})"
        if gbps < 5:
            paper = (f"throughput flat in replicas: the network caps it "
                     f"({nic_cap_qps(gbps):,.0f} qps of 6,272-byte inputs)")
        else:
            paper = "aggregate throughput grows about linearly with replicas"
        out.append(Claim(f"{gbps:g} Gbps: aggregate throughput by replicas (qps)", paper, thr))
        lat = ", ".join(f"{r}: {m:.1f}/{p:.1f}" for r, m, p in
                        zip(g["replicas"], g["mean_ms"], g["p99_ms"], strict=True))
        out.append(Claim(f"{gbps:g} Gbps: mean/p99 latency by replicas (ms), at "
                         f"{cfg.latency_load:.0%} of the peak",
                         "reported per setup (no numbers in clipper-facts.md)", lat))
    return out
