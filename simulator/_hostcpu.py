"""The simulation with a host CPU model (``Deployment.host_cpu``): every process on a host
shares its cores (``_cpu.py``), and the frontend's event loop is one of those processes.

Rules:
- The frontend's loop is a FIFO process on ``frontend_host``: each arrival, feedback,
  batch result and timer is a job (costs from ``frontend_cpu``, none without it) and
  reaches the engine when the job is done; the replies and batch sends the engine returns
  are jobs run next, before the events waiting behind (one handler's work, as in the
  real server's loop), and a reply leaves / a batch starts when its job is done.
  ``frontend_cpu``'s pauses hold the loop (it is not runnable), its wake-up cost is paid
  by a job that finds the loop idle, and timers keep its resolution.
- With ``frontend_cpu.parse_turn_s`` the arrivals (and feedback) are parsed in turns, as
  the real server's fair scheduler parses (``real.http``): an arrival that finds one
  being parsed waits apart, not in the loop's FIFO; when a parse is done (and its
  handler's work queued), the next waiting arrival goes next while the turn lasts (it
  began when its first parse started, and lasts ``parse_turn_s``), else behind what came
  meanwhile (batch results, timers), and a new turn begins when it starts.
- A replica's batch crosses the link as without the model, then its container (a process
  on its host) runs a CPU job of ``ModelDeployment.cpu_demand_s`` under processor
  sharing, then the rest of its profile draw off the CPU, then the way back.  A crash
  drops the container's CPU job.
- With ``loadgen_cpu_per_query_s`` the generator is a process (on ``loadgen_host``): each
  query is a job and reaches the frontend when it is done; its latency still counts from
  when it was due (no coordinated omission).  With ``loadgen_wake_s`` each distinct send
  time (a tick of its timer) that finds the generator with nothing to do is a wake-up: a
  job of that cost after the tick's sends (a busy generator does not sleep).  With
  ``loadgen_replies`` the per-query cost is split: the send's part at the send, the
  reply's (``loadgen_reply_share``) when the loop has written the reply, a job on the
  generator that first pays a wake-up if it finds the generator idle; the reply counts
  when that job is done (the real generator times it when it has parsed it).
- Replicas coming up or down reach the engine at once (not through the loop).
- With ``HostCPU.speed_swings`` each host switches between a fast and a slow speed
  (``_speed_proc``): it starts slow with probability ``slow_share``, each period lasts an
  exponential time (slow: mean ``slow_dwell_s``; fast: ``slow_dwell_s x (1 - share) /
  share``), and the host's factor is ``1 / mean_factor`` when fast and ``slow_factor /
  mean_factor`` when slow, until the last arrival; with measured periods
  (``slow_dwells_s``, ``fast_dwells_s``) each period is drawn from them instead; with
  ``reference_factor`` the factors are divided by it instead of ``mean_factor``.  With
  ``HostCPU.speed_trace`` every host follows the recorded factors at their times instead
  (divided the same way), nothing drawn; a trace with a factor per core sets each core's
  (``set_core_factor``).  With ``HostCPU.core_speeds`` each core of a host switches on
  its own, as a host does without it.  The draws come from their own generators
  (``[seed, 404, host's index]``; per core ``[seed, 404, host's index, core]``), so the
  other draws stay as they were.
- With ``HostCPU.stalls`` each core of every host stalls on its own (``_stall_proc``):
  at exponential intervals of mean ``stalls_span_s / len(stalls_s[core])``, for one of
  ``stalls_s[core]`` drawn at random, the core's factor is multiplied by
  ``STALL_FACTOR`` (the process holding it makes no progress), over whatever speed the
  speed procs set (``_Stalls`` holds each core's own factor).  The draws come from
  ``[seed, 405, host's index, core]``.

Theory of operation.  Nothing here runs on the default path: ``_hc_setup`` installs this
module's hooks on the instance (``carry_out``, ``reply``, ``send_batch``,
``feedback_applied``, ``_done``, ``_fire``, ``_replica``, ``_schedule_timer``, the pause
hooks) only when the deployment has a host CPU model, so a deployment without one runs the
exact code it ran before (no check per query).  Arrivals are fed by one SimPy process in
time order, as the default path feeds them: all arrivals before the next SimPy event in a
loop, each a job submitted at its arrival time (a host's state moves forward lazily to
any time before its next SimPy event).
"""

