"""The fits: what the twin is told about the real server, from the server's own runs.

Rules (each fit takes the runs of ``CpuRun``: a real run's achieved send times, the
server's query and batch counts and CPU time, and each query's latency from its send):
- ``fit_cpu``: server CPU = a x queries + b x batches, non-negative least squares, each
  run weighted alike; with one batch size it is all per query.
- ``fit_frontend``: the event loop's costs per query, per batch and per wake-up
  (``wake_s x (1 - exp(-idle / cold_after_s))``), the cooling time from a grid
  (``COLD_AFTER_GRID_S``), the wake-ups counted by replaying each run in the twin; each
  run's error weighted by the loop's busy share in it (the runs near capacity decide the
  cost per query, which sets the capacity).  ``fit_frontend_on_host`` fits them again on
  the host CPU model's twin; where every run counted the loop's sleeps
  (``CpuRun.sleeps``, since 2026-12-05), on those counts instead of the twin's, and the
  cooling time is the one at which the twin sleeps as often as the server did.
- ``fit_pauses``: pauses from late queries at low load (``pause_runs``: 400 q/s to 30% of
  capacity), a late query being later than the median by ``late_margin``;
  ``tune_pause_rate`` sets their rate (a base plus a share of the loop's busy time) so
  the twin is as late as the server up to 60% of capacity.
- ``fit_container_wake``: the containers' wake-up from the engine's batch latency in the
  server over the twin's.
- ``fit_overhead``: what the twin still misses at p50 (client, kernel), the median over
  the runs up to 60% of capacity of the server's p50 less the twin's.
- The host CPU model (``Calibration.host_cpus`` > 0): ``fit_container_cpu``, each model's
  container CPU = per batch x batches + per item x items over the runs (``/proc`` CPU
  times of its processes, ``fit_cpu``'s least squares), from the runs at a quarter of
  the fastest run's rate or more (``warm_runs``: a container woken for every batch pays
  a wake-up, hundreds of us on a VM, which the twin's containers pay as ``wake_s``);
  ``fit_loadgen``, the load generator's CPU per query and per wake-up (its process's
  CPU time = per query x queries + per wake-up x its ticks with sends + a constant per
  run: encoding the bodies, connecting), over every run.  The pause fits then run on a
  twin that
  shares the host's cores among the loop, the containers and the generator, so the late
  queries contention explains are not counted as pauses.
Every fit returns a new ``Calibration`` (or the one it was given when the runs say
nothing); the twin comes in as a function ``Calibration -> Deployment``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from clipperlab.calibration.intervals import Interval, bootstrap_fit
from clipperlab.calibration.quiet import for_cores
from clipperlab.simulator import Deployment, Simulation
from clipperlab.simulator.parallel import pmap
from clipperlab.workloads import Trace

__all__ = [
    "COLD_AFTER_GRID_S",
    "Calibration",
    "ContainerCpu",
    "CpuRun",
    "batch_mean_ms",
    "fit_container_cpu",
    "fit_container_wake",
    "fit_cpu",
    "fit_frontend",
    "fit_frontend_rows",
    "fit_frontend_on_host",
    "LoadgenCpu",
    "fit_loadgen",
    "generator_wakes",
    "GENERATOR_GAP_S",
    "fit_overhead",
    "fit_loadgen_cpu",
    "fit_pauses",
    "frontend_intervals",
    "warm_runs",
    "late_margin",
    "late_share",
    "pause_rate_intervals",
    "pause_rate_rows",
    "pause_runs",
    "tune_pause_rate",
    "send_ticks",
]


@dataclass(frozen=True, slots=True)
class Calibration:
    """What the twin is told about the real server (``clipperlab.calibration.validation``'s
    steps 4-5)."""

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
    # the host CPU model (off when host_cpus is 0): the cores the twin's processes share,
    # per model its container's CPU per batch and per item (fit_container_cpu; a model
    # not listed: its whole profile draw is CPU), the generator's CPU per query
    host_cpus: int = 0
    container_cpu: tuple[tuple[str, float, float], ...] = ()  # (model, s/batch, s/item)
    loadgen_cpu_per_query_s: float = 0.0
    loadgen_wake_s: float = 0.0  # the generator's CPU per wake-up (fit_loadgen)
    # the generator reads every reply in the twin (HostCPU.loadgen_replies), its wake-ups
    # counted over sends and replies (fit_loadgen); False in calibrations stored before
    # 2026-12-03, whose wake-up cost was fitted over the send ticks alone
    loadgen_replies: bool = False
    loadgen_reply_share: float = 0.5  # the reply's part of the per-query CPU (assumed)
    loadgen_idle_gap_s: float = 50e-6  # generator_wakes' gap (GENERATOR_GAP_S)
    # the kernel's time slice (0: processor sharing; kernel_slice_s: Linux's)
    slice_s: float = 0.0
    # the kernel's scheduler tick, when idle cores take waiting tasks (kernel_tick_s)
    tick_s: float = 4e-3
    # a core going idle takes a waiting task at once (the kernel's newidle balance;
    # HostCPU.newidle): False in calibrations stored before 2026-12-05
    newidle: bool = False
    # the machine's two speeds while the runs ran (quiet.SpeedMonitor, quiet.fit_speed;
    # HostCPU.slow_*): 1 / 0 is one speed
    slow_factor: float = 1.0
    slow_share: float = 0.0
    slow_dwell_s: float = 0.1
    slow_dwells_s: tuple[float, ...] = ()  # the periods seen (HostCPU draws from them)
    fast_dwells_s: tuple[float, ...] = ()
    # the mean speed factor the CPU demands were fitted at, when the twin runs another
    # stretch's speeds (a level's: ``twin.at_speed``); 0: the calibration's own
    reference_factor: float = 0.0
    # the probe's fast level while the runs ran (ns a probe iteration: ``HostSpeed.fast_ns``),
    # what another stretch's fast level is measured against (``twin.at_speed``: a stretch
    # whose fast periods ran slower than these runs' did is slower all through); 0:
    # unknown (calibrations stored before 2026-12-05's run 36), each stretch read against
    # its own
    fast_ns: float = 0.0
    # the speed as a probe recorded it while one real run went, replayed instead of the
    # two speeds (``twin.at_trace``; ``HostCPU.speed_trace``): (s from the run's start,
    # factor over the fast speed) pairs; empty: the two speeds
    speed_trace: tuple[tuple[float, ...], ...] = ()
    # each core switches speed on its own (``HostCPU.core_speeds``): a single-threaded
    # loop runs at its core's speed, not the machine's average; False in runs before
    # the per-core probes, where the machine switched as one
    core_speeds: bool = False
    # the cores' stalls, per core their lengths (s) over stalls_span_s seconds of a hiccup
    # meter on the idle machine (``quiet.host_stalls``; ``HostCPU.stalls_s``); () in
    # runs before 2026-12-04's stall model: none
    stalls_s: tuple[tuple[float, ...], ...] = ()
    stalls_span_s: float = 0.0


class ContainerCpu(NamedTuple):
    """One model's containers over a run: batches, items in them, CPU seconds."""

    model: str
    batches: float
    items: float
    cpu_s: float


