"""The simulated frontend: its one engine timer, and its event loop's CPU time.

Timer.  The engine's timer slot (``clipperlab.engine.driver``) is armed with a SimPy
timeout that fires at the slot's time.  SimPy cannot cancel a timeout, so a timer the slot
no longer holds still fires: it finds the engine not due and only makes sure the slot's
own timeout is scheduled (``_ensure_timer``).  Arming is lazy the same way: a slot time
later than a pending timeout is scheduled when that earlier one fires.  So at every
instant some pending timeout is at or before the slot's time, and the engine's
``on_timer`` runs exactly when its deadline is reached.

Event loop (``Deployment.frontend_cpu``).  The frontend is one event loop, as in the real
server: every arrival, feedback, batch result and timer enters a FIFO and reaches the
engine when the loop is done with what came before it plus its own cost; each reply and
batch send the engine returns costs the loop more time.  A loop that had gone idle pays a
wake-up cost; it also loses the CPU now and then (pauses).  Without ``frontend_cpu``
events reach the engine at once and cost nothing (the paper's setting, the fast path).
"""

from __future__ import annotations

import collections
import heapq
import math
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import simpy

from clipperlab.engine import BatchDone, Reply, SendBatch, batch_done_of
from clipperlab.engine.driver import Driver

from ._cpu import drop_due
from .deployment import Deployment, FrontendCPU, Link
from .records import BatchRecord, MemberRecord

if TYPE_CHECKING:
    from clipperlab.engine import FeedbackApplied

    from ._cpu import HostCpu
    from ._replicas import _Rep

__all__ = ["_Frontend", "_LinkState", "_wake_cost"]


class _LinkState:
    """A network link's settings and when it is next free (FIFO transfers)."""

    __slots__ = ("bandwidth_bps", "latency_s", "free_at")

    def __init__(self, link: Link) -> None:
        self.bandwidth_bps = link.bandwidth_bps
        self.latency_s = link.latency_s
        self.free_at = 0.0


def libuv_fire_at(now: float, at: float, res: float) -> float:
    """The earliest a timer armed at ``now`` for ``at`` can fire on uvloop (timer
    resolution ``res``): uvloop rounds the delay to whole milliseconds and libuv counts it
    from its loop clock, ``now`` cut down to the millisecond, so a loop that wakes for
    another event once that clock has passed runs the timer up to a millisecond early;
    never before ``now``.  The real driver then clamps the engine's time up to the
    deadline (``engine.driver.Driver.on_timer``): a delayed batch leaves early."""
    fire = math.floor(now / res) * res + round((at - now) / res) * res
    return fire if fire > now else now


def libuv_poll_at(now: float, at: float, res: float) -> float:
    """When that timer fires on a loop that sleeps until it: ``epoll_wait`` sleeps the
    rounded delay from the real time (on time, or up to half a millisecond either way)."""
    fire = now + round((at - now) / res) * res
    return fire if fire > now else now


class _Inbound(NamedTuple):
    """An internal event waiting for the frontend's loop: a batch result (``rep`` and
    ``batch`` set) or a timer (both None; ``deadline``: the time it was armed for)."""

    at: float
    rep: _Rep | None
    batch: SendBatch | None
    deadline: float = math.inf


def _wake_cost(wake_s: float, idle_s: float, cold_after_s: float) -> float:
    """What waking up costs after ``idle_s`` asleep: ``wake_s x (1 - exp(-idle /
    cold_after_s))`` (``FrontendCPU.wake_s``, ``ModelDeployment.wake_s``)."""
    return wake_s * -math.expm1(-idle_s / cold_after_s)


