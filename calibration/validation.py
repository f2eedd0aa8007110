"""Validation: one workload through the real server and through the simulator, compared.

This module is the procedure only; each job has its own module:
``server`` (the real deployment and the server process), ``scrape`` (what the server saw,
from ``/metrics``), ``runs`` (one run on each side), ``twin`` (the simulated deployment),
``fit`` (the calibration's fits) and ``outputs`` (errors, tables, figure, files).

Theory of operation (``validate``, one function per step):

0. The machine is sampled (``quiet.guard`` with ``busy``: warn, refuse or off): the
   1-minute load average and the CPU share of other processes; the sample goes into the
   result (``summary.md``) and, per level, into the table (``other_cpu_share``,
   ``load_avg``).
1. ``profile``: read the real deployment (``deploy.toml``: ``[[models]]``,
   ``[[applications]]``) and profile every model linked to the workload's application
   with ``clipperlab.calibration.profiler`` (its own container, over the RPC).
2. The simulated twin (``twin.sim_deployment``): the same ``Application`` and
   ``ModelSpec`` objects (parsed by ``clipperlab.real.server``'s own functions, so
   batching settings are identical), the measured profiles, the same replica counts,
   replicas behind a zero-latency link (the RPC is already inside the profiles).
3. ``warm_up``: the real server in its own process (cache off unless the workload is
   cacheable, as the paper salted its inputs), ready, warmed, its idle CPU measured.
4. ``calibrate_at_low_load`` (``calib_qps``); then ``ramp_to_capacity`` unless the
   capacity is given (``capacity.ramp``, the procedure the twin's prediction runs too):
   the offered load ramps (x``ramp_step`` per ``ramp_s`` step) until fewer than 95% of the
   queries get a prediction within the SLO as the client saw it (a failing step runs twice
   before it counts), then bisects between the last good and the first bad rate to within
   ``ramp_resolution``; capacity is the best good throughput seen.  The ramp runs
   ``ramps`` times (its own trace each; the later ones start at ``ramp_restart`` of the
   first one's capacity): the capacity is their median, with a bootstrap interval over
   them.  With ``ramps_after`` (``--ramps-after``), the last ones run after step 6's real
   runs, whose rates the ones before set; the twins are then fitted and run after them, so
   the calibration's runs (and the speed fitted over them, ``SpeedMonitor.fit_spans``)
   come from both sides of the levels: a machine whose tail drifts over minutes (run 19's
   no-op model: p99 8.5-12.5 ms in the ramps, 2.3-3.8 ms in the levels minutes later) is
   seen by the calibration as by the levels. Every run records the server process's CPU
   time (less its idle CPU), its containers' CPU time per model (less theirs), the
   generator's own CPU time, the server's query and batch counts (per model too), the send
   times the generator achieved and the latency of each query from its send.
5. ``calibrate_twin`` from those runs (the runs that met the SLO; the ramp's steps that
   missed it count for the loop's and the containers' CPU only: their large batches
   pin the cost per query that sets the capacity, which the small batches of the steps
   below it leave to extrapolation), never from the levels of step 6; two twins,
   ``sim+frontend`` and, with ``host_cpu`` (the default, ``--host-cpu``), ``sim+host``,
   the prediction:
   - the frontend's event loop (``simulator.FrontendCPU``): CPU per query, per batch and
     per wake-up, fitted together (``fit_frontend``); uvloop's millisecond timers;
   - ``sim+host`` only, the host CPU model (``simulator.HostCPU`` on ``os.cpu_count()``
     cores): each container's CPU per batch and per item (``fit_container_cpu``), the
     generator's CPU per query (``fit_loadgen_cpu``); with the probe, every kept run's
     CPU times are first divided by the machine's mean speed factor while it went
     (``fit.at_fast_speed``; ``CpuRun.speed_factor``) and the loop refitted on them, so
     the demands are the fast speed's (``reference_factor`` 1) and runs at different
     speeds fit one demand instead of scattering around it; and, with ``speed`` (the default),
     the machine's two speeds while steps 3-4 ran (``quiet.SpeedMonitor`` probes it from
     step 3 to the end; ``quiet.fit_speed``; ``HostCPU.slow_factor``, ``slow_share``,
     ``slow_dwell_s``), so that the twin's host is slow when and as long as this one
     was; the levels' own speed is recorded beside it (``res.speed_levels``), and each
     level's twin runs at the speed the probe saw during that level's real runs (step 6);
   - per twin, what it still misses (``fit_unexplained``), so that contention the host
     CPU model explains is not fitted as pauses (with ``replay_speed``, ``sim+host``'s
     fits replay each run at the speed the probes recorded while it went,
     ``fit.as_run``, as its levels are, so a slow stretch is not fitted as a pause):
   - pauses (``fit_pauses``, ``tune_pause_rate``): late queries in the low-load runs give
     the pause durations; the rate, as a base plus a share proportional to the loop's
     busy time, makes the twin as late as the server in the runs up to 60% of capacity;
   - the containers' wake-up: the batch latency the engine saw at ``calib_qps`` (idle
     containers) over the twin's (``ModelDeployment.wake_s``);
   - ``overhead_s``: the real p50 less the calibrated twin's, the median over the runs
     up to 60% of capacity (``fit_overhead``), what happens outside the loop (client,
     kernel), added to every answered query.
   The server's in-situ batch latency over the profile's (``batch_extra_s``,
   ``slowdown``) is reported beside them.  The loop's costs and the pause rates get
   90% bootstrap intervals over the runs (``intervals``: the equations of the fit
   resampled, the cooling time held at its fitted value).
6. ``run_levels`` (``measure_level``, then ``predict_level``): for each level (fraction of
   capacity; the machine sampled first, its other processes' CPU share only: the load
   average now holds our own server) the workload's trace is re-timed to that rate (``n =
   rate x duration_s`` queries, arrival times scaled, so any arrival process keeps its
   shape) and run ``2 x repeats`` times on the real server, alternately ``real`` and
   ``real again`` (the noise floor), then, with the send times the generator achieved in
   each ``real`` run, in the plain simulator (``sim``) and in the calibrated twins
   (``sim+frontend``, ``sim+host``); every metric of a mode is the median over its runs.
   Latency is measured from the send on both sides (the generator's own lag is kept
   apart).  With ``replay_speed`` (the default, with ``speed``) the probes run one per
   core, and ``sim+host`` replays each real run at the speed they recorded while it went
   (``SpeedMonitor.replay``, ``twin.at_trace``: the slow stretches where and as long as
   they were, as the send times are replayed; the level's two speeds otherwise,
   ``twin.at_speed``; the rows count the replayed runs in ``speed_replayed_runs``).
   ``predict_capacities``: the prediction's capacity for the workload and SLO, the real
   ramp's own procedure run on the twin (``capacity.ramp`` through
   ``capacity.twin_capacities``: same steps, same confirmation, median of ``repeats``
   ramps), each twin ramp at the two speeds the probe saw while the real ramp of the same
   number went, beside the measured one, and slower all through by that ramp's fast
   level over the calibration's (``twin.base_factor``: a ramp's own fit reads a stretch
   the whole machine ran slower through as fast; run 35 predicted 25,100-25,700 q/s for
   four ramps where the server passed 23,000 on two and 16,000-17,700 on the other two).
8. What the calibration was fitted on is kept in the result (``runs``, ``low_run``,
   ``low_seen``, ``calib_qps``) so a run can be re-simulated and refitted later
   (``clipperlab.calibration.resimulate``).
7. ``compare``: relative errors (sim - real) / real of throughput, mean, p50, p90, p99.
   One more mode, ``sim+in-situ``, is a diagnostic, not a prediction: the prediction's
   twin with the profiles scaled by the batch latency the server saw *in the first run*
   over the profile's.

All latency statistics come from ``clipperlab.report.latency.summarise`` for both modes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipperlab.calibration.capacity import (
    GOOD_SHARE,
    RAMP_RESOLUTION,
    RAMP_RESTART,
    RAMP_S,
    RAMP_START_QPS,
    RAMP_STEP,
    RAMPS,
    RampResult,
    ramp,
    ramp_start,
    ramp_trace_seed,
    twin_capacities,
)
from clipperlab.calibration.fit import (
    GENERATOR_GAP_S,
    Calibration,
    CpuRun,
    at_fast_speed,
    fit_container_cpu,
    fit_container_wake,
    fit_frontend_on_host,
    fit_frontend_rows,
    fit_loadgen,
    fit_overhead,
    fit_pauses,
    frontend_intervals,
    pause_rate_intervals,
    pause_rate_rows,
)
from clipperlab.calibration.intervals import Interval, bootstrap
from clipperlab.calibration.loadgen import run_load
from clipperlab.calibration.outputs import METRICS, ValidationResult, relative_errors
from clipperlab.calibration.profiler import ProfileSpec, profile_model
from clipperlab.calibration.quiet import (
    BUSY_POLICIES,
    STALL_SECONDS,
    HostSpeed,
    HostStalls,
    LoadSample,
    SpeedMonitor,
    guard,
    host_stalls,
    kernel_slice_s,
    kernel_tick_s,
    probe_cpus,
    replay_mean,
)
from clipperlab.calibration.runs import (
    RealRun,
    from_send,
    good_share,
    loadgen_idle_rate,
    real_run,
    retime,
    sent_trace,
    sim_run,
)
from clipperlab.calibration.scrape import batch_extra_s, defaults_note, slowdown
from clipperlab.calibration.server import (
    RealDeployment,
    ServerProcess,
    ValidationError,
    idle_container_cpu_rate,
    idle_cpu_rate,
    model_specs,
    real_deployment,
)
from clipperlab.calibration.twin import (
    at_speed,
    at_trace,
    base_factor,
    capacity_estimate,
    frontend_cpu,
    sim_deployment,
    speed_fields,
)
from clipperlab.engine import Application, ModelSpec
from clipperlab.report.latency import pct, summarise
from clipperlab.simulator import Deployment, LatencyProfile
from clipperlab.simulator.parallel import pmap
from clipperlab.workloads import Trace, Workload

__all__ = ["ValidationError", "ValidationResult", "validate"]

Log = Callable[[str], None]
LEVEL_S = 10.0  # seconds per level run (4 s moved p99 by a median of 19-30% run to run)
REPEATS = 3  # runs per level and mode (medians), and capacity ramps (median)
# the calibrated twins' runs per real run of a level, each with its own seed (medians over
# all): one long pause drawn or not moves a 5-s run's p99 by up to x4 (run 17, the logistic
# regression with AIMD at 30%: 2.6-13.5 ms over ten seeds, median 3.5, the server 3.7)
TWIN_DRAWS = 5
SETTLE_S = 90.0  # with --busy refuse: how long to wait for a busy machine to quiet down


def validate(
    deployment: str | Path,
    workload: Workload,
    *,
    levels: Sequence[float] = (0.3, 0.6, 0.9),
    duration_s: float = LEVEL_S,
    repeats: int = REPEATS,
    busy: str = "warn",
    capacity_qps: float | None = None,
    batching: Mapping[str, Any] | None = None,
    batch_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128),
    profile_repeats: int = 100,
    profile_max_s: float = 1.5,
    profiles: Mapping[str, LatencyProfile] | None = None,
    calib_qps: float = 50.0,
    calib_s: float = 3.0,
    ramp_s: float = RAMP_S,
    ramp_step: float = RAMP_STEP,
    ramp_start_qps: float = RAMP_START_QPS,
    ramps: int = RAMPS,
    ramp_resolution: float = RAMP_RESOLUTION,
    ramp_restart: float = RAMP_RESTART,
    api: str = "clipper",
    connections: int = 8,
    seed: int = 0,
    host_cpu: bool = True,
    speed: bool = True,
    replay_speed: bool = True,
    twin_draws: int = TWIN_DRAWS,
    ramps_after: int = 0,
    stalls_s: float = STALL_SECONDS,
    loop_sleeps: bool = True,
    jobs: int = 1,
    log: Log = print,
) -> ValidationResult:
    """Run the comparison described in the module docstring, step by step."""
    if not levels or any(not 0 < lv <= 2 for lv in levels):
        raise ValidationError(f"levels must be fractions of capacity in (0, 2], got {levels}")
    if repeats < 1:
        raise ValidationError(f"repeats must be an integer >= 1, got {repeats}")
    if ramps < 1:
        raise ValidationError(f"ramps must be an integer >= 1, got {ramps}")
    if twin_draws < 1:
        raise ValidationError(f"twin_draws must be an integer >= 1, got {twin_draws}")
    if jobs < 0:
        raise ValidationError(f"jobs must be an integer >= 0 (0: one per CPU), got {jobs}")
    if not 0 <= ramps_after < ramps:
        raise ValidationError(f"ramps_after must be an integer in [0, ramps - 1] (one ramp "
                              f"at least before the levels, to set their rates), got "
                              f"{ramps_after} with ramps {ramps}")
    if ramps_after and capacity_qps is not None:
        raise ValidationError("ramps_after needs a measured capacity: with capacity_qps "
                              "given no ramp runs")
    if not (math.isfinite(ramp_resolution) and ramp_resolution > 1):
        raise ValidationError(f"ramp_resolution must be a ratio > 1, got {ramp_resolution}")
    if not 0 <= ramp_restart < 1:
        raise ValidationError(f"ramp_restart must be a share of capacity in [0, 1), got "
                              f"{ramp_restart}")
    if not duration_s > 0:
        raise ValidationError(f"the level's duration must be > 0 s, got {duration_s}")
    if busy not in BUSY_POLICIES:
        raise ValidationError(f"busy policy {busy!r}: expected one of {BUSY_POLICIES}")
    dep = real_deployment(deployment, batching)
    app, models = model_specs(dep, workload.app)
    load0 = guard(busy, what=f"validating {dep.path}", log=log,
                  settle_s=SETTLE_S if busy == "refuse" else 0.0)
    if not (math.isfinite(stalls_s) and stalls_s >= 0):
        raise ValidationError(f"stalls_s must be seconds >= 0 (0: no hiccup meter), got "
                              f"{stalls_s}")
    stalls = None
    if host_cpu and stalls_s > 0:
        # before anything of ours runs: the meter keeps every core busy
        stalls = host_stalls(stalls_s)
        log(f"the cores' {stalls.describe()}")
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        mon = (stack.enter_context(SpeedMonitor(Path(tmp) / "speed.txt",
                                                cpus=probe_cpus()))
               if speed and host_cpu else None)
        # with the probes on, the profiles are the fast speed's: the twin's host adds
        # the swings (a profile taken while the machine was slow would count them twice)
        profs = profile(models, workload, profiles or {}, batch_sizes, profile_repeats,
                        profile_max_s, log, busy, mon)
        setup = Setup(dep, app, [spec for spec, _, _ in models],
                      {s.name: n for s, n, _ in models}, workload, profs, seed, log, busy,
                      repeats, ramps, ramp_resolution, ramp_restart, replay_speed,
                      twin_draws, ramps_after, stalls, loop_sleeps, jobs)
        la0 = os.getloadavg()[0]
        res = _validate(dep, app, models, setup, workload, profs, load0, la0, mon,
                        levels, duration_s, repeats, capacity_qps, calib_qps, calib_s,
                        ramp_s, ramp_step, ramp_start_qps, ramps, api, connections, seed,
                        host_cpu, log)
        if mon is not None:  # before the files go: what a stored run's replays read
            res.speed_probes = mon.probes()
        return res


def _validate(dep: RealDeployment, app: Application,
              models: Sequence[tuple[ModelSpec, int, dict[str, Any]]], setup: Setup,
              workload: Workload, profs: dict[str, LatencyProfile], load0: LoadSample | None,
              la0: float, mon: SpeedMonitor | None, levels: Sequence[float],
              duration_s: float, repeats: int, capacity_qps: float | None,
              calib_qps: float, calib_s: float, ramp_s: float, ramp_step: float,
              ramp_start_qps: float, ramps: int, api: str, connections: int, seed: int,
              host_cpu: bool, log: Log) -> ValidationResult:
    """``validate`` from step 3 on (``mon``: the speed monitor, running)."""
    speed_calib = speed_levels = None
    with ServerProcess(dep, cache=workload.cacheable) as srv:
        srv.wait_ready(workload.app)
        log(f"server up at {srv.url}; calibration at {calib_qps:g} q/s ...")
        bench = warm_up(srv, setup, api, connections, calib_qps, mon)
        groups = srv.session_groups()
        if groups:  # after the warm-up: the containers are up
            log("  scheduling groups (the kernel's autogroup, one per session): " + ", ".join(
                f"{k} {v}" for k, v in sorted(groups.items())))
        low = calibrate_at_low_load(bench, setup, calib_qps, calib_s)
        cost_s = low.cpu_s_per_query
        caps: list[float] = []
        spans: list[tuple[float, float]] = []
        first: RampResult | None = None

        def ramps_to(n: int) -> None:  # the capacity ramps up to the n-th
            nonlocal cost_s, first
            for k in range(len(caps), n):
                t0 = time.monotonic()
                res_k, cost_s = ramp_to_capacity(bench, setup, low.cpu_s_per_query,
                                                 ramp_start_qps, ramp_s, ramp_step, k, first)
                spans.append((t0, time.monotonic()))
                first = first or res_k
                caps.append(res_k.capacity_qps)

        measured: list[LevelRuns] = []
        kept_before = 0
        calib_spans = [(-math.inf, math.inf)]  # the probes so far, as ``mon.fit()``
        if capacity_qps is None:
            ramps_to(ramps - setup.ramps_after)
            if setup.ramps_after:
                # the levels now, at the first ramps' capacity; the last ramps after them,
                # so the calibration sees the machine on both sides of the levels
                levels_qps = float(np.median(caps))
                log(f"  the levels at {levels_qps:,.0f} q/s (the median of the "
                    f"{len(caps)} ramp(s) so far); {setup.ramps_after} more after them")
                kept_before = len(bench.kept)
                levels_from = time.monotonic()
                measured = [measure_level(bench, setup, lv, levels_qps, duration_s, mon)
                            for lv in levels]
                levels_to = time.monotonic()
                calib_spans = [(-math.inf, levels_from), (levels_to, math.inf)]
                ramps_to(ramps)
            capacity_qps = float(np.median(caps))
        else:
            caps = [float(capacity_qps)]
        low_cpu = low.cpu_run()
        speed_ramps: list[HostSpeed | None] = []
        if mon is not None:
            mon.freeze()  # the replays' reference: the machine while it was measured
            bench.replay_kept()  # the kept runs on it too, not on the probes when each ran
            speed_ramps = [mon.fit(a, b) for a, b in spans]
            speed_calib = mon.fit_spans(calib_spans)
            log("  the machine's speed while calibrating: " + (
                speed_calib.describe() if speed_calib is not None else "too few probes"))
        calibs, intervals = calibrate_twin(bench.kept, setup, low_cpu, low.seen,
                                           float(capacity_qps), cost_s, calib_qps, host_cpu,
                                           speed_calib)
        calib = calibs[-1][1]  # the prediction: with the host CPU model when asked
        if len(speed_ramps) > 1 and calib.fast_ns > 0:
            log("  each ramp's fast level over the calibration's (the twin's ramp runs "
                "that much slower all through): " + ", ".join(
                    f"{base_factor(calib, sp):.2f}" if sp is not None else "?"
                    for sp in speed_ramps))
        intervals["capacity_qps"] = bootstrap(caps, seed=seed)
        if measured:
            rows = [row for m in measured for row in predict_level(setup, calibs, m, mon)]
            speed_levels = (mon.fit(levels_from, levels_to) if mon is not None else None)
        else:
            levels_from = time.monotonic()
            rows = run_levels(bench, setup, calibs, levels, float(capacity_qps),
                              duration_s, mon)
            speed_levels = mon.fit(levels_from) if mon is not None else None
        if mon is not None:
            log("  the machine's speed during the levels: " + (
                speed_levels.describe() if speed_levels is not None else "too few probes"))
    sim_caps = predict_capacities(setup, calib, float(capacity_qps), ramp_s, ramp_step,
                                  ramp_start_qps, speed_ramps)
    predicted = float(np.median(sim_caps))
    log(f"capacity: measured {intervals['capacity_qps'].format('{:,.0f}')} q/s (median of "
        f"{len(caps)}), predicted by the twin {predicted:,.0f} q/s"
        + (" (each ramp at its own speed: measured " + ", ".join(f"{c:,.0f}" for c in caps)
           + "; predicted " + ", ".join(f"{c:,.0f}" for c in sim_caps) + ")"
           if len(sim_caps) > 1 else ""))
    notes = [f"load average {la0:.2f} at the start, {os.getloadavg()[0]:.2f} at the end "
             f"({os.cpu_count()} CPUs)"
             + (f"; before the runs: {load0.describe()}" if load0 is not None else "")
             + f"; {repeats} run(s) per level and mode, {duration_s:g} s each, medians"]
    res = compare(rows, calib, profs, notes)
    res.calibrations = dict(calibs)
    res.intervals = intervals
    res.predicted_capacity_qps = predicted
    res.load = load0
    res.runs, res.low_run, res.low_seen = list(bench.kept), low_cpu, dict(low.seen)
    res.runs_after_levels = len(bench.kept) - kept_before if measured else 0
    res.calib_qps = calib_qps
    res.ramp_capacities = list(caps)
    res.sim_ramp_capacities = list(sim_caps)
    res.speed_ramps = speed_ramps
    res.speed_calib, res.speed_levels = speed_calib, speed_levels
    return res


@dataclass(frozen=True)
class Setup:
    """What every step shares: the real deployment, its application and linked models,
    the workload, the profiles (measured or given), the seed and the log."""

    dep: RealDeployment
    app: Application
    models: list[ModelSpec]  # linked to the application
    replicas: dict[str, int]
    workload: Workload
    profiles: dict[str, LatencyProfile]
    seed: int
    log: Log
    busy: str = "warn"  # the guard's policy before each level (``quiet.guard``)
    repeats: int = 1
    ramps: int = 1  # capacity ramps, median (``capacity.ramp``'s rules)
    ramp_resolution: float = RAMP_RESOLUTION
    ramp_restart: float = RAMP_RESTART
    # each level's real runs replayed in the twin at the speed the probe recorded while
    # each went (``quiet.SpeedMonitor.replay``, ``twin.at_trace``), not its statistics
    replay_speed: bool = True
    twin_draws: int = 1  # the calibrated twins' runs per real run of a level (TWIN_DRAWS)
    # of the ``ramps``, how many run after the levels (the levels' rates then set by the
    # ones before): the calibration sees the machine on both sides of the levels
    ramps_after: int = 0
    # the cores' stalls (``quiet.host_stalls`` before the setting), the host CPU model's
    stalls: HostStalls | None = None
    # the loop's wake-ups fitted on the server's own count of its sleeps where every run
    # has one (``fit.fit_frontend_on_host``'s ``counted``), not on the twin's count
    loop_sleeps: bool = True
    # the twin's runs (the fits' replays, the capacity ramps after the first, the levels'
    # runs and draws) on this many processes (0: one per CPU; the same numbers)
    jobs: int = 1

    def twin(self, calib: Calibration | None = None, scale: float = 1.0) -> Deployment:
        return sim_deployment(self.dep, self.workload.app, self.profiles, calibration=calib,
                              scale=scale)


@dataclass
class Bench:
    """The real server under load, and the runs the fits learn from (``kept``)."""

    srv: ServerProcess
    pool: np.ndarray
    api: str
    connections: int
    idle_cpu: float = 0.0
    idle_containers: dict[str, float] = field(default_factory=dict)  # CPU s/s per model
    idle_loadgen: float = 0.0  # the generator's CPU s/s with nothing to send
    kept: list[CpuRun] = field(default_factory=list)
    # each kept run's (started_at, ended_at) on time.monotonic: ``replay_kept``'s stretches
    spans: list[tuple[float, float]] = field(default_factory=list)
    mon: SpeedMonitor | None = None  # the speed probe: each kept run's mean speed factor
    replay: bool = False  # keep each run's recorded speed for the fits' twin to replay

    def run(self, trace: Trace, keep: bool = True) -> RealRun:
        r = real_run(self.srv, trace, self.pool, self.api, self.connections, self.idle_cpu,
                     self.idle_containers, self.idle_loadgen)
        if keep:
            self.keep(r)
        return r

    def keep(self, r: RealRun, overloaded: bool = False) -> None:
        """Keep ``r`` for the fits when the server saw its queries and batches
        (``overloaded``: a ramp step that missed the SLO, ``CpuRun.overloaded``)."""
        if r.seen.get("queries", 0.0) > 0 and r.seen.get("batches", 0.0) > 0:
            self.kept.append(r.cpu_run(overloaded, *self._speed(r.started_at, r.ended_at)))
            self.spans.append((r.started_at, r.ended_at))

    def _speed(self, a: float, b: float) -> tuple[float, tuple[tuple[float, ...], ...]]:
        """The mean speed factor and (when ``replay``) the speed trace of the stretch from
        ``a`` to ``b`` (time.monotonic), replayed once for both; NaN and () unprobed."""
        rec: tuple[tuple[float, ...], ...] = ()
        if self.mon is not None and math.isfinite(a):
            rec = self.mon.replay(a, b)
        return replay_mean(rec, b - a), rec if self.replay else ()

    def replay_kept(self) -> None:
        """Each kept run's speed factor and trace replayed again, on the monitor's
        reference as it is now (call it after ``SpeedMonitor.freeze``): a run kept early
        was replayed against the few probes then, so its factor and the levels', replayed
        later, stood on different fast levels (run 37: the first kept runs at x1.28
        against their own few probes, x1.00 against the frozen reference)."""
        if self.mon is None:
            return
        for i, (r, (a, b)) in enumerate(zip(self.kept, self.spans, strict=True)):
            if math.isfinite(a):
                factor, trace = self._speed(a, b)
                self.kept[i] = dataclasses.replace(r, speed_factor=factor, speed_trace=trace)


# --------------------------------------------------------------------------- the steps


def profile(models: Sequence[tuple[ModelSpec, int, dict[str, Any]]], workload: Workload,
            given: Mapping[str, LatencyProfile], batch_sizes: Sequence[int], repeats: int,
            max_s: float, log: Log, busy: str = "warn",
            speed: SpeedMonitor | None = None) -> dict[str, LatencyProfile]:
    """Step 1: every linked model without a given profile, profiled in its own container
    over the RPC (``clipperlab.calibration.profiler``; with ``speed``, at the fast speed:
    ``profiler.measure``)."""
    profs = dict(given)
    for spec, _, d in models:
        if spec.name in profs:
            continue
        kind = str(d.get("kind", "noop"))
        path = str(d.get("path", "") or "")
        log(f"profiling {spec.name} ({kind}) ...")
        ps = ProfileSpec(
            model=f"{kind}:{path}" if path else kind, name=spec.name,
            input_type=spec.input_type, options=dict(d.get("options") or {}),
            inputs=workload.inputs, batch_sizes=tuple(batch_sizes), repeats=repeats,
            max_s_per_size=max_s, profile_name=f"profiled-{spec.name}", busy=busy,
        )
        profs[spec.name] = profile_model(ps, log=log, speed=speed)
    return profs


def warm_up(srv: ServerProcess, setup: Setup, api: str, connections: int,
            calib_qps: float, mon: SpeedMonitor | None = None) -> Bench:
    """Step 3: a second of load to let AIMD find its feet and the process warm its
    caches, then the server's, its containers' and the generator's idle CPU rates
    (subtracted from every run's)."""
    wl = setup.workload
    pool = np.asarray(wl.inputs.load()[0])
    run_load(retime(wl, calib_qps, 1.0, setup.seed + 99), pool, srv.url, api=api,
             connections=connections)
    return Bench(srv, pool, api, connections, idle_cpu_rate(srv),
                 idle_container_cpu_rate(srv),
                 loadgen_idle_rate(srv, wl, pool, api, connections, seed=setup.seed + 98),
                 mon=mon, replay=setup.replay_speed)


def calibrate_at_low_load(bench: Bench, setup: Setup, calib_qps: float,
                          calib_s: float) -> RealRun:
    """Step 4, first part: the calibration run at ``calib_qps`` (kept for the fits)."""
    low = bench.run(retime(setup.workload, calib_qps, calib_s, setup.seed + 1))
    s = summarise(from_send(low.table))
    setup.log(f"  real p50 {s.get('p50_ms', math.nan):.3f} ms from the send; server CPU "
              f"{low.cpu_s_per_query * 1e6:.0f} us/query (idle {bench.idle_cpu * 1e3:.1f} "
              f"ms/s subtracted)")
    return low


def ramp_to_capacity(bench: Bench, setup: Setup, cost_s: float, start_qps: float,
                     step_s: float, step: float, repeat: int = 0,
                     first: RampResult | None = None) -> tuple[RampResult, float]:
    """Step 4, second part: ``capacity.ramp`` on the real server (the offered load grows
    x``step`` per ``step_s`` step until fewer than 95% of the queries get a prediction
    within the SLO; a failing step runs twice before it counts; then bisection between
    the last good and the first bad rate); the steps that pass are kept for the fits,
    the steps that fail for the CPU fits only (``CpuRun.overloaded``).
    Returns the ramp (its capacity: the best good throughput seen) and the server's CPU
    per query at the last good step.  Ramp ``repeat`` (0, 1, ...) sends its own trace
    (seeded by it) and starts where ``capacity.ramp_start`` says after ``first``;
    ``validate`` takes the median of ``ramps`` ramps.  The twin's prediction runs
    the same procedure (``capacity.twin_capacity``)."""
    est = capacity_estimate(setup.profiles, setup.replicas,
                            {s.name: s.batching.max_batch_size for s in setup.models})
    setup.log(f"capacity ramp {repeat + 1}/{setup.ramps} (profiles alone allow "
              f"{est:,.0f} q/s) ...")
    cost = {"s": cost_s}

    def probe(rate: float, attempt: int) -> tuple[float, float]:
        tr = retime(setup.workload, rate, step_s, ramp_trace_seed(setup.seed, repeat))
        r = bench.run(tr, keep=False)
        good = good_share(r.table, setup.app.slo_s)
        s = summarise(r.table)
        if good >= GOOD_SHARE:
            bench.keep(r)
            cost["s"] = r.cpu_s_per_query
        else:
            # the loop's and the containers' CPU at the batch sizes only overload
            # reaches; its latencies say nothing the fits of the SLO's range may use
            bench.keep(r, overloaded=True)
        setup.log(f"  offered {rate:>9,.0f} q/s -> good share {good:.3f}, throughput "
                  f"{s.get('throughput_qps', 0):,.0f} q/s, p99 "
                  f"{s.get('p99_ms', math.nan):.1f} ms, server CPU "
                  f"{r.cpu_s_per_query * 1e6:.0f} us/query at batch size "
                  f"{r.seen.get('batch_size_mean', math.nan):.1f}"
                  + defaults_note(r.seen, len(tr))
                  + (" (confirming)" if attempt else ""))
        return good, float(s.get("throughput_qps", 0.0))

    start = ramp_start(min(start_qps, 0.3 * est), first, setup.ramp_restart)
    res = ramp(probe, start, 50 * est, step=step, good=GOOD_SHARE,
               resolution=setup.ramp_resolution)
    return res, cost["s"]


def calibrate_twin(runs: Sequence[CpuRun], setup: Setup, low: CpuRun,
                   low_seen: Mapping[str, float], capacity_qps: float, cost_s: float,
                   calib_qps: float, host_cpu: bool = False, speed: HostSpeed | None = None
                   ) -> tuple[list[tuple[str, Calibration]], dict[str, Interval]]:
    """Step 5: the twin's calibrations from the kept runs (never from the levels; the
    overloaded ones, ``CpuRun.overloaded``, for the loop's and the containers' CPU
    only), as
    ``(mode, calibration)`` pairs, the prediction last: ``sim+frontend`` (no host CPU
    model) and, with ``host_cpu``, ``sim+host``.  The event loop's CPU is fitted on the
    twin without the host CPU model; the host CPU model's demands (containers,
    generator) come next, and with them the loop's costs again, its wake-ups counted by
    the host CPU model's twin (``fit_frontend_on_host``: sharing the cores, and slowed
    where the run was, the loop sleeps less often than on a core of its own); then, per twin,
    what the twin still misses (``fit_unexplained``; ``low``: the run at ``calib_qps``,
    ``low_seen``: what the server saw in it).  With them, the bootstrap intervals
    over the runs of the loop's costs (us) and the prediction's pause rates (Hz)."""
    good = [r for r in runs if not r.overloaded]
    linked = {s.name: setup.profiles[s.name] for s in setup.models}
    slow = slowdown(low_seen, linked)
    extra_s = batch_extra_s(low_seen, linked)
    calib = Calibration(frontend_cost_s=cost_s, capacity_qps=capacity_qps,
                        batch_extra_s=extra_s,
                        slowdown=slow if math.isfinite(slow) and slow > 1.0 else 1.0)
    calib, cpu_rows = fit_frontend_rows(runs, setup.twin, calib, setup.seed,
                                        jobs=setup.jobs)
    _log_loop(setup.log, calib, runs, low_seen, slow, extra_s, calib_qps)
    out = [("sim+frontend", calib)]
    if host_cpu:
        fast = at_fast_speed(runs) if speed is not None else None
        if fast is not None:
            # every run's CPU at the fast speed (each divided by its own mean speed
            # factor): one demand for runs that went at different speeds, which the
            # host's speeds (drawn, or replayed) then stretch; the loop fitted again on them
            hcal, _ = fit_frontend_rows(fast, setup.twin, dataclasses.replace(calib),
                                        setup.seed, jobs=setup.jobs)
            hc = dataclasses.replace(
                host_cpu_demands(fast, hcal, [r for r in fast if not r.overloaded], speed,
                                 setup.stalls),
                reference_factor=1.0)
            hc, host_rows = fit_frontend_on_host(fast, setup.twin, hc, setup.seed,
                                                 counted=setup.loop_sleeps, jobs=setup.jobs)
            setup.log(f"  at the fast speed (each run's CPU over its mean speed factor, "
                      f"{min(r.speed_factor for r in runs):.2f}-"
                      f"{max(r.speed_factor for r in runs):.2f}), its wake-ups counted "
                      f"on the host: the loop "
                      f"{hc.query_cpu_s * 1e6:.1f} us per query + {hc.batch_cpu_s * 1e6:.1f} "
                      f"us per batch + a wake-up {hc.wake_s * 1e6:.1f} us")
        else:
            hc = host_cpu_demands(runs, calib, good, speed, setup.stalls)
            hc, host_rows = fit_frontend_on_host(runs, setup.twin, hc, setup.seed,
                                                 counted=setup.loop_sleeps, jobs=setup.jobs)
        cpu_rows = host_rows or cpu_rows  # the prediction's costs get the intervals
        setup.log(f"  the host CPU model: {hc.host_cpus} cores shared by the loop, the "
                  "containers (" + (", ".join(
                      f"{m} {b * 1e6:.0f} us/batch + {i * 1e6:.1f} us/item"
                      for m, b, i in hc.container_cpu) or "their whole profile draw")
                  + f") and the generator ({hc.loadgen_cpu_per_query_s * 1e6:.1f} us/query + "
                    f"{hc.loadgen_wake_s * 1e6:.0f} us/wake-up); time slices of "
                    f"{hc.slice_s * 1e3:g} ms; " + (
                        f"slow x{hc.slow_factor:.2f} {hc.slow_share:.0%} of the time in "
                        f"{hc.slow_dwell_s * 1e3:.0f} ms periods" if hc.slow_share > 0
                        else "one speed"))
        out.append(("sim+host", hc))
    intervals: dict[str, Interval] = {}
    if cpu_rows:
        q, b, w = frontend_intervals(cpu_rows, setup.seed)
        intervals.update(query_cpu_us=q.scaled(1e6), batch_cpu_us=b.scaled(1e6),
                         wake_us=w.scaled(1e6))
    for k, (mode, c) in enumerate(out):
        c, pause_iv = fit_unexplained(good, setup, low, c, calib_qps, mode)
        out[k] = (mode, c)
        if k == len(out) - 1:
            intervals.update(pause_iv)
    if intervals:
        setup.log("  intervals (90%, bootstrap over the runs): " + ", ".join(
            f"{k} {v}" for k, v in intervals.items()))
    setup.log(f"capacity {capacity_qps:,.0f} q/s; the event loop's own limit "
              f"{frontend_cpu(calib).capacity_qps(1.0):,.0f} q/s at batch size 1")
    return out, intervals


def host_cpu_demands(runs: Sequence[CpuRun], calib: Calibration,
                     good: Sequence[CpuRun] | None = None,
                     speed: HostSpeed | None = None,
                     stalls: HostStalls | None = None) -> Calibration:
    """``calib`` with the host CPU model on: this machine's cores
    (``os.cpu_count()``), each container's CPU per batch and per item
    (``fit_container_cpu`` over ``runs``), the generator's CPU per query and per wake-up
    (``fit_loadgen`` over ``good``, the runs that met the SLO; default ``runs``), the
    kernel's time slice and tick (``quiet.kernel_slice_s``, ``quiet.kernel_tick_s``: not
    fitted, the scheduler's own), its newidle balance (``HostCPU.newidle``) and
    the machine's two speeds when ``speed`` found two (``quiet.fit_speed``) and its fast
    level (``Calibration.fast_ns``), each core
    switching on its own when ``speed`` pooled probes of each core (``core_speeds``), and
    the cores' ``stalls`` when measured (``stall_fields``)."""
    gen = fit_loadgen(runs if good is None else good)
    return dataclasses.replace(calib, host_cpus=os.cpu_count() or 1,
                               container_cpu=fit_container_cpu(runs),
                               loadgen_cpu_per_query_s=gen.per_query_s,
                               loadgen_wake_s=gen.per_wake_s, loadgen_replies=True,
                               loadgen_idle_gap_s=GENERATOR_GAP_S,
                               slice_s=kernel_slice_s(), tick_s=kernel_tick_s(),
                               newidle=True,
                               **speed_fields(speed),
                               fast_ns=(speed.fast_ns if speed is not None
                                        and math.isfinite(speed.fast_ns) else 0.0),
                               core_speeds=speed is not None and speed.cores > 1,
                               **stall_fields(stalls))


def stall_fields(stalls: HostStalls | None) -> dict[str, Any]:
    """``Calibration``'s stall fields for the cores' ``stalls`` (the k-th core measured
    is the twin's core k); none without."""
    if stalls is None:
        return {"stalls_s": (), "stalls_span_s": 0.0}
    return {"stalls_s": stalls.lengths_s, "stalls_span_s": stalls.span_s}


def fit_unexplained(runs: Sequence[CpuRun], setup: Setup, low: CpuRun, calib: Calibration,
                    calib_qps: float, mode: str = "sim+frontend"
                    ) -> tuple[Calibration, dict[str, Interval]]:
    """Step 5, per twin: what the twin (``calib``'s) still misses, fitted on it, so that
    with the host CPU model on, the late queries contention explains are not pauses:
    the pauses (``fit_pauses``, then ``tune_pause_rate``'s rates, with their intervals),
    the containers' wake-up (``fit_container_wake``) and the fixed overhead outside the
    loop (``fit_overhead``: the median over the runs up to 60% of capacity of the real
    p50 less the twin's; one run at ``calib_qps`` was too few queries to say it)."""
    rate_hz, pauses = fit_pauses(runs, calib.capacity_qps)
    calib = dataclasses.replace(calib, pause_rate_hz=rate_hz, pauses_s=pauses)
    intervals: dict[str, Interval] = {}
    # tune_pause_rate, keeping its equations for the intervals
    pause_rows = pause_rate_rows(runs, setup.twin, calib, setup.seed)
    if pause_rows is not None:
        base, per_busy = pause_rate_intervals(pause_rows, setup.seed)
        calib = dataclasses.replace(calib, pause_rate_hz=base.value,
                                    pause_rate_busy_hz=per_busy.value)
        intervals.update(pause_rate_hz=base, pause_rate_busy_hz=per_busy)
    if pauses:
        setup.log(f"  {mode}: pauses at low load: {len(pauses)} seen ({rate_hz:.1f}/s), "
                  f"median {np.median(pauses) * 1e3:.1f} ms, longest "
                  f"{max(pauses) * 1e3:.1f} ms; {calib.pause_rate_hz:.1f}/s + "
                  f"{calib.pause_rate_busy_hz:.1f}/s x the loop's busy share give the twin "
                  "as many late queries")
    # the containers' wake-up: the batch latency the server's engine saw over the
    # twin's, run by run
    calib = fit_container_wake(runs, setup.twin, calib, setup.seed, setup.jobs)
    setup.log(f"  {mode}: container wake-up {calib.replica_wake_s * 1e3:.3f} ms x (1 - "
              f"exp(-idle / {calib.replica_cold_after_s * 1e3:g} ms)) per batch")
    # the fixed overhead: what the calibrated twin still misses at p50 (client, kernel)
    overhead_s = fit_overhead(runs, setup.twin, calib, setup.seed)
    calib = dataclasses.replace(calib, overhead_s=overhead_s)
    lat = np.asarray(low.latency_s if low.latency_s is not None else [], dtype=np.float64)
    real_p50_ms = pct(lat[np.isfinite(lat)], 50) * 1e3
    s_sim = sim_run(setup.twin(calib), low.trace, setup.seed, calib)
    setup.log(f"  {mode}: fixed overhead {overhead_s * 1e3:.3f} ms/query (the median "
              f"gap at p50 over the runs up to 60% of capacity); at {calib_qps:g} q/s "
              f"the server's p50 {real_p50_ms:.3f} ms, the twin's "
              f"{s_sim.get('p50_ms', math.nan):.3f} ms")
    return calib, intervals


def predict_capacity(setup: Setup, calib: Calibration, measured_qps: float,
                     ramp_s: float = RAMP_S, ramp_step: float = RAMP_STEP,
                     start_qps: float = RAMP_START_QPS) -> float:
    """Step 6b: the calibrated twin's capacity for the workload and the SLO
    (``twin_prediction``), as the real ramps measured it."""
    return float(np.median(predict_capacities(setup, calib, measured_qps, ramp_s, ramp_step,
                                              start_qps)))


def predict_capacities(setup: Setup, calib: Calibration, measured_qps: float,
                       ramp_s: float = RAMP_S, ramp_step: float = RAMP_STEP,
                       start_qps: float = RAMP_START_QPS,
                       speeds: Sequence[HostSpeed | None] = ()) -> list[float]:
    """``predict_capacity``'s ramps, each one's capacity; with ``speeds`` (one per ramp,
    the probe's fit while the real ramp went) the twin with the host CPU model runs ramp
    ``k`` at ramp ``k``'s speed (``twin.at_speed``), as each level runs at its own."""
    twins: list[Deployment] = []
    for k in range(setup.ramps):
        sp = speeds[k] if k < len(speeds) else None
        twins.append(setup.twin(at_speed(calib, sp)) if sp is not None and calib.host_cpus > 0
                     else setup.twin(calib))
    return twin_predictions(twins, setup.profiles, setup.replicas,
                            {s.name: s.batching.max_batch_size for s in setup.models}, calib,
                            setup.workload, setup.app.slo_s, measured_qps, seed=setup.seed,
                            ramp_s=ramp_s, ramp_step=ramp_step, start_qps=start_qps,
                            resolution=setup.ramp_resolution, restart=setup.ramp_restart,
                            jobs=setup.jobs)


def twin_prediction(twin: Deployment, profiles: Mapping[str, LatencyProfile],
                    replicas: Mapping[str, int], max_batch: Mapping[str, int],
                    calib: Calibration, workload: Workload, slo_s: float,
                    measured_qps: float, *, seed: int = 0, repeats: int = 1,
                    ramp_s: float = RAMP_S, ramp_step: float = RAMP_STEP,
                    start_qps: float = RAMP_START_QPS,
                    resolution: float = RAMP_RESOLUTION,
                    restart: float = RAMP_RESTART) -> float:
    """The twin's capacity: the real ramp's procedure on the twin (``capacity.twin_capacity``:
    the same start, steps, step length, confirmation, bisection, restarts and median over
    ``repeats`` ramps),
    sized from what the profiles allow, as the real ramp is; the measured capacity is
    not told to it (it sizes the ramp only when the profiles set no bound)."""
    return float(np.median(twin_predictions(
        [twin] * repeats, profiles, replicas, max_batch, calib, workload, slo_s,
        measured_qps, seed=seed, ramp_s=ramp_s, ramp_step=ramp_step, start_qps=start_qps,
        resolution=resolution, restart=restart)))


def twin_predictions(twins: Sequence[Deployment], profiles: Mapping[str, LatencyProfile],
                     replicas: Mapping[str, int], max_batch: Mapping[str, int],
                     calib: Calibration, workload: Workload, slo_s: float,
                     measured_qps: float, *, seed: int = 0, ramp_s: float = RAMP_S,
                     ramp_step: float = RAMP_STEP, start_qps: float = RAMP_START_QPS,
                     resolution: float = RAMP_RESOLUTION,
                     restart: float = RAMP_RESTART, jobs: int = 1) -> list[float]:
    """``twin_prediction``'s ramps, one per twin (``twins[k]`` runs ramp ``k``), each
    one's capacity; ``jobs``: the ramps after the first on that many processes."""
    est = capacity_estimate(profiles, replicas, max_batch)
    if not (math.isfinite(est) and est > 0):
        est = 4 * measured_qps
    return twin_capacities(twins, workload, slo_s, est_qps=est, start_qps=start_qps,
                           step_s=ramp_s, step=ramp_step, overhead_s=calib.overhead_s,
                           seed=seed, resolution=resolution, restart=restart, jobs=jobs)


def _log_loop(log: Log, calib: Calibration, runs: Sequence[CpuRun],
              seen: Mapping[str, float], slow: float, extra_s: float,
              calib_qps: float) -> None:
    """What the loop's fits found, and the server's batch latency at low load."""
    log("  runs for the CPU fit (q/s, batch size, server CPU us/query; * overloaded): "
        + ", ".join(f"{r.rate:,.0f} {r.queries / r.batches:.1f} "
                    f"{r.cpu_s / r.queries * 1e6:.0f}{'*' if r.overloaded else ''}"
                    for r in runs))
    log(f"  the server's CPU over {len(runs)} runs: {calib.query_cpu_s * 1e6:.1f} us "
        f"per query + {calib.batch_cpu_s * 1e6:.1f} us per batch + a wake-up "
        f"{calib.wake_s * 1e6:.1f} us x (1 - exp(-idle / "
        f"{calib.cold_after_s * 1e3:g} ms)) per event")
    log(f"  in the server at {calib_qps:g} q/s: batch latency {seen['batch_mean_ms']:.3f}"
        f" ms at mean size {seen['batch_size_mean']:.2f} (profile x{slow:.2f}, "
        f"+{extra_s * 1e3:.3f} ms per batch); query latency inside the server "
        f"{seen['server_mean_ms']:.3f} ms")


@dataclass
class LevelRuns:
    """One level's real side (``measure_level``): its trace, the ``real`` and ``real
    again`` runs, the machine before them (``sample``) and its speed while they went
    (``speed``), the load average after them and the ``real`` runs' median summary."""

    level: float
    rate: float
    trace: Trace
    runs: list[RealRun]
    again: list[RealRun]
    sample: LoadSample | None
    speed: HostSpeed | None
    load_avg: float
    real: dict[str, float]  # median_summary of the real runs, from the send


def measure_level(bench: Bench, setup: Setup, lv: float, capacity_qps: float,
                  duration_s: float, mon: SpeedMonitor | None = None) -> LevelRuns:
    """Step 6, the real side of one level: the machine sampled (``quiet.guard``:
    others' CPU share only, the load average holds our own server), then the level's
    trace on the real server ``2 x repeats`` times, alternating ``real`` and ``real
    again``; with ``mon``, the machine's speed while they went."""
    rate = lv * capacity_qps
    sample = guard(setup.busy, max_loadavg_per_core=None, what=f"the {lv:.0%} level",
                   log=setup.log, settle_s=SETTLE_S if setup.busy == "refuse" else 0.0)
    tr = retime(setup.workload, rate, duration_s, setup.seed + 3)
    runs: list[RealRun] = []
    again: list[RealRun] = []
    t_level = time.monotonic()
    for _ in range(setup.repeats):
        runs.append(bench.run(tr, keep=False))
        # the same trace once more: how far the real server is from itself
        again.append(bench.run(tr, keep=False))
    sp = mon.fit(t_level) if mon is not None else None
    s_real = median_summary([summarise(from_send(x.table)) for x in runs])
    m = LevelRuns(lv, rate, tr, runs, again, sample, sp, os.getloadavg()[0], s_real)
    other = sample.other_cpu_share if sample is not None else math.nan
    if sp is not None:
        setup.log(f"  level {lv:.0%}: the machine {sp.describe()}")
    setup.log(f"  level {lv:.0%} ({rate:,.0f} q/s): real p50/p99 "
              f"{s_real.get('p50_ms', math.nan):.2f}/{s_real.get('p99_ms', math.nan):.2f}"
              f" ms (medians of {setup.repeats}; load avg {m.load_avg:.2f}, others "
              f"{other:.0%} of the CPU before)")
    return m


def _sim_run_item(item: tuple[Deployment, Trace, int, Calibration | None]
                  ) -> dict[str, float]:
    return sim_run(*item)


def predict_level(setup: Setup, calibs: Sequence[tuple[str, Calibration]], m: LevelRuns,
                  mon: SpeedMonitor | None = None) -> list[dict[str, Any]]:
    """Step 6, the simulated side of one measured level (``m``): each real run's
    achieved send times in the plain twin and, ``setup.twin_draws`` times with seeds of
    their own (``draw_seed``), in every calibrated one (``calibs``: mode and
    calibration, the prediction last), the first run's in the in-situ diagnostic (the
    prediction's calibration); each metric the median over its mode's runs.  One row
    per mode.  With the level's speed (``m.speed``), its rows record it
    (``speed_level_*``) and the host CPU model's twin runs the level at that speed
    (``twin.at_speed``: the speed is a condition of the level, like the send times the
    generator achieved, which the twins replay too); with ``mon`` and
    ``setup.replay_speed``, each run at the speed the probes recorded while it went.
    The twin runs go on ``setup.jobs`` processes (each seeded by its run and draw: the
    same rows whatever the number)."""
    plain = setup.twin()
    twins = [(mode, c, setup.twin(c)) for mode, c in calibs]
    calib = calibs[-1][1]
    rows: list[dict[str, Any]] = []
    lv, tr, runs, sp = m.level, m.trace, m.runs, m.speed
    speed_cols: dict[str, float] = {}
    level_twins = twins
    if sp is not None:
        speed_cols = {"speed_level_factor": sp.slow_factor,
                      "speed_level_slow_share": sp.slow_share,
                      "speed_level_dwell_ms": sp.slow_dwell_s * 1e3}
        level_twins = []
        for mode, c, twin in twins:
            if c.host_cpus > 0:
                c = at_speed(c, sp)
                twin = setup.twin(c)
            level_twins.append((mode, c, twin))
    # every twin run of the level, (mode: None for the plain twin, deployment, trace,
    # seed, calibration), run together on ``setup.jobs`` processes
    todo: list[tuple[str | None, Deployment, Trace, int, Calibration | None]] = []
    replay_factors: list[float] = []  # one per replayed run
    sent = [sent_trace(tr, r.table) for r in runs]
    for k, (r, tr_sent) in enumerate(zip(runs, sent, strict=True)):
        todo.append((None, plain, tr_sent, setup.seed + k, None))
        run_twins = level_twins
        rec = (mon.replay(r.started_at, r.ended_at)
               if mon is not None and setup.replay_speed and math.isfinite(r.started_at)
               else ())
        if rec:  # the speed as it was while this run went, replayed
            replay_factors.append(replay_mean(rec, r.ended_at - r.started_at))
            run_twins = [(mode, ct, setup.twin(ct)) if (ct := at_trace(c, rec)) is not c
                         else (mode, c, twin) for mode, c, twin in twins]
        for mode, c, twin in run_twins:
            todo.extend((mode, twin, tr_sent, draw_seed(setup.seed + k, j), c)
                        for j in range(setup.twin_draws))
    # diagnostic, not a prediction: the calibrated twin told the first run's slowdown
    k0 = slowdown(runs[0].seen, setup.profiles)
    in_situ = (setup.twin(calib, scale=k0 if math.isfinite(k0) else 1.0), sent[0],
               setup.seed, calib)
    *done, s_ins = pmap(_sim_run_item, [*(t[1:] for t in todo), in_situ], setup.jobs,
                        desc="twin runs")
    sims: list[dict[str, float]] = []
    cals: dict[str, list[dict[str, float]]] = {mode: [] for mode, _, _ in twins}
    for (key, *_), s in zip(todo, done, strict=True):
        (sims if key is None else cals[key]).append(s)
    if replay_factors:
        speed_cols["speed_replayed_runs"] = len(replay_factors)
        # the mean factor the replays ran at (the cores' total speed), beside the
        # level's own fit: where they disagree, the replay's reference moved
        speed_cols["speed_level_replay_factor"] = float(np.median(replay_factors))
    r = median_run(runs)
    s_real = m.real
    s_sched = median_summary([summarise(x.table) for x in runs])
    s_again = median_summary([summarise(from_send(x.table)) for x in m.again])
    s_cals = {mode: median_summary(v) for mode, v in cals.items()}
    pred = twins[-1][0]
    s_cal = s_cals[pred]
    other = m.sample.other_cpu_share if m.sample is not None else math.nan
    for mode, s in (("real", s_real), ("real again", s_again),
                    ("sim", median_summary(sims)), *s_cals.items(),
                    ("sim+in-situ", s_ins)):
        rows.append({**_row(lv, m.rate, mode, s, r, s_sched, k0, m.load_avg),
                     "other_cpu_share": other, "repeats": setup.repeats,
                     "twin_draws": setup.twin_draws,
                     "ramps": setup.ramps, "ramps_after": setup.ramps_after,
                     "ramp_resolution": setup.ramp_resolution,
                     "ramp_restart": setup.ramp_restart, **speed_cols})
    setup.log(f"  level {lv:.0%} ({m.rate:,.0f} q/s): real p50/p99 "
              f"{s_real.get('p50_ms', math.nan):.2f}/{s_real.get('p99_ms', math.nan):.2f}"
              f" ms, {pred} {s_cal.get('p50_ms', math.nan):.2f}/"
              f"{s_cal.get('p99_ms', math.nan):.2f} ms (medians of {setup.repeats})")
    return rows


def run_levels(bench: Bench, setup: Setup, calibs: Sequence[tuple[str, Calibration]],
               levels: Sequence[float], capacity_qps: float, duration_s: float,
               mon: SpeedMonitor | None = None) -> list[dict[str, Any]]:
    """Step 6 with the calibration made first: each level measured (``measure_level``)
    and predicted (``predict_level``) in turn."""
    rows: list[dict[str, Any]] = []
    for lv in levels:
        rows.extend(predict_level(setup, calibs, measure_level(bench, setup, lv,
                                                               capacity_qps, duration_s,
                                                               mon), mon))
    return rows


def draw_seed(seed: int, draw: int) -> int:
    """The seed of a twin's ``draw``-th run of one real run (draw 0: ``seed`` itself)."""
    return seed + 1000 * draw


def median_summary(summaries: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Each key's median over ``summaries`` (NaN where none has a finite value)."""
    keys = dict.fromkeys(k for s in summaries for k in s)
    out = {}
    for k in keys:
        vals = np.asarray([s.get(k, math.nan) for s in summaries], dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        out[k] = float(np.median(vals)) if vals.size else math.nan
    return out


def median_run(runs: Sequence[RealRun]) -> RealRun:
    """The first run with the median CPU per query and the medians of what the server
    saw (the ``real`` row's server columns)."""
    cpu = float(np.median([r.cpu_s_per_query for r in runs]))
    return runs[0]._replace(cpu_s_per_query=cpu, seen=median_summary([r.seen for r in runs]))


def _row(level: float, rate: float, mode: str, s: Mapping[str, float], r: RealRun,
         s_sched: Mapping[str, float], slow: float, load_avg: float) -> dict[str, Any]:
    """One row of the table (``validation.csv``): the mode's summary; what the server
    saw and the generator's own lateness on the ``real`` row only."""
    real = mode == "real"

    def only_real(v: float) -> float:
        return v if real else math.nan

    return {"level": level, "offered_qps": rate, "mode": mode,
            **{k: s.get(k, math.nan) for k in (*METRICS, "default_rate")},
            "server_cpu_us_per_query": only_real(r.cpu_s_per_query * 1e6),
            "server_mean_ms": only_real(r.seen["server_mean_ms"]),
            "batch_mean_ms": only_real(r.seen["batch_mean_ms"]),
            "batch_size_mean": r.seen["batch_size_mean"] if real else s.get(
                "mean_batch_size", math.nan),
            "slowdown": only_real(slow),
            "sched_p50_ms": only_real(s_sched.get("p50_ms", math.nan)),
            "sched_p99_ms": only_real(s_sched.get("p99_ms", math.nan)),
            "mean_lag_ms": only_real(s_sched.get("mean_lag_ms", math.nan)),
            "load_avg": load_avg}


def compare(rows: list[dict[str, Any]], calib: Calibration,
            profiles: dict[str, LatencyProfile], notes: list[str]) -> ValidationResult:
    """Step 7: the table and its relative errors (sim - real) / real."""
    table = pd.DataFrame(rows)
    return ValidationResult(table, relative_errors(table), calib, profiles, notes)