@dataclass(frozen=True)
class CpuRun:
    """One real run as the CPU fit sees it."""

    trace: Trace  # with the arrival times the generator achieved
    queries: float
    batches: float
    cpu_s: float  # the server's, idle CPU subtracted
    latency_s: np.ndarray | None = None  # per query, from the send
    batch_ms: float = math.nan  # the engine's mean batch latency in the server
    containers: tuple[ContainerCpu, ...] = ()  # per model (idle CPU subtracted)
    loadgen_cpu_s: float = math.nan  # the load generator's CPU seconds over the run
    # a capacity ramp's step that missed the SLO: its CPU counts (the loop's and the
    # containers' costs at the large batches only overload reaches), its latencies do not
    overloaded: bool = False
    # the machine's mean speed factor while the run went (``quiet.SpeedMonitor``: 1 + slow
    # share x (slow factor - 1)); NaN: not probed.  ``at_fast_speed`` divides the CPU
    # times by it, so that runs at different speeds fit one demand (the fast speed's)
    speed_factor: float = math.nan
    # the speed as the probes recorded it while the run went (``SpeedMonitor.replay``:
    # (s from the run's start, factor) pairs); the fits' twin replays it (``as_run``)
    speed_trace: tuple[tuple[float, ...], ...] = ()
    # per query: the server answered it with a prediction (HTTP 200, not its default);
    # None: not recorded (runs stored before 2026-12-02 kept latencies only)
    predicted: np.ndarray | None = None
    # seconds each process waited runnable for a core over the run (the kernel's
    # schedstat run_delay: ``frontend``, ``container:<model>``, ``loadgen``); () for runs
    # stored before 2026-12-02 or a kernel without schedstats
    waits: tuple[tuple[str, float], ...] = ()
    # the wall clock (``time.time()``) when the run's schedule started, so that a step can
    # be set beside what else the machine did then; NaN for runs stored before 2026-12-04
    started_unix: float = math.nan
    # how often each process went to sleep over the run (its voluntary context switches:
    # ``frontend``, the server's event loop; ``container:<model>``); () for runs stored
    # before 2026-12-05
    sleeps: tuple[tuple[str, float], ...] = ()

    @property
    def loop_sleeps_per_query(self) -> float:
        """The server loop's sleeps per query over the run (each a wake-up), NaN where
        they were not counted."""
        for who, n in self.sleeps:
            if who == "frontend" and self.queries > 0:
                return n / self.queries
        return math.nan

    @property
    def rate(self) -> float:
        span = float(self.trace.arrival_at[-1] - self.trace.arrival_at[0])
        return len(self.trace) / span if span > 0 else math.inf


