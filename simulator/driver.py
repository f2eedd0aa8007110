"""The SimPy driver: the engine against simulated model containers.

Theory of operation.  The driver decides nothing about batching, caching or selection: it
feeds the engine events with the simulated time and carries out the instructions.

- Arrivals are pre-sampled (``Workload.generate``) and fed by one *frontend* process.  It
  does not make a SimPy event per query: it asks SimPy for the time of the next scheduled
  event (``env.peek()``) and feeds every arrival (and feedback) before that time in a
  tight loop, calling ``engine.on_query(query, now=arrival_at)``; only when the next
  arrival is not before the next event does it yield a timeout to let SimPy catch up.
- Each replica is one SimPy process (one per replica incarnation, never one per query).
  On ``SendBatch`` the driver computes the batch's timeline at once: the inputs cross the
  host's link (FIFO, ``batch x input_bytes x 8 / bandwidth_bps`` plus the link latency;
  the frontend's NIC is shared when configured), the container computes for a draw from
  the latency profile at the padded size (stragglers slow it down), and the outputs come
  back after the link latency.  The replica process sleeps until then and reports
  ``on_batch_done``.  The engine sends a replica one batch at a time.
- With ``Deployment.frontend_cpu`` the frontend is one event loop (as in the real server):
  every arrival, feedback, batch result and timer enters a FIFO and reaches the engine when
  the loop is done with what came before it plus its own cost; each reply and batch send
  the engine returns costs the loop more time, and the reply leaves (is recorded) then.
  Engine time is the loop's time, so it never goes backwards.  Without it events reach
  the engine at once and cost nothing (the paper's setting, and the fast path).
- After every engine call the driver asks ``engine.next_deadline()`` and, when it is
  earlier than every pending timer, schedules a SimPy timeout that calls
  ``engine.on_timer(at)``.
- Same-time order is deterministic: SimPy runs events of one instant in the order they
  were scheduled (batch completions, timers, faults); arrivals and feedback of that
  instant go after all of them, arrivals before feedback, each in trace order.
- Raw timestamps are recorded in lists and turned into DataFrames after the run
  (``SimResult``).  Model outputs are decided before the run (``clipperlab.simulator.outputs``).
- Python's cyclic garbage collector is paused while the simulation runs and while the
  result tables are built (it is restored after; see ``_gc_paused``).

Seeds: ``Simulation(seed=s)`` generates the trace with ``workload.generate(s)`` (the j-th of
several workloads with ``s + 7919*j``) and derives independent generators for the engine
(``[s, 101]``), each replica's latency draws (``[s, 202, crc(model), ordinal]``) and each
model's outputs (``outputs.model_rng``).
"""

from __future__ import annotations

import collections
import contextlib
import gc
import heapq
import math
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import simpy
from clipperlab.engine import (
    BatchDone,
    Engine,
    Feedback,
    FeedbackApplied,
    Instruction,
    Query,
    ReplicaId,
    Reply,
    SendBatch,
)
from clipperlab.workloads import Trace, Workload

from . import records
from .deployment import Deployment, FrontendCPU, Link, ModelDeployment
from .errors import SimConfigError
from .faults import Crash, Degrade, Straggler, parse_replica
from .outputs import AccuracyOutputs, model_rng, noisy_labels
from .profiles import ProfileSampler
from .result import SimResult

__all__ = ["Simulation"]

_INF = math.inf
T = TypeVar("T")
_OUTPUT_BYTES = 8  # per item on the way back


class _LinkState:
    __slots__ = ("bandwidth_bps", "latency_s", "free_at")

    def __init__(self, link: Link) -> None:
        self.bandwidth_bps = link.bandwidth_bps
        self.latency_s = link.latency_s
        self.free_at = 0.0


class _Rep:
    """One replica's driver-side state."""

    __slots__ = ("rid", "model_idx", "host", "link", "sampler", "stragglers", "rng", "gen",
                 "wake", "inflight", "up", "idle_since", "wake_s", "cold_after_s")

    def __init__(self, rid: ReplicaId, model_idx: int, host: str, link: _LinkState,
                 sampler: ProfileSampler, rng: np.random.Generator, wake_s: float = 0.0,
                 cold_after_s: float = 1e-3) -> None:
        self.rid = rid
        self.model_idx = model_idx
        self.host = host
        self.link = link
        self.sampler = sampler
        self.stragglers: list[Straggler] = []
        self.rng = rng
        self.gen = 0
        self.wake: simpy.Event | None = None
        self.inflight: list[Any] | None = None
        self.up = False
        self.idle_since = 0.0  # when its last batch finished (wake-up cost)
        self.wake_s = wake_s
        self.cold_after_s = cold_after_s


