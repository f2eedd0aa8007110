"""The SimPy driver: the engine against simulated model containers.

Theory of operation.  The driver decides nothing about batching, caching or selection: it
feeds the engine events with the simulated time and carries out the instructions.

- Arrivals are pre-sampled (``Workload.generate``) and fed by one *frontend* process.  It
  does not make a SimPy event per query: it asks SimPy for the time of the next scheduled
  event (``env.peek()``) and feeds every arrival (and feedback) before that time in a
  tight loop, calling ``engine.on_query(query, now=arrival_at)``; only when the next
  arrival is not before the next event does it yield a timeout to let SimPy catch up.
  In the paper's setting (no feedback, one application, no users, no cache keys, no
  frontend loop) there is no process: ``_feed_plain`` steps SimPy itself and moves its
  clock as that timeout would have (the small-batch case: an engine round trip per query).
  When, besides, no fault needs a SimPy process, SimPy is not used at all: batch
  completions and timers go on the driver's own heap, timed and ordered as SimPy would
  (``_run_events``: SimPy's event machinery was a sixth of such a run, measured).
- ``Simulation`` is a ``clipperlab.engine.driver.Driver``: the base carries out every
  instruction (``send_batch``, ``reply``, ``feedback_applied`` below; an unknown one raises
  ``TypeError``) and keeps the one timer slot after every engine call.
- ``SendBatch`` computes the batch's whole timeline at once and schedules one SimPy
  timeout for its end (``_replicas.py``; never an event per query).
- With ``Deployment.frontends`` > 1 there are several frontends, each a ``Simulation``
  part with its own engine and timer slot sharing the clock, the containers and the
  records (``_peer``); one process feeds each arrival to the frontend the balancer picks
  (``_balanced_frontends``); ``SimResult.engines`` holds every engine, its ``metrics`` and
  ``log`` are all of them together.
- With ``Deployment.frontend_cpu`` the frontend is one event loop (as in the real server),
  and each reply and batch send the engine returns costs the loop time: the reply leaves
  (is recorded) when the loop is done with it.  Engine time is the loop's time, so it
  never goes backwards.  The engine's timer is a SimPy timeout (``_frontend.py``).
- With ``Deployment.host_cpu`` each host's cores are shared by its processes (the
  frontend's loop, the containers, the load generator) by processor sharing; that mode's
  hooks and its arrival feeder live in ``_hostcpu.py`` and are installed on the instance
  only then, so a run without it takes exactly the paths above.
- Same-time order is deterministic: SimPy runs events of one instant in the order they
  were scheduled (batch completions, timers, faults); arrivals and feedback of that
  instant go after all of them, arrivals before feedback, each in trace order.
- Raw timestamps are recorded in lists of typed records (``records.py``) and turned
  into DataFrames after the run (``SimResult``).  Model outputs are decided before the
  run (``_trace.py``).
- Python's cyclic garbage collector is paused while the simulation runs and while the
  result tables are built (it is restored after; see ``_gc_paused``).

Seeds: ``Simulation(seed=s)`` generates the trace with ``workload.generate(s)`` (the j-th of
several workloads with ``s + 7919*j``) and derives independent generators for the engine
(``[s, 101]``; frontend k > 0 of several ``[s, 101, k]``), each replica's latency draws
(``[s, 202, crc(model), ordinal]``) and each model's outputs (``outputs.model_rng``).
"""
from __future__ import annotations

import bisect
import collections
import contextlib
import gc
import heapq
import itertools
import time
import types
import zlib
from collections.abc import Callable, Iterator, Sequence
from operator import itemgetter
from typing import Any, TypeVar

import numpy as np
import simpy

from clipperlab.engine import (
    Counter,
    Engine,
    Feedback,
    FeedbackApplied,
    Instruction,
    Metrics,
    Query,
    ReplicaId,
    Reply,
    SendBatch,
)
from clipperlab.engine.driver import Driver
from clipperlab.workloads import Trace, Workload

from . import records
from ._frontend import _LinkState
from ._hostcpu import _HostCpuDriver
from ._replicas import _Rep
from ._trace import merge, model_outputs
from .deployment import Deployment, FrontendCPU
from .errors import SimConfigError
from .faults import Straggler, parse_replica
from .result import SimResult