def as_run(calib: Calibration, run: CpuRun) -> Calibration:
    """``calib`` for the twin that replays ``run``: at the speed recorded while it went
    (``HostCPU.speed_trace``) when ``calib`` has the host CPU model with demands at a
    known reference speed (``reference_factor``: the fast speed's, ``at_fast_speed``) and
    the run a trace; else ``calib`` as it is."""
    if calib.host_cpus > 0 and calib.reference_factor > 0 and run.speed_trace:
        return dataclasses.replace(calib, speed_trace=for_cores(run.speed_trace,
                                                                calib.host_cpus))
    return calib


def at_fast_speed(runs: Sequence[CpuRun]) -> list[CpuRun] | None:
    """``runs`` with every CPU time (the server's, each container's, the generator's)
    divided by the run's ``speed_factor``: what each would have taken at the fast speed;
    ``None`` unless every run has one."""
    if not runs or not all(math.isfinite(r.speed_factor) and r.speed_factor > 0
                           for r in runs):
        return None
    return [dataclasses.replace(
        r, cpu_s=r.cpu_s / r.speed_factor, loadgen_cpu_s=r.loadgen_cpu_s / r.speed_factor,
        containers=tuple(c._replace(cpu_s=c.cpu_s / r.speed_factor) for c in r.containers))
        for r in runs]


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


def fit_container_cpu(runs: Sequence[CpuRun]) -> tuple[tuple[str, float, float], ...]:
    """Per model, its containers' CPU seconds per batch and per item over ``runs``
    (``fit_cpu`` on items, batches and CPU seconds: with one batch size it is all per
    item); a model whose runs read no CPU at all is left out (its profile draw stays)."""
    points: dict[str, list[tuple[float, float, float]]] = {}
    for r in warm_runs(runs):
        for c in r.containers:
            if c.batches > 0 and c.items > 0 and math.isfinite(c.cpu_s):
                points.setdefault(c.model, []).append((c.items, c.batches, c.cpu_s))
    out = []
    for model, pts in sorted(points.items()):
        if sum(p[2] for p in pts) <= 0:
            continue  # CPU is read in 10 ms ticks: nothing read says nothing
        per_item, per_batch = fit_cpu(pts)
        out.append((model, per_batch, per_item))
    return tuple(out)


def warm_runs(runs: Sequence[CpuRun], share: float = 0.25) -> list[CpuRun]:
    """The runs at ``share`` of the fastest run's rate or more (all of them when none has
    a finite rate)."""
    rates = [r.rate for r in runs if math.isfinite(r.rate)]
    top = max(rates) if rates else 0.0
    return [r for r in runs if r.rate >= share * top] if top > 0 else list(runs)


def fit_loadgen_cpu(runs: Sequence[CpuRun]) -> float:
    """The load generator's CPU seconds per query (``fit_loadgen``'s first number)."""
    return fit_loadgen(runs).per_query_s


class LoadgenCpu(NamedTuple):
    """The generator's CPU: per query (sending it, reading its answer) and per wake-up
    (its millisecond timer's tick with sends, on a virtual machine the dearer part)."""

    per_query_s: float
    per_wake_s: float


def send_ticks(arrival_at: np.ndarray, tick_s: float = 1e-3) -> int:
    """The generator's wake-ups with sends in a run: the distinct ``tick_s`` its send
    times fall in (it wakes at most once a millisecond and sends what is due)."""
    at = np.asarray(arrival_at, dtype=np.float64)
    at = at[np.isfinite(at)]
    return int(np.unique(np.floor(at / tick_s)).size) if at.size else 0


GENERATOR_GAP_S = 50e-6  # events further apart than this: the generator slept between


def generator_wakes(arrival_at: np.ndarray, latency_s: np.ndarray | None,
                    gap_s: float = GENERATOR_GAP_S, tick_s: float = 1e-3) -> int:
    """The generator's wake-ups in a run: its send ticks (``send_ticks``, each at its first
    send) and, with the replies' times (``arrival_at + latency_s``, the achieved send
    times and each query's latency from its send; unanswered ones left out), the replies
    that came ``gap_s`` or more after the event before them, sends and replies merged in
    time order (the generator reads what arrived together in one wake-up).  Without
    latencies: the send ticks alone."""
    at = np.asarray(arrival_at, dtype=np.float64)
    at = at[np.isfinite(at)]
    if latency_s is None:
        return send_ticks(at, tick_s)
    rep = np.asarray(arrival_at, dtype=np.float64) + np.asarray(latency_s, dtype=np.float64)
    at = np.sort(at)
    _, first = np.unique(np.floor(at / tick_s), return_index=True)  # each tick's first send
    ev = np.sort(np.concatenate([at[first], rep[np.isfinite(rep)]]))
    return int(1 + np.count_nonzero(np.diff(ev) >= gap_s)) if ev.size else 0