from __future__ import annotations

import collections
import heapq
import math
from functools import partial
from typing import Any

import numpy as np
import simpy

from clipperlab.engine import (
    Feedback,
    FeedbackApplied,
    Instruction,
    Query,
    Reply,
    SendBatch,
)
from clipperlab.engine.driver import Driver

from ._cpu import (
    CpuProc,
    Done,
    HostCpu,
    HostCpuState,
    SlicedHostCpuState,
    drop_due,
)
from ._frontend import libuv_fire_at, libuv_poll_at
from ._replicas import _Rep, _Replicas
from .deployment import FrontendCPU, HostCPU, ModelDeployment
from .errors import SimConfigError
from .records import MemberRecord

__all__ = ["_HostCpuDriver"]

_INF = float("inf")


def _demand_of(m: ModelDeployment) -> Any:
    """``m.cpu_demand_s`` with its profile's mean per batch size computed once."""
    means: dict[int, float] = {}
    demand = m.cpu_demand_s
    mean_s = m.profile.mean_s

    def of(size: int, draw_s: float) -> float:
        mean = means.get(size)
        if mean is None:
            mean = means[size] = mean_s(size)
        return demand(size, draw_s, mean)

    return of


# a stalled core runs this many times slower: nothing, for the length of a stall
STALL_FACTOR = 1e6


class _Stalls:
    """A host's speeds with its cores' stalls laid over them (``HostCPU.stalls_s``): the
    speed procs set each core's own factor here, a stall multiplies it by
    ``STALL_FACTOR`` while it lasts."""

    __slots__ = ("host", "base", "stalled")

    def __init__(self, host: HostCpu) -> None:
        self.host = host
        self.base = list(host.core_factors)
        self.stalled = [False] * host.cores

    def _apply(self, core: int, now: float) -> None:
        f = self.base[core]
        self.host.set_core_factor(core, f * STALL_FACTOR if self.stalled[core] else f, now)

    def set_factor(self, factor: float, now: float) -> None:
        self.base = [factor] * self.host.cores
        if not any(self.stalled):
            self.host.set_factor(factor, now)
            return
        for c in range(self.host.cores):
            self._apply(c, now)

    def set_core_factor(self, core: int, factor: float, now: float) -> None:
        self.base[core] = factor
        self._apply(core, now)

    def stall(self, core: int, on: bool, now: float) -> None:
        self.stalled[core] = on
        self._apply(core, now)


