"""Exp3 and Exp4 under model failure (paper figure 8): a stream of digit queries with a label
fed back for each; the best model's outputs are corrupted for a window of queries (the
paper: from about 5K to 10K) and then recover.  Cumulative error over the stream of Exp3,
Exp4, epsilon-greedy, UCB1 and every static single-model choice, and the selection
probability of each model over time.

Setup: five zoo models on ten digits (``clipperlab.workloads.zoo``: RBF SVM, logistic regression,
random forest, naive Bayes, decision tree; held-out accuracy 98%, 95%, 91%, 86%, 79%);
each application links all five with one policy; the best (``rbf_svm``) answers a
uniformly random wrong class during ``[fail_from, fail_to)`` (``simulator.Degrade`` at
accuracy 0).  Policies: the engine's Clipper rules (``exp3``, ``exp4``, eta 0.01,
``epsilon_greedy``, ``ucb1``), ``static:MODEL`` for each model, and the discounted variants
in ``clipperlab.engine.selection`` (``exp3_discounted``: eta 0.1, gamma 0.05, discount
0.002; ``exp4_discounted``: Hedge, eta 0.1, discount 0.002), which forget old losses and so
can move weight back after the recovery.

Modes: ``sim`` replays the models' recorded predictions in the simulator (constant
``rate_qps``, AIMD batching, objective ``slo_ms``); ``real`` sends a shorter stream
(``real_queries``, failure over the same fractions of it) through the real server, the
models running as real containers (the failing one a ``Switchable`` wrapper flipped by a
flag file), labels over ``POST /{app}/update`` with the answer's ``query_id``, and the
prediction cache off (as the simulated stream, whose inputs are salted: cached answers
would hide the failure and outlive it).  With
``real_compress`` (default) the real run is the simulated one in fast-forward: every
learning rate and discount is multiplied by ``n_queries / real_queries``, so the policies
move as far per fraction of the stream as they do in the longer simulated stream.
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
from clipperlab.simulator import Degrade, Simulation
from clipperlab.workloads import ConstantRate, FeedbackStream, Workload
from clipperlab.workloads.zoo import Switchable, load_zoo

from .config import knob
from .framework import Claim, Results
from .selection_common import (
    adaptive_params,
    check_mode,
    check_models,
    cumulative_error,
    deployment,
    run_modes,
    weights_over_time,
)

NAME = "fig8"
TITLE = "Exp3 and Exp4 under model failure: cumulative error and weights over time"

ADAPTIVE: dict[str, dict[str, Any]] = {
    "exp3": {"eta": 0.01},
    "exp4": {"eta": 0.01},
    "epsilon_greedy": {},
    "ucb1": {},
    "exp3_discounted": {"eta": 0.1, "gamma": 0.05, "discount": 0.002},
    "exp4_discounted": {"eta": 0.1, "discount": 0.002},
}


@dataclass(frozen=True, kw_only=True)
class Config:
    seed: int = knob(0, "random seed of the workload and the simulation (>= 0)")
    mode: str = knob("sim", "where to run: sim (simulator), real (real server, loopback), both")
    models: tuple[str, ...] = knob(
        ("rbf_svm", "logreg", "random_forest", "naive_bayes", "decision_tree"), "zoo models "
        "linked to each application, joined with '+'"
    )
    failing: str = knob("rbf_svm", "the model whose outputs fail during the window")
    policies: tuple[str, ...] = knob(
        tuple(ADAPTIVE), "adaptive selection policies, joined with '+' (static:MODEL runs "
        "are added)"
    )
    n_queries: int = knob(20_000, "queries per simulated run")
    fail_from: int = knob(5_000, "first query of the failure window (query index, sim)")
    fail_to: int = knob(10_000, "query after the failure window (query index, sim)")
    fail_accuracy: float = knob(0.0, "accuracy of the failing model during the window (0-1)")
    rate_qps: float = knob(250.0, "offered load, constant arrivals (queries/s)")
    slo_ms: float = knob(100.0, "latency objective of the application (ms)")
    feedback_delay_ms: float = knob(20.0, "delay from an answer to its label's feedback (ms)")
    real_queries: int = knob(2_000, "queries per application in real mode")
    real_compress: bool = knob(
        True, "real mode: scale learning rates and discounts by n_queries / real_queries "
        "(true/false)"
    )
    every: int = knob(100, "queries per point of the curves")


def default_config(quick: bool) -> Config:
    if quick:
        return Config(n_queries=6_000, fail_from=1_500, fail_to=3_000, real_queries=300,
                      every=50)
    return Config()


def _check(cfg: Config) -> None:
    check_mode(cfg.mode)
    check_models(cfg.models)
    if cfg.failing not in cfg.models:
        raise ValueError(f"failing={cfg.failing!r} must be one of models {cfg.models}")
    if not 0 <= cfg.fail_from < cfg.fail_to <= cfg.n_queries:
        raise ValueError("need 0 <= fail_from < fail_to <= n_queries")
    for p in cfg.policies:
        adaptive_params(p, ADAPTIVE)


def _all_policies(cfg: Config, scale: float = 1.0) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, engine policy, params) for every curve; ``scale`` multiplies learning rates
    and discounts (a stream ``scale`` times shorter, learnt at the same pace per query
    fraction)."""
    def scaled(params: dict[str, Any]) -> dict[str, Any]:
        out = dict(params)
        if "eta" in out:
            out["eta"] = out["eta"] * scale
        if "discount" in out:
            out["discount"] = min(out["discount"] * scale, 0.5)
        return out

    out = [(p, p, scaled(adaptive_params(p, ADAPTIVE))) for p in cfg.policies]
    out += [(f"static:{m}", "static", {"model": m}) for m in cfg.models]
    return out