def fit_loadgen(runs: Sequence[CpuRun], gap_s: float | None = GENERATOR_GAP_S
                ) -> LoadgenCpu:
    """The generator's CPU over each run = ``a x queries + w x wake-ups + c`` (wake-ups:
    ``generator_wakes`` over sends and replies, or with ``gap_s`` None its send ticks
    alone, ``send_ticks``, as before 2026-12-03; ``c``: what a run costs however long,
    encoding bodies and connecting), by non-negative least squares on the relative
    error, over every run of 100 queries or more: the wake-ups are what the slow runs
    tell apart (on the quiet runs of 2026-12-01, send ticks alone: 99-121 us per wake-up
    and 3-8 us per query in all six settings, against 8-34 us per query when the
    wake-ups are left out; run 16's AIMD settings with replies: 49-63 us per wake-up,
    2.5-5.4 us per query).  With fewer than four runs, or runs that do not tell queries and wake-ups
    apart, ``a`` alone (the CPU over the queries) and no wake-up cost; zeros when
    nothing was read."""
    from scipy.optimize import nnls

    pts = [(float(len(r.trace)),
            float(send_ticks(r.trace.arrival_at) if gap_s is None
                  else generator_wakes(r.trace.arrival_at, r.latency_s, gap_s)),
            r.loadgen_cpu_s)
           for r in runs if len(r.trace) > 0 and math.isfinite(r.loadgen_cpu_s)
           and r.loadgen_cpu_s > 0]
    if not pts:
        return LoadgenCpu(0.0, 0.0)
    q, t, y = (np.asarray(c) for c in zip(*pts, strict=True))
    big = q >= 100
    q, t, y = (q[big], t[big], y[big]) if big.sum() >= 4 else (q, t, y)
    if len(q) < 4 or q.max() < 1.5 * q.min() or np.ptp(q / t) < 0.5:
        return LoadgenCpu(float(max(y.sum(), 0.0) / q.sum()), 0.0)
    A = np.column_stack([q, t, np.ones_like(q)]) / y[:, None]
    (a, w, _), _ = nnls(A, np.ones_like(y))
    return LoadgenCpu(float(a), float(w))


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
    r1 x u_k)`` by non-negative least squares, ``r1`` kept only where its bootstrap
    interval lies above zero (``pause_rate_intervals``)."""
    rows = pause_rate_rows(runs, twin, calib, seed, max_load)
    if rows is None:
        return calib
    base, busy = pause_rate_intervals(rows, seed)
    return dataclasses.replace(calib, pause_rate_hz=base.value, pause_rate_busy_hz=busy.value)


PauseRow = tuple[float, float, float]  # (s_k, s_k x u_k, real_k - q_k) of one run


def pause_rate_rows(runs: Sequence[CpuRun], twin: Callable[[Calibration], Deployment],
                    calib: Calibration, seed: int = 0, max_load: float = 0.6
                    ) -> list[PauseRow] | None:
    """``tune_pause_rate``'s equations, one per run (``None`` when the runs say nothing):
    the twin replays each run without pauses and with ``calib``'s rate."""
    use = pause_runs(runs, calib.capacity_qps, max_load=max_load)
    if not use or not calib.pauses_s or calib.pause_rate_hz <= 0:
        return None
    ref = calib.pause_rate_hz
    rows: list[PauseRow] = []
    for r in use:
        lat = np.asarray(r.latency_s, dtype=np.float64)
        m = late_margin(lat)
        shares, busy = [], 0.0
        for rate in (0.0, ref):
            c = dataclasses.replace(calib, pause_rate_hz=rate, pause_rate_busy_hz=0.0)
            sim = Simulation(twin(as_run(c, r)), r.trace, seed=seed)
            # (a constant overhead would shift the median too: it cannot change the share)
            shares.append(late_share(sim.run().queries["latency_s"].to_numpy(), m))
            if rate == 0.0:
                span = float(r.trace.arrival_at[-1] - r.trace.arrival_at[0]) or 1.0
                busy = min(sim.loop_busy_s / span, 1.0)
        per = max(shares[1] - shares[0], 0.0) / ref
        rows.append((per, per * busy, late_share(lat, m) - shares[0]))
    if not any(row[0] > 0 for row in rows):
        return None
    return rows


def _solve_pause_rate(rows: Sequence[PauseRow]) -> tuple[float, float]:
    """``(r0, r1)`` by non-negative least squares over ``pause_rate_rows``' equations."""
    from scipy.optimize import nnls

    a = np.asarray([(p, pb) for p, pb, _ in rows], dtype=np.float64)
    y = np.asarray([t for _, _, t in rows], dtype=np.float64)
    (r0, r1), _ = nnls(a, y)
    return float(r0), float(r1)


def _solve_pause_base(rows: Sequence[PauseRow]) -> tuple[float]:
    """``r0`` alone (no busy term) by non-negative least squares."""
    from scipy.optimize import nnls

    a = np.asarray([[p] for p, _, _ in rows], dtype=np.float64)
    y = np.asarray([t for _, _, t in rows], dtype=np.float64)
    (r0,), _ = nnls(a, y)
    return (float(r0),)