def _wake_cost(wake_s: float, idle_s: float, cold_after_s: float) -> float:
    """What waking up costs after ``idle_s`` asleep: ``wake_s x (1 - exp(-idle /
    cold_after_s))`` (``FrontendCPU.wake_s``, ``ModelDeployment.wake_s``)."""
    return wake_s * -math.expm1(-idle_s / cold_after_s)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector.  The driver and the engine free their objects
    by reference counting; with the collector on, its passes over the growing records
    (a reply per query) cost about 40% of a run (measured on 300K queries)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _paused(fn: Callable[[], T]) -> Callable[[], T]:
    def call() -> T:
        with _gc_paused():
            return fn()

    return call


def _merge(traces: list[Trace]) -> tuple[list[Trace], np.ndarray, np.ndarray]:
    """Order of all rows by arrival (stable: earlier workloads first on ties)."""
    arr = np.concatenate([t.arrival_at for t in traces]) if traces else np.zeros(0)
    src = np.concatenate([np.full(len(t), j, dtype=np.int64) for j, t in enumerate(traces)])
    order = np.argsort(arr, kind="stable")
    return traces, order, src[order]


class Simulation:
    """Run ``deployment`` under ``workload`` (a ``Workload``, a generated ``Trace``, or a
    list of them, one per application) with ``seed``.

    ``decision_log=True`` keeps the engine's decision log; ``record_members=True`` keeps
    one row per (query, model) with the time that model's batch finished (what waiting for
    every ensemble member would have cost); ``engine_options`` go to ``Engine(...)``
    (e.g. ``cache_capacity_bytes``, ``feedback_timeout_s``).
    """

    def __init__(
        self,
        deployment: Deployment,
        workload: Workload | Trace | Sequence[Workload | Trace],
        seed: int = 0,
        *,
        decision_log: bool = False,
        record_members: bool = False,
        engine_options: dict[str, Any] | None = None,
    ) -> None:
        self.deployment = deployment
        self.seed = seed
        self.decision_log = decision_log
        self.record_members = record_members
        items: list[Workload | Trace] = (
            list(workload) if isinstance(workload, list | tuple) else [workload]  # type: ignore[list-item]
        )
        if not items:
            raise SimConfigError("workload: expected at least one workload")
        traces = []
        for j, w in enumerate(items):
            traces.append(w if isinstance(w, Trace) else w.generate(seed + 7919 * j))
        self.traces = traces
        app_names = {a.app.name for a in deployment.apps}
        for t in traces:
            if t.app not in app_names:
                raise SimConfigError(
                    f"workload: app {t.app!r} is not deployed; deployed: {sorted(app_names)}"
                )
        self.engine_options = dict(engine_options or {})

    # ------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        dep = self.deployment
        seed = self.seed
        opts: dict[str, Any] = {"cache_capacity_bytes": dep.cache_capacity_bytes}
        if not any(t.feedback_at.size for t in self.traces):
            # No feedback will name a query id: the engine need not remember answers.
            opts["remember_queries"] = 0
        opts.update(self.engine_options)
        eng = self.engine = Engine(rng=np.random.default_rng([seed, 101]),
                                   decision_log=self.decision_log, **opts)
        for m in dep.models:
            eng.add_model(m.spec, now=0.0)
        for a in dep.apps:
            eng.add_application(a.app, now=0.0)
            if a.models:
                eng.link(a.app.name, list(a.models), now=0.0)

        traces, order, src = _merge(self.traces)
        self._src = src
        n = order.size
        self.n = n
        arrival = np.concatenate([t.arrival_at for t in traces])[order] if n else np.zeros(0)
        in_idx = np.concatenate([t.input_index for t in traces])[order] if n else np.zeros(
            0, np.int64)
        labels = np.concatenate([t.label for t in traces])[order] if n else np.zeros(0, np.int64)
        self.arrival_at = arrival
        self.input_index = in_idx
        self.labels = labels
        has_ctx = any(t.context is not None for t in traces)
        if has_ctx:
            ctx = np.concatenate([
                t.context if t.context is not None else np.full(len(t), -1, np.int64)
                for t in traces
            ])[order]
            self.context: np.ndarray | None = ctx
        else:
            self.context = None
        # row position of each (trace j, row i) in the merged order
        starts = np.cumsum([0] + [len(t) for t in traces])
        pos = np.empty(n, dtype=np.int64)
        pos[order] = np.arange(n)
        fb_at_l, fb_q_l = [], []
        for j, t in enumerate(traces):
            if t.feedback_at.size:
                fb_at_l.append(t.feedback_at)
                fb_q_l.append(pos[starts[j] + t.feedback_query])
        if fb_at_l:
            fa = np.concatenate(fb_at_l)
            fq = np.concatenate(fb_q_l)
            o = np.argsort(fa, kind="stable")
            self.fb_at, self.fb_query = fa[o], fq[o]
        else:
            self.fb_at = np.zeros(0)
            self.fb_query = np.zeros(0, np.int64)
        self.app_names = [t.app for t in traces]
        bytes_per = [t.input_bytes for t in traces]
        self._uniform_bytes = bytes_per[0] if len(set(bytes_per)) == 1 else None
        self._row_bytes = np.asarray(bytes_per, dtype=np.int64)[src].tolist() if (
            self._uniform_bytes is None) else None

        # outputs per model, decided up front
        self.model_index = {m.name: i for i, m in enumerate(dep.models)}
        self._outputs: list[list[Any]] = []
        for m in dep.models:
            self._outputs.append(self._model_outputs(m, traces, order, src).tolist())

        # hosts, links, replicas
        self.env = simpy.Environment()
        links = {h.name: _LinkState(h.link) for h in dep.hosts}
        self._fe = _LinkState(dep.frontend_link) if dep.frontend_link is not None else None
        self._fc = dep.frontend_cpu
        self._loop_free = 0.0  # when the frontend's event loop is next idle (frontend_cpu)
        # batch results and timers waiting for the loop: (at, rep, SendBatch) or (at, None,
        # None); and the CPU seconds the loop has spent
        self._inbox: collections.deque[tuple[float, Any, Any]] = collections.deque()
        self.loop_busy_s = 0.0
        self.loop_wake_s = 0.0  # the part of it spent waking up
        self.pauses: list[tuple[float, float]] = []  # (start, duration) of each pause
        self.replica_wake_s = 0.0  # what the containers' wake-ups added (ModelDeployment)
        placement = dep.placement()
        self._reps: dict[ReplicaId, _Rep] = {}
        for mi, m in enumerate(dep.models):
            crc = zlib.crc32(m.name.encode())
            for rid in m.replica_ids():
                host = placement[rid]
                rng = np.random.default_rng([seed, 202, crc, rid.ordinal])
                self._reps[rid] = _Rep(rid, mi, host, links[host], m.profile.sampler(rng), rng,
                                       m.wake_s, m.cold_after_s)
        for f in dep.faults:
            if isinstance(f, Straggler):
                sname, sord = parse_replica(f.replica)
                md = dep.model(sname)
                self._reps[ReplicaId(sname, md.spec.version, sord)].stragglers.append(f)

        # records
        self._r_at: list[float] = []
        self._r_reply: list[Reply] = []
        self._b_rows: list[list[Any]] = []
        self._fb_applied: list[tuple[float, FeedbackApplied]] = []
        self._members: list[tuple[tuple[Any, ...], int, float]] = []
        self._timers: list[float] = []
        self.crashes: list[tuple[float, str, str]] = []

    def _model_outputs(self, m: ModelDeployment, traces: list[Trace], order: np.ndarray,
                       src: np.ndarray) -> np.ndarray:
        rng = model_rng(self.seed, m.name)
        parts = []
        for t in traces:
            k = self._n_classes(t)
            if isinstance(m.outputs, AccuracyOutputs):
                # a model is a function of its input: draw once per input of the pool
                pool_labels = self._pool_labels(t)
                pool_out = m.outputs.outputs(pool_labels, np.arange(pool_labels.size), k,
                                             t.task, m.profile, rng)
                parts.append(np.asarray(pool_out)[t.input_index])
            else:
                parts.append(np.asarray(m.outputs.outputs(
                    t.label, t.input_index, k, t.task, m.profile, rng)))
        out = np.concatenate(parts)[order] if parts else np.zeros(0)
        for f in self.deployment.faults:
            if isinstance(f, Degrade) and f.model == m.name:
                lo, hi = f.from_query, min(f.to_query, self.n)
                if lo < hi:
                    frng = model_rng(self.seed, m.name, f"degrade-{lo}-{hi}")
                    k = max(self._n_classes(traces[int(self._src[lo])]), 2)
                    out = out.copy()
                    out[lo:hi] = noisy_labels(self.labels[lo:hi], f.accuracy, k, frng)
        return out

    @staticmethod
    def _pool_labels(t: Trace) -> np.ndarray:
        """Label of every input index the trace uses (others 0)."""
        size = int(t.input_index.max()) + 1 if len(t) else 0
        lab = np.zeros(size, dtype=np.int64)
        lab[t.input_index] = t.label
        return lab

    @staticmethod
    def _n_classes(t: Trace) -> int:
        if t.n_classes:
            return int(t.n_classes)
        return max(int(t.label.max()) + 1 if len(t) else 2, 2)

    # ------------------------------------------------------------------ run
    def run(self, until_s: float | None = None) -> SimResult:
        """Simulate until every query is answered (or ``until_s`` simulated seconds)."""
        t0 = time.perf_counter()
        with _gc_paused():
            self._run(until_s)
        wall = time.perf_counter() - t0
        eng = self.engine
        return SimResult(
            build_queries=_paused(lambda: records.queries_frame(self)),
            build_batches=_paused(lambda: records.batches_frame(self)),
            build_members=_paused(lambda: records.members_frame(self)),
            metrics=eng.sync_metrics(),
            log=eng.log,
            engine=eng,
            sim_s=float(self.env.now),
            wall_s=wall,
            seed=self.seed,
            crashes=self.crashes,
            feedback=self._fb_applied,
        )

    def _run(self, until_s: float | None) -> None:
        self._setup()
        env = self.env
        for rep in self._reps.values():
            self._start_replica(rep, 0.0)
        if self.deployment.faults:
            env.process(self._fault_proc())
        fc = self._fc
        if fc is not None and fc.pause_rate_hz + fc.pause_rate_busy_hz > 0 and self.n:
            env.process(self._pause_proc(fc))
        self._arm()
        env.process(self._frontend())
        if until_s is None:
            env.run()
        else:
            env.run(until=until_s)

    # ------------------------------------------------------------------ processes
    def _frontend(self) -> Any:
        env = self.env
        peek = env.peek
        eng = self.engine
        on_query = eng.on_query
        carry = self._carry
        arm = self._arm
        arrivals = self.arrival_at.tolist()
        n = len(arrivals)
        src = self._src
        apps = self.app_names
        single_app = apps[0] if len(set(apps)) == 1 else None
        app_of = None if single_app is not None else [apps[j] for j in src.tolist()]
        cache_rows = [t.cacheable for t in self.traces]
        cacheable_any = any(cache_rows)
        in_idx = self.input_index.tolist() if cacheable_any else None
        cacheable = (np.asarray(cache_rows)[src].tolist() if cacheable_any and
                     not all(cache_rows) else None)
        ctx: list[Any] | None = None
        if self.context is not None:
            # -1 marks rows of workloads without users: no context
            ctx = [None if c < 0 else c for c in self.context.tolist()]
        fb_at = self.fb_at.tolist()
        fb_q = self.fb_query.tolist()
        m = len(fb_at)
        labels = self.labels
        i = j = 0
        horizon = peek()
        fc = self._fc
        if m == 0 and single_app is not None and ctx is None and not cacheable_any and (
                fc is None):
            # The common case (the paper's setting), kept tight: no feedback, one
            # application, no users, no cache keys.
            new = tuple.__new__
            next_deadline = eng.next_deadline
            timers = self._timers
            schedule = self._schedule_timer
            while i < n:
                t = arrivals[i]
                if t >= horizon:
                    yield env.timeout(t - env.now)
                    while peek() <= t:
                        yield env.timeout(0)
                    horizon = peek()
                    continue
                out = on_query(new(Query, (i, single_app, i, None, None, None)), t)
                i += 1
                if out:
                    carry(out, t)
                    horizon = peek()
                nd = next_deadline()
                if nd is not None and (not timers or nd < timers[0]):
                    schedule(nd)
                    if nd < horizon:
                        horizon = nd
            return
        nxt_a = arrivals[0] if n else _INF
        nxt_f = fb_at[0] if m else _INF
        inbox = self._inbox
        while i < n or j < m:
            if fc is not None and inbox:
                self._handle_inbox(fc)
                horizon = peek()  # timers are SimPy events, so peek() sees them
                continue
            t = nxt_a if nxt_a <= nxt_f else nxt_f
            if fc is not None:
                # the event loop takes the request when it is free (internal events first)
                lf = self._loop_free
                if lf > t:
                    t = lf
            if t >= horizon:
                if fc is not None and horizon < t:
                    t = horizon  # wake for the event: it may be a batch result for the loop
                yield env.timeout(t - env.now)
                while peek() <= t:
                    yield env.timeout(0)
                horizon = peek()
                continue
            if fc is not None:
                t = self._loop_run(nxt_a if nxt_a <= nxt_f else nxt_f, fc.query_s)
            if nxt_a <= nxt_f:
                if single_app is not None and ctx is None and not cacheable_any:
                    out = on_query(Query(i, single_app, i), t)
                else:
                    key = None
                    if cacheable_any and (cacheable is None or cacheable[i]):
                        key = ("input", in_idx[i])  # type: ignore[index]
                    out = on_query(
                        Query(i, single_app or app_of[i],  # type: ignore[index]
                              i, key, ctx[i] if ctx is not None else None),
                        t,
                    )
                i += 1
                nxt_a = arrivals[i] if i < n else _INF
            else:
                q = fb_q[j]
                key = ("input", int(self.input_index[q])) if (
                    cacheable_any and (cacheable is None or cacheable[q])) else None
                out = eng.on_feedback(
                    Feedback(feedback_id=j, app=single_app or app_of[q],  # type: ignore[index]
                             label=int(labels[q]), input=q, input_key=key,
                             context=ctx[q] if ctx is not None else None, query_id=q),
                    t,
                )
                j += 1
                nxt_f = fb_at[j] if j < m else _INF
            if out:
                carry(out, t)
                horizon = peek()
            a = arm()
            if a < horizon and (fc is None or a > env.now):
                # (with the loop, a timer may fire after its due time: peek() has it)
                horizon = a
        if fc is None:
            return
        # inputs are done; the loop still handles batch results and timers until idle
        while True:
            if inbox:
                self._handle_inbox(fc)
                continue
            nxt = peek()
            if nxt == _INF:
                return
            yield env.timeout(nxt - env.now)
            while peek() <= nxt:
                yield env.timeout(0)

    def _handle_inbox(self, fc: FrontendCPU) -> None:
        """The event loop handles the oldest internal event (a batch result or a timer)."""
        at, rep, sb = self._inbox.popleft()
        eng = self.engine
        if rep is None:  # a timer
            t = self._loop_run(at, 0.0)
            nd = eng.next_deadline()
            out = eng.on_timer(t) if nd is not None and nd <= t else None
        else:
            t = self._loop_run(at, fc.batch_done_s + fc.item_s * len(sb.inputs))
            out = eng.on_batch_done(self._batch_done(rep, sb), t)
        if out:
            self._carry_loop(out, fc)
        self._arm()

    def _batch_done(self, rep: _Rep, sb: SendBatch) -> BatchDone:
        """The engine event for a finished batch: the model's outputs for its inputs."""
        outs = self._outputs[rep.model_idx]
        return BatchDone(replica=sb.replica, batch_id=sb.batch_id,
                         outputs=[outs[q] for q in sb.inputs])

    def _loop_at(self, now: float) -> float:
        """When the frontend's event loop takes an event that came at ``now`` (``now``
        itself without ``frontend_cpu``)."""
        return now if self._fc is None else self._loop_run(now, 0.0)

    def _loop_run(self, at: float, cost: float) -> float:
        """The event loop handles an event that came at ``at`` and costs ``cost``: it
        starts when the loop is free, pays the wake-up cost if the loop had gone idle, and
        returns when it is done (the loop's new free time)."""
        fc = self._fc
        assert fc is not None
        lf = self._loop_free
        if at > lf:
            if fc.wake_s:
                w = _wake_cost(fc.wake_s, at - lf, fc.cold_after_s)
                self.loop_wake_s += w
                cost += w
            t = at + cost
        else:
            t = lf + cost
        self._loop_free = t
        self.loop_busy_s += cost
        return t

    def _pause_proc(self, fc: FrontendCPU) -> Any:
        """The frontend loses the CPU at Poisson times until the last arrival, at
        ``pause_rate_hz + pause_rate_busy_hz x u`` where ``u`` is the loop's busy share
        since the previous candidate (thinning); each pause holds the loop for a duration
        drawn from ``pauses_s``."""
        env = self.env
        rng = np.random.default_rng([self.seed, 303])
        durations = np.asarray(fc.pauses_s, dtype=np.float64)
        end = float(self.arrival_at[-1])
        top = fc.pause_rate_hz + fc.pause_rate_busy_hz
        t = t_prev = busy_prev = 0.0
        while True:
            t += float(rng.exponential(1.0 / top))
            if t > end:
                return
            yield env.timeout(t - env.now)
            if fc.pause_rate_busy_hz > 0:
                busy = self.loop_busy_s
                u = min(max((busy - busy_prev) / (t - t_prev), 0.0), 1.0) if t > t_prev else 0.0
                t_prev, busy_prev = t, busy
                if rng.random() * top > fc.pause_rate_hz + fc.pause_rate_busy_hz * u:
                    continue
            d = float(durations[rng.integers(durations.size)])
            lf = self._loop_free
            self._loop_free = (t if t > lf else lf) + d
            self.pauses.append((t, d))

    def _start_replica(self, rep: _Rep, now: float) -> None:
        now = self._loop_at(now)
        rep.gen += 1
        rep.up = True
        rep.wake = self.env.event()
        self.env.process(self._replica(rep, rep.gen))
        out = self.engine.on_replica_up(rep.rid, now)
        if out:
            self._carry(out, now)

    def _replica(self, rep: _Rep, gen: int) -> Any:
        env = self.env
        while True:
            ev = rep.wake
            sb, done_at = yield ev
            if rep.gen != gen:
                return
            rep.wake = env.event()
            yield env.timeout(done_at - env.now)
            if rep.gen != gen:
                return
            self._done(rep, sb, env.now)

    def _fault_proc(self) -> Any:
        env = self.env
        plan: list[tuple[float, int, Crash, bool]] = []
        for k, f in enumerate(self.deployment.faults):
            if isinstance(f, Crash):
                plan.append((f.at_s, k, f, False))
                if f.restart_after_s is not None:
                    plan.append((f.at_s + f.restart_after_s, k, f, True))
        plan.sort(key=lambda p: (p[0], p[1], p[3]))
        for at, _, f, restart in plan:
            if at > env.now:
                yield env.timeout(at - env.now)
            name, o = parse_replica(f.replica)
            rid = ReplicaId(name, self.deployment.model(name).spec.version, o)
            rep = self._reps[rid]
            now = env.now
            if restart:
                if not rep.up:
                    self.crashes.append((now, str(rid), "restart"))
                    self._start_replica(rep, now)
            elif rep.up:
                self.crashes.append((now, str(rid), "crash"))
                rep.up = False
                rep.gen += 1
                if rep.inflight is not None:
                    rep.inflight[9] = "lost"
                    rep.inflight[8] = math.nan
                    rep.inflight = None
                t = self._loop_at(now)
                out = self.engine.on_replica_down(rid, t)
                if out:
                    self._carry(out, t)
            self._arm()

    # ------------------------------------------------------------------ instructions
    def _carry(self, out: list[Instruction], now: float) -> None:
        fc = self._fc
        if fc is not None:
            self._carry_loop(out, fc)
            return
        for ins in out:
            tp = type(ins)
            if tp is Reply:
                self._r_at.append(now)
                self._r_reply.append(ins)  # type: ignore[arg-type]
            elif tp is SendBatch:
                self._send(ins, now)  # type: ignore[arg-type]
            else:
                self._fb_applied.append((now, ins))  # type: ignore[arg-type]

    def _carry_loop(self, out: list[Instruction], fc: FrontendCPU) -> None:
        """``_carry`` when the frontend is an event loop: every reply and batch send costs
        the loop time, in the engine's order, and happens when the loop is done with it."""
        t = t0 = self._loop_free
        for ins in out:
            tp = type(ins)
            if tp is Reply:
                t += fc.reply_s
                self._r_at.append(t)
                self._r_reply.append(ins)  # type: ignore[arg-type]
            elif tp is SendBatch:
                t += fc.batch_send_s + fc.item_s * len(ins.inputs)  # type: ignore[union-attr]
                self._loop_free = t
                self._send(ins, t)  # type: ignore[arg-type]
            else:
                t += fc.reply_s
                self._fb_applied.append((t, ins))  # type: ignore[arg-type]
        self._loop_free = t
        self.loop_busy_s += t - t0

    def _send(self, sb: SendBatch, now: float) -> None:
        rep = self._reps[sb.replica]
        inputs = sb.inputs
        n = len(inputs)
        padded = sb.padded_size if sb.padded_size > n else n
        if self._uniform_bytes is not None:
            nbytes = n * self._uniform_bytes
        else:
            rb = self._row_bytes
            nbytes = sum(rb[q] for q in inputs)  # type: ignore[index]
        link = rep.link
        fe = self._fe
        start = now if now > link.free_at else link.free_at
        bw = link.bandwidth_bps
        if fe is not None:
            if fe.free_at > start:
                start = fe.free_at
            if fe.bandwidth_bps < bw:
                bw = fe.bandwidth_bps
        xfer = nbytes * 8.0 / bw
        link.free_at = start + xfer
        if fe is not None:
            fe.free_at = start + xfer
        lat = link.latency_s + (fe.latency_s if fe is not None else 0.0)
        arrive = start + xfer + lat
        service = rep.sampler(padded)
        if rep.wake_s:
            # a container that slept pays a wake-up (ModelDeployment.wake_s)
            idle = arrive - rep.idle_since
            if idle > 0:
                w = _wake_cost(rep.wake_s, idle, rep.cold_after_s)
                self.replica_wake_s += w
                service += w
        if rep.stragglers:
            for f in rep.stragglers:
                if f.from_s <= now < f.until_s:
                    service *= f.slowdown
                    if f.extra_delay_s > 0 and (
                        f.probability >= 1.0 or rep.rng.random() < f.probability
                    ):
                        service += rep.rng.exponential(f.extra_delay_s)
        done_at = arrive + service + lat + n * _OUTPUT_BYTES * 8.0 / bw
        row = [rep.model_idx, sb.replica.ordinal, sb.batch_id, n, padded, sb.reason, now,
               arrive, done_at, "sent"]
        self._b_rows.append(row)
        rep.inflight = row
        rep.wake.succeed((sb, done_at))  # type: ignore[union-attr]

    def _done(self, rep: _Rep, sb: SendBatch, now: float) -> None:
        rep.idle_since = now
        row = rep.inflight
        if row is not None:
            row[8] = now  # SimPy's clock (done_at up to rounding)
            row[9] = "done"
        rep.inflight = None
        if self.record_members:
            self._members.append((sb.inputs, rep.model_idx, now))
        if self._fc is not None:
            self._inbox.append((now, rep, sb))  # the event loop handles it (_handle_inbox)
            return
        out = self.engine.on_batch_done(self._batch_done(rep, sb), now)
        if out:
            self._carry(out, now)
        self._arm()

    # ------------------------------------------------------------------ timers
    def _arm(self) -> float:
        """Schedule a timer at the engine's next deadline unless an earlier one is pending;
        returns the earliest pending timer (inf when none)."""
        nd = self.engine.next_deadline()
        timers = self._timers
        first = timers[0] if timers else _INF
        if nd is not None and nd < first:
            self._schedule_timer(nd)
            return nd
        return first

    def _schedule_timer(self, at: float) -> None:
        """A SimPy timeout at ``at`` that calls ``engine.on_timer``."""
        heapq.heappush(self._timers, at)
        env = self.env
        fire = at
        fc = self._fc
        if fc is not None and fc.timer_resolution_s > 0:
            # the loop's timers take delays rounded to its resolution; one that comes
            # early finds nothing due and re-arms (so it is never early)
            now = env.now if env.now > self._loop_free else self._loop_free
            res = fc.timer_resolution_s
            late = now + round((at - now) / res) * res
            if late > fire:
                fire = late
        ev = env.timeout(fire - env.now if fire > env.now else 0.0, value=at)
        ev.callbacks.append(self._fire)

    def _fire(self, ev: simpy.Event) -> None:
        at: float = ev.value  # type: ignore[assignment]
        timers = self._timers
        while timers and timers[0] <= at:
            heapq.heappop(timers)
        if self._fc is not None:
            now = self.env.now
            self._inbox.append((now if now > at else at, None, None))
            return
        nd = self.engine.next_deadline()
        if nd is not None and nd <= at:
            out = self.engine.on_timer(at)
            if out:
                self._carry(out, at)
        self._arm()