__all__ = ["Simulation"]

_INF = float("inf")
T = TypeVar("T")


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


def _merged_metrics(engines: list[Engine]) -> Metrics:
    """Several frontends' metrics as one: counters and histogram buckets summed."""
    out = Metrics()
    for eng in engines:
        for s in eng.sync_metrics().samples():
            labels = dict(s.labels)
            src = s.metric
            if isinstance(src, Counter):
                out.counter(s.name, **labels).value += src.value
            else:
                h = out.histogram(s.name, bounds=src.bounds, **labels)
                h.counts = [a + b for a, b in zip(h.counts, src.counts, strict=True)]
                h.sum += src.sum
                h.count += src.count
    return out


def _merged_logs(engines: list[Engine]) -> list[tuple[Any, ...]] | None:
    """Several frontends' decision logs as one, in time order (frontend order at a tie);
    batch ids are each frontend's own."""
    logs = [e.log for e in engines]
    if any(log is None for log in logs):
        return None
    return list(heapq.merge(*logs, key=itemgetter(1)))  # type: ignore[arg-type]


class Simulation(_HostCpuDriver):
    """Run ``deployment`` under ``workload`` (a ``Workload``, a generated ``Trace``, or a
    list of them, one per application) with ``seed``.

    ``decision_log=True`` keeps the engine's decision log; ``record_members=True`` keeps
    one row per (query, model) with the time that model's batch finished (what waiting for
    every ensemble member would have cost); ``record_cpu_waits=True`` keeps every wait
    for a core of every process under the host CPU model's time slices
    (``cpu_wait_log``: ``host/process`` -> seconds, one per wait);
    ``record_wake_idle=True`` keeps how long each container had been idle at each
    wake-up it paid (``replica_idle_s``: ``ModelDeployment.wake_s`` set; what the
    wake-up's cost is a function of, so one run gives it for every cooling time);
    ``engine_options`` go to ``Engine(...)`` (e.g. ``cache_capacity_bytes``,
    ``feedback_timeout_s``).
    """

    own_events = True
    """Run on the driver's own heap of events when nothing else needs SimPy's (a
    ``_plain_arrivals`` run without faults; ``_run_events``); False keeps SimPy's."""

    def __init__(
        self,
        deployment: Deployment,
        workload: Workload | Trace | Sequence[Workload | Trace],
        seed: int = 0,
        *,
        decision_log: bool = False,
        record_members: bool = False,
        record_cpu_waits: bool = False,
        record_wake_idle: bool = False,
        engine_options: dict[str, Any] | None = None,
    ) -> None:
        self.deployment = deployment
        self.seed = seed
        self.record_wake_idle = record_wake_idle
        self.decision_log = decision_log
        self.record_members = record_members
        self.record_cpu_waits = record_cpu_waits
        self.cpu_wait_log: dict[str, list[float]] = {}
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
        self._engine_opts = opts
        super().__init__(self._new_engine(0))  # the Driver: one timer slot, empty
        self.fe_index = 0
        self._nfe = dep.frontends
        self._fes = [self]

        traces = self.traces
        order, src = merge(traces)
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
        self._outputs = []
        for m in dep.models:
            self._outputs.append(model_outputs(m, traces, order, src, labels, seed=seed,
                                               faults=dep.faults).tolist())

        # hosts, links, replicas
        self.env = simpy.Environment()
        links = {h.name: _LinkState(h.link) for h in dep.hosts}
        self._fe = _LinkState(dep.frontend_link) if dep.frontend_link is not None else None
        self._fc = dep.frontend_cpu
        if self._fc is not None:  # (the host CPU model installs its own hooks below)
            self.carry_out = self._fc_carry_out  # type: ignore[method-assign]
            self.reply = self._fc_reply  # type: ignore[method-assign]
        self._loop_free = 0.0  # when the frontend's event loop is next idle (frontend_cpu)
        self._inbox = collections.deque()  # batch results and timers waiting for the loop
        self.loop_busy_s = 0.0
        self.loop_wake_s = 0.0
        self.pauses = []
        self.replica_wake_s = 0.0
        self.replica_idle_s = []  # shared with the other frontends' peers
        placement = dep.placement()
        self._reps = {}
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
        self._r_at = []
        self._r_reply = []
        self._b_rows = []
        self._fb_applied = []
        self._members = []
        self._timers = []
        self._early = []
        self.crashes = []
        self._cpus = None
        self.cpu_busy_s = {}
        self.cpu_wait_s: dict[str, float] = {}  # per process: runnable without a core
        if dep.host_cpu is not None:
            self._hc_setup(dep.host_cpu)
        self._fe_of = np.zeros(n, dtype=np.int64)  # the frontend each query went to
        self._conns = [0] * self._nfe  # per frontend: queries sent to it, not yet answered
        self._events = None
        if self._nfe > 1:
            self.reply = self._fe_reply  # type: ignore[method-assign]
            self._fes += [self._peer(k) for k in range(1, self._nfe)]
        elif self.own_events and dep.host_cpu is None and not dep.faults and (
                self._plain_arrivals()):
            # nothing but batch completions and timers happens: the driver's own heap
            self._events = []
            self._eids = itertools.count()
            self._schedule_timer = self._event_timer  # type: ignore[method-assign]
            self.send_batch = self._own_sender()  # type: ignore[method-assign,assignment]

    def _new_engine(self, k: int) -> Engine:
        """Frontend ``k``'s engine, with the deployment's models and applications; frontend
        0's generator is ``[seed, 101]`` (the single frontend's), frontend k's
        ``[seed, 101, k]``."""
        dep = self.deployment
        seq = [self.seed, 101] if k == 0 else [self.seed, 101, k]
        eng = Engine(rng=np.random.default_rng(seq), decision_log=self.decision_log,
                     **self._engine_opts)
        for m in dep.models:
            eng.add_model(m.spec, now=0.0)
        for a in dep.apps:
            eng.add_application(a.app, now=0.0)
            if a.models:
                eng.link(a.app.name, list(a.models), now=0.0)
        return eng

    def _peer(self, k: int) -> Simulation:
        """Frontend ``k`` of several: this simulation's code and its shared parts (clock,
        containers, links, records, outputs), with an engine, a timer slot and counters of
        its own (``Deployment.frontends``)."""
        cls = type(self)
        peer = cls.__new__(cls)  # (object.__new__ refuses a subclass of the compiled Driver)
        peer.__dict__.update(self.__dict__)  # shares the lists, dicts and the environment
        for name, v in self.__dict__.items():  # hooks installed on frontend 0: its own
            if isinstance(v, types.MethodType) and v.__self__ is self:
                setattr(peer, name, types.MethodType(v.__func__, peer))
        Driver.__init__(peer, self._new_engine(k))
        peer.fe_index = k
        peer._timers = []
        peer._early = []
        peer.replica_wake_s = 0.0
        peer._inbox = collections.deque()  # its own event loop (frontend_cpu)
        peer._loop_free = 0.0
        peer.loop_busy_s = peer.loop_wake_s = 0.0
        peer.pauses = []
        return peer

    # ------------------------------------------------------------------ run
    def run(self, until_s: float | None = None) -> SimResult:
        """Simulate until every query is answered (or ``until_s`` simulated seconds)."""
        t0 = time.perf_counter()
        with _gc_paused():
            self._run(until_s)
        wall = time.perf_counter() - t0
        eng = self.engine
        engines = [fe.engine for fe in self._fes]
        if len(engines) > 1:
            self.replica_wake_s = sum(fe.replica_wake_s for fe in self._fes)
        return SimResult(
            build_queries=_paused(lambda: records.queries_frame(self)),
            build_batches=_paused(lambda: records.batches_frame(self)),
            build_members=_paused(lambda: records.members_frame(self)),
            metrics=eng.sync_metrics() if len(engines) == 1 else _merged_metrics(engines),
            log=eng.log if len(engines) == 1 else _merged_logs(engines),
            engine=eng,
            engines=engines,
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
        hc = self._cpus is not None
        fc = self._fcost if hc else self._fc
        if fc is not None and fc.pause_rate_hz + fc.pause_rate_busy_hz > 0 and self.n:
            for fe in self._fes:  # each frontend's loop loses its CPU on its own
                env.process(fe._pause_proc(fc))
        hcfg = self.deployment.host_cpu
        if hc and hcfg is not None and self.n and (
                hcfg.speed_swings or hcfg.reference_factor is not None
                or hcfg.speed_trace or hcfg.stalls):
            self._speed_procs(hcfg)
        for fe in self._fes:
            fe._ensure_timer()
        if self._nfe > 1:
            env.process(self._balanced_frontends())
        elif self._events is not None:
            self._run_events(until_s)
            return
        elif not hc and self._plain_arrivals():
            self._feed_plain(until_s)
        else:
            env.process(self._hc_frontend() if hc else self._frontend())
        if until_s is None:
            env.run()
        else:
            env.run(until=until_s)
        if hc:
            self._hc_finish()

    def _plain_arrivals(self) -> bool:
        """The paper's setting: no feedback, one application, no users, no cache keys, no
        frontend loop (``_feed_plain`` feeds it)."""
        return (self._fc is None and not self.fb_at.size and len(set(self.app_names)) == 1
                and self.context is None and not any(t.cacheable for t in self.traces))

    # ------------------------------------------------------------------ arrivals
    def _balanced_frontends(self) -> Any:
        """Several frontends: arrivals and feedback in time order, each given, when it
        comes, to the frontend the balancer picks (``Deployment.balancer``).  Without
        ``frontend_cpu`` that frontend's engine takes it at once (all before the next SimPy
        event in a loop, as ``_frontend`` feeds one frontend); with it, each frontend's
        event loop takes what it was given in order when it is free, its internal events
        (batch results, timers) first, as one frontend's loop does."""
        env = self.env
        peek = env.peek
        fes = self._fes
        nfe = len(fes)
        arrivals = self.arrival_at.tolist()
        n = len(arrivals)
        fb_at = self.fb_at.tolist()
        m = len(fb_at)
        make_query = self._query_maker()
        fe_of = self._fe_of
        conns = self._conns
        least = self.deployment.balancer == "least_connections"
        fc = self._fc
        # per frontend, what it was given and its loop has not taken: (feedback?, index, at)
        given: list[collections.deque[tuple[bool, int, float]]] = [
            collections.deque() for _ in fes]
        turn = 0  # round robin: the next frontend; least connections: where ties start
        i = j = 0
        nxt_a = arrivals[0] if n else _INF
        nxt_f = fb_at[0] if m else _INF
        horizon = peek()
        while i < n or j < m or any(given):
            if fc is not None and self._handle_inboxes(fc):
                horizon = peek()
                continue
            came = nxt_a if nxt_a <= nxt_f else nxt_f  # the next to give out
            k_take, t_take = -1, _INF  # the loop that takes a request first, and when
            if fc is not None:
                for k, g in enumerate(given):
                    if g:
                        tk = g[0][2]
                        lf = fes[k]._loop_free
                        if lf > tk:
                            tk = lf
                        if tk < t_take:
                            k_take, t_take = k, tk
            t = came if came <= t_take else t_take
            if t >= horizon:
                if fc is not None and horizon < t:
                    t = horizon  # wake for the event: it may be a result for a loop
                yield env.timeout(t - env.now)
                while peek() <= t:
                    yield env.timeout(0)
                horizon = peek()
                continue
            if came <= t_take:  # the balancer gives out the next request
                k = turn
                if least:
                    for d in range(1, nfe):
                        c = (turn + d) % nfe
                        if conns[c] < conns[k]:
                            k = c
                turn = (k + 1) % nfe
                if nxt_a <= nxt_f:
                    item = (False, i, came)
                    fe_of[i] = k
                    conns[k] += 1
                    i += 1
                    nxt_a = arrivals[i] if i < n else _INF
                else:
                    item = (True, j, came)
                    j += 1
                    nxt_f = fb_at[j] if j < m else _INF
                if fc is not None:
                    given[k].append(item)
                    continue
            else:  # frontend k_take's loop takes what it was given first
                k = k_take
                item = given[k].popleft()
            fe = fes[k]
            is_fb, idx, at = item
            if fc is not None:
                at = fe._loop_run(at, fc.query_s)
            t_eng = fe.now_floor if at < fe.now_floor else at  # Driver.not_before
            if is_fb:
                out = fe.engine.on_feedback(self._feedback(idx), t_eng)
            else:
                out = fe.engine.on_query(make_query(idx), t_eng)
            if fe.handle(out, at):
                horizon = peek()
            a = fe._ensure_timer()
            if a < horizon and (fc is None or a > env.now):
                horizon = a
        if fc is None:
            return
        # inputs are done; the loops still handle batch results and timers until idle
        while True:
            if self._handle_inboxes(fc):
                continue
            nxt = peek()
            if nxt == _INF:
                return
            yield env.timeout(nxt - env.now)
            while peek() <= nxt:
                yield env.timeout(0)

    def _handle_inboxes(self, fc: FrontendCPU) -> bool:
        """Several frontends' loops: the one whose oldest internal event came first (the
        lowest frontend at a tie) handles it; False when every inbox is empty."""
        first = None
        for fe in self._fes:
            if fe._inbox and (first is None or fe._inbox[0].at < first._inbox[0].at):
                first = fe
        if first is None:
            return False
        first._handle_inbox(fc)
        return True

    def _fe_reply(self, reply: Reply, now: float) -> None:
        """A reply of one of several frontends: recorded (when its loop has written it,
        with ``frontend_cpu``), and its connection closed."""
        fc = self._fc
        if fc is not None:
            now = self._loop_free = self._loop_free + fc.reply_s
        self._r_at.append(now)
        self._r_reply.append(reply)
        self._conns[self.fe_index] -= 1

    def _feed_plain(self, until_s: float | None) -> None:
        """Feed the arrivals (``_plain_arrivals``) by stepping SimPy here, with no event
        per arrival: every arrival before the next SimPy event goes to the engine in a
        loop; at an arrival not before it, SimPy processes every event up to the arrival's
        time and its clock moves to that time (the frontend process's timeout did that:
        24.4 -> 22.7 CPU us per query at batch size 1, measured).  The engine, and so every
        timeout scheduled from ``env.now``, sees the clock the process saw, so runs are
        bit for bit the same.  With ``until_s``, arrivals from ``until_s`` on are not fed
        (``run`` stops there)."""
        env = self.env
        peek = env.peek
        step = env.step
        on_query = self.engine.on_query
        handle = self.handle
        rearm = self.rearm
        arrivals = self.arrival_at.tolist()
        n = len(arrivals) if until_s is None else bisect.bisect_left(arrivals, until_s)
        app = self.app_names[0]
        new = tuple.__new__  # a Query without its Python-level __new__ (engine/_types.py)
        timers = self._timers
        i = 0
        horizon = peek()
        while i < n:
            t = arrivals[i]
            if t >= horizon:
                now = env.now
                if now + (t - now) == t:  # where a timeout from now to t lands (always, but
                    while peek() <= t:  # for rounding near the start of a run)
                        step()
                    env._now = t  # SimPy's clock (Environment.now), as after that timeout
                else:  # the frontend process's own timeout, and what it saw
                    ev = env.timeout(t - now)
                    while not ev.processed:
                        step()
                    while peek() <= t:
                        step()
                horizon = peek()
                continue
            out = on_query(new(Query, (i, app, i, None, None, None)), t)
            i += 1
            if out:
                handle(out, t)
                horizon = peek()
            else:
                rearm()  # handle() without instructions: one call less per query
                if timers and timers[0] < horizon:  # the timer just armed
                    horizon = timers[0]

    # ------------------------------------------------------------------ own events
    # (a run whose only events are batch completions and engine timers: _setup)
    def _event_timer(self, at: float) -> None:
        """``_Frontend._schedule_timer`` without ``frontend_cpu``, on the driver's heap."""
        now = self.env._now
        delay = at - now if at > now else 0.0
        # the pending heap holds when the event fires, not ``at``: ``now + (at - now)`` can
        # be an ulp short of ``at``, and ``at`` would then outlive its event (the events
        # drop pending times up to their own), and every later timer would be taken for
        # one behind it (``_Frontend.arm_timer``): deadline defaults late, or never sent
        heapq.heappush(self._timers, now + delay)
        heapq.heappush(self._events, (now + delay, next(self._eids), None, at, None))  # type: ignore[arg-type]

    def _event(self, ev: tuple[float, int, _Rep | None, Any, records.BatchRecord | None]) -> None:
        """Carry out one event of the heap (popped; the clock is at its time): a batch
        is back (``_Replicas._back``: no crash can have made it stale in this mode; its
        record rides in the entry, ``_send_own``) or the timer fired (``_Frontend._fire``
        without ``frontend_cpu``)."""
        at, _, rep, x, row = ev
        if rep is not None:
            row.done_at = at  # type: ignore[union-attr]
            row.status = "done"  # type: ignore[union-attr]
            self._done(rep, x, at)
            return
        timers = self._timers
        while timers and timers[0] <= at:
            heapq.heappop(timers)
        self._timer_due(at)

    def _run_events(self, until_s: float | None) -> None:
        """``_feed_plain`` and ``env.run`` over the driver's own heap of events instead of
        SimPy's: each batch completion and timer is a ``(time, eid, replica or None,
        batch or timer time, record or None)`` entry, timed as a SimPy timeout would be
        (``now + delay``) and taken in the same order (time, then scheduling order), so
        runs are bit for bit the same; SimPy's clock (``env.now``) is kept moving for the
        code that reads it.
        SimPy's timeouts, steps and peeks cost 4 CPU us per query at batch size 1 (25.0 ->
        21.2 us, measured with ``bench/sim_bench.py``'s small-batch run).  A batch's entry
        also carries its record (``_send_own``); a timer's is ``(time, eid, None, timer
        time, None)``."""
        env = self.env
        events = self._events
        assert events is not None
        pop = heapq.heappop
        event = self._event
        eng = self.engine
        on_query = eng.on_query
        on_outputs = eng.on_outputs  # on_batch_done without building a BatchDone
        on_timer = eng.on_timer
        schedule_timer = self._event_timer
        carry_out = self.carry_out
        send_batch = self.send_batch
        rearm = self.rearm
        # The commonest lists, one SendBatch after a query and one Reply after a batch,
        # carried out here as carry_out would (its dispatch and a call less each), and the
        # timer slot re-armed only when the deadline moved (rearm's test, a call less):
        # 14.7 -> 14.4 CPU us per query in the small-batch run (measured); the engine's
        # timer (one about every 10 queries there: its deadline is a lower bound) handled
        # here too, and _send_own (_own_sender) for send_batch: 11.5 -> 11.15 us (measured)
        r_at = self._r_at
        r_reply = self._r_reply
        plain_reply = type(self).reply is Simulation.reply and "reply" not in self.__dict__
        outputs = self._outputs
        members = self._members if self.record_members else None
        arrivals = self.arrival_at.tolist()
        n = len(arrivals) if until_s is None else bisect.bisect_left(arrivals, until_s)
        app = self.app_names[0]
        timers = self._timers
        # the timer slot as a float (inf: empty), to compare with the engine's due_at
        # rather than call next_deadline() (0.1 us per query, measured)
        ta = self.timer_at
        armed = _INF if ta is None else ta
        i = 0
        horizon = events[0][0] if events else _INF
        while i < n:
            t = arrivals[i]
            if t >= horizon:
                now = env._now
                if now + (t - now) == t:  # as _feed_plain: every event up to t, then t
                    while events and events[0][0] <= t:
                        at, _, rep, sb, row = pop(events)
                        env._now = at
                        if rep is not None:  # a batch is back: _event and _done, inlined
                            rep.idle_since = at
                            row.done_at = at  # type: ignore[union-attr]  # (_send_own)
                            row.status = "done"  # type: ignore[union-attr]
                            inputs = sb.inputs
                            if members is not None:
                                members.append(records.MemberRecord(inputs, rep.model_idx, at))
                            outs = outputs[rep.model_idx]
                            out = on_outputs(
                                sb.replica, sb.batch_id, [outs[inputs[0]]] if len(inputs) == 1
                                else list(map(outs.__getitem__, inputs)), at)
                            if out:
                                if plain_reply and len(out) == 1 and type(out[0]) is Reply:
                                    r_at.append(at)  # self.reply, inlined
                                    r_reply.append(out[0])
                                else:
                                    carry_out(out, at)
                            if eng.due_at != armed:  # (next_deadline() != self.timer_at)
                                rearm()
                                ta = self.timer_at
                                armed = _INF if ta is None else ta
                        else:  # the engine's timer: _event, _timer_due, on_timer, inlined
                            while timers and timers[0] <= at:  # (drop_due)
                                pop(timers)
                            if eng.due_at <= at:  # (next_deadline(); Driver.on_timer)
                                ta = self.timer_at
                                self.timer_at = None
                                now = ta if ta is not None and at < ta else at
                                out = on_timer(now)
                                try:
                                    if out:
                                        carry_out(out, now)
                                finally:
                                    rearm()
                            ta = self.timer_at  # (_ensure_timer)
                            if ta is not None and (not timers or ta < timers[0]):
                                schedule_timer(ta)
                            armed = _INF if ta is None else ta
                    env._now = t
                else:  # the frontend process's own timeout (rounding), as _feed_plain
                    heapq.heappush(events, (now + (t - now), next(self._eids), None, None, None))
                    while True:
                        ev = pop(events)
                        env._now = ev[0]
                        if ev[2] is None and ev[3] is None:
                            break
                        event(ev)
                    while events and events[0][0] <= t:
                        ev = pop(events)
                        env._now = ev[0]
                        event(ev)
                    ta = self.timer_at
                    armed = _INF if ta is None else ta
                horizon = events[0][0] if events else _INF  # now later than t
            out = on_query((i, app, i, None, None, None), t)  # Query's fields (on_query)
            i += 1
            if out:
                ins = out[0]
                if len(out) == 1 and type(ins) is SendBatch:  # carry_out's branch for it
                    try:
                        send_batch(ins, t)
                    except NotImplementedError:
                        raise
                    except Exception as e:  # noqa: BLE001 - a batch that cannot be sent fails
                        self.send_failed(ins, e, t)
                else:
                    carry_out(out, t)  # handle(), inlined: a call less per query
                if eng.due_at != armed:
                    rearm()
                    ta = self.timer_at
                    armed = _INF if ta is None else ta
                horizon = events[0][0] if events else _INF
            elif eng.due_at != armed:
                rearm()  # handle() without instructions: one call less per query
                ta = self.timer_at
                armed = _INF if ta is None else ta
                if timers and timers[0] < horizon:  # the timer just armed
                    horizon = timers[0]
        while events and (until_s is None or events[0][0] < until_s):
            ev = pop(events)
            env._now = ev[0]
            event(ev)
        if until_s is not None:
            env.run(until=until_s)  # SimPy's own checks, and its clock moved to until_s

    # ------------------------------------------------------------------ processes
    def _frontend(self) -> Any:
        env = self.env
        peek = env.peek
        eng = self.engine
        on_query = eng.on_query
        handle = self.handle
        ensure_timer = self._ensure_timer
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
        # (the paper's setting, no feedback, one application, no users, no cache keys and
        # no loop, is fed by _feed_plain instead)
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
            if handle(out, t):
                horizon = peek()
            a = ensure_timer()
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

    # ------------------------------------------------------------------ instructions
    # The frontend's loop (frontend_cpu) installs _fc_carry_out and _fc_reply on the
    # instance (_setup); without it the base's carry_out and the plain reply run (a check
    # and a call less per engine call and per reply).
    def _fc_carry_out(self, instructions: list[Instruction], now: float) -> None:
        # The frontend is an event loop: every reply and batch send costs it time, in the
        # engine's order, and happens when the loop is done with it (the hooks below).
        t0 = self._loop_free
        Driver.carry_out(self, instructions, now)
        self.loop_busy_s += self._loop_free - t0

    def reply(self, reply: Reply, now: float) -> None:
        self._r_at.append(now)
        self._r_reply.append(reply)

    def _fc_reply(self, reply: Reply, now: float) -> None:
        fc = self._fc
        assert fc is not None
        now = self._loop_free = self._loop_free + fc.reply_s
        self._r_at.append(now)
        self._r_reply.append(reply)

    def feedback_applied(self, applied: FeedbackApplied, now: float) -> None:
        fc = self._fc
        if fc is not None:
            now = self._loop_free = self._loop_free + fc.reply_s
        self._fb_applied.append((now, applied))

