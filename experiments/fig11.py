"""Against a TensorFlow-Serving-style server and Ray Serve (paper figure 11): peak throughput
and p99 latency of three torch models of increasing cost on this machine's CPU.

Models (``clipperlab.calibration.torch_models``, nothing downloaded): a digits CNN on 1x8x8 inputs
(trained
on scikit-learn's digits for a few seconds), a CIFAR-sized CNN on 3x32x32, and a network
of ResNet-18's shape at a quarter of its width on 3x224x224 (random weights), each saved as
TorchScript and served by one single-threaded replica.  Systems:

- ``clipperlab-aimd``: AIMD batching and the selection layer (Exp3 over the one model);
- ``clipperlab-tfserving``: clipperlab configured like TensorFlow Serving: static batches
  of ``tfs_max_batch_size`` or whatever is queued when the oldest query has waited
  ``tfs_timeout_ms`` (``BatchingConfig(policy="tfserving")``), static selection;
- ``rayserve`` (real mode only): Ray Serve with ``@serve.batch(max_batch_size,
  batch_wait_timeout_s)`` on the same TorchScript file, one replica, one torch thread;
  skipped with a note when ``ray[serve]`` is not importable.

Modes: ``sim`` runs the simulator with latency profiles measured over the container RPC
by ``clipperlab profile`` at the start of the run; ``sim+frontend`` (when both modes run)
is the calibrated twin (``clipperlab.calibration.twin.sim_deployment``) told two things
the real run measured at its peak: the server process's CPU per query (the frontend's
event loop, ``FrontendCPU``, half on the way in and half on the way out) and the load
generator's (it runs in this process); the frontend, the container (its profile's draws
as CPU) and the generator then share this machine's cores (``HostCPU``), as they do for
real; ``real`` runs
the real server (its own process) with the open-loop load generator (``clipperlab
load``: Poisson arrivals, binary OIP requests, latency from the scheduled send time).

Peak throughput: the offered load ramps (x``ramp_step`` per ``step_s`` step, then one
step between the last good and the first bad rate; a failing step runs twice before it
counts; when the first step already fails, the rate goes down by ``ramp_step`` squared,
up to four times) until fewer than
``good_share`` of the queries get a non-default answer within the SLO; the peak is the
good throughput of the best passing step, and the p99 is that step's (every query's
latency, defaults included).  ``max_answered_qps`` is the most non-default answers per
second any step got, whatever their latency (how much a server does without an SLO).
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipperlab.report.progress import track

from .config import knob
from .framework import Claim, Results

NAME = "fig11"
TITLE = "clipperlab vs a TF-Serving-style configuration and Ray Serve: peak throughput, p99"
SYSTEMS = ("clipperlab-aimd", "clipperlab-tfserving", "rayserve")
MODES = ("sim", "real")


@dataclass(frozen=True, kw_only=True)
class Config:
    seed: int = knob(0, "random seed of the workload and the simulation (>= 0)")
    models: tuple[str, ...] = knob(
        ("digits-cnn", "cifar-cnn", "resnet18-w16"), "torch models "
        "(calibration.torch_models), joined with '+'"
    )
    slo_ms: tuple[float, ...] = knob(
        (20.0, 50.0, 500.0), "latency objective per model, joined with '+', one per model (ms)"
    )
    systems: tuple[str, ...] = knob(
        SYSTEMS, "systems to compare: clipperlab-aimd, clipperlab-tfserving, rayserve"
    )
    modes: tuple[str, ...] = knob(MODES, "where to run: sim and/or real, joined with '+'")
    tfs_max_batch_size: int = knob(32, "clipperlab-tfserving's static batch size (queries)")
    tfs_timeout_ms: float = knob(2.0, "clipperlab-tfserving's batch timeout (ms)")
    ray_max_batch_size: int = knob(32, "Ray Serve's @serve.batch max_batch_size (queries)")
    ray_wait_ms: float = knob(2.0, "Ray Serve's batch_wait_timeout (ms)")
    batch_sizes: tuple[int, ...] = knob(
        (1, 2, 4, 8, 16, 32, 64), "batch sizes profiled for the simulator, joined with '+'"
    )
    profile_repeats: int = knob(60, "batches timed per batch size when profiling")
    profile_max_s: float = knob(1.0, "profiling time per batch size at most (s)")
    step_s: float = knob(2.0, "duration of each load step of the ramp (s)")
    ramp_step: float = knob(1.5, "factor between successive offered loads of the ramp")
    start_qps: float = knob(50.0, "offered load of the first step (queries/s)")
    # 18: from start_qps 50 at x1.5 the last step offers 50 x 1.5^17, about 49,000 q/s (14,
    # to 9,731, ended the digits CNN's real ramp before saturation once the real path got lean)
    max_steps: int = knob(18, "load steps at most per run")
    good_share: float = knob(
        0.95, "share of queries answered within the objective for a step to pass (0-1)"
    )
    connections: int = knob(8, "keep-alive connections of the load generator")


def default_config(quick: bool) -> Config:
    if quick:
        return Config(models=("digits-cnn",), slo_ms=(20.0,), modes=("sim",),
                      batch_sizes=(1, 4, 16), profile_repeats=20, step_s=1.0)
    return Config()


def check_config(cfg: Config) -> None:
    from clipperlab.calibration.torch_models import TORCH_MODELS

    for m in cfg.models:
        if m not in TORCH_MODELS:
            raise ValueError(f"models: {m!r} is unknown; known: {sorted(TORCH_MODELS)}")
    if len(cfg.slo_ms) != len(cfg.models):
        raise ValueError(f"slo_ms needs one value per model ({len(cfg.models)}), got "
                         f"{len(cfg.slo_ms)}")
    for s in cfg.systems:
        if s not in SYSTEMS:
            raise ValueError(f"systems: {s!r} is unknown; known: {SYSTEMS}")
    for m in cfg.modes:
        if m not in MODES:
            raise ValueError(f"modes: {m!r} is unknown; known: {MODES}")
    if cfg.ramp_step <= 1 or cfg.step_s <= 0 or not 0 < cfg.good_share <= 1:
        raise ValueError("ramp_step must be > 1, step_s > 0, good_share in (0, 1]")


# ------------------------------------------------------------------ deployments


def _batching(cfg: Config, system: str) -> dict[str, Any]:
    if system == "clipperlab-tfserving":
        return {"policy": "tfserving", "max_batch_size": cfg.tfs_max_batch_size,
                "wait_timeout_s": cfg.tfs_timeout_ms / 1e3}
    return {"policy": "aimd"}


def _app_dict(model: str, slo_ms: float, system: str) -> dict[str, Any]:
    return {"name": model, "slo_ms": slo_ms, "default_output": -1, "input_type": "floats",
            "policy": "exp3" if system == "clipperlab-aimd" else "static", "models": [model]}


def _model_dict(model: str, path: Path, batching: dict[str, Any]) -> dict[str, Any]:
    return {"name": model, "kind": "torch", "path": str(path), "input_type": "floats",
            "options": {"output": "argmax"}, "batching": batching, "replicas": 1}


def _pool(model: str) -> np.ndarray:
    from clipperlab.calibration.torch_models import TORCH_MODELS, digits_images
    from clipperlab.workloads import SyntheticTensors

    if model == "digits-cnn":
        return digits_images()[0]
    shape = TORCH_MODELS[model].input_shape
    return np.asarray(SyntheticTensors(shape=shape, dtype="float32", pool=32).load()[0])


def _workload(model: str, rate: float, n: int) -> Any:
    from clipperlab.calibration.torch_models import TORCH_MODELS
    from clipperlab.workloads import Poisson, SyntheticTensors, Workload

    shape = TORCH_MODELS[model].input_shape
    return Workload(Poisson(rate), n_queries=n, app=model,
                    inputs=SyntheticTensors(shape=shape, dtype="float32", pool=32))


def _step_stats(table: pd.DataFrame, slo_s: float, duration_s: float) -> dict[str, float]:
    """A ramp step: the good share and rate (answered, not a default, within the SLO), the
    rate of non-default answers at any latency, and p50/p99 over every answered query
    (refusals included)."""
    from clipperlab.report.latency import pct

    lat = table["latency_s"].to_numpy()
    ok = np.isfinite(lat) & ~table["default"].to_numpy(dtype=bool) & ~table[
        "refused"].to_numpy(dtype=bool)
    good = ok & (lat <= slo_s)
    answered = lat[np.isfinite(lat)]
    n = len(table)
    return {
        "good_share": float(good.sum()) / n if n else 0.0,
        "good_qps": float(good.sum()) / duration_s,
        "answered_qps": float(ok.sum()) / duration_s,
        "p50_ms": pct(answered, 50) * 1e3,
        "p99_ms": pct(answered, 99) * 1e3,
    }


def _ramp(run_step: Any, start: float, cfg: Config) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Ramp per the module rules; ``run_step(rate) -> stats``."""
    steps: list[dict[str, Any]] = []
    rate = start
    last_good: dict[str, Any] | None = None
    first_bad: float | None = None
    downs = 0
    for _ in range(cfg.max_steps):
        st = {"offered_qps": rate, **run_step(rate)}
        steps.append(st)
        if st["good_share"] < cfg.good_share and last_good is not None:
            st = {"offered_qps": rate, **run_step(rate)}  # confirm: one bad step can be noise
            steps.append(st)
        if st["good_share"] < cfg.good_share:
            if last_good is None and downs < 4 and rate > 2.0:
                downs += 1  # even the first step is too much: go down before giving up
                rate /= cfg.ramp_step ** 2
                continue
            first_bad = rate
            break
        last_good = st
        rate *= cfg.ramp_step
    if last_good is not None and first_bad is not None:
        mid = math.sqrt(last_good["offered_qps"] * first_bad)
        st = {"offered_qps": mid, **run_step(mid)}
        steps.append(st)
        if st["good_share"] >= cfg.good_share:
            last_good = st
    if last_good is None:
        best = max(steps, key=lambda s: s["good_qps"])
        return {**best, "note": "no step met the good share"}, steps
    return {**last_good, "note": "" if first_bad else "ramp ended before saturation"}, steps