def pause_rate_intervals(rows: Sequence[PauseRow], seed: int = 0) -> tuple[Interval, Interval]:
    """The pause rates (base, per busy share; Hz) with their bootstrap intervals over the
    runs.  The busy term stays only where its interval lies above zero; otherwise the
    base is fitted alone and the busy term is 0 (its interval as the two-term fit gave
    it).  A run is a 2-s ramp step, and one stall of a few milliseconds in it can make
    it late ten times as often as its neighbours: least squares then sets the busy term
    by that one run (run 17, the no-op model with AIMD: 1.4/s + 19.3/s x the loop's busy
    share, the busy term's interval [0, 46.7], from one run at 55% busy whose late share
    was 2.5% against 0-0.9% for the others; over ten draws of the twin its p99 at 30%
    of capacity came out 36% above the server's, against +5% with the base alone,
    6.5/s; the logistic regression with AIMD: 2.4 + 0.4 x busy, -4 / -17% at 30 / 60%,
    the base alone +1 / -11%)."""
    base, busy = bootstrap_fit(list(rows), _solve_pause_rate, seed=seed)
    if busy.value > 0 and busy.lo <= 0:
        (alone,) = bootstrap_fit(list(rows), _solve_pause_base, seed=seed)
        return alone, Interval(0.0, busy.lo, busy.hi, busy.n)
    return base, busy


COLD_AFTER_GRID_S = (50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 20e-3)


def fit_frontend(runs: Sequence[CpuRun], twin: Callable[[Calibration], Deployment],
                 calib: Calibration, seed: int = 0) -> Calibration:
    """The event loop's costs from the server's CPU over ``runs`` (the calibration run
    and the capacity ramp's runs that met the SLO).  Per run ``k``, CPU per query =
    ``a + b x batches/queries + wake_s x u_k``, where ``u_k`` is the run's wake-ups per
    query (``1 - exp(-idle / cold_after_s)`` summed over the loop's events), counted by
    replaying the run in the twin with a negligible ``wake_s``.  Each run's relative
    error is weighted by the loop's busy share in it (its CPU seconds per second over the
    busiest run's): the ramp's steps are spaced x1.4, so most are at a few percent of
    capacity, and unweighted they set the costs where they matter least (no-op, AIMD:
    29 us/query + 134 us/batch fitted, 32 us/query at batch size 40, while the server
    spent 49-53 us/query at 20,000-25,000 q/s and batch sizes 39-52; on one later run
    the weights moved the fit from 38.9 + 125 to 43.8 + 89 us):

    1. a first ``a``, ``b`` (``fit_cpu``) from the runs at a quarter of the fastest run's
       rate or more, where the loop rarely sleeps, to give the twin its dynamics;
    2. for each ``cold_after_s`` on a grid, ``u_k`` from the twin, then ``a``, ``b`` and
       ``wake_s`` together by non-negative least squares (each run weighted alike); the
       grid point with the smallest residual wins."""
    return fit_frontend_rows(runs, twin, calib, seed)[0]


# (CPU s per query, batches per query, u_k, the run's weight: its loop busy share)
FrontendRow = tuple[float, float, float, float]


def fit_frontend_rows(runs: Sequence[CpuRun], twin: Callable[[Calibration], Deployment],
                      calib: Calibration, seed: int = 0, weighted: bool = True,
                      jobs: int = 1) -> tuple[Calibration, list[FrontendRow]]:
    """``fit_frontend`` and the equations of its winning grid point, one per run (empty
    when the runs say nothing), for ``frontend_intervals``; ``weighted=False``: every
    run's relative error counts alike (the fit before the busy-share weights); ``jobs``:
    the twin's replays on that many processes (``_wakes_many``)."""
    runs = _read_runs(runs)
    if not runs:
        return calib, []
    rates = [r.rate for r in runs if math.isfinite(r.rate)]
    top = max(rates) if rates else 0.0
    warm = [r for r in runs if r.rate >= 0.25 * top]
    if len({round(r.queries / max(r.batches, 1), 1) for r in warm}) < 2:
        warm = list(runs)
    a, b = fit_cpu([(r.queries, r.batches, r.cpu_s) for r in warm])
    calib = dataclasses.replace(calib, query_cpu_s=a, batch_cpu_s=b, wake_s=0.0)
    y, inv, weight = _loop_sides(runs, weighted)
    best: tuple[float, tuple[float, float, float], float, list[FrontendRow]] | None = None
    deps = [twin(dataclasses.replace(calib, wake_s=_TINY, cold_after_s=tau))
            for tau in COLD_AFTER_GRID_S]
    counts = _wakes_many([(dep, r, _TINY) for dep in deps for r in runs], seed, jobs)
    for k, tau in enumerate(COLD_AFTER_GRID_S):
        u = counts[k * len(runs):(k + 1) * len(runs)]
        rows = list(zip(y, inv, u, weight, strict=True))
        coef, err = _solve_frontend(rows)
        if best is None or err < best[0]:
            best = (err, coef, tau, rows)
    if best is None:
        return calib, []
    _, (a, b, w), tau, rows = best
    if a <= 0 and b <= 0:
        return calib, []
    return dataclasses.replace(calib, query_cpu_s=a, batch_cpu_s=b, wake_s=w,
                               cold_after_s=tau), rows