def _rows(mode: str, label: str, policy: str, params: dict[str, Any], models: tuple[str, ...],
          correct: np.ndarray, fb: list[tuple[float, Any]], every: int,
          fail: tuple[int, int]) -> list[dict[str, Any]]:
    n = correct.size
    cum = cumulative_error(correct)
    w = (weights_over_time(policy, params, models, fb, every=1) if fb and
         policy != "static" else None)
    rows = []
    for end in range(every, n + 1, every):
        start = end - every
        r: dict[str, Any] = {
            "mode": mode, "policy": label, "queries": end,
            "cum_error": float(cum[end - 1]),
            "window_error": float(1.0 - correct[start:end].mean()),
            "phase": "before" if end <= fail[0] else ("during" if end <= fail[1] else "after"),
        }
        if w is not None and len(w):
            k = min(end, len(w)) - 1
            for m in models:
                r[f"p_{m}"] = float(w[m].iloc[k])
        rows.append(r)
    return rows


def _sim(cfg: Config, raw: list[pd.DataFrame]) -> list[dict[str, Any]]:
    zoo = load_zoo("digits-10", cfg.seed)
    paths = {m: zoo.paths[m] for m in cfg.models}
    wl = Workload(ConstantRate(cfg.rate_qps), n_queries=cfg.n_queries, inputs=zoo.inputs(),
                  feedback=FeedbackStream(1.0, cfg.feedback_delay_ms / 1e3))
    rows: list[dict[str, Any]] = []
    policies = list(_all_policies(cfg))
    for label, policy, params in track(policies, desc=f"{NAME} sim", unit="policy"):
        app = Application(name="digits", slo_s=cfg.slo_ms / 1e3, default_output=-1,
                          policy=policy, policy_params=params)
        dep = deployment([app], {"digits": cfg.models}, paths,
                         faults=[Degrade(cfg.failing, cfg.fail_from, cfg.fail_to,
                                         cfg.fail_accuracy)])
        res = Simulation(dep, wl, seed=cfg.seed).run()
        correct = res.queries["correct"].to_numpy(dtype=bool)
        raw.append(res.batches.assign(policy=label))
        rows += _rows("sim", label, policy, params, cfg.models, correct, list(res.feedback),
                      cfg.every, (cfg.fail_from, cfg.fail_to))
    return rows


