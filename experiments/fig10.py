"""Personalized model selection (paper figure 10): per-user selection state against one
global state, error over the number of feedback items each user has given.

Setup (``clipperlab.workloads.users``): ``n_users`` users in ``n_groups`` groups; group ``g`` sees
the
digits through its own transformation (as they are, mirrored, inverted, rotated), and
``specialist-g`` (a logistic regression trained on group ``g``'s view) is accurate on its
group only (about 95% there, 0-40% elsewhere).  One application links every specialist;
each query comes from a user drawn uniformly and its label is fed back at once.
``personal``: the query and its feedback carry the user as context (the engine keeps one
selection state per user); ``global``: no context (one state for everyone).  Policies:
Exp4 and Exp3 (the engine's, Clipper's constants).  The x-axis is the number of earlier
queries of the same user (each followed by its feedback), binned.

Modes: ``sim`` replays the specialists' recorded predictions in the simulator; ``real``
deploys them as real scikit-learn containers and sends a shorter stream over HTTP with
``uid`` in ``/predict`` and ``/update``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipperlab.engine import Application
from clipperlab.report.plots import grid, save, style_axis
from clipperlab.report.progress import track
from clipperlab.simulator import Simulation
from clipperlab.workloads.users import UserGroups

from .config import knob
from .framework import Claim, Results
from .selection_common import adaptive_params, check_mode, deployment, run_modes

NAME = "fig10"
TITLE = "Personalized selection: per-user state vs one global state"
BINS = (0, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 10**9)


# the adaptive policies, run with the engine's default parameters; a policy of one's own
# (module:Class, file.py:Class) runs too
ADAPTIVE = ("exp3", "exp4", "epsilon_greedy", "ucb1", "exp3_discounted", "exp4_discounted")


@dataclass(frozen=True, kw_only=True)
class Config:
    seed: int = knob(0, "random seed of the workload and the simulation (>= 0)")
    mode: str = knob("sim", "where to run: sim (simulator), real (real server, loopback), both")
    n_groups: int = knob(
        4, "user groups, each with its own view of the digits and its specialist model"
    )
    n_users: int = knob(40, "users in the simulated stream")
    policies: tuple[str, ...] = knob(
        ("exp4", "exp3"), "selection policies to compare, joined with '+' (exp4, exp3, ...)"
    )
    n_queries: int = knob(20_000, "queries per simulated run")
    rate_qps: float = knob(250.0, "offered load, constant arrivals (queries/s)")
    slo_ms: float = knob(100.0, "latency objective of the application (ms)")
    feedback_delay_ms: float = knob(0.5, "delay from an answer to its label's feedback (ms)")
    real_queries: int = knob(1_600, "queries per application in real mode")
    real_users: int = knob(8, "users in real mode")


def default_config(quick: bool) -> Config:
    if quick:
        return Config(n_queries=4_000, n_users=20, real_queries=150, real_users=4)
    return Config()


def _ranks(users: np.ndarray) -> np.ndarray:
    """For each query, how many earlier queries its user sent."""
    out = np.zeros(users.size, dtype=np.int64)
    seen: dict[int, int] = {}
    for i, u in enumerate(users.tolist()):
        out[i] = seen.get(u, 0)
        seen[u] = out[i] + 1
    return out


def _binned(mode: str, policy: str, state: str, correct: np.ndarray,
            ranks: np.ndarray) -> list[dict[str, Any]]:
    rows = []
    for lo, hi in zip(BINS[:-1], BINS[1:], strict=True):
        sel = (ranks >= lo) & (ranks < hi)
        if sel.any():
            rows.append({"mode": mode, "policy": policy, "state": state, "feedback_lo": lo,
                         "feedback_hi": min(hi, int(ranks.max()) + 1),
                         "error": float(1 - correct[sel].mean()), "n": int(sel.sum())})
    return rows


def _sim(cfg: Config, raw: list[pd.DataFrame]) -> list[dict[str, Any]]:
    ug = UserGroups(n_groups=cfg.n_groups, n_users=cfg.n_users, seed=cfg.seed)
    paths = ug.prediction_paths()
    t = np.arange(cfg.n_queries) / cfg.rate_qps
    rows: list[dict[str, Any]] = []
    runs = [(p, s) for p in cfg.policies for s in ("personal", "global")]
    for policy, state in track(runs, desc=f"{NAME} sim", unit="run"):
        trace = ug.trace(t, seed=cfg.seed, feedback_delay_s=cfg.feedback_delay_ms / 1e3,
                         personal=state == "personal")
        app = Application(name="digits", slo_s=cfg.slo_ms / 1e3, default_output=-1,
                          policy=policy)
        dep = deployment([app], {"digits": ug.model_names}, paths,
                         profile_of={m: "measured-logistic-regression"
                                     for m in ug.model_names})
        res = Simulation(dep, trace, seed=cfg.seed).run()
        raw.append(res.batches.assign(policy=policy, state=state))
        users = np.random.default_rng([cfg.seed, 1013]).integers(0, cfg.n_users,
                                                                 cfg.n_queries)
        correct = res.queries["correct"].to_numpy(dtype=bool)
        rows += _binned("sim", policy, state, correct, _ranks(users))
    return rows


def _real(cfg: Config) -> list[dict[str, Any]]:
    from .selection_real import deploy, real_server, run_streams

    ug = UserGroups(n_groups=cfg.n_groups, n_users=cfg.real_users, seed=cfg.seed)
    x, y = ug.inputs.load()
    tr = ug.trace(np.arange(cfg.real_queries, dtype=np.float64), seed=cfg.seed)
    assert tr.context is not None
    users = tr.context.tolist()
    xs, ys = x[tr.input_index], y[tr.input_index]
    rows: list[dict[str, Any]] = []
    with real_server(seed=cfg.seed) as rig:
        for m, est in ug.specialists().items():
            deploy(rig.admin, m, est)
        apps: dict[str, tuple[str, str]] = {}
        for policy in cfg.policies:
            for state in ("personal", "global"):
                name = f"fig10-{policy}-{state}"
                rig.admin.add_app(name, slo_ms=max(cfg.slo_ms, 1000.0), default_output=-1,
                                  policy=policy, input_shape=[64])
                rig.admin.link(name, list(ug.model_names))
                apps[name] = (policy, state)
        rig.admin.wait_ready(app=next(iter(apps)), timeout_s=120)
        per_app = {a: (users if st == "personal" else None) for a, (_, st) in apps.items()}
        recs = run_streams(rig, list(apps), xs, ys, feedback=True, users=per_app)
    ranks = _ranks(np.asarray(users))
    for name, (policy, state) in apps.items():
        correct = np.array([(not r["default"]) and r["output"] == r["label"]
                            for r in recs[name]])
        rows += _binned("real", policy, state, correct, ranks)
    return rows


def run(cfg: Config) -> Results:
    check_mode(cfg.mode)
    for p in cfg.policies:  # each with the engine's defaults
        adaptive_params(p, dict.fromkeys(ADAPTIVE, {}))
    if cfg.n_users < cfg.n_groups or cfg.real_users < cfg.n_groups:
        raise ValueError("n_users and real_users must be >= n_groups")
    return run_modes(cfg.mode, lambda raw: _sim(cfg, raw), lambda: _real(cfg))


def plot(results: Results, out_dir: Path) -> list[Path]:
    t = results.table
    modes = list(t["mode"].unique())
    fig, axes = grid(len(modes), 2, width_in=4.6, height_in=3.4)
    for ax, mode in zip(axes, modes, strict=False):
        tm = t[t["mode"] == mode]
        for (pol, state), g in tm.groupby(["policy", "state"], sort=False):
            x = (g["feedback_lo"] + g["feedback_hi"]) / 2
            ax.plot(x, g["error"] * 100, marker="o", ls="-" if state == "personal" else "--",
                    label=f"{pol}, {state} state")
        ax.set_xscale("log")
        style_axis(ax, title=f"{mode}: error by feedback per user",
                   xlabel="feedback items from this user so far (bin middle)",
                   ylabel="% wrong")
    return [save(fig, out_dir / "fig10.png", suptitle="Personalized selection: one state per "
                 "user vs one global state", legend_axes=axes)]


def claims(results: Results, cfg: Config) -> list[Claim]:
    t = results.table
    out = []
    for mode in t["mode"].unique():
        for pol in cfg.policies:
            g = t[(t["mode"] == mode) & (t["policy"] == pol)]
            if not len(g):
                continue
            pers = g[g["state"] == "personal"]
            glob = g[g["state"] == "global"]
            out.append(Claim(
                f"[{mode}] {pol}: error in the last bin ({int(pers['feedback_lo'].iloc[-1])}+ "
                "feedback per user), personal vs global",
                "per-user state learns each user's model; one global state cannot",
                f"{pers['error'].iloc[-1] * 100:.1f}% vs {glob['error'].iloc[-1] * 100:.1f}%"))
            out.append(Claim(
                f"[{mode}] {pol}: personal error, first bin -> last bin",
                "error falls as a user gives feedback",
                f"{pers['error'].iloc[0] * 100:.1f}% -> {pers['error'].iloc[-1] * 100:.1f}%"))
    return out