class _Frontend(Driver):
    """The frontend's timer and event loop (a part of ``Simulation``); also declares the
    fields the simulation's parts share."""

    deployment: Deployment
    seed: int
    record_members: bool
    env: simpy.Environment
    n: int
    arrival_at: np.ndarray
    _fc: FrontendCPU | None
    _fe: _LinkState | None  # the frontend's own link, when shared
    _loop_free: float  # when the frontend's event loop is next idle (frontend_cpu)
    _inbox: collections.deque[_Inbound]
    _timers: list[float]  # heap: times of the pending SimPy timeouts
    _early: list[tuple[float, float]]  # heap: (earliest fire, deadline) of armed timers
    _outputs: list[list[Any]]  # per model, its output for every query
    _reps: dict[Any, _Rep]
    _uniform_bytes: int | None
    _row_bytes: list[int] | None
    loop_busy_s: float  # CPU seconds the loop has spent
    loop_wake_s: float  # the part of it spent waking up
    pauses: list[tuple[float, float]]  # (start, duration) of each pause
    replica_wake_s: float  # what the containers' wake-ups added (ModelDeployment)
    record_wake_idle: bool
    replica_idle_s: list[float]  # each wake-up's idle time (s), with record_wake_idle
    _r_at: list[float]
    _r_reply: list[Reply]
    _b_rows: list[BatchRecord]
    _fb_applied: list[tuple[float, FeedbackApplied]]
    _members: list[MemberRecord]
    crashes: list[tuple[float, str, str]]
    _cpus: dict[str, HostCpu] | None  # per host, with a host CPU model (_hostcpu.py)
    fe_index: int  # this frontend's position (Deployment.frontends)
    _nfe: int  # how many frontends
    _fes: list[Any]  # every frontend (this simulation first), sharing the containers

    # ------------------------------------------------------------------ the timer
    def arm_timer(self, at: float) -> None:
        timers = self._timers
        if not timers or at < timers[0]:
            self._schedule_timer(at)
        # else: an earlier timeout is pending; when it fires, _ensure_timer schedules this

    def cancel_timer(self) -> None:
        """Nothing to do: SimPy cannot cancel a timeout; the old one fires, finds the
        engine not due, and is ignored."""

    def _ensure_timer(self) -> float:
        """Schedule the slot's timeout unless an earlier one is pending; returns the
        earliest pending timeout (inf when none)."""
        at = self.timer_at
        timers = self._timers
        first = timers[0] if timers else math.inf
        if at is not None and at < first:
            self._schedule_timer(at)
            return at
        return first

    def _schedule_timer(self, at: float) -> None:
        """A SimPy timeout at ``at`` that fires the engine's timer."""
        heapq.heappush(self._timers, at)
        env = self.env
        fire = at
        fc = self._fc
        if fc is not None and fc.timer_resolution_s > 0:
            now = env.now if env.now > self._loop_free else self._loop_free
            fire = libuv_poll_at(now, at, fc.timer_resolution_s)
            early = libuv_fire_at(now, at, fc.timer_resolution_s)
            if early < fire:  # the loop busy then runs it early (_loop_run)
                heapq.heappush(self._early, (early, at))
        ev = env.timeout(fire - env.now if fire > env.now else 0.0, value=at)
        ev.callbacks.append(self._fire)

    def _fire(self, ev: simpy.Event) -> None:
        at: float = ev.value  # type: ignore[assignment]
        drop_due(self._timers, at)
        if self._fc is not None:
            self._inbox.append(_Inbound(self.env.now, None, None, at))
            return
        self._timer_due(at)

    def _timer_due(self, now: float, deadline: float = math.inf) -> None:
        """A timeout armed for ``deadline`` fired and the loop runs it at ``now``:
        ``on_timer`` when the engine's deadline is reached, or when it is ``deadline``
        and the timer came early (the engine then sees its deadline, as the real
        driver's clamp makes it), else (a replaced timer) make sure the slot's is
        pending."""
        nd = self.engine.next_deadline()
        if nd is not None and nd <= now:
            self.on_timer(now)
        elif nd is not None and nd == deadline:
            # early: the engine acts at its deadline, what it returns is carried out now
            # (the real driver's instructions take effect when it runs them)
            self.timer_at = None
            if nd > self.now_floor:  # no later engine call goes before it (Driver rule 4)
                self.now_floor = nd
            self.handle(self.engine.on_timer(nd), now)
        self._ensure_timer()

    # ------------------------------------------------------------------ the event loop
    def _handle_inbox(self, fc: FrontendCPU) -> None:
        """The event loop handles the oldest internal event (a batch result or a timer)."""
        at, rep, sb, deadline = self._inbox.popleft()
        if rep is None or sb is None:  # a timer
            self._timer_due(self._loop_run(at, 0.0), deadline)
            return
        t = self._loop_run(at, fc.batch_done_s + fc.item_s * len(sb.inputs))
        self.on_batch_done(self._batch_done(rep, sb), t)
        self._ensure_timer()

    def _batch_done(self, rep: _Rep, sb: SendBatch) -> BatchDone:
        """The engine event for a finished batch: the model's outputs for its inputs."""
        outs = self._outputs[rep.model_idx]
        inputs = sb.inputs
        return batch_done_of(sb.replica, sb.batch_id, [outs[inputs[0]]] if len(inputs) == 1
                             else list(map(outs.__getitem__, inputs)))

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
        early = self._early
        if early and early[0][0] <= t:  # awake past a timer's due time: it runs next
            while early and early[0][0] <= t:
                self._inbox.append(_Inbound(t, None, None, heapq.heappop(early)[1]))
        return t

    def _pause_proc(self, fc: FrontendCPU) -> Any:
        """The frontend loses the CPU at Poisson times until the last arrival, at
        ``pause_rate_hz + pause_rate_busy_hz x u`` where ``u`` is the loop's busy share
        since the previous candidate (thinning); each pause holds the loop for a duration
        drawn from ``pauses_s``."""
        env = self.env
        k = self.fe_index
        rng = np.random.default_rng([self.seed, 303] if k == 0 else [self.seed, 303, k])
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
                busy = self._loop_busy()
                u = min(max((busy - busy_prev) / (t - t_prev), 0.0), 1.0) if t > t_prev else 0.0
                t_prev, busy_prev = t, busy
                if rng.random() * top > fc.pause_rate_hz + fc.pause_rate_busy_hz * u:
                    continue
            d = float(durations[rng.integers(durations.size)])
            self._pause_loop(t, d)
            self.pauses.append((t, d))

    def _pause_loop(self, start: float, duration_s: float) -> None:
        """The loop loses the CPU from ``start`` for ``duration_s``."""
        lf = self._loop_free
        self._loop_free = (start if start > lf else lf) + duration_s

    def _loop_busy(self) -> float:
        """CPU seconds the loop has spent so far."""
        return self.loop_busy_s