def fit_frontend_on_host(runs: Sequence[CpuRun], twin: Callable[[Calibration], Deployment],
                         calib: Calibration, seed: int = 0, rounds: int = 2,
                         counted: bool = True, jobs: int = 1
                         ) -> tuple[Calibration, list[FrontendRow]]:
    """The loop's costs (``fit_frontend``'s ``a``, ``b``, ``wake_s``, ``cold_after_s``)
    fitted again on ``runs`` with each run's wake-ups counted by the twin that will use
    them: ``calib`` with the host CPU model, replaying each run at its recorded speed
    (``as_run``), where the loop shares the cores with the containers and the generator
    and, slowed, sleeps less often than ``fit_frontend``'s twin (a core of its own at
    the fast speed) says.  Fitted there, wake-ups the host twin never pays went into
    ``wake_s`` and out of its loop: in run 13 (noop, AIMD, 18,000 q/s at x1.75) the
    host twin woke 0.022 times a query where ``fit_frontend`` counted 0.102, and its
    loop cost 28.7 us a query against the server's 32.5.  Per cooling time of the grid
    next to ``calib``'s (``fit_frontend``'s choice and its neighbours), ``rounds``
    times: the wake-ups counted with the costs as they stand, then ``a``, ``b`` and
    ``wake_s`` solved again (``_solve_frontend``); the cooling time with the smallest
    residual wins.  Returns ``calib`` with the costs and the winner's last equations
    (empty, ``calib`` as it is, without the host CPU model or runs that read CPU).

    With ``counted`` (the default) and every run's own count of the loop's sleeps
    (``CpuRun.sleeps``, recorded since 2026-12-05), the wake-ups are the server's, not the
    twin's: ``_fit_frontend_on_sleeps``.  ``jobs``: the twin's replays on that many
    processes (``_wakes_many``; the same numbers as one)."""
    runs = _read_runs(runs)
    if not runs or calib.host_cpus <= 0:
        return calib, []
    sleeps = [r.loop_sleeps_per_query for r in runs]
    if counted and all(math.isfinite(s) for s in sleeps):
        return _fit_frontend_on_sleeps(runs, sleeps, twin, calib, seed, jobs)
    y, inv, weight = _loop_sides(runs, True)
    best: tuple[float, Calibration, list[FrontendRow]] | None = None
    for tau in _grid_near(calib.cold_after_s):
        c = dataclasses.replace(calib, cold_after_s=tau)
        err = math.inf
        rows: list[FrontendRow] = []
        for _ in range(rounds):
            # counted with the costs as they stand: a loop whose wake-ups cost nothing
            # sleeps, and wakes, more often than one that pays them
            if c.wake_s <= 0:
                c = dataclasses.replace(c, wake_s=_TINY)
            u = _wakes_many([(twin(as_run(c, r)), r, c.wake_s) for r in runs], seed, jobs)
            rows = list(zip(y, inv, u, weight, strict=True))
            (a, b, w), err = _solve_frontend(rows)
            c = dataclasses.replace(c, query_cpu_s=a, batch_cpu_s=b, wake_s=w)
        if (c.query_cpu_s > 0 or c.batch_cpu_s > 0) and (best is None or err < best[0]):
            best = (err, c, rows)
    return (calib, []) if best is None else (best[1], best[2])


def _fit_frontend_on_sleeps(runs: Sequence[CpuRun], sleeps: Sequence[float],
                            twin: Callable[[Calibration], Deployment], calib: Calibration,
                            seed: int = 0, jobs: int = 1
                            ) -> tuple[Calibration, list[FrontendRow]]:
    """``fit_frontend_on_host`` with the server's own wake-ups: per run, CPU per query =
    ``a + b x batches/queries + wake_s x s_k``, ``s_k`` (``sleeps``) the loop's sleeps per
    query that the kernel counted (``CpuRun.loop_sleeps_per_query``), solved as ``_solve_frontend``
    solves (relative errors, busy-share weights); then the cooling time: the point of
    ``COLD_AFTER_GRID_S`` at which the twin's loop, with those costs and each run's
    speed, wakes as often as the server's did (the squared differences of wake-ups per
    query, summed over the runs; each twin wake-up counted by its share, as the twin
    pays it).  Counted by the twin instead, the wake-ups depend on the costs being
    fitted: a loop fitted without its per-batch cost idles, and so wakes, where the
    server's did not (the no-op model over REST at 16,000 q/s: 0.06 sleeps a query,
    ``results/bench/frontend-batch-cost-2026-12-05/``), and the wake-up cost then stands
    in for the per-batch one; it vanishes near capacity, where the per-batch cost does
    not, and the twin's capacity comes out high (runs 33 and 34:
    ``results/validation/diagnostics-capacity-batch-cost/``)."""
    y, inv, weight = _loop_sides(runs, True)
    rows = list(zip(y, inv, sleeps, weight, strict=True))
    (a, b, w), _ = _solve_frontend(rows)
    if a <= 0 and b <= 0:
        return calib, []
    c = dataclasses.replace(calib, query_cpu_s=a, batch_cpu_s=b, wake_s=w)
    if w > 0:
        best: tuple[float, float] | None = None
        counts = _wakes_many([(twin(as_run(dataclasses.replace(c, cold_after_s=tau), r)), r, w)
                              for tau in COLD_AFTER_GRID_S for r in runs], seed, jobs)
        for k, tau in enumerate(COLD_AFTER_GRID_S):
            u = counts[k * len(runs):(k + 1) * len(runs)]
            err = sum((uk - sk) ** 2 for uk, sk in zip(u, sleeps, strict=True))
            if best is None or err < best[0]:
                best = (err, tau)
        assert best is not None
        c = dataclasses.replace(c, cold_after_s=best[1])
    return c, rows


