"""Straggler mitigation (paper figure 9): ensembles of 1-20 random-forest replicas, each a
separate model of an Exp4 application; latency when answering at the deadline (the
engine's behaviour) against waiting for every member, the share of missing predictions,
and accuracy.

Setup (clipper-facts.md): N copies of the random-forest profile (50 trees, depth 16), one
core each on a host of its own, AIMD batching with a 4 ms wait, constant 15K qps, 20 ms
objective (2M queries in the paper; 100K here, the load ramped up over the first
``ramp_s`` seconds so AIMD grows with it, and the first ``warmup_s`` seconds left out).
Each ensemble size runs twice with the same seed:
``deadline``, the engine answering with what arrived by the deadline; ``wait for all``,
the same deployment with an objective of ``wait_all_slo_s`` (the batch latency bound
stays at 20 ms so AIMD behaves the same), so every member is waited for.  As a cross-check
the ``deadline`` run also records when each member's batch finished (``record_members``):
``members_p99_ms`` is the p99 over its queries of the last member's finish, counting only
queries whose members all ran (requests still queued at the deadline are dropped and
never run, which is what the second run measures honestly).

Member outputs: by default each member is right with probability ``member_accuracy``,
independently (as if each were a forest trained on its own bootstrap); ``outputs=replay``
replays the recorded predictions of ``measured-random-forest`` instead (identical copies:
the vote then only loses accuracy when every member is missing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipperlab.engine import Application, BatchingConfig, ModelSpec
from clipperlab.report.plots import COLORS, grid, save, style_axis
from clipperlab.simulator.parallel import pmap
from clipperlab.workloads import ConstantRate, DigitsInputs, Workload

from . import _sim
from .config import knob
from .framework import Claim, Results
from .measures import RAW, latency_stats, pct, raw_batches, split_raw, window

NAME = "fig9"
TITLE = "Straggler mitigation: ensemble size vs latency, missing predictions, accuracy"
KEYS = ("ensemble_size", "mode")
MODES = ("deadline", "wait for all")


@dataclass(frozen=True, kw_only=True)
class Config:
    seed: int = knob(0, "random seed of the workload and the simulation (>= 0)")
    sizes: tuple[int, ...] = knob(
        (1, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20), "ensemble sizes to run, joined with '+' (members)"
    )
    profile: str = knob(
        "prototype-random-forest", "latency profile of every member (a shipped profile name)"
    )
    rate_qps: float = knob(15_000.0, "offered load, constant arrivals (queries/s)")
    n_queries: int = knob(100_000, "queries per simulated run")
    slo_ms: float = knob(20.0, "latency objective of the application (ms)")
    wait_ms: float = knob(4.0, "batching wait timeout of each member (ms)")
    wait_all_slo_s: float = knob(
        10.0, "objective of the wait-for-all run, long enough to wait for every member (s)"
    )
    outputs: str = knob(
        "accuracy", "member outputs: accuracy (independent, member_accuracy) or replay (recorded)"
    )
    member_accuracy: float = knob(0.9, "chance each member is right, with outputs=accuracy (0-1)")
    ramp_s: float = knob(1.5, "the offered load ramps up from 0 over this long (s)")
    warmup_s: float = knob(2.5, "first seconds left out of the measures (s)")
    warmup_frac: float = knob(
        0.0, "share of the queries left out of the measures, after warmup_s (0 to <1)"
    )
    jobs: int = knob(
        0, "simulations run at once on processes (0: one per CPU; 1: in this process)"
    )


def default_config(quick: bool) -> Config:
    if quick:
        return Config(sizes=(1, 3, 6), n_queries=50_000)
    return Config()


def check_config(cfg: Config) -> None:
    if any(n < 1 for n in cfg.sizes):
        raise ValueError(f"sizes must be >= 1, got {cfg.sizes}")
    if cfg.outputs not in ("accuracy", "replay"):
        raise ValueError(f"outputs must be 'accuracy' or 'replay', got {cfg.outputs!r}")
    if not 0 <= cfg.member_accuracy <= 1:
        raise ValueError(f"member_accuracy must be in [0, 1], got {cfg.member_accuracy}")
    if cfg.rate_qps <= 0 or cfg.slo_ms <= 0 or cfg.wait_ms < 0 or cfg.n_queries < 100:
        raise ValueError("rate_qps and slo_ms must be > 0, wait_ms >= 0, n_queries >= 100")
    if cfg.ramp_s < 0 or cfg.warmup_s < 0:
        raise ValueError("ramp_s and warmup_s must be >= 0")
    if cfg.wait_all_slo_s * 1e3 <= cfg.slo_ms:
        raise ValueError("wait_all_slo_s must be longer than the objective")


def deployment(cfg: Config, n: int, slo_s: float) -> Any:
    prof = _sim.load_profile(cfg.profile)
    if cfg.outputs == "replay":
        outputs: Any = _sim.ReplayOutputs(source="measured-random-forest")
    else:
        outputs = _sim.AccuracyOutputs(accuracy=cfg.member_accuracy)
    batching = BatchingConfig(policy="aimd", wait_timeout_s=cfg.wait_ms / 1e3,
                              latency_bound_s=cfg.slo_ms / 1e3)
    names = [f"rf{i:02d}" for i in range(n)]
    models = [
        _sim.ModelDeployment(spec=ModelSpec(name=name, batching=batching), profile=prof,
                             replicas=1, hosts=(f"h{i:02d}",), outputs=outputs)
        for i, name in enumerate(names)
    ]
    hosts = [_sim.Host(f"h{i:02d}", cpus=1) for i in range(n)]
    app = Application(name="digits", slo_s=slo_s, default_output=-1, policy="exp4")
    return _sim.Deployment(apps=(_sim.AppDeployment(app, tuple(names)),),
                           models=tuple(models), hosts=tuple(hosts))


def _measure(res: Any, cfg: Config, *, members: bool) -> dict[str, Any]:
    q = res.queries
    arr = q["arrival_at"].to_numpy()
    start, _ = window(arr, cfg.warmup_frac, cfg.warmup_s)
    keep = arr >= start
    out = latency_stats(arr, q["latency_s"].to_numpy(), q["default"].to_numpy(dtype=bool),
                        warmup_frac=cfg.warmup_frac, warmup_s=cfg.warmup_s)
    sel = q["n_selected"].to_numpy()[keep]
    miss = q["n_missing"].to_numpy()[keep]
    out["missing_share"] = float(miss.sum() / sel.sum()) if sel.sum() else math.nan
    out["accuracy"] = float(q["correct"].to_numpy(dtype=bool)[keep].mean())
    if members and res.members is not None and len(res.members):
        m = res.members
        last = m.groupby("query_id", sort=False)["done_at"].agg(["max", "size"])
        n_models = int(q["n_selected"].max())
        full = last[last["size"] >= n_models]
        qid = full.index.to_numpy()
        arrival = arr[qid]
        ok = arrival >= start
        lat = full["max"].to_numpy()[ok] - arrival[ok]
        out["members_p99_ms"] = pct(lat, 99) * 1e3
        out["members_coverage"] = float(ok.sum() / max(1, keep.sum()))
    return out


def _point(args: tuple[Config, int, str]) -> dict[str, Any]:
    cfg, n, mode = args
    slo_s = cfg.slo_ms / 1e3 if mode == "deadline" else cfg.wait_all_slo_s
    wl = Workload(ConstantRate(cfg.rate_qps), n_queries=cfg.n_queries,
                  inputs=DigitsInputs(binary=True))
    trace = _sim.ramped_trace(wl, cfg.seed, cfg.ramp_s)
    res = _sim.Simulation(deployment(cfg, n, slo_s), trace, seed=cfg.seed,
                          record_members=mode == "deadline").run()
    return {"ensemble_size": n, "mode": mode,
            **_measure(res, cfg, members=mode == "deadline"),
            RAW: raw_batches(res.batches, ensemble_size=n, mode=mode)}


def run(cfg: Config) -> Results:
    check_config(cfg)
    # Largest ensembles first: they take longest, so the pool stays busy.
    points = [(cfg, n, mode) for n in sorted(cfg.sizes, reverse=True) for mode in MODES]
    t, raw = split_raw(pmap(_point, points, cfg.jobs, desc=NAME))
    t = t.sort_values(["ensemble_size", "mode"], kind="stable").reset_index(drop=True)
    return Results(table=t, raw={"batches": raw} if raw is not None else {})


def plot(results: Results, out_dir: Path) -> list[Path]:
    t = results.table
    fig, axes = grid(4, 4, width_in=3.4, height_in=3.0)
    for mode, g in t.groupby("mode", sort=False):
        c = COLORS.get(str(mode))
        axes[0].plot(g["ensemble_size"], g["p99_ms"], marker="o", color=c, label=str(mode))
        axes[1].plot(g["ensemble_size"], g["mean_ms"], marker="o", color=c, label=str(mode))
        axes[2].plot(g["ensemble_size"], g["missing_share"] * 100, marker="o", color=c,
                     label=str(mode))
        axes[3].plot(g["ensemble_size"], g["accuracy"] * 100, marker="o", color=c,
                     label=str(mode))
    d = t[t["mode"] == "deadline"]
    if "members_p99_ms" in d:
        axes[0].plot(d["ensemble_size"], d["members_p99_ms"], ls="--", color="#555555",
                     label="last member (same run)")
    axes[0].axhline(20.0, color="k", ls=":", lw=1)
    axes[0].set_yscale("log")
    style_axis(axes[0], title="p99 latency", xlabel="ensemble size", ylabel="ms (log)")
    style_axis(axes[1], title="mean latency", xlabel="ensemble size", ylabel="ms")
    style_axis(axes[2], title="missing predictions", xlabel="ensemble size", ylabel="% of members")
    style_axis(axes[3], title="accuracy", xlabel="ensemble size", ylabel="% correct")
    return [save(fig, out_dir / "fig9.png",
                 suptitle="Straggler mitigation: random-forest ensembles, "
                 f"{float(t['offered_qps'].median()) / 1e3:.0f}K qps, 20 ms SLO",
                 legend_axes=axes[:1])]


def _row(t: pd.DataFrame, n: int, mode: str) -> pd.Series:
    g = t[(t["ensemble_size"] == n) & (t["mode"] == mode)]
    return g.iloc[0] if len(g) else pd.Series(dtype=float)


def claims(results: Results, cfg: Config) -> list[Claim]:
    t = results.table
    lo, hi = min(cfg.sizes), max(cfg.sizes)
    d_lo, d_hi = _row(t, lo, "deadline"), _row(t, hi, "deadline")
    w_lo, w_hi = _row(t, lo, "wait for all"), _row(t, hi, "wait for all")

    def g(s: pd.Series, k: str) -> float:
        return float(s.get(k, np.nan))

    return [
        Claim(f"p99 latency answering at the deadline, N = {lo} -> {hi}",
              "stays at the 20 ms objective",
              f"{g(d_lo, 'p99_ms'):.1f} -> {g(d_hi, 'p99_ms'):.1f} ms"),
        Claim(f"p99 latency waiting for all members, N = {lo} -> {hi}",
              "grows with the ensemble size (the slowest member decides)",
              f"{g(w_lo, 'p99_ms'):.1f} -> {g(w_hi, 'p99_ms'):.1f} ms"),
        Claim(f"missing predictions at the deadline, N = {lo} -> {hi}",
              "grow with the ensemble size",
              f"{g(d_lo, 'missing_share') * 100:.2f}% -> {g(d_hi, 'missing_share') * 100:.2f}%"),
        Claim(f"accuracy at the deadline vs waiting for all, N = {hi}",
              "reported beside (no numbers in clipper-facts.md)",
              f"{g(d_hi, 'accuracy') * 100:.2f}% vs {g(w_hi, 'accuracy') * 100:.2f}% "
              f"(members {cfg.member_accuracy * 100:.0f}% each, independent)"
              if cfg.outputs == "accuracy" else
              f"{g(d_hi, 'accuracy') * 100:.2f}% vs {g(w_hi, 'accuracy') * 100:.2f}% (replay)"),
    ]
