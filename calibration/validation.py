"""Validation: one workload through the real server and through the simulator, compared.

Theory of operation (``validate``):

1. Read the real deployment (``deploy.toml``: ``[[models]]``, ``[[applications]]``) and
   profile every model linked to the workload's application with
   ``clipperlab.calibration.profiler`` (its
   own container, over the RPC).
2. Build the simulated twin: the same ``Application`` and ``ModelSpec`` objects (parsed by
   ``clipperlab.real.server``'s own functions, so batching settings are identical), the measured
   profiles, the same replica counts, replicas behind a zero-latency link (the RPC is
   already inside the profiles).
3. Start the real server in its own process (cache off unless the workload is cacheable,
   as the paper salted its inputs), wait until the application is ready.
4. Calibration run at low load (``calib_qps``); then the capacity: unless given, the
   offered load ramps (x``ramp_step`` per ``ramp_s`` step) until fewer than 95% of the
   queries get a prediction within the SLO as the client saw it (a failing step runs
   twice before it counts), with one more step between the last good and the first bad
   rate; capacity is the best good throughput seen.  Every run records the server
   process's CPU time (less its idle CPU), its query and batch counts, the send times
   the generator achieved and the latency of each query from its send.
5. The twin is calibrated from those runs (the runs that met the SLO), never from the
   levels of step 6:
   - the frontend's event loop (``simulator.FrontendCPU``): CPU per query, per batch and
     per wake-up, fitted together (``fit_frontend``); uvloop's millisecond timers;
   - pauses (``fit_pauses``, ``tune_pause_rate``): late queries in the low-load runs give
     the pause durations; the rate, as a base plus a share proportional to the loop's
     busy time, makes the twin as late as the server in the runs up to 60% of capacity;
   - the containers' wake-up: the batch latency the engine saw at ``calib_qps`` (idle
     containers) over the twin's (``ModelDeployment.wake_s``);
   - ``overhead_s``: the real p50 minus the calibrated twin's at ``calib_qps``, what
     happens outside the loop (client, kernel), added to every answered query.
   The server's in-situ batch latency over the profile's (``batch_extra_s``,
   ``slowdown``) is reported beside them.
6. For each level (fraction of capacity) the workload's trace is re-timed to that rate
   (``n = rate x duration_s`` queries, arrival times scaled, so any arrival process keeps
   its shape) and run twice on the real server (``real``, ``real again``: the noise
   floor), then, with the send times the generator achieved in the first run, in the
   plain simulator (``sim``) and in the calibrated twin (``sim+frontend``).  Latency is
   measured from the send on both sides (the generator's own lag is kept apart).
7. Relative errors (sim - real) / real of throughput, mean, p50, p90, p99.  A fifth mode,
   ``sim+in-situ``, is a diagnostic, not a prediction: the calibrated twin with the
   profiles scaled by the batch latency the server saw *in that run* over the profile's.

All latency statistics come from ``clipperlab.report.latency.summarise`` for both modes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import multiprocessing as mp
import os
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipperlab.calibration.loadgen import run_load, summarise
from clipperlab.calibration.profiler import ProfileSpec, profile_model
from clipperlab.engine import ModelSpec
from clipperlab.report.latency import summarise as sim_summarise
from clipperlab.simulator import (
    AppDeployment,
    ConstantOutputs,
    Deployment,
    FrontendCPU,
    Host,
    LatencyProfile,
    Link,
    ModelDeployment,
    Simulation,
    save_profile,
)
from clipperlab.workloads import Trace, Workload

__all__ = [
    "METRICS",
    "Calibration",
    "ValidationError",
    "ValidationResult",
    "real_deployment",
    "retime",
    "sim_deployment",
    "validate",
]

METRICS = ("throughput_qps", "mean_ms", "p50_ms", "p90_ms", "p99_ms")
Log = Callable[[str], None]


class ValidationError(Exception):
    """The validation could not run; the message says why."""


@dataclass(frozen=True, slots=True)
class Calibration:
    """What the simulator is told about the frontend (see the module's steps 4-5)."""

    overhead_s: float = 0.0
    frontend_cost_s: float = 0.0  # server CPU per query at the last good ramp step
    capacity_qps: float = math.nan
    # the server's CPU fitted over the calibration and ramp runs: per query and per batch
    # (non-negative least squares); the twin's event loop (FrontendCPU) uses these
    query_cpu_s: float = 0.0
    batch_cpu_s: float = 0.0
    # what an event costs the loop on top when it finds it idle: wake_s x (1 -
    # exp(-idle / cold_after_s)), fitted to the CPU per query at low rates
    wake_s: float = 0.0
    cold_after_s: float = 1e-3
    # the server's pauses seen at low load (fit_pauses): Poisson rate, drawn durations
    pause_rate_hz: float = 0.0
    pauses_s: tuple[float, ...] = ()
    pause_rate_busy_hz: float = 0.0  # more pauses when the loop is busy (tune_pause_rate)
    timer_resolution_s: float = 1e-3  # uvloop rounds timer delays to the millisecond
    # a container's wake-up, as wake_s x (1 - exp(-idle / cold_after_s)) on its batches:
    # the in-situ batch latency over the twin's (fit_container_wake)
    replica_wake_s: float = 0.0
    replica_cold_after_s: float = 1e-3
    # reported, not used by the twin: in-situ batch latency at low load minus the profile's
    # (it includes waking idle processes and any delayed-batching wait) and their ratio
    batch_extra_s: float = 0.0
    slowdown: float = 1.0


@dataclass
class ValidationResult:
    table: pd.DataFrame  # one row per (level, mode)
    errors: pd.DataFrame  # one row per (level, mode != real): relative errors
    calibration: Calibration
    profiles: dict[str, LatencyProfile]
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- deployments


@dataclass(frozen=True)
class RealDeployment:
    path: Path
    apps: list[dict[str, Any]]
    models: list[dict[str, Any]]  # model paths made absolute
    max_queue: int


def real_deployment(
    path: str | Path, batching: Mapping[str, Any] | None = None
) -> RealDeployment:
    """Read ``deploy.toml`` (``ValidationError`` naming the file on error); model files are
    resolved against the file's directory; ``batching`` replaces every model's batching."""
    from clipperlab.real.config import ConfigError, load_config

    p = Path(path)
    try:
        cfg = load_config(p)
    except ConfigError as e:
        raise ValidationError(str(e)) from None
    if not cfg.applications or not cfg.models:
        raise ValidationError(f"{p}: needs at least one [[applications]] and one [[models]]")
    models = []
    for m in cfg.models:
        d = dict(m)
        mp_ = str(d.get("path", "") or "")
        if mp_ and not Path(mp_).is_absolute() and d.get("kind") in ("sklearn", "torch"):
            d["path"] = str((p.resolve().parent / mp_).resolve())
            if not Path(d["path"]).exists():
                raise ValidationError(f"{p}: model {d['name']!r}: file {mp_!r} does not exist")
        if batching is not None:
            d["batching"] = dict(batching)
        models.append(d)
    return RealDeployment(p, [dict(a) for a in cfg.applications], models, cfg.max_queue)


def _specs(
    dep: RealDeployment, app_name: str
) -> tuple[Any, list[tuple[ModelSpec, int, dict[str, Any]]]]:
    from clipperlab.real.server import app_from_dict, model_from_dict

    apps = {a["name"]: a for a in dep.apps}
    if app_name not in apps:
        raise ValidationError(
            f"{dep.path}: the workload's app {app_name!r} is not deployed; deployed: {list(apps)}"
        )
    try:
        app = app_from_dict(apps[app_name])
        linked = list(apps[app_name].get("models") or [])
        out = []
        for d in dep.models:
            if d["name"] in linked:
                spec, n = model_from_dict(d, dep.max_queue)
                out.append((spec, n, d))
    except (ValueError, KeyError) as e:
        raise ValidationError(f"{dep.path}: {e}") from None
    if not out:
        raise ValidationError(f"{dep.path}: application {app_name!r} links no deployed model")
    return app, out


def sim_deployment(
    dep: RealDeployment,
    app_name: str,
    profiles: Mapping[str, LatencyProfile],
    *,
    input_bytes: int,
    calibration: Calibration | None = None,
    scale: float = 1.0,
) -> Deployment:
    """The simulated twin of ``dep`` (module step 2; calibrated per step 6 when given)."""
    app, models = _specs(dep, app_name)
    wake, cold = ((calibration.replica_wake_s, calibration.replica_cold_after_s)
                  if calibration is not None else (0.0, 1e-3))
    mds = [
        ModelDeployment(spec=spec, profile=scaled(profiles[spec.name], scale), replicas=n,
                        outputs=ConstantOutputs(0), wake_s=wake, cold_after_s=cold)
        for spec, n, _ in models
    ]
    cpus = sum(n for _, n, _ in models) or 1
    host = Host("local", cpus=cpus, link=Link(bandwidth_bps=1e15, latency_s=0.0))
    fcpu = None
    if calibration is not None and (calibration.query_cpu_s > 0 or
                                    calibration.batch_cpu_s > 0):
        fcpu = frontend_cpu(calibration)
    return Deployment(
        apps=(AppDeployment(app, tuple(s.name for s, _, _ in models)),),
        models=tuple(mds),
        hosts=(host,),
        frontend_cpu=fcpu,
    )


def scaled(profile: LatencyProfile, factor: float) -> LatencyProfile:
    """``profile`` with every latency (and its fitted line) multiplied by ``factor``."""
    if factor == 1.0 or not math.isfinite(factor) or factor <= 0:
        return profile
    fit = profile.fit or (0.0, 0.0)
    return dataclasses.replace(
        profile,
        latency_s=tuple(tuple(v * factor for v in row) for row in profile.latency_s),
        fit=(fit[0] * factor, fit[1] * factor),
        tags={**profile.tags, "scaled": f"x{factor:.3f} (in-situ slowdown)"},
    )


def scrape(url: str) -> dict[str, float]:
    """Sums and counts of the server's query latency, batch latency and batch size
    histograms (``/metrics``), summed over labels."""
    names = ("clipperlab_query_latency_seconds", "clipperlab_batch_latency_seconds",
             "clipperlab_batch_size")
    out = dict.fromkeys((f"{n}_{k}" for n in names for k in ("sum", "count")), 0.0)
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {k: math.nan for k in out}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in out:
            with contextlib.suppress(ValueError, IndexError):
                out[name] += float(line.rsplit(" ", 1)[1])
    return out


def in_situ(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """What the server saw between two scrapes: mean query latency inside the server,
    mean batch latency and mean batch size."""
    def mean(n: str) -> float:
        c = after[f"{n}_count"] - before[f"{n}_count"]
        return (after[f"{n}_sum"] - before[f"{n}_sum"]) / c if c > 0 else math.nan

    def count(n: str) -> float:
        return after[f"{n}_count"] - before[f"{n}_count"]

    return {"server_mean_ms": mean("clipperlab_query_latency_seconds") * 1e3,
            "batch_mean_ms": mean("clipperlab_batch_latency_seconds") * 1e3,
            "batch_size_mean": mean("clipperlab_batch_size"),
            "queries": count("clipperlab_query_latency_seconds"),
            "batches": count("clipperlab_batch_size")}


def _profile_s(seen: Mapping[str, float], profiles: Mapping[str, LatencyProfile]) -> float:
    """The profiles' mean batch latency at the in-situ mean batch size (one model: its
    profile; several: their average; nan when the server saw no batch)."""
    b = seen.get("batch_size_mean", math.nan)
    if not math.isfinite(b) or not profiles:
        return math.nan
    size = max(int(round(b)), 1)
    return float(np.mean([p.mean_s(size) for p in profiles.values()]))


def _slowdown(seen: Mapping[str, float], profiles: Mapping[str, LatencyProfile]) -> float:
    """In-situ mean batch latency over the profile's mean at the in-situ mean batch size."""
    prof_s = _profile_s(seen, profiles)
    return seen["batch_mean_ms"] / 1e3 / prof_s if prof_s > 0 else math.nan


def _batch_extra_s(seen: Mapping[str, float], profiles: Mapping[str, LatencyProfile]) -> float:
    """In-situ mean batch latency minus the profile's mean at that size (>= 0, seconds)."""
    extra = seen.get("batch_mean_ms", math.nan) / 1e3 - _profile_s(seen, profiles)
    return extra if math.isfinite(extra) and extra > 0 else 0.0


# --------------------------------------------------------------------------- the server


def _serve_main(models: list[dict[str, Any]], apps: list[dict[str, Any]], store: str,
                cache: bool, ports_file: str) -> None:
    """Entry point of the server process (spawned)."""
    import asyncio
    import logging

    import uvloop

    from clipperlab.real.config import ServerConfig
    from clipperlab.real.server import Server, tune_gc

    logging.basicConfig(level=logging.WARNING)
    cfg = ServerConfig(query_port=0, admin_port=0, rpc_port=0, store=store, cache=cache)
    cfg.models = models
    cfg.applications = apps

    async def main() -> None:
        server = Server(cfg)
        ports = await server.start()
        tune_gc()
        Path(ports_file).write_text(json.dumps(ports))
        stop = asyncio.Event()
        import signal

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.stop(grace_s=2.0)

    uvloop.run(main())


class ServerProcess:
    """The real server in its own process, for one validation."""

    def __init__(self, dep: RealDeployment, cache: bool) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="clipperlab-validate-")
        ports_file = os.path.join(self.tmp.name, "ports.json")
        ctx = mp.get_context("spawn")
        self.proc = ctx.Process(
            target=_serve_main,
            args=(dep.models, dep.apps, os.path.join(self.tmp.name, "store"), cache, ports_file),
            daemon=True,
        )
        self.proc.start()
        until = time.monotonic() + 60
        while not (os.path.exists(ports_file) and os.path.getsize(ports_file)):
            if not self.proc.is_alive():
                raise ValidationError(f"the server exited with {self.proc.exitcode} at start")
            if time.monotonic() > until:
                raise ValidationError("the server did not start within 60 s")
            time.sleep(0.05)
        time.sleep(0.05)
        self.ports = json.loads(Path(ports_file).read_text())
        self.url = f"http://127.0.0.1:{self.ports['query']}"

    def wait_ready(self, app: str, timeout_s: float = 120.0) -> None:
        until = time.monotonic() + timeout_s
        while time.monotonic() < until:
            with contextlib.suppress(OSError), urllib.request.urlopen(
                f"{self.url}/v2/models/{app}/ready", timeout=2
            ):
                return
            time.sleep(0.1)
        raise ValidationError(f"application {app!r} was not ready within {timeout_s:.0f} s")

    def cpu_s(self) -> float:
        """User + system CPU seconds of the server process so far (not its containers)."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return math.nan

    def stop(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(15)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.tmp.cleanup()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- runs


def retime(workload: Workload, rate_qps: float, duration_s: float, seed: int) -> Trace:
    """The workload's trace with ``rate_qps x duration_s`` queries, its arrival times
    scaled so the mean rate is ``rate_qps`` (the arrival process keeps its shape)."""
    n = max(int(round(rate_qps * duration_s)), 2)
    wl = dataclasses.replace(workload, n_queries=n, duration_s=None)
    tr = wl.generate(seed)
    mean = float(tr.arrival_at[-1]) / len(tr) if tr.arrival_at[-1] > 0 else 1.0 / rate_qps
    scale = (1.0 / rate_qps) / mean
    return dataclasses.replace(tr, arrival_at=tr.arrival_at * scale)


def _real_run(srv: ServerProcess, trace: Trace, pool: np.ndarray, api: str,
              connections: int, idle_cpu: float = 0.0
              ) -> tuple[pd.DataFrame, float, dict[str, float]]:
    """The load run, the server's CPU seconds per query (less its idle CPU rate over the
    run's wall time) and what the server saw (``in_situ``)."""
    m0 = scrape(srv.url)
    c0, t0 = srv.cpu_s(), time.monotonic()
    table = run_load(trace, pool, srv.url, api=api, connections=connections, drain_s=5.0)
    cpu = srv.cpu_s() - c0 - idle_cpu * (time.monotonic() - t0)
    seen = in_situ(m0, scrape(srv.url))
    return table, max(cpu, 0.0) / max(len(trace), 1), seen


def fit_cpu(points: Sequence[tuple[float, float, float]]) -> tuple[float, float]:
    """Server CPU seconds = a x queries + b x batches over ``(queries, batches, cpu_s)``
    runs, by non-negative least squares; ``(a, b)``.  With one usable run (or runs of one
    batch size) it is all per query."""
    from scipy.optimize import nnls

    pts = [(q, b, c) for q, b, c in points if q > 0 and b > 0 and math.isfinite(c)]
    if not pts:
        return 0.0, 0.0
    A = np.array([[q, b] for q, b, _ in pts], dtype=np.float64)
    y = np.array([c for _, _, c in pts], dtype=np.float64)
    # rows weighted by 1/queries: each run counts as much as the others
    w = 1.0 / A[:, 0]
    sizes = A[:, 0] / A[:, 1]
    if len(pts) < 2 or sizes.max() < 1.5 * sizes.min():
        return float(y.sum() / A[:, 0].sum()), 0.0
    (a, b), _ = nnls(A * w[:, None], y * w)
    return float(a), float(b)


def _idle_cpu(srv: ServerProcess, seconds: float = 1.0) -> float:
    """The server's CPU seconds per second with no queries."""
    c0, t0 = srv.cpu_s(), time.monotonic()
    time.sleep(seconds)
    return max(srv.cpu_s() - c0, 0.0) / (time.monotonic() - t0)


def _sim_run(dep: Deployment, trace: Trace, seed: int, calib: Calibration | None = None
             ) -> tuple[dict[str, float], pd.DataFrame]:
    res = Simulation(dep, trace, seed=seed).run()
    q = res.queries
    if calib is not None and calib.overhead_s:
        # outside the loop (client, kernel): a constant per query, measured at low load
        q = q.copy()
        q["reply_at"] = q["reply_at"] + calib.overhead_s
        q["latency_s"] = q["latency_s"] + calib.overhead_s
    return sim_summarise(q, res.batches), q


def from_send(table: pd.DataFrame) -> pd.DataFrame:
    """A load run's table with every latency measured from the moment the generator sent
    the query (``sent_at``) instead of its scheduled time: the server's share, without the
    generator's own lateness (its millisecond timer; ``lag_s``)."""
    t = table.copy()
    sent = t["sent_at"].to_numpy()
    ok = np.isfinite(sent)
    t.loc[ok, "arrival_at"] = sent[ok]
    t["latency_s"] = t["reply_at"] - t["arrival_at"]
    return t


def sent_trace(trace: Trace, table: pd.DataFrame) -> Trace:
    """``trace`` with the arrival times the generator achieved (``sent_at``), so the
    simulator sees the same arrivals the server saw (trace-driven validation)."""
    sent = table["sent_at"].to_numpy(dtype=np.float64)
    at = np.where(np.isfinite(sent), sent, trace.arrival_at)
    return dataclasses.replace(trace, arrival_at=np.maximum.accumulate(at))


def frontend_cpu(calib: Calibration) -> FrontendCPU:
    """The twin's event loop from the fitted CPU costs: half of each on the way in (query,
    batch send), half on the way out (reply, batch result)."""
    return FrontendCPU(query_s=calib.query_cpu_s / 2, reply_s=calib.query_cpu_s / 2,
                       batch_send_s=calib.batch_cpu_s / 2, batch_done_s=calib.batch_cpu_s / 2,
                       wake_s=calib.wake_s, cold_after_s=calib.cold_after_s,
                       pause_rate_hz=calib.pause_rate_hz if calib.pauses_s else 0.0,
                       pause_rate_busy_hz=calib.pause_rate_busy_hz if calib.pauses_s else 0.0,
                       pauses_s=calib.pauses_s, timer_resolution_s=calib.timer_resolution_s)


@dataclass(frozen=True)
class CpuRun:
    """One real run as the CPU fit sees it."""

    trace: Trace  # with the arrival times the generator achieved
    queries: float
    batches: float
    cpu_s: float  # the server's, idle CPU subtracted
    latency_s: np.ndarray | None = None  # per query, from the send
    batch_ms: float = math.nan  # the engine's mean batch latency in the server

    @property
    def rate(self) -> float:
        span = float(self.trace.arrival_at[-1] - self.trace.arrival_at[0])
        return len(self.trace) / span if span > 0 else math.inf


def fit_pauses(runs: Sequence[CpuRun], capacity_qps: float, min_rate_qps: float = 400.0,
               min_pause_s: float = 1e-3, min_pauses: int = 5
               ) -> tuple[float, tuple[float, ...]]:
    """The server's pauses from runs at low load (``min_rate_qps`` to 30% of capacity),
    where queueing cannot explain a late reply: a query later than the run's median by
    more than ``max(min_pause_s, 4 x IQR)`` was held up by a pause; overlapping late
    queries are one pause, lasting from the first one's send to the latest moment one of
    them was held until (its reply less the median).  The rate counts each pause once,
    weighted by ``1 / (1 - exp(-rate x duration))`` for the pauses no query fell into.
    Returns ``(pause_rate_hz, durations)``."""
    total_s = weight = 0.0
    durations: list[float] = []
    for r in pause_runs(runs, capacity_qps, min_rate_qps):
        assert r.latency_s is not None
        sent = np.asarray(r.trace.arrival_at, dtype=np.float64)
        lat = np.asarray(r.latency_s, dtype=np.float64)
        ok = np.isfinite(lat)
        base = float(np.median(lat[ok]))
        late = np.flatnonzero(ok & (lat > base + late_margin(lat, min_pause_s)))
        total_s += float(sent[-1] - sent[0])
        start, end = -math.inf, -math.inf
        eps: list[float] = []
        for i in late:
            held = float(sent[i] + lat[i] - base)
            if sent[i] < end:
                end = max(end, held)
                continue
            if end > start:
                eps.append(end - start)
            start, end = float(sent[i]), held
        if end > start:
            eps.append(end - start)
        for d in eps:
            durations.append(d)
            weight += 1.0 / -math.expm1(-r.rate * d)
    if len(durations) < min_pauses or total_s <= 0:
        return 0.0, ()  # too few to tell a pause from a one-off
    return weight / total_s, tuple(sorted(durations))


def pause_runs(runs: Sequence[CpuRun], capacity_qps: float, min_rate_qps: float = 400.0,
               max_load: float = 0.3) -> list[CpuRun]:
    """The runs pauses are learnt from: ``min_rate_qps`` to ``max_load`` of capacity,
    with latencies of at least 100 queries."""
    return [r for r in runs if r.latency_s is not None
            and min_rate_qps <= r.rate <= max_load * capacity_qps
            and np.isfinite(r.latency_s).sum() >= 100]


def late_margin(lat: np.ndarray, min_pause_s: float = 1e-3) -> float:
    """How much later than the median a query must be to count as held by a pause."""
    ok = np.isfinite(lat)
    q1, q3 = np.percentile(lat[ok], [25, 75])
    return max(min_pause_s, 4.0 * float(q3 - q1))


def late_share(lat: np.ndarray, margin: float) -> float:
    ok = np.isfinite(lat)
    return float((lat[ok] > np.median(lat[ok]) + margin).mean()) if ok.any() else 0.0


def tune_pause_rate(runs: Sequence[CpuRun], twin: Callable[[Calibration], Deployment],
                    calib: Calibration, seed: int = 0, max_load: float = 0.6) -> Calibration:
    """The pause rate, as ``pause_rate_hz + pause_rate_busy_hz x`` the loop's busy share,
    such that the twin replaying the runs from 400 q/s to ``max_load`` of capacity has
    as many late queries (by each run's margin, ``late_margin``) as the real server had:
    a pause holds every query that reaches the loop during it, which the episode count
    alone does not pin down, and a busier server is preempted more.  Per run ``k`` the
    twin gives its late share without pauses ``q_k``, its busy share ``u_k``, and the
    late share added per pause per second ``s_k``; then ``real_k - q_k = s_k x (r0 +
    r1 x u_k)`` by non-negative least squares."""
    from scipy.optimize import nnls

    use = pause_runs(runs, calib.capacity_qps, max_load=max_load)
    if not use or not calib.pauses_s or calib.pause_rate_hz <= 0:
        return calib
    ref = calib.pause_rate_hz
    rows, target = [], []
    for r in use:
        lat = np.asarray(r.latency_s, dtype=np.float64)
        m = late_margin(lat)
        shares, busy = [], 0.0
        for rate in (0.0, ref):
            c = dataclasses.replace(calib, pause_rate_hz=rate, pause_rate_busy_hz=0.0)
            sim = Simulation(twin(c), r.trace, seed=seed)
            # (a constant overhead would shift the median too: it cannot change the share)
            shares.append(late_share(sim.run().queries["latency_s"].to_numpy(), m))
            if rate == 0.0:
                span = float(r.trace.arrival_at[-1] - r.trace.arrival_at[0]) or 1.0
                busy = min(sim.loop_busy_s / span, 1.0)
        per = max(shares[1] - shares[0], 0.0) / ref
        rows.append((per, per * busy))
        target.append(late_share(lat, m) - shares[0])
    A = np.asarray(rows, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    if not (A[:, 0] > 0).any():
        return calib
    (r0, r1), _ = nnls(A, y)
    return dataclasses.replace(calib, pause_rate_hz=float(r0), pause_rate_busy_hz=float(r1))


COLD_AFTER_GRID_S = (50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 20e-3)


def fit_frontend(runs: Sequence[CpuRun], twin: Callable[[Calibration], Deployment],
                 calib: Calibration, seed: int = 0) -> Calibration:
    """The event loop's costs from the server's CPU over ``runs`` (the calibration run
    and the capacity ramp's runs that met the SLO).  Per run ``k``, CPU per query =
    ``a + b x batches/queries + wake_s x u_k``, where ``u_k`` is the run's wake-ups per
    query (``1 - exp(-idle / cold_after_s)`` summed over the loop's events), counted by
    replaying the run in the twin with a negligible ``wake_s``:

    1. a first ``a``, ``b`` (``fit_cpu``) from the runs at a quarter of the fastest run's
       rate or more, where the loop rarely sleeps, to give the twin its dynamics;
    2. for each ``cold_after_s`` on a grid, ``u_k`` from the twin, then ``a``, ``b`` and
       ``wake_s`` together by non-negative least squares (each run weighted alike); the
       grid point with the smallest residual wins."""
    from scipy.optimize import nnls

    # CPU time is read in clock ticks (10 ms): a short run can read 0, which says nothing
    # about its cost per query and would divide by zero in the relative errors below.
    runs = [r for r in runs if r.queries > 0 and math.isfinite(r.cpu_s) and r.cpu_s > 0]
    if not runs:
        return calib
    rates = [r.rate for r in runs if math.isfinite(r.rate)]
    top = max(rates) if rates else 0.0
    warm = [r for r in runs if r.rate >= 0.25 * top]
    if len({round(r.queries / max(r.batches, 1), 1) for r in warm}) < 2:
        warm = list(runs)
    a, b = fit_cpu([(r.queries, r.batches, r.cpu_s) for r in warm])
    calib = dataclasses.replace(calib, query_cpu_s=a, batch_cpu_s=b, wake_s=0.0)
    y = np.array([r.cpu_s / r.queries for r in runs], dtype=np.float64)
    inv = np.array([r.batches / r.queries for r in runs], dtype=np.float64)
    tiny = 1e-12
    best: tuple[float, float, float, float, float] | None = None
    for tau in COLD_AFTER_GRID_S:
        dep = twin(dataclasses.replace(calib, wake_s=tiny, cold_after_s=tau))
        u = np.empty(len(runs))
        for k, r in enumerate(runs):
            sim = Simulation(dep, r.trace, seed=seed)
            sim.run()
            u[k] = sim.loop_wake_s / tiny / max(len(r.trace), 1)
        A = np.column_stack([np.ones(len(runs)), inv, u]) / y[:, None]  # relative errors
        coef, _ = nnls(A, np.ones(len(runs)))
        err = float(((A @ coef - 1.0) ** 2).sum())
        if best is None or err < best[0]:
            best = (err, float(coef[0]), float(coef[1]), float(coef[2]), tau)
    if best is None:
        return calib
    _, a, b, w, tau = best
    if a <= 0 and b <= 0:
        return calib
    return dataclasses.replace(calib, query_cpu_s=a, batch_cpu_s=b, wake_s=w,
                               cold_after_s=tau)


def _batch_mean_ms(metrics: Any) -> float:
    """Mean of the engine's batch latency histogram over all models (ms)."""
    total = count = 0.0
    for smp in metrics.samples():
        if smp.name == "clipperlab_batch_latency_seconds":
            total += smp.metric.sum
            count += smp.metric.count
    return total / count * 1e3 if count else math.nan


def fit_container_wake(runs: Sequence[CpuRun], twin: Callable[[Calibration], Deployment],
                       calib: Calibration, seed: int = 0) -> Calibration:
    """The containers' wake-up from the batch latency the server's engine saw in each run
    (``batch_ms``) over the twin's replaying it: for each cooling time on the grid the
    twin counts its wake-ups per batch (a negligible ``wake_s``), the least-squares
    ``wake_s`` scales them to the difference, and the best grid point wins (none when
    the twin is not faster than the server)."""
    use = [r for r in runs if math.isfinite(r.batch_ms)]
    if not use:
        return calib
    tiny = 1e-12
    best: tuple[float, float, float] | None = None
    for tau in COLD_AFTER_GRID_S:
        c = dataclasses.replace(calib, replica_wake_s=tiny, replica_cold_after_s=tau)
        dep = twin(c)
        diff, units = [], []
        for r in use:
            sim = Simulation(dep, r.trace, seed=seed)
            res = sim.run()
            nb = max(len(res.batches), 1)
            diff.append(r.batch_ms / 1e3 - _batch_mean_ms(res.metrics) / 1e3)
            units.append(sim.replica_wake_s / tiny / nb)
        d = np.asarray(diff)
        u = np.asarray(units)
        if not (u > 0).any():
            continue
        w = max(float(u @ d / (u @ u)), 0.0)
        err = float(((d - w * u) ** 2).sum())
        if best is None or err < best[0]:
            best = (err, w, tau)
    if best is None:
        return calib
    return dataclasses.replace(calib, replica_wake_s=best[1], replica_cold_after_s=best[2])


def good_share(table: pd.DataFrame, slo_s: float) -> float:
    """The share of a load run's queries answered with a prediction (not a default, not
    refused) within ``slo_s`` of their scheduled time, as the client saw it."""
    if not len(table):
        return 0.0
    st = table["status"].to_numpy()
    lat = table["latency_s"].to_numpy()
    ok = (st == 200) & ~table["default"].to_numpy() & (np.nan_to_num(lat, nan=np.inf) <= slo_s)
    return float(ok.mean())


def capacity_estimate(profiles: Mapping[str, LatencyProfile], replicas: Mapping[str, int],
                      max_batch: Mapping[str, int]) -> float:
    """What the profiles alone allow: the slowest model's best items/s over its measured
    batch sizes (up to its max batch size), times its replicas."""
    caps = []
    for name, prof in profiles.items():
        best = max(
            b / prof.mean_s(b) for b in prof.batch_sizes if b <= max_batch.get(name, 1 << 16)
        ) if prof.batch_sizes else 1.0
        caps.append(best * max(replicas.get(name, 1), 1))
    return min(caps)


def validate(
    deployment: str | Path,
    workload: Workload,
    *,
    levels: Sequence[float] = (0.3, 0.6, 0.9),
    duration_s: float = 5.0,
    capacity_qps: float | None = None,
    batching: Mapping[str, Any] | None = None,
    batch_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128),
    profile_repeats: int = 100,
    profile_max_s: float = 1.5,
    profiles: Mapping[str, LatencyProfile] | None = None,
    calib_qps: float = 50.0,
    calib_s: float = 3.0,
    ramp_s: float = 2.0,
    ramp_step: float = 1.4,
    ramp_start_qps: float = 100.0,
    api: str = "clipper",
    connections: int = 8,
    seed: int = 0,
    log: Log = print,
) -> ValidationResult:
    """Run the comparison described in the module docstring."""
    if not levels or any(not 0 < lv <= 2 for lv in levels):
        raise ValidationError(f"levels must be fractions of capacity in (0, 2], got {levels}")
    dep = real_deployment(deployment, batching)
    app, models = _specs(dep, workload.app)
    pool = np.asarray(workload.inputs.load()[0])
    itype = models[0][0].input_type
    profs: dict[str, LatencyProfile] = dict(profiles or {})
    for spec, _, d in models:
        if spec.name in profs:
            continue
        kind = str(d.get("kind", "noop"))
        path = str(d.get("path", "") or "")
        log(f"profiling {spec.name} ({kind}) ...")
        ps = ProfileSpec(
            model=f"{kind}:{path}" if path else kind, name=spec.name,
            input_type=spec.input_type, options=dict(d.get("options") or {}),
            inputs=workload.inputs, batch_sizes=tuple(batch_sizes), repeats=profile_repeats,
            max_s_per_size=profile_max_s, profile_name=f"profiled-{spec.name}",
        )
        profs[spec.name] = profile_model(ps, log=log)
    del itype
    notes: list[str] = []
    sim0 = sim_deployment(dep, workload.app, profs, input_bytes=workload.input_bytes)
    rows: list[dict[str, Any]] = []
    load0 = os.getloadavg()[0]
    cpu_runs: list[CpuRun] = []

    def real_run(tr: Trace, keep: bool = True) -> tuple[pd.DataFrame, float, dict[str, float]]:
        t, cpu_q, seen = _real_run(srv, tr, pool, api, connections, idle)
        if keep and seen.get("queries", 0.0) > 0 and seen.get("batches", 0.0) > 0:
            cpu_runs.append(CpuRun(sent_trace(tr, t), seen["queries"], seen["batches"],
                                   cpu_q * len(tr), from_send(t)["latency_s"].to_numpy(),
                                   seen.get("batch_mean_ms", math.nan)))
        return t, cpu_q, seen

    with ServerProcess(dep, cache=workload.cacheable) as srv:
        srv.wait_ready(workload.app)
        log(f"server up at {srv.url}; calibration at {calib_qps:g} q/s ...")
        # warm-up: let AIMD find its feet and the process warm its caches
        run_load(retime(workload, calib_qps, 1.0, seed + 99), pool, srv.url, api=api,
                 connections=connections)
        idle = _idle_cpu(srv)
        tr = retime(workload, calib_qps, calib_s, seed + 1)
        real_c, cpu_c, seen_c = real_run(tr)
        s_real_c = summarise(from_send(real_c))
        calib_trace = sent_trace(tr, real_c)
        log(f"  real p50 {s_real_c.get('p50_ms', math.nan):.3f} ms from the send; server CPU "
            f"{cpu_c * 1e6:.0f} us/query (idle {idle * 1e3:.1f} ms/s subtracted)")
        cost_s = cpu_c
        if capacity_qps is None:
            est = capacity_estimate(profs, {s.name: n for s, n, _ in models},
                                    {s.name: s.batching.max_batch_size for s, _, _ in models})
            rate = min(ramp_start_qps, 0.3 * est)
            best = 0.0
            log(f"capacity ramp (profiles alone allow {est:,.0f} q/s) ...")
            last_good, first_bad = 0.0, 0.0
            while rate < 50 * est:
                tr = retime(workload, rate, ramp_s, seed + 2)
                t, cpu_q, seen = real_run(tr, keep=False)
                s = summarise(t)
                good = good_share(t, app.slo_s)
                if good < 0.95 and last_good and not first_bad:
                    # confirm: one bad step can be noise (a pause of the machine)
                    t, cpu_q, seen = real_run(tr, keep=False)
                    s = summarise(t)
                    good = good_share(t, app.slo_s)
                if good >= 0.95 and seen.get("batches", 0.0) > 0:
                    # overloaded runs stay out: their CPU per query is not the loop's cost
                    cpu_runs.append(CpuRun(sent_trace(tr, t), seen["queries"],
                                           seen["batches"], cpu_q * len(tr),
                                           from_send(t)["latency_s"].to_numpy(),
                                           seen.get("batch_mean_ms", math.nan)))
                log(f"  offered {rate:>9,.0f} q/s -> good share {good:.3f}, throughput "
                    f"{s.get('throughput_qps', 0):,.0f} q/s, p99 {s.get('p99_ms', math.nan):.1f}"
                    f" ms, server CPU {cpu_q * 1e6:.0f} us/query at batch size "
                    f"{seen.get('batch_size_mean', math.nan):.1f}")
                if good < 0.95:
                    if first_bad or not last_good:
                        break
                    # one more step between the last good and the first bad rate
                    first_bad, rate = rate, math.sqrt(last_good * rate)
                    continue
                best = max(best, min(s.get("throughput_qps", 0.0), rate * good))
                cost_s = cpu_q
                last_good = rate
                if first_bad:
                    break
                rate *= ramp_step
            capacity_qps = best if best > 0 else rate
        linked = {s.name: profs[s.name] for s, _, _ in models}
        slow = _slowdown(seen_c, linked)
        extra_s = _batch_extra_s(seen_c, linked)
        calib = Calibration(frontend_cost_s=cost_s, capacity_qps=float(capacity_qps),
                            batch_extra_s=extra_s,
                            slowdown=slow if math.isfinite(slow) and slow > 1.0 else 1.0)

        def twin(c: Calibration) -> Deployment:
            return sim_deployment(dep, workload.app, profs, input_bytes=workload.input_bytes,
                                  calibration=c)

        calib = fit_frontend(cpu_runs, twin, calib, seed)
        rate_hz, pauses = fit_pauses(cpu_runs, float(capacity_qps))
        calib = dataclasses.replace(calib, pause_rate_hz=rate_hz, pauses_s=pauses)
        calib = tune_pause_rate(cpu_runs, twin, calib, seed)
        if pauses:
            log(f"  pauses at low load: {len(pauses)} seen ({rate_hz:.1f}/s), median "
                f"{np.median(pauses) * 1e3:.1f} ms, longest {max(pauses) * 1e3:.1f} ms; "
                f"{calib.pause_rate_hz:.1f}/s + {calib.pause_rate_busy_hz:.1f}/s x the loop's "
                f"busy share give the twin as many late queries")
        log("  runs for the CPU fit (q/s, batch size, server CPU us/query): " + ", ".join(
            f"{r.rate:,.0f} {r.queries / r.batches:.1f} {r.cpu_s / r.queries * 1e6:.0f}"
            for r in cpu_runs))
        log(f"  the server's CPU over {len(cpu_runs)} runs: {calib.query_cpu_s * 1e6:.1f} us "
            f"per query + {calib.batch_cpu_s * 1e6:.1f} us per batch + a wake-up "
            f"{calib.wake_s * 1e6:.1f} us x (1 - exp(-idle / "
            f"{calib.cold_after_s * 1e3:g} ms)) per event")
        log(f"  in the server at {calib_qps:g} q/s: batch latency {seen_c['batch_mean_ms']:.3f}"
            f" ms at mean size {seen_c['batch_size_mean']:.2f} (profile x{slow:.2f}, "
            f"+{extra_s * 1e3:.3f} ms per batch); query latency inside the server "
            f"{seen_c['server_mean_ms']:.3f} ms")
        # the containers' wake-up: the batch latency the server's engine saw over the
        # twin's, run by run
        calib = fit_container_wake(cpu_runs, twin, calib, seed)
        log(f"  container wake-up {calib.replica_wake_s * 1e3:.3f} ms x (1 - exp(-idle / "
            f"{calib.replica_cold_after_s * 1e3:g} ms)) per batch")
        sim1 = sim_deployment(dep, workload.app, profs, input_bytes=workload.input_bytes,
                              calibration=calib)
        # the fixed overhead: what the calibrated simulator still misses at low load
        s_sim_c, _ = _sim_run(sim1, calib_trace, seed)
        overhead_s = max((s_real_c.get("p50_ms", 0.0) - s_sim_c.get("p50_ms", 0.0)) / 1e3, 0.0)
        calib = dataclasses.replace(calib, overhead_s=overhead_s)
        log(f"  simulated p50 at {calib_qps:g} q/s {s_sim_c.get('p50_ms', math.nan):.3f} ms"
            f" -> fixed overhead {overhead_s * 1e3:.3f} ms/query")
        log(f"capacity {capacity_qps:,.0f} q/s; the event loop's own limit "
            f"{frontend_cpu(calib).capacity_qps(1.0):,.0f} q/s at batch size 1")
        for lv in levels:
            rate = lv * float(capacity_qps)
            tr = retime(workload, rate, duration_s, seed + 3)
            t, cpu_q, seen = real_run(tr, keep=False)
            s_sched = summarise(t)
            s_real = summarise(from_send(t))
            # the same trace once more: how far the real server is from itself
            t2, _, _ = real_run(tr, keep=False)
            s_again = summarise(from_send(t2))
            tr_sent = sent_trace(tr, t)
            s_sim, _ = _sim_run(sim0, tr_sent, seed)
            s_cal, _ = _sim_run(sim1, tr_sent, seed, calib)
            # diagnostic, not a prediction: the calibrated twin told this run's slowdown
            k = _slowdown(seen, profs)
            sim2 = sim_deployment(dep, workload.app, profs, input_bytes=workload.input_bytes,
                                  calibration=calib,
                                  scale=k if math.isfinite(k) else 1.0)
            s_ins, _ = _sim_run(sim2, tr_sent, seed, calib)
            la = os.getloadavg()[0]
            for mode, s in (("real", s_real), ("real again", s_again), ("sim", s_sim),
                            ("sim+frontend", s_cal), ("sim+in-situ", s_ins)):
                real = mode == "real"
                rows.append({"level": lv, "offered_qps": rate, "mode": mode,
                             **{k: s.get(k, math.nan) for k in (*METRICS, "default_rate")},
                             "server_cpu_us_per_query": cpu_q * 1e6 if real else math.nan,
                             "server_mean_ms": seen["server_mean_ms"] if real else math.nan,
                             "batch_mean_ms": seen["batch_mean_ms"] if real else math.nan,
                             "batch_size_mean": seen["batch_size_mean"] if real else s.get(
                                 "mean_batch_size", math.nan),
                             "slowdown": _slowdown(seen, profs) if real else math.nan,
                             "sched_p50_ms": s_sched.get("p50_ms", math.nan) if real else
                             math.nan,
                             "sched_p99_ms": s_sched.get("p99_ms", math.nan) if real else
                             math.nan,
                             "mean_lag_ms": s_sched.get("mean_lag_ms", math.nan) if real else
                             math.nan,
                             "load_avg": la})
            log(f"  level {lv:.0%} ({rate:,.0f} q/s): real p50/p99 "
                f"{s_real.get('p50_ms', math.nan):.2f}/{s_real.get('p99_ms', math.nan):.2f} ms, "
                f"sim+frontend {s_cal.get('p50_ms', math.nan):.2f}/"
                f"{s_cal.get('p99_ms', math.nan):.2f} ms (load avg {la:.2f})")
    notes.append(f"load average {load0:.2f} at the start, {os.getloadavg()[0]:.2f} at the end "
                 f"({os.cpu_count()} CPUs)")
    table = pd.DataFrame(rows)
    return ValidationResult(table, relative_errors(table), calib, profs, notes)


def relative_errors(table: pd.DataFrame) -> pd.DataFrame:
    """(sim - real) / real per level, metric and simulated mode."""
    out = []
    for lv, g in table.groupby("level", sort=True):
        real = g[g["mode"] == "real"].iloc[0]
        for _, r in g[g["mode"] != "real"].iterrows():
            row: dict[str, Any] = {"level": lv, "mode": r["mode"]}
            for m in METRICS:
                rv = float(real[m])
                row[f"{m}_err"] = (float(r[m]) - rv) / rv if rv else math.nan
            out.append(row)
    return pd.DataFrame(out)


def write_outputs(res: ValidationResult, out_dir: str | Path, title: str = "") -> list[Path]:
    """``validation.csv``, ``errors.csv``, ``profiles/*.json``, ``validation.png`` and
    ``summary.md`` (the table in markdown) under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "validation.csv", out / "errors.csv"]
    res.table.to_csv(files[0], index=False, float_format="%.6g")
    res.errors.to_csv(files[1], index=False, float_format="%.4f")
    for name, prof in res.profiles.items():
        files.append(save_profile(prof, out / "profiles" / f"{name}.json"))
    files.append(plot(res, out / "validation.png", title))
    (out / "summary.md").write_text(markdown(res, title) + "\n")
    files.append(out / "summary.md")
    return files


def format_table(res: ValidationResult) -> str:
    """Plain text: per level, the three modes' metrics and the errors."""
    lines = [f"{'level':>6} {'mode':<13}" + "".join(f"{m:>15}" for m in METRICS)]
    for _, r in res.table.iterrows():
        lines.append(f"{r['level']:>6.0%} {r['mode']:<13}"
                     + "".join(f"{r[m]:>15,.2f}" for m in METRICS))
        if r["mode"] != "real":
            e = res.errors[(res.errors["level"] == r["level"]) & (res.errors["mode"] == r["mode"])]
            if len(e):
                lines.append(f"{'':>6} {'  error':<13}" + "".join(
                    f"{e.iloc[0][m + '_err']:>+15.1%}" for m in METRICS))
    lines.append("calibration: " + describe(res.calibration))
    return "\n".join(lines)


def describe(c: Calibration) -> str:
    """The calibration in one line."""
    pauses = (f"pauses {c.pause_rate_hz:.1f}/s + {c.pause_rate_busy_hz:.1f}/s x busy share, "
              f"median {np.median(c.pauses_s) * 1e3:.1f} ms" if c.pauses_s else "no pauses")
    return (f"capacity {c.capacity_qps:,.0f} q/s; the frontend's loop: "
            f"{c.query_cpu_s * 1e6:.1f} us/query + {c.batch_cpu_s * 1e6:.1f} us/batch + wake-up "
            f"{c.wake_s * 1e6:.0f} us (cools in {c.cold_after_s * 1e3:g} ms), {pauses}; outside "
            f"the loop {c.overhead_s * 1e3:.3f} ms/query; container wake-up "
            f"{c.replica_wake_s * 1e3:.3f} ms (cools in {c.replica_cold_after_s * 1e3:g} ms); "
            f"in-situ batch latency at "
            f"low load +{c.batch_extra_s * 1e3:.3f} ms (x{c.slowdown:.2f}) over the profile")


def markdown(res: ValidationResult, title: str = "") -> str:
    lines = [f"## {title}" if title else "## validation", ""]
    lines.append("| load | mode | throughput q/s | mean ms | p50 ms | p90 ms | p99 ms |"
                 " err thr | err p50 | err p99 |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for _, r in res.table.iterrows():
        e = res.errors[(res.errors["level"] == r["level"]) & (res.errors["mode"] == r["mode"])]
        errs = (["", "", ""] if not len(e) else
                [f"{e.iloc[0][k]:+.0%}" for k in ("throughput_qps_err", "p50_ms_err",
                                                   "p99_ms_err")])
        lines.append(f"| {r['level']:.0%} | {r['mode']} | {r['throughput_qps']:,.0f} | "
                     f"{r['mean_ms']:.2f} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | " + " | ".join(errs) + " |")
    lines += ["", "Calibration: " + describe(res.calibration) + ". " + " ".join(res.notes)]
    return "\n".join(lines)


def plot(res: ValidationResult, path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    t = res.table
    styles = {"real": ("k", "-", "o"), "real again": ("0.6", "-", "o"),
              "sim": ("C1", ":", "x"), "sim+frontend": ("C0", "--", "s"),
              "sim+in-situ": ("C2", "-.", "^")}
    for mode, (color, ls, mk) in styles.items():
        g = t[t["mode"] == mode]
        if not len(g):
            continue
        axes[0].plot(g["offered_qps"], g["throughput_qps"], color=color, ls=ls, marker=mk,
                     label=mode)
        for m, alpha in (("p50_ms", 0.6), ("p99_ms", 1.0)):
            axes[1].plot(g["offered_qps"], g[m], color=color, ls=ls, marker=mk, alpha=alpha,
                         label=f"{mode} {m[:3]}")
    axes[0].set_xlabel("offered load (q/s)")
    axes[0].set_ylabel("throughput (q/s)")
    axes[1].set_xlabel("offered load (q/s)")
    axes[1].set_ylabel("latency (ms)")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.suptitle(title or "real vs simulated")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