def _real(cfg: Config) -> list[dict[str, Any]]:
    from .selection_real import deploy, real_server, run_streams

    zoo = load_zoo("digits-10", cfg.seed)
    n = cfg.real_queries
    lo = int(round(n * cfg.fail_from / cfg.n_queries))
    hi = int(round(n * cfg.fail_to / cfg.n_queries))
    rng = np.random.default_rng([cfg.seed, 8])
    idx = rng.integers(0, zoo.pool_y.size, n)
    xs, ys = zoo.pool_x[idx], zoo.pool_y[idx]
    curves = _all_policies(cfg, cfg.n_queries / n if cfg.real_compress else 1.0)
    # No prediction cache: a failing model is not a function of its input, and cached
    # answers would hide the failure (hits on good answers) and outlive it (hits on bad).
    with real_server(cache=False, seed=cfg.seed) as rig:
        flag = rig.tmp / "fail.flag"
        for m in cfg.models:
            model = zoo.models[m]
            if m == cfg.failing:
                model = Switchable(model, str(flag), 10, cfg.seed)
            deploy(rig.admin, m, model)
        apps = []
        for j, (_label, policy, params) in enumerate(curves):
            name = f"fig8-{j}"
            rig.admin.add_app(name, slo_ms=max(cfg.slo_ms, 1000.0), default_output=-1,
                              policy=policy, policy_params=params, input_shape=[64])
            rig.admin.link(name, list(cfg.models))
            apps.append(name)
        rig.admin.wait_ready(model=None, app=apps[0], timeout_s=120)

        def at(i: int) -> None:
            if i == lo:
                flag.touch()
            elif i == hi:
                flag.unlink(missing_ok=True)

        recs = run_streams(rig, apps, xs, ys, feedback=True, barrier_at=at)
    rows: list[dict[str, Any]] = []
    for (label, policy, params), app in zip(curves, apps, strict=True):
        rs = recs[app]
        correct = np.array([(not r["default"]) and r["output"] == r["label"] for r in rs])
        fb = [(float(r["i"]), _Applied(r.get("losses", {}))) for r in rs]
        rows += _rows("real", label, policy, params, cfg.models, correct, fb,
                      max(20, cfg.every * n // cfg.n_queries), (lo, hi))
    return rows


class _Applied:
    """The part of ``FeedbackApplied`` that ``weights_over_time`` reads."""

    def __init__(self, losses: dict[str, float]) -> None:
        self.losses = {k: float(v) for k, v in losses.items()}


def run(cfg: Config) -> Results:
    _check(cfg)
    return run_modes(cfg.mode, lambda raw: _sim(cfg, raw), lambda: _real(cfg))


_STYLE = {"exp3": ("#1f77b4", "-"), "exp4": ("#d62728", "-"),
          "exp3_discounted": ("#1f77b4", "--"), "exp4_discounted": ("#d62728", "--"),
          "epsilon_greedy": ("#2ca02c", "-"), "ucb1": ("#9467bd", "-")}


# One colour per model (tab10's second half, apart from the policies' colours): the model's
# line in the probability panels and its static policy's dotted line in the error panels.
_MODEL_COLORS = ("#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
# Policies that pick one model per step (probability 0 or 1) are drawn as the share of
# picks over this many points (``every`` queries each): the raw 0/1 line fills its panel.
ROLLING_POINTS = 10


def _model_color(models: list[str], model: str) -> str:
    return _MODEL_COLORS[models.index(model) % len(_MODEL_COLORS)] if model in models else "#999999"


def plot(results: Results, out_dir: Path) -> list[Path]:
    t = results.table
    files = []
    for mode, tm in t.groupby("mode", sort=False):
        models = [c[2:] for c in tm.columns if c.startswith("p_") and tm[c].notna().any()]
        adaptive = [p for p in tm["policy"].unique() if not str(p).startswith("static")]
        fig, axes = grid(2 + len(adaptive), 4, width_in=3.6, height_in=2.9)
        span = tm[tm["phase"] == "during"]["queries"]
        lo = int(span.min()) - int(tm["queries"].min()) if len(span) else None
        hi = int(span.max()) if len(span) else None
        for pol, g in tm.groupby("policy", sort=False):
            static = str(pol).startswith("static")
            if static:
                c, ls = _model_color(models, str(pol).partition(":")[2]), ":"
            else:
                c, ls = _STYLE.get(str(pol), ("#999999", "-"))
            lw = 1.0 if static else 1.6
            axes[0].plot(g["queries"], g["cum_error"], color=c, ls=ls, lw=lw, label=str(pol))
            axes[1].plot(g["queries"], g["window_error"], color=c, ls=ls, lw=lw * 0.7,
                         label=str(pol))
        for i, pol in enumerate(adaptive):
            ax = axes[2 + i]
            g = tm[tm["policy"] == pol]
            probs = g[[f"p_{m}" for m in models]]
            picks = bool(((probs == 0) | (probs == 1)).all().all())
            if picks:
                probs = probs.rolling(ROLLING_POINTS, min_periods=1).mean()
            for m in models:
                ax.plot(g["queries"], probs[f"p_{m}"], color=_model_color(models, m), lw=1.0,
                        label=m)
            what = (f"share of picks (mean of {ROLLING_POINTS} points)" if picks
                    else "selection probability")
            style_axis(ax, title=f"{pol}: {what}", xlabel="queries", ylabel="probability")
            ax.set_ylim(-0.02, 1.02)
        for ax in axes[:2 + len(adaptive)]:
            if lo is not None and hi is not None:
                ax.axvspan(lo, hi, color="#f4cccc", alpha=0.4, lw=0)
        style_axis(axes[0], title="cumulative error", xlabel="queries", ylabel="error rate")
        axes[0].set_ylim(0, min(0.5, float(tm["cum_error"].max()) * 1.1 + 0.01))
        style_axis(axes[1], title="error per window", xlabel="queries", ylabel="error rate")
        name = "fig8.png" if mode == "sim" else f"fig8-{mode}.png"
        files.append(save(fig, out_dir / name,
                          suptitle=f"Model failure ({mode}): the best model fails in the shaded "
                          "window", legend_axes=[axes[0]],
                          legend_title="error panels: one line per policy; probability panels: "
                          "one line per model, in its static policy's colour"))
    return files


def _phase_err(t: pd.DataFrame, mode: str, pol: str, phase: str) -> float:
    g = t[(t["mode"] == mode) & (t["policy"] == pol) & (t["phase"] == phase)]
    return float(g["window_error"].mean()) if len(g) else float("nan")


def _p(t: pd.DataFrame, mode: str, pol: str, phase: str, model: str) -> float:
    g = t[(t["mode"] == mode) & (t["policy"] == pol) & (t["phase"] == phase)]
    col = f"p_{model}"
    return float(g[col].iloc[-1]) if len(g) and col in g else float("nan")


def claims(results: Results, cfg: Config) -> list[Claim]:
    t = results.table
    out = []
    for mode in t["mode"].unique():
        stat = t[(t["mode"] == mode) & t["policy"].str.startswith("static")]
        final = stat.groupby("policy")["cum_error"].last()
        best_static = str(final.idxmin()) if len(final) else ""
        for pol in ("exp3", "exp4", "exp3_discounted", "exp4_discounted"):
            if pol not in set(t["policy"]):
                continue
            g = t[(t["mode"] == mode) & (t["policy"] == pol)]
            out.append(Claim(
                f"[{mode}] {pol}: final cumulative error vs best static ({best_static})",
                "Exp3/Exp4 end below every static choice",
                f"{g['cum_error'].iloc[-1] * 100:.1f}% vs {final.min() * 100:.1f}%"))
            out.append(Claim(
                f"[{mode}] {pol}: P({cfg.failing}) at the end of before / during / after",
                "weight moves away during the failure and back after it",
                " / ".join(f"{_p(t, mode, pol, ph, cfg.failing):.2f}"
                           for ph in ("before", "during", "after"))))
            out.append(Claim(
                f"[{mode}] {pol}: error before / during / after",
                "compensates quickly for the failure",
                " / ".join(f"{_phase_err(t, mode, pol, ph) * 100:.1f}%"
                           for ph in ("before", "during", "after"))))
    return out