def _grid_near(tau: float) -> tuple[float, ...]:
    """``COLD_AFTER_GRID_S``'s point nearest ``tau`` (on a log scale) and its neighbours."""
    g = COLD_AFTER_GRID_S
    k = min(range(len(g)), key=lambda i: abs(math.log(g[i] / tau))) if tau > 0 else 0
    return g[max(k - 1, 0):k + 2]


# a wake-up cost too small to change a run, large enough to count the wake-ups by
_TINY = 1e-12


def _read_runs(runs: Sequence[CpuRun]) -> list[CpuRun]:
    """The runs whose CPU says something: CPU time is read in clock ticks (10 ms), so a
    short run can read 0, which says nothing about its cost per query and would divide
    by zero in the fits' relative errors."""
    return [r for r in runs if r.queries > 0 and math.isfinite(r.cpu_s) and r.cpu_s > 0]


def _loop_sides(runs: Sequence[CpuRun], weighted: bool
                ) -> tuple[list[float], list[float], list[float]]:
    """Per run, the loop's CPU per query, batches per query and weight: its busy share
    (CPU s per s) over the busiest run's, so that the fit's error is the error in the
    loop's utilisation, what sets its queueing and its capacity (1 unless ``weighted``)."""
    y = [r.cpu_s / r.queries for r in runs]
    inv = [r.batches / r.queries for r in runs]
    busy = [yk * (r.rate if math.isfinite(r.rate) else 0.0) for yk, r in zip(y, runs,
                                                                           strict=True)]
    top_busy = max(busy) if busy and max(busy) > 0 else 1.0
    return y, inv, [b / top_busy if weighted else 1.0 for b in busy]


def _wakes_per_query(dep: Deployment, run: CpuRun, seed: int, wake_s: float = _TINY
                     ) -> float:
    """The loop's wake-ups per query in ``dep`` (its wake-up cost ``wake_s``) on
    ``run``'s trace, each counted by its share of a full wake-up
    (``1 - exp(-idle / cold_after)``)."""
    sim = Simulation(dep, run.trace, seed=seed)
    sim.run()
    return sim.loop_wake_s / wake_s / max(len(run.trace), 1)


def _wakes_item(item: tuple[Deployment, CpuRun, int, float]) -> float:
    return _wakes_per_query(*item)


def _wakes_many(items: Sequence[tuple[Deployment, CpuRun, float]], seed: int, jobs: int = 1
                ) -> list[float]:
    """``_wakes_per_query`` of each ``(deployment, run, wake_s)``, in order, on ``jobs``
    processes (``simulator.parallel.pmap``; 0: one per CPU).  Each replay is seeded
    alike whatever the process, so the counts do not depend on ``jobs``: the fits'
    grids of cooling times replay every kept run nine times, about 30 minutes of a no-op
    setting's fits on one core (run 38)."""
    return pmap(_wakes_item, [(dep, r, seed, w) for dep, r, w in items], jobs,
                desc="twin replays")


def _solve_frontend(rows: Sequence[FrontendRow]) -> tuple[tuple[float, float, float], float]:
    """``(a, b, wake_s)`` by non-negative least squares on the relative errors of the CPU
    per query, each times its run's weight, and the squared residual."""
    from scipy.optimize import nnls

    m = np.asarray(rows, dtype=np.float64)
    y, w = m[:, 0], m[:, 3]
    # relative errors, weighted
    A = np.column_stack([np.ones(len(m)), m[:, 1], m[:, 2]]) / y[:, None] * w[:, None]
    coef, _ = nnls(A, w)
    err = float(((A @ coef - w) ** 2).sum())
    return (float(coef[0]), float(coef[1]), float(coef[2])), err


