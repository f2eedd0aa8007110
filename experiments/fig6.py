"""Ensembles and confidence (paper figures 6 and 7): the error of each model alone against
their ensemble, and the error of confident answers (all or nearly all members agree)
against unsure ones, as the confidence threshold moves.

Setup: five different zoo models on ten digits (``clipperlab.workloads.zoo``: logistic regression,
RBF SVM, random forest, k-nearest neighbours, a small torch CNN; held-out pool, no model
saw its queries).  ``static:MODEL`` applications give each model alone; one Exp4
application without feedback is the ensemble (equal weights: a majority vote), its
confidence the share of members that agree with the answer.  For each threshold the
application answers below it with its default output, flagged ``low_confidence``; the
confident share is the share not so flagged, and the unsure answers' error is read from
the threshold-0 run of the same seed (same outputs).

Modes: ``sim`` replays recorded predictions in the simulator; ``real`` deploys the five
models as real containers (four scikit-learn, one torch) behind the real server, sends
``real_queries`` queries to each application, and reads each answer's ``confidence``
(thresholds applied to the replied confidence: the same rule the engine applies).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipperlab.engine import Application
from clipperlab.report.plots import grid, save, style_axis
from clipperlab.simulator import Simulation
from clipperlab.workloads import ConstantRate, Workload
from clipperlab.workloads.zoo import load_zoo

from .config import knob
from .framework import Claim, Results
from .selection_common import check_mode, check_models, deployment, run_modes

NAME = "fig6"
TITLE = "Ensembles and confidence: single models vs the ensemble, confident vs unsure answers"


@dataclass(frozen=True, kw_only=True)
class Config:
    seed: int = knob(0, "random seed of the workload and the simulation (>= 0)")
    mode: str = knob("sim", "where to run: sim (simulator), real (real server, loopback), both")
    task: str = knob("digits-10", "data set: digits-10 or digits-binary-3")
    models: tuple[str, ...] = knob(
        ("logreg", "rbf_svm", "random_forest", "knn", "torch_cnn"), "zoo models of the "
        "ensemble, joined with '+'"
    )
    thresholds: tuple[float, ...] = knob(
        (0.4, 0.6, 0.8, 1.0), "confidence thresholds, joined with '+' (share of members, 0-1)"
    )
    n_queries: int = knob(20_000, "queries per simulated run")
    rate_qps: float = knob(250.0, "offered load, constant arrivals (queries/s)")
    slo_ms: float = knob(100.0, "latency objective of the application (ms)")
    real_queries: int = knob(1_000, "queries per application in real mode")


def default_config(quick: bool) -> Config:
    if quick:
        return Config(n_queries=4_000, thresholds=(0.6, 1.0), real_queries=200)
    return Config()


def _metrics(out: np.ndarray, default: np.ndarray, label: np.ndarray,
             base_out: np.ndarray) -> dict[str, float]:
    conf = ~default
    unsure = default
    return {
        "share_confident": float(conf.mean()),
        "error_confident": float((out[conf] != label[conf]).mean()) if conf.any() else np.nan,
        "error_unsure": float((base_out[unsure] != label[unsure]).mean())
        if unsure.any() else np.nan,
    }


def _sim(cfg: Config, raw: list[pd.DataFrame]) -> list[dict[str, Any]]:
    zoo = load_zoo(cfg.task, cfg.seed)
    paths = {m: zoo.paths[m] for m in cfg.models}
    wl = Workload(ConstantRate(cfg.rate_qps), n_queries=cfg.n_queries, inputs=zoo.inputs())
    rows: list[dict[str, Any]] = []

    def sim(policy: str, params: dict[str, Any], threshold: float) -> pd.DataFrame:
        app = Application(name="digits", slo_s=cfg.slo_ms / 1e3, default_output=-1,
                          policy=policy, policy_params=params, confidence_threshold=threshold)
        res = Simulation(deployment([app], {"digits": cfg.models}, paths), wl,
                         seed=cfg.seed).run()
        raw.append(res.batches.assign(policy=policy, threshold=threshold))
        return res.queries

    for m in cfg.models:
        q = sim("static", {"model": m}, 0.0)
        rows.append({"mode": "sim", "kind": "single", "name": m, "threshold": 0.0,
                     "error": float(1 - q["correct"].mean()), "share_confident": 1.0})
    base = sim("exp4", {}, 0.0)
    label = base["label"].to_numpy()
    base_out = np.asarray(base["output"].tolist())
    rows.append({"mode": "sim", "kind": "ensemble", "name": "ensemble", "threshold": 0.0,
                 "error": float(1 - base["correct"].mean()), "share_confident": 1.0})
    for th in cfg.thresholds:
        q = sim("exp4", {}, th)
        default = (q["default_reason"] == "low_confidence").to_numpy(dtype=bool)
        out = np.asarray(q["output"].tolist())
        rows.append({"mode": "sim", "kind": "threshold", "name": f"ensemble>={th:g}",
                     "threshold": th, "error": float(1 - base["correct"].mean()),
                     **_metrics(out, default, label, base_out)})
    return rows


def _real(cfg: Config) -> list[dict[str, Any]]:
    from .selection_real import deploy, real_server, run_streams

    zoo = load_zoo(cfg.task, cfg.seed)
    rng = np.random.default_rng([cfg.seed, 6])
    idx = rng.integers(0, zoo.pool_y.size, cfg.real_queries)
    xs, ys = zoo.pool_x[idx], zoo.pool_y[idx]
    rows: list[dict[str, Any]] = []
    with real_server(seed=cfg.seed) as rig:
        for m in cfg.models:
            deploy(rig.admin, m, zoo.models[m])
        apps = {}
        for m in cfg.models:
            apps[f"fig6-{m}"] = ("static", {"model": m})
        apps["fig6-ensemble"] = ("exp4", {})
        for name, (pol, params) in apps.items():
            rig.admin.add_app(name, slo_ms=max(cfg.slo_ms, 1000.0), default_output=-1,
                              policy=pol, policy_params=params, input_shape=[64])
            rig.admin.link(name, list(cfg.models))
        rig.admin.wait_ready(app="fig6-ensemble", timeout_s=120)
        recs = run_streams(rig, list(apps), xs, ys, feedback=False)
    for m in cfg.models:
        rs = recs[f"fig6-{m}"]
        err = float(np.mean([r["default"] or r["output"] != r["label"] for r in rs]))
        rows.append({"mode": "real", "kind": "single", "name": m, "threshold": 0.0,
                     "error": err, "share_confident": 1.0})
    rs = recs["fig6-ensemble"]
    out = np.array([r["output"] if not r["default"] else -1 for r in rs])
    conf = np.array([r["confidence"] for r in rs])
    err = float((out != ys).mean())
    rows.append({"mode": "real", "kind": "ensemble", "name": "ensemble", "threshold": 0.0,
                 "error": err, "share_confident": 1.0})
    for th in cfg.thresholds:
        default = conf < th - 1e-9
        rows.append({"mode": "real", "kind": "threshold", "name": f"ensemble>={th:g}",
                     "threshold": th, "error": err, **_metrics(out, default, ys, out)})
    return rows


def run(cfg: Config) -> Results:
    check_mode(cfg.mode)
    check_models(cfg.models)
    if cfg.task not in ("digits-10", "digits-binary-3"):
        raise ValueError(f"task must be digits-10 or digits-binary-3, got {cfg.task!r}")
    if any(not 0 <= t <= 1 for t in cfg.thresholds):
        raise ValueError(f"thresholds must be in [0, 1], got {cfg.thresholds}")
    return run_modes(cfg.mode, lambda raw: _sim(cfg, raw), lambda: _real(cfg))


def plot(results: Results, out_dir: Path) -> list[Path]:
    t = results.table
    modes = list(t["mode"].unique())
    fig, axes = grid(3, 3, width_in=4.0, height_in=3.2)
    width = 0.8 / max(1, len(modes))
    for k, mode in enumerate(modes):
        tm = t[t["mode"] == mode]
        bars = tm[tm["kind"].isin(["single", "ensemble"])]
        x = np.arange(len(bars))
        axes[0].bar(x + k * width, bars["error"] * 100, width, label=mode)
        axes[0].set_xticks(x + width * (len(modes) - 1) / 2,
                           [str(n) for n in bars["name"]], rotation=40, ha="right")
        th = tm[tm["kind"] == "threshold"]
        xt = np.arange(len(th))
        axes[1].bar(xt + k * 2 * width / 2 - width / 2, th["error_confident"] * 100,
                    width / 2, label=f"{mode} confident")
        axes[1].bar(xt + k * 2 * width / 2, th["error_unsure"] * 100, width / 2,
                    label=f"{mode} unsure")
        axes[1].set_xticks(xt, [f">= {v:g}" for v in th["threshold"]])
        axes[2].plot(th["threshold"], th["share_confident"] * 100, marker="o",
                     label=f"{mode}: share confident")
        axes[2].plot(th["threshold"], th["error_confident"] * 100, marker="s", ls="--",
                     label=f"{mode}: error of confident")
    style_axis(axes[0], title="error: each model alone vs the ensemble", ylabel="% wrong")
    style_axis(axes[1], title="error of confident vs unsure answers",
               xlabel="confidence threshold (share of members agreeing)", ylabel="% wrong")
    style_axis(axes[2], title="threshold: share answered confidently, its error",
               xlabel="confidence threshold", ylabel="%")
    return [save(fig, out_dir / "fig6.png", suptitle="Ensembles and confidence (digits, "
                 "5 models)", legend_axes=axes)]


def claims(results: Results, cfg: Config) -> list[Claim]:
    t = results.table
    out = []
    for mode in t["mode"].unique():
        tm = t[t["mode"] == mode]
        single = tm[tm["kind"] == "single"]
        ens = tm[tm["kind"] == "ensemble"]["error"].iloc[0]
        best = single.loc[single["error"].idxmin()]
        out.append(Claim(f"[{mode}] ensemble error vs best single model ({best['name']})",
                         "the ensemble is more accurate than any single model",
                         f"{ens * 100:.2f}% vs {best['error'] * 100:.2f}%"))
        for th in (0.8, 1.0):
            r = tm[(tm["kind"] == "threshold") & np.isclose(tm["threshold"], th)]
            if len(r):
                r0 = r.iloc[0]
                out.append(Claim(
                    f"[{mode}] threshold {th:g}: share confident; error confident vs unsure",
                    "confident answers are far more accurate than unsure ones",
                    f"{r0['share_confident'] * 100:.1f}%; {r0['error_confident'] * 100:.2f}% "
                    f"vs {r0['error_unsure'] * 100:.1f}%"))
    return out