# ------------------------------------------------------------------ modes


def _sim_peak(cfg: Config, model: str, slo_ms: float, system: str, profile: Any,
              est: float, measured: tuple[float, float] | None = None
              ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ramp in the simulator; ``measured``: (the server's, the load generator's) CPU
    seconds per query at the real run's peak, for the calibrated twin (``sim+frontend``)."""
    from clipperlab.simulator import Simulation

    dep = (_twin(cfg, model, slo_ms, system, profile, *measured) if measured
           else _plain(cfg, model, slo_ms, system, profile))

    def step(rate: float) -> dict[str, float]:
        n = max(int(rate * cfg.step_s * 2), 20)  # twice the step: the first half warms up
        res = Simulation(dep, _workload(model, rate, n), seed=cfg.seed).run()
        q = res.queries
        half = q[q["arrival_at"] >= q["arrival_at"].iloc[-1] / 2]
        return _step_stats(half, slo_ms / 1e3, float(half["arrival_at"].iloc[-1]
                                                     - half["arrival_at"].iloc[0]) or 1.0)

    return _ramp(step, max(0.3 * est, 1.0), cfg)


def _plain(cfg: Config, model: str, slo_ms: float, system: str, profile: Any) -> Any:
    """The model alone (``sim``): its profile behind a frontend that costs nothing."""
    from clipperlab.engine import Application, BatchingConfig, ModelSpec
    from clipperlab.simulator import (
        AppDeployment,
        ConstantOutputs,
        Deployment,
        Host,
        Link,
        ModelDeployment,
    )

    app = _app_dict(model, slo_ms, system)
    return Deployment(
        apps=(AppDeployment(Application(name=model, slo_s=slo_ms / 1e3, default_output=-1,
                                        input_type="floats", policy=app["policy"]),
                            (model,)),),
        models=(ModelDeployment(
            spec=ModelSpec(name=model, input_type="floats",
                           batching=BatchingConfig.from_dict(_batching(cfg, system))),
            profile=profile, replicas=1, outputs=ConstantOutputs(0)),),
        hosts=(Host("local", cpus=1, link=Link(bandwidth_bps=1e15, latency_s=0.0)),),
    )


def _twin(cfg: Config, model: str, slo_ms: float, system: str, profile: Any,
          server_s: float, loadgen_s: float) -> Any:
    """The calibrated twin of the real run's deployment (``twin.sim_deployment``): the
    frontend's event loop at ``server_s`` CPU seconds a query, the load generator at
    ``loadgen_s``, and the container's profile draws sharing ``os.cpu_count()`` cores."""
    from clipperlab.calibration.fit import Calibration
    from clipperlab.calibration.server import RealDeployment
    from clipperlab.calibration.twin import sim_deployment

    dep = RealDeployment(Path("fig11"), [_app_dict(model, slo_ms, system)],
                         [_model_dict(model, Path(f"{model}.pt"), _batching(cfg, system))],
                         10_000)
    calib = Calibration(frontend_cost_s=server_s, query_cpu_s=server_s,
                        host_cpus=os.cpu_count() or 1, loadgen_cpu_per_query_s=loadgen_s)
    return sim_deployment(dep, model, {model: profile}, calibration=calib)


def _real_step(url: str, model: str, pool: np.ndarray, slo_ms: float, cfg: Config,
               rate: float) -> dict[str, float]:
    """One step of the real ramp: its stats, and the load generator's CPU per query
    (``loadgen_cpu_us``: this process's, which runs it)."""
    from clipperlab.calibration.loadgen import run_load

    n = max(int(rate * cfg.step_s), 10)
    tr = _workload(model, rate, n).generate(cfg.seed)
    c0 = time.process_time()
    t = run_load(tr, pool, url, api="oip", connections=cfg.connections,
                 drain_s=max(2.0, 4 * slo_ms / 1e3))
    lg = (time.process_time() - c0) / n * 1e6
    return {**_step_stats(t, slo_ms / 1e3, float(tr.arrival_at[-1])), "loadgen_cpu_us": lg}


def _real_clipperlab(cfg: Config, model: str, path: Path, slo_ms: float, system: str,
                     est: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from clipperlab.calibration.server import RealDeployment, ServerProcess

    dep = RealDeployment(Path("fig11"), [_app_dict(model, slo_ms, system)],
                         [_model_dict(model, path, _batching(cfg, system))], 10_000)
    pool = _pool(model)
    with ServerProcess(dep, cache=False) as srv:
        srv.wait_ready(model)
        _real_step(srv.url, model, pool, slo_ms, cfg, min(cfg.start_qps, 0.3 * est))  # warm

        def step(rate: float) -> dict[str, float]:
            c0 = srv.cpu_s()
            st = _real_step(srv.url, model, pool, slo_ms, cfg, rate)
            st["server_cpu_us"] = (srv.cpu_s() - c0) / max(int(rate * cfg.step_s), 10) * 1e6
            return st

        return _ramp(step, min(cfg.start_qps, 0.3 * est), cfg)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _real_ray(cfg: Config, model: str, path: Path, slo_ms: float, est: float,
              tmp: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    port = _free_port()
    ready = tmp / f"ray-{model}.ready"
    log = open(tmp / f"ray-{model}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "clipperlab.calibration.rayserve",
         "--model", str(path), "--name", model,
         "--port", str(port), "--max-batch-size", str(cfg.ray_max_batch_size),
         "--batch-wait-s", str(cfg.ray_wait_ms / 1e3), "--ready-file", str(ready)],
        stdout=log, stderr=log, start_new_session=True,
    )
    try:
        until = time.monotonic() + 180
        while not (ready.exists() and ready.read_text()):
            if proc.poll() is not None or time.monotonic() > until:
                raise RuntimeError(f"Ray Serve did not start (see {log.name})")
            time.sleep(0.5)
        url = f"http://127.0.0.1:{port}"
        pool = _pool(model)
        _real_step(url, model, pool, slo_ms, cfg, min(cfg.start_qps, 0.3 * est))  # warm
        return _ramp(lambda r: _real_step(url, model, pool, slo_ms, cfg, r),
                     min(cfg.start_qps, 0.3 * est), cfg)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait(5)
        log.close()


# ------------------------------------------------------------------ run


def run(cfg: Config) -> Results:
    check_config(cfg)
    from clipperlab.calibration.profiler import ProfileSpec, profile_model
    from clipperlab.calibration.rayserve import available
    from clipperlab.calibration.torch_models import TORCH_MODELS, save_torch
    from clipperlab.calibration.twin import capacity_estimate
    from clipperlab.workloads import SyntheticTensors

    rows: list[dict[str, Any]] = []
    steps_all: list[dict[str, Any]] = []
    notes: list[str] = []
    want_ray = "rayserve" in cfg.systems and "real" in cfg.modes
    ray_ok, why = available() if want_ray else (False, "")
    if want_ray and not ray_ok:
        notes.append(f"Ray Serve skipped: not importable here ({why}); "
                     "`pip install 'ray[serve]'` adds it")
    notes.append(f"load average at the start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
    with tempfile.TemporaryDirectory(prefix="clipperlab-fig11-") as d:
        tmp = Path(d)
        pairs = list(zip(cfg.models, cfg.slo_ms, strict=True))
        for model, slo_ms in track(pairs, desc=NAME, unit="model"):
            path = save_torch(model, tmp, cfg.seed)
            shape = TORCH_MODELS[model].input_shape
            prof = profile_model(ProfileSpec(
                model=f"torch:{path}", name=model, input_type="floats",
                options={"output": "argmax"},
                inputs=SyntheticTensors(shape=shape, dtype="float32", pool=64),
                batch_sizes=cfg.batch_sizes, repeats=cfg.profile_repeats,
                max_s_per_size=cfg.profile_max_s, profile_name=f"fig11-{model}",
            ))
            est = capacity_estimate({model: prof}, {model: 1}, {model: 1 << 16})
            notes.append(
                f"{model}: profile p50 at batch 1 {prof.quantile_s(1, 0.5) * 1e3:.2f} ms, at "
                f"{prof.batch_sizes[-1]} {prof.quantile_s(prof.batch_sizes[-1], 0.5) * 1e3:.2f}"
                f" ms; the profile alone allows {est:,.0f} q/s ({prof.tags['hardware']})")
            cost_s: dict[str, tuple[float, float]] = {}  # system -> (server, generator)
            runs = [(m, s) for m in ("real", "sim", "sim+frontend") for s in cfg.systems
                    if (m in cfg.modes or (m == "sim+frontend" and "sim" in cfg.modes
                                           and "real" in cfg.modes))
                    and not (s == "rayserve" and (m != "real" or not ray_ok))]
            for mode, system in runs:
                t0 = time.perf_counter()
                if mode == "sim+frontend":
                    if system not in cost_s:
                        continue
                    peak, steps = _sim_peak(cfg, model, slo_ms, system, prof, est,
                                            cost_s[system])
                elif mode == "sim":
                    peak, steps = _sim_peak(cfg, model, slo_ms, system, prof, est)
                elif system == "rayserve":
                    peak, steps = _real_ray(cfg, model, path, slo_ms, est, tmp)
                else:
                    peak, steps = _real_clipperlab(cfg, model, path, slo_ms, system, est)
                    if math.isfinite(peak.get("server_cpu_us", math.nan)):
                        cost_s[system] = (peak["server_cpu_us"] / 1e6,
                                          peak.get("loadgen_cpu_us", 0.0) / 1e6)
                rows.append({"model": model, "mode": mode, "system": system,
                             "slo_ms": slo_ms, "peak_qps": peak["good_qps"],
                             "offered_qps": peak["offered_qps"],
                             "good_share": peak["good_share"], "p50_ms": peak["p50_ms"],
                             "p99_ms": peak["p99_ms"], "steps": len(steps),
                             "server_cpu_us": peak.get("server_cpu_us", math.nan),
                             "loadgen_cpu_us": peak.get("loadgen_cpu_us", math.nan),
                             "max_answered_qps": max(st["answered_qps"] for st in steps),
                             "load_avg": os.getloadavg()[0],
                             "wall_s": time.perf_counter() - t0, "note": peak["note"]})
                for s in steps:
                    steps_all.append({"model": model, "mode": mode, "system": system, **s})
                print(f"fig11: {model} {mode} {system}: peak {peak['good_qps']:,.0f} q/s,"
                      f" p99 {peak['p99_ms']:.1f} ms", flush=True)
    notes.append(f"load average at the end: {os.getloadavg()[0]:.2f}")
    return Results(table=pd.DataFrame(rows), raw={"steps": pd.DataFrame(steps_all)},
                   notes=notes)


def plot(results: Results, out_dir: Path) -> list[Path]:
    from clipperlab.report.plots import grid, save, style_axis

    t = results.table
    models = list(dict.fromkeys(t["model"]))
    fig, axes = grid(2 * len(models), len(models), width_in=4.2, height_in=3.2)
    colors = {"clipperlab-aimd": "#1f77b4", "clipperlab-tfserving": "#2ca02c",
              "rayserve": "#d62728"}
    # Points, not bars: a bar's length means nothing on the log axis of p99.  One column per
    # system; the mode is the marker (filled: the real server), a line joins a system's modes.
    markers = {"real": ("o", True), "sim": ("s", False), "sim+frontend": ("^", False)}
    systems = [s for s in SYSTEMS if (t["system"] == s).any()]
    modes = [m for m in markers if (t["mode"] == m).any()]
    short = {"clipperlab-aimd": "AIMD", "clipperlab-tfserving": "TF-Serving", "rayserve": "Ray"}
    for i, model in enumerate(models):
        g = t[t["model"] == model]
        for row, (col, ylabel) in enumerate((("peak_qps", "peak throughput (q/s)"),
                                             ("p99_ms", "p99 at peak (ms)"))):
            ax = axes[row * len(models) + i]
            for k, s in enumerate(systems):
                xs, ys = [], []
                for j, m in enumerate(modes):
                    v = g[(g["system"] == s) & (g["mode"] == m)][col]
                    if not len(v):
                        continue
                    x = k + (j - (len(modes) - 1) / 2) * 0.18
                    mk, filled = markers[m]
                    ax.plot(x, float(v.iloc[0]), ls="none", marker=mk, ms=7, color=colors[s],
                            mfc=colors[s] if filled else "white", mew=1.5,
                            label=f"{short.get(s, s)}, {m}")
                    xs.append(x)
                    ys.append(float(v.iloc[0]))
                ax.plot(xs, ys, color=colors[s], lw=0.8, alpha=0.6)
            ax.set_xticks(range(len(systems)))
            ax.set_xticklabels([short.get(s, s) for s in systems], fontsize=8)
            ax.set_xlim(-0.6, len(systems) - 0.4)
            if col == "p99_ms":
                ax.set_yscale("log")
            else:
                ax.set_ylim(bottom=0)
            style_axis(ax, title=model if row == 0 else "", ylabel=ylabel)
    return [save(fig, out_dir / "fig11.png", suptitle=TITLE, legend_axes=axes,
                 legend_title="colour: system; marker: where it ran (filled: the real server)")]


def claims(results: Results, cfg: Config) -> list[Claim]:
    t = results.table
    out: list[Claim] = []

    def get(model: str, mode: str, system: str) -> pd.Series | None:
        g = t[(t["model"] == model) & (t["mode"] == mode) & (t["system"] == system)]
        return g.iloc[0] if len(g) else None

    if len(cfg.models):
        cheap = cfg.models[0]
        a, r = get(cheap, "real", "clipperlab-aimd"), get(cheap, "real", "rayserve")
        if a is not None and r is not None and r["peak_qps"] > 0:
            out.append(Claim(
                f"{cheap}, real: clipperlab (AIMD) vs Ray Serve peak throughput (p99)",
                "goal: >= 10x Ray Serve at equal or lower p99",
                f"{a['peak_qps']:,.0f} vs {r['peak_qps']:,.0f} q/s = "
                f"{a['peak_qps'] / r['peak_qps']:.1f}x (p99 {a['p99_ms']:.1f} vs "
                f"{r['p99_ms']:.1f} ms); answered at any latency: "
                f"{a.get('max_answered_qps', math.nan):,.0f} vs "
                f"{r.get('max_answered_qps', math.nan):,.0f} q/s"))
        elif a is not None:
            out.append(Claim(f"{cheap}, real: clipperlab vs Ray Serve",
                             "goal: >= 10x Ray Serve", "Ray Serve not run (see notes)"))
        costly = cfg.models[-1]
        for mode in cfg.modes:
            a, s = get(costly, mode, "clipperlab-aimd"), get(costly, mode, "clipperlab-tfserving")
            if a is not None and s is not None and s["peak_qps"] > 0:
                out.append(Claim(
                    f"{costly}, {mode}: AIMD vs TF-Serving-style static batching, peak",
                    "goal: within 10% of the static-batching configuration",
                    f"{a['peak_qps']:,.0f} vs {s['peak_qps']:,.0f} q/s "
                    f"({a['peak_qps'] / s['peak_qps'] - 1:+.0%}); p99 {a['p99_ms']:.0f} vs "
                    f"{s['p99_ms']:.0f} ms"))
    for system in ("clipperlab-aimd", "clipperlab-tfserving"):
        for smode in ("sim", "sim+frontend"):
            errs = []
            for model in cfg.models:
                s, r = get(model, smode, system), get(model, "real", system)
                if s is not None and r is not None and r["peak_qps"] > 0:
                    errs.append(f"{model} {s['peak_qps'] / r['peak_qps'] - 1:+.0%}")
            if errs:
                out.append(Claim(f"{system}: {smode} vs real peak throughput",
                                 "the simulator predicts the real system", ", ".join(errs)))
    return out