def frontend_intervals(rows: Sequence[FrontendRow], seed: int = 0
                       ) -> tuple[Interval, Interval, Interval]:
    """Bootstrap intervals over the runs of the loop's CPU per query, per batch and per
    wake-up (seconds), at the fitted cooling time (``fit_frontend_rows``' equations)."""
    q, b, w = bootstrap_fit(list(rows), lambda rs: _solve_frontend(rs)[0], seed=seed)
    return q, b, w


def batch_mean_ms(metrics: Any) -> float:
    """Mean of the engine's batch latency histogram over all models (ms)."""
    total = count = 0.0
    for smp in metrics.samples():
        if smp.name == "clipperlab_batch_latency_seconds":
            total += smp.metric.sum
            count += smp.metric.count
    return total / count * 1e3 if count else math.nan


def fit_container_wake(runs: Sequence[CpuRun], twin: Callable[[Calibration], Deployment],
                       calib: Calibration, seed: int = 0, jobs: int = 1) -> Calibration:
    """The containers' wake-up from the batch latency the server's engine saw in each run
    (``batch_ms``) over the twin's replaying it: for each cooling time on the grid the
    twin's wake-ups per batch (``1 - exp(-idle / cooling)`` summed over them, a
    negligible ``wake_s``), the least-squares ``wake_s`` scales them to the difference,
    and the best grid point wins (none when the twin is not faster than the server).
    The twin runs each run once, keeping each wake-up's idle time
    (``Simulation(record_wake_idle=True)``), and counts the grid's cooling times on it:
    a negligible wake-up does not change the run, so the count is the one a run per
    cooling time gives, at a ninth of the simulating (no-op at 50,000 q/s, run 38:
    about 8 of the setting's 43 minutes of fits); ``jobs``: the runs on that many
    processes (``pmap``; the same numbers as one)."""
    use = [r for r in runs if math.isfinite(r.batch_ms)]
    if not use:
        return calib
    tiny = 1e-12
    c = dataclasses.replace(calib, replica_wake_s=tiny,
                            replica_cold_after_s=COLD_AFTER_GRID_S[0])
    dep = twin(c)
    items = []
    for r in use:
        cr = as_run(c, r)
        items.append((dep if cr is c else twin(cr), r.trace, seed))
    diff, idles, batches = [], [], []
    for r, (nb, ms, idle) in zip(use, pmap(_wake_idle_item, items, jobs,
                                           desc="twin replays"), strict=True):
        batches.append(nb)
        diff.append(r.batch_ms / 1e3 - ms / 1e3)
        idles.append(idle)
    d = np.asarray(diff)
    best: tuple[float, float, float] | None = None
    for tau in COLD_AFTER_GRID_S:
        u = np.asarray([float(-np.expm1(-idle / tau).sum()) / nb
                        for idle, nb in zip(idles, batches, strict=True)])
        if not (u > 0).any():
            continue
        w = max(float(u @ d / (u @ u)), 0.0)
        err = float(((d - w * u) ** 2).sum())
        if best is None or err < best[0]:
            best = (err, w, tau)
    if best is None:
        return calib
    return dataclasses.replace(calib, replica_wake_s=best[1], replica_cold_after_s=best[2])


def _wake_idle_item(item: tuple[Deployment, Trace, int]) -> tuple[int, float, np.ndarray]:
    """``fit_container_wake``'s replay of one run: its batches (at least 1), the mean batch
    latency (ms) and each container wake-up's idle time (s)."""
    dep, trace, seed = item
    sim = Simulation(dep, trace, seed=seed, record_wake_idle=True)
    res = sim.run()
    return (max(len(res.batches), 1), batch_mean_ms(res.metrics),
            np.asarray(sim.replica_idle_s, dtype=np.float64))


def fit_overhead(runs: Sequence[CpuRun], twin: Callable[[Calibration], Deployment],
                 calib: Calibration, seed: int = 0, max_load: float = 0.6,
                 min_queries: int = 100) -> float:
    """The fixed overhead outside the loop (client, kernel): the median over the runs up
    to ``max_load`` of capacity (those with ``min_queries`` latencies) of the server's
    p50 less the twin's replaying the run, and never below 0.  A single low-load run (150
    queries at 50 q/s) said 0.55 ms for the logistic regression where the ramp's runs up
    to 60% said a median of 0.04 ms, and the twin's p50 came out 46% slow at 30% load."""
    use = [r for r in runs if r.latency_s is not None and math.isfinite(r.rate)
           and r.rate <= max_load * calib.capacity_qps
           and np.isfinite(r.latency_s).sum() >= min_queries]
    if not use:
        return 0.0
    dep = twin(calib)
    gaps = []
    for r in use:
        lat = np.asarray(r.latency_s, dtype=np.float64)
        cr = as_run(calib, r)
        sim = Simulation(dep if cr is calib else twin(cr), r.trace,
                         seed=seed).run().queries["latency_s"].to_numpy()
        gaps.append(float(np.median(lat[np.isfinite(lat)])) -
                    float(np.nanmedian(sim)))
    return max(float(np.median(gaps)), 0.0)