class _HostCpuDriver(_Replicas):
    """The host CPU model's parts of ``Simulation`` (installed by ``_hc_setup``)."""

    _cpus: dict[str, HostCpu] | None
    _fcost: FrontendCPU | None
    _fhost: HostCpu
    _fproc: CpuProc
    _ghost: HostCpu | None
    _gproc: CpuProc | None
    _gcost_s: float
    _gwake_s: float
    _greply_s: float  # the reply's part of the generator's per-query cost
    _ggap_s: float  # with _greply_s: the idle time a reply's wake-up is scaled by
    _greplies: bool
    _burst: list[tuple[float, Done]] | None
    _turn_s: float  # frontend_cpu.parse_turn_s (0: arrivals are FIFO jobs like the rest)
    _parse_wait: collections.deque[tuple[float, Done]]  # arrivals waiting for a turn
    _parsing: bool  # an arrival's parse is in the loop's jobs
    _turn_end: float | None  # when the current turn ends (None: it begins at the next parse)
    _demand_of: list[Any]  # per model: its ModelDeployment.cpu_demand_s

    # ------------------------------------------------------------------ set-up
    def _hc_setup(self, hc: HostCPU) -> None:
        dep = self.deployment
        env = self.env
        fc = self._fcost = dep.frontend_cpu
        self._fc = None  # the default path's eager loop stays off; costs come from _fcost
        cpus: dict[str, HostCpu] = {
            h.name: (SlicedHostCpuState(env, h.name, hc.cores(h), hc.slice_s, hc.tick_s,
                                        hc.newidle)
                     if hc.slice_s > 0 else HostCpuState(env, h.name, hc.cores(h)))
            for h in dep.hosts}
        self._cpus = cpus
        if self.record_cpu_waits:
            for h in cpus.values():
                if isinstance(h, SlicedHostCpuState):
                    h.wait_log = {}
        fh = hc.frontend_host or dep.hosts[0].name
        self._fhost = cpus[fh]
        self._fproc = cpus[fh].proc("frontend", fc.wake_s if fc else 0.0,
                                    fc.cold_after_s if fc else 1e-3)
        self._gcost_s = float(hc.loadgen_cpu_per_query_s)
        self._gwake_s = float(hc.loadgen_wake_s)
        self._greplies = hc.loadgen_replies and (self._gcost_s > 0 or self._gwake_s > 0)
        self._greply_s = self._gcost_s * hc.loadgen_reply_share if self._greplies else 0.0
        self._gcost_s -= self._greply_s
        self._ggap_s = float(hc.loadgen_idle_gap_s)
        if self._gcost_s > 0 or self._gwake_s > 0 or self._greply_s > 0:
            gh = cpus[hc.loadgen_host or fh]
            self._ghost, self._gproc = gh, gh.proc("loadgen")
        else:
            self._ghost = self._gproc = None
        for rep in self._reps.values():
            rep.cpu = cpus[rep.host].proc(str(rep.rid))
        self._demand_of = [_demand_of(m) for m in dep.models]
        self._burst = None
        self._turn_s = fc.parse_turn_s if fc else 0.0
        self._parse_wait = collections.deque()
        self._parsing = False
        self._turn_end = None
        # the hooks (see the module's theory of operation)
        self.carry_out = self._hc_carry_out  # type: ignore[method-assign]
        self.reply = self._hc_reply  # type: ignore[method-assign]
        self.send_batch = self._hc_send_batch  # type: ignore[method-assign]
        self.feedback_applied = self._hc_feedback_applied  # type: ignore[method-assign]
        self._done = self._hc_done  # type: ignore[method-assign]
        self._fire = self._hc_fire  # type: ignore[method-assign]
        self._replica = self._hc_replica  # type: ignore[method-assign]
        self._schedule_timer = self._hc_schedule_timer  # type: ignore[method-assign]
        self._pause_loop = self._hc_pause_loop  # type: ignore[method-assign]
        self._loop_busy = self._hc_loop_busy  # type: ignore[method-assign]

    def _hc_finish(self) -> None:
        """After the run: the loop's CPU time and every process's, by name."""
        assert self._cpus is not None
        self.loop_busy_s = self._fproc.busy_s
        self.loop_wake_s = self._fproc.wake_busy_s
        self.cpu_busy_s = {f"{h.name}/{p.name}": p.busy_s for h in self._cpus.values()
                           for p in h.procs}
        self.cpu_wait_s = {f"{h.name}/{p.name}": p.wait_s for h in self._cpus.values()
                           for p in h.procs}
        self.cpu_wait_log = {f"{h.name}/{name}": w for h in self._cpus.values()
                             if isinstance(h, SlicedHostCpuState) and h.wait_log
                             for name, w in h.wait_log.items()}

    # ------------------------------------------------------------------ the loop's jobs
    def _loop_job(self, cost_s: float, now: float, done: Done) -> None:
        self._fhost.submit(self._fproc, cost_s, now, done)

    def _parse_job(self, cost_s: float, now: float, done: Done) -> None:
        """An arrival's (or feedback's) parse on the loop: a FIFO job, or with
        ``parse_turn_s`` in turns (the module's rules)."""
        if not self._turn_s:
            self._loop_job(cost_s, now, done)
        elif self._parsing:
            self._parse_wait.append((cost_s, done))
        else:
            self._parsing = True
            self._turn_end = None
            self._loop_job(cost_s, now, partial(self._parsed, cost_s, done))

    def _parsed(self, cost_s: float, done: Done, now: float) -> None:
        """A parse is done: its handler runs, then the next waiting arrival is queued
        next while the turn lasts, else behind what came meanwhile."""
        p = self._fproc
        n = len(p.jobs)
        if done is not None:
            done(now)
        if self._turn_end is None:  # the turn's first parse: it began when that started
            self._turn_end = now - cost_s + self._turn_s
        wait = self._parse_wait
        if not wait:
            self._parsing = False
            return
        c, d = wait.popleft()
        job = partial(self._parsed, c, d)
        if now < self._turn_end:
            self._fhost.submit_next(p, [(c, job)], now, after=len(p.jobs) - n)
        else:
            self._turn_end = None
            self._fhost.submit(p, c, now, job)

    def _hc_carry_out(self, instructions: list[Instruction], now: float) -> None:
        burst: list[tuple[float, Done]] = []
        self._burst = burst
        try:
            Driver.carry_out(self, instructions, now)
        finally:
            self._burst = None
        self._fhost.submit_next(self._fproc, burst, now)

    def _hc_reply(self, reply: Reply, now: float) -> None:
        fc = self._fcost
        self._add_job(fc.reply_s if fc else 0.0,
                      partial(self._reply_to_loadgen if self._greplies else self._reply_at,
                              reply), now)

    def _reply_to_loadgen(self, reply: Reply, now: float) -> None:
        """The loop has written ``reply``: the generator reads it (``loadgen_replies``),
        waking first if it was idle."""
        gproc, ghost = self._gproc, self._ghost
        assert gproc is not None and ghost is not None
        cost = self._greply_s
        if (not gproc.jobs and not gproc.running and not gproc.in_done
                and now >= gproc.held_until and now > gproc.idle_since):
            cost += self._gwake_s * -math.expm1(-(now - gproc.idle_since) / self._ggap_s)
        ghost.submit(gproc, cost, now, partial(self._reply_at, reply))

    def _reply_at(self, reply: Reply, now: float) -> None:
        self._r_at.append(now)
        self._r_reply.append(reply)

    def _hc_feedback_applied(self, applied: FeedbackApplied, now: float) -> None:
        fc = self._fcost
        self._add_job(fc.reply_s if fc else 0.0,
                      partial(self._fb_applied_at, applied), now)

    def _fb_applied_at(self, applied: FeedbackApplied, now: float) -> None:
        self._fb_applied.append((now, applied))

    def _hc_send_batch(self, sb: SendBatch, now: float) -> None:
        fc = self._fcost
        cost = fc.batch_send_s + fc.item_s * len(sb.inputs) if fc else 0.0
        # the batch's timeline starts when the loop has sent it: the default path's
        # send_batch (the eager loop is off) at that time
        self._add_job(cost, partial(_Replicas.send_batch, self, sb), now)

    def _add_job(self, cost_s: float, done: Done, now: float) -> None:
        burst = self._burst
        if burst is not None:
            burst.append((cost_s, done))
        else:
            self._loop_job(cost_s, now, done)

    def _hc_done(self, rep: _Rep, sb: SendBatch, now: float) -> None:
        """A batch is back at the frontend: the loop handles its result."""
        rep.idle_since = now
        row = rep.inflight.pop(self.fe_index, None)
        if row is not None:
            row.done_at = now
            row.status = "done"
        if self.record_members:
            self._members.append(MemberRecord(sb.inputs, rep.model_idx, now))
        fc = self._fcost
        cost = fc.batch_done_s + fc.item_s * len(sb.inputs) if fc else 0.0
        self._loop_job(cost, now, partial(self._batch_result, rep, sb))

    def _batch_result(self, rep: _Rep, sb: SendBatch, now: float) -> None:
        self.handle(self.engine.on_batch_done(self._batch_done(rep, sb), self.not_before(now)),
                    now)
        if self._early:
            self._wake_timers(now)

    # ------------------------------------------------------------------ the timer
    def _hc_schedule_timer(self, at: float) -> None:
        heapq.heappush(self._timers, at)
        env = self.env
        fire = at
        fc = self._fcost
        if fc is not None and fc.timer_resolution_s > 0:
            fire = libuv_poll_at(env.now, at, fc.timer_resolution_s)
            early = libuv_fire_at(env.now, at, fc.timer_resolution_s)
            if early < fire:  # the loop busy then runs it early (_wake_timers)
                heapq.heappush(self._early, (early, at))
        ev = env.timeout(fire - env.now if fire > env.now else 0.0, value=at)
        ev.callbacks.append(self._fire)

    def _hc_fire(self, ev: simpy.Event) -> None:
        at: float = ev.value  # type: ignore[assignment]
        drop_due(self._timers, at)
        self._loop_job(0.0, self.env.now, partial(self._timer_at_loop, at))

    def _timer_at_loop(self, deadline: float, now: float) -> None:
        self._timer_due(now, deadline)

    # ------------------------------------------------------------------ speed
    def _speed_procs(self, hc: HostCPU) -> None:
        """Start one ``_speed_proc`` per host (``HostCPU.speed_swings``, or one speed with
        a ``reference_factor``, or a ``speed_trace``), and with ``HostCPU.stalls`` one
        ``_stall_proc`` per stalling core of every host."""
        assert self._cpus is not None
        end = float(self.arrival_at[-1]) if len(self.arrival_at) else 0.0
        per = len(hc.speed_trace[0]) - 1 if hc.speed_trace else 1
        speeds = hc.speed_swings or hc.reference_factor is not None or bool(hc.speed_trace)
        for k, host in enumerate(self._cpus.values()):
            if per > 1 and per != host.cores:
                raise SimConfigError(f"host_cpu.speed_trace: {per} factors per row, but "
                                     f"host {host.name!r} has {host.cores} cores")
            sp: Any = _Stalls(host) if hc.stalls else host
            if hc.stalls:
                for c, lengths in enumerate(hc.stalls_s[:host.cores]):
                    if lengths:
                        rng = np.random.default_rng([self.seed, 405, k, c])
                        self.env.process(self._stall_proc(
                            sp, c, len(lengths) / hc.stalls_span_s, lengths, rng, end))
            if not speeds:
                continue
            if hc.core_speeds and not hc.speed_trace and hc.speed_swings:
                for c in range(host.cores):
                    rng = np.random.default_rng([self.seed, 404, k, c])
                    self.env.process(self._speed_proc(
                        sp, hc, rng, end, partial(sp.set_core_factor, c)))
                continue
            rng = np.random.default_rng([self.seed, 404, k])
            self.env.process(self._speed_proc(sp, hc, rng, end, sp.set_factor))

    def _stall_proc(self, sp: _Stalls, core: int, rate_hz: float,
                    lengths: tuple[float, ...], rng: np.random.Generator, end: float) -> Any:
        """Core ``core`` of ``sp``'s host stalls at ``rate_hz`` (exponential intervals),
        each stall one of ``lengths`` drawn at random, until ``end``."""
        env = self.env
        pick = np.asarray(lengths, dtype=np.float64)
        while True:
            t = env.now + float(rng.exponential(1.0 / rate_hz))
            if t > end:
                return
            yield env.timeout(t - env.now)
            sp.stall(core, True, env.now)
            yield env.timeout(float(pick[rng.integers(pick.size)]))
            sp.stall(core, False, env.now)

    def _speed_proc(self, host: Any, hc: HostCPU, rng: np.random.Generator,
                    end: float, set_factor: Any) -> Any:
        """``host``'s speed (or one core's: ``set_factor``) until ``end`` (see the
        module's rules); ``host``: the host, or its ``_Stalls``."""
        env = self.env
        m = hc.reference
        if hc.speed_trace:  # the speed as it was
            for row in hc.speed_trace:
                at = row[0]
                if at > env.now:
                    yield env.timeout(at - env.now)
                if len(row) == 2:
                    host.set_factor(row[1] / m, env.now)
                else:
                    for c, f in enumerate(row[1:]):
                        host.set_core_factor(c, f / m, env.now)
            return
        if not hc.speed_swings:  # one speed, measured against another time's
            set_factor(1.0 / m, 0.0)
            return
        share = hc.share
        if hc.measured_dwells:
            drawn = {True: np.asarray(hc.slow_dwells_s, dtype=np.float64),
                     False: np.asarray(hc.fast_dwells_s, dtype=np.float64)}

            def period(slow: bool) -> float:
                d = drawn[slow]
                return float(d[rng.integers(d.size)])
        else:
            mean = {True: hc.slow_dwell_s, False: hc.slow_dwell_s * (1.0 - share) / share}

            def period(slow: bool) -> float:
                return float(rng.exponential(mean[slow]))
        slow = bool(rng.random() < share)
        t = 0.0
        while t <= end:
            set_factor((hc.slow_factor if slow else 1.0) / m, t)
            t += period(slow)
            slow = not slow
            if t > end:
                return
            yield env.timeout(t - env.now)

    # ------------------------------------------------------------------ pauses
    def _hc_pause_loop(self, start: float, duration_s: float) -> None:
        self._fhost.hold(self._fproc, start + duration_s, start)

    def _hc_loop_busy(self) -> float:
        return self._fproc.busy_s

    # ------------------------------------------------------------------ replicas
    def _hc_replica(self, rep: _Rep, gen: int) -> Any:
        """One replica incarnation: per batch, wait for the inputs, run the container's
        CPU job on its host, then the rest of the draw and the way back."""
        env = self.env
        host = self._cpus[rep.host]  # type: ignore[index]
        demand_of = self._demand_of[rep.model_idx]
        while True:
            sb, done_at = yield rep.wake
            if rep.gen != gen:
                return
            rep.wake = env.event()
            row = rep.inflight.get(self.fe_index)
            assert row is not None
            arrive = row.start_at
            service = rep.service_s
            back_s = max(done_at - arrive - service, 0.0)  # the link back
            # the CPU follows the profile's draw; a wake-up's and a fault's time are off it
            demand = demand_of(row.padded_size, rep.draw_s)
            if arrive > env.now:
                yield env.timeout(arrive - env.now)
                if rep.gen != gen:
                    return
            ran = env.event()
            host.submit(rep.cpu, demand, env.now, ran.succeed)
            yield ran
            if rep.gen != gen:
                return
            off_cpu = service - demand if service > demand else 0.0
            yield env.timeout(off_cpu + back_s)
            if rep.gen != gen:
                return
            self._done(rep, sb, env.now)

    # ------------------------------------------------------------------ arrivals
    def _hc_frontend(self) -> Any:
        """Feed arrivals and feedback in time order, each a job at its time (see the
        module's theory of operation)."""
        env = self.env
        peek = env.peek
        arrivals = self.arrival_at.tolist()
        n = len(arrivals)
        fb_at = self.fb_at.tolist()
        m = len(fb_at)
        make_query = self._query_maker()
        fc = self._fcost
        q_cost = fc.query_s if fc else 0.0
        gproc, ghost, gcost, gwake = self._gproc, self._ghost, self._gcost_s, self._gwake_s
        i = j = 0
        last_t, woke = -_INF, False
        nxt_a = arrivals[0] if n else _INF
        nxt_f = fb_at[0] if m else _INF
        while i < n or j < m:
            t = nxt_a if nxt_a <= nxt_f else nxt_f
            if t >= peek():
                yield env.timeout(t - env.now)
                while peek() <= t:
                    yield env.timeout(0)
                continue
            if nxt_a <= nxt_f:
                job = partial(self._query_at, make_query(i))
                if gproc is not None:
                    assert ghost is not None
                    if gwake > 0 and t != last_t:  # a new tick: did it wake the generator?
                        last_t = t
                        woke = not gproc.jobs and not gproc.running and t >= gproc.held_until
                    ghost.submit(gproc, gcost, t, partial(self._parse_job, q_cost, done=job))
                else:
                    self._parse_job(q_cost, t, job)
                i += 1
                nxt_a = arrivals[i] if i < n else _INF
                if woke and nxt_a != t:  # the tick's last send: its wake-up's CPU
                    assert ghost is not None and gproc is not None
                    woke = False
                    ghost.submit(gproc, gwake, t)
            else:
                self._parse_job(q_cost, t, partial(self._feedback_at, self._feedback(j)))
                j += 1
                nxt_f = fb_at[j] if j < m else _INF

    def _query_at(self, q: Query, now: float) -> None:
        f = self.now_floor  # Driver.not_before, inlined
        self.handle(self.engine.on_query(q, f if now < f else now), now)
        if self._early:
            self._wake_timers(now)

    def _feedback_at(self, fb: Feedback, now: float) -> None:
        self.handle(self.engine.on_feedback(fb, self.not_before(now)), now)
        if self._early:
            self._wake_timers(now)

    def _wake_timers(self, now: float) -> None:
        """The loop, awake at ``now`` for an event, runs the timers whose due time its
        millisecond clock has passed (``libuv_fire_at``), early."""
        early = self._early
        while early and early[0][0] <= now:
            self._timer_due(now, heapq.heappop(early)[1])

    def _query_maker(self) -> Any:
        """``i -> Query`` for this run's trace (application, cache key, user context)."""
        src = self._src
        apps = self.app_names
        app_of = [apps[j] for j in src.tolist()]
        cache_rows = [t.cacheable for t in self.traces]
        cacheable = np.asarray(cache_rows)[src].tolist() if any(cache_rows) else None
        in_idx = self.input_index.tolist()
        ctx = None if self.context is None else [None if c < 0 else c
                                                 for c in self.context.tolist()]

        def make(i: int) -> Query:
            key = ("input", in_idx[i]) if cacheable is not None and cacheable[i] else None
            return Query(i, app_of[i], i, key, ctx[i] if ctx is not None else None)

        self._cacheable_rows = cacheable
        self._ctx_rows = ctx
        self._app_rows = app_of
        return make

    def _feedback(self, j: int) -> Feedback:
        q = int(self.fb_query[j])
        cacheable = self._cacheable_rows
        key = ("input", int(self.input_index[q])) if (
            cacheable is not None and cacheable[q]) else None
        ctx = self._ctx_rows
        return Feedback(feedback_id=j, app=self._app_rows[q], label=int(self.labels[q]),
                        input=q, input_key=key, context=ctx[q] if ctx is not None else None,
                        query_id=q)

    # attributes the driver sets up (declared for the type checker)
    _src: np.ndarray
    app_names: list[str]
    traces: list[Any]
    input_index: np.ndarray
    context: np.ndarray | None
    fb_at: np.ndarray
    fb_query: np.ndarray
    labels: np.ndarray
    cpu_busy_s: dict[str, float]
    cpu_wait_s: dict[str, float]
    record_cpu_waits: bool
    cpu_wait_log: dict[str, list[float]]
    _cacheable_rows: list[bool] | None
    _ctx_rows: list[Any] | None
    _app_rows: list[str]
