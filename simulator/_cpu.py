"""Host CPUs: each host's cores shared by its processes, by processor sharing or in
time slices.

Rules (``Deployment.host_cpu``, ``HostCPU``):
- A host has ``cores``; its processes (the frontend's event loop, each replica's container,
  the load generator) each run their jobs one after another (FIFO), a job being CPU
  seconds of work (its *demand*).  A process with work is *runnable*; with ``n``
  runnable processes on ``c`` cores each runs at rate ``min(1, c / n)`` (egalitarian
  processor sharing): alone or with a free core a job takes its demand in wall time;
  three busy processes on two cores each get two thirds of a core.
- Why processor sharing by default: Linux gives runnable tasks equal shares of the cores
  over a few milliseconds, and processor sharing is the limit of that with small slices:
  exact for the long jobs (a batch of milliseconds, many slices), with closed forms to
  test against (M/G/1-PS).  What slices add for the short jobs (the frontend's events,
  tens of microseconds, waiting out another task's slice) is ``SlicedHostCpuState``
  (``HostCPU.slice_s`` > 0; the calibration's twin uses the kernel's slice); without
  it, that wait is left to the frontend's fitted ``pauses_s``.
- A host has a speed factor (``set_factor``, 1 until set; ``HostCPU``'s two speeds): a
  job's demand takes ``factor`` times as long while it runs, and a change of factor
  applies from that moment to what is left of every running job.  Each core can have a
  speed of its own (``set_core_factor``: a virtual machine's cores slow down one at a
  time): in time slices a job runs at the speed of the core it holds; under processor
  sharing, which has no cores, the host runs at their total speed (``cores`` over the
  sum of ``1 / factor``).
- A process can be *held* (``hold``: the frontend's pauses, time the host takes from it
  besides contention): it is not runnable until then, and its job resumes where it was.
  A process that had gone idle pays ``wake_s x (1 - exp(-idle / cold_after_s))`` of CPU
  on its next job.

Theory of operation.  All runnable processes of a host progress at the same rate, so the
host keeps one *virtual time* ``v`` (CPU seconds each runnable process has received) and
a heap of each running job's finishing virtual time: a job of demand ``d`` started at
``v0`` finishes when ``v`` reaches ``v0 + d``.  The next completion is at wall time
``t + (finish - v) / rate``; the host keeps a SimPy timeout at or before it (like the
frontend's timer, a stale one only makes it look again) and, when it fires, completes
every job whose finish ``v`` has reached, calling its ``done(now)``.  A job of no demand
on an idle process completes at once, in the caller.  One SimPy timeout per change of a
host's runnable set, no SimPy process at all.
"""

from __future__ import annotations

import collections
import heapq
import math
from collections.abc import Callable, Sequence

import simpy

__all__ = ["CpuProc", "HostCpu", "HostCpuState", "SlicedHostCpuState", "SlicedProc",
           "drop_due", "total_factor"]

Done = Callable[[float], object] | None
_REL_EPS = 1e-12  # a job within this share of v of its finish is done (rounding)


def total_factor(factors: Sequence[float]) -> float:
    """The factor of cores at ``factors`` together: their count over the sum of their
    speeds (``1 / factor``), what a host's total throughput of work runs at (two cores
    at x1 and x2 do the work of two at x4/3)."""
    return len(factors) / sum(1.0 / f for f in factors)


def drop_due(heap: list[float], at: float) -> None:
    """Pop from the min-heap of pending timeout times every one at or before ``at``: the
    timeout for ``at`` fired, so it and every earlier one are no longer pending."""
    while heap and heap[0] <= at:
        heapq.heappop(heap)


class CpuProc:
    """A process on a host: its FIFO of jobs (demand in CPU seconds, done callback)."""

    __slots__ = ("name", "jobs", "running", "in_done", "token", "finish_v", "held_until",
                 "left_s", "busy_s", "wake_busy_s", "idle_since", "wake_s", "cold_after_s")

    def __init__(self, name: str, wake_s: float = 0.0, cold_after_s: float = 1e-3) -> None:
        self.name = name
        self.jobs: collections.deque[tuple[float, Done]] = collections.deque()
        self.running = False  # its head job is being served (has a heap entry)
        self.in_done = False  # a job's done callback is running
        self.token = 0  # bumped whenever its heap entry goes stale
        self.finish_v = 0.0
        self.held_until = -math.inf
        self.left_s: float | None = None  # demand left of a job interrupted by a hold
        self.busy_s = 0.0  # CPU seconds served (wake-ups included)
        self.wake_busy_s = 0.0  # the wake-ups' part of it (CPU seconds asked)
        self.idle_since = 0.0
        self.wake_s = wake_s
        self.cold_after_s = cold_after_s


class _Host:
    """What both disciplines share: ``submit_next`` and ``busy_s`` over their ``submit``
    and ``procs``."""

    __slots__ = ()
    procs: list[CpuProc]
    env: simpy.Environment
    timeouts: list[float]  # heap: pending SimPy timeouts

    def submit(self, p: CpuProc, demand_s: float, now: float, done: Done = None) -> None:
        raise NotImplementedError

    def _fire(self, ev: simpy.Event) -> None:
        raise NotImplementedError

    def _arm(self, at: float) -> None:
        """A SimPy timeout at ``at`` calling ``_fire``, unless an earlier one is pending
        (it looks again when it fires)."""
        timeouts = self.timeouts
        if timeouts and timeouts[0] <= at:
            return
        heapq.heappush(timeouts, at)
        env = self.env
        ev = env.timeout(at - env.now if at > env.now else 0.0, value=at)
        ev.callbacks.append(self._fire)

    def _fired(self, ev: simpy.Event) -> None:
        """The timeout ``ev`` fired: it and every earlier one are no longer pending."""
        at: float = ev.value  # type: ignore[assignment]
        drop_due(self.timeouts, at)

    def submit_next(self, p: CpuProc, jobs: list[tuple[float, Done]], now: float) -> None:
        """Queue ``jobs`` (in order) ahead of ``p``'s waiting jobs, behind the one it is
        running: work an event's handler creates runs before the next event."""
        if not jobs:
            return
        if not p.jobs and not p.running and not p.in_done:
            for d, done in jobs:
                self.submit(p, d, now, done)
            return
        # behind the job being served; in a job's done callback that job is already off
        # the queue (time slices keep the core through the callback: ``running``)
        at = 1 if (p.running or p.left_s is not None) and not p.in_done else 0
        for k, job in enumerate(jobs):
            p.jobs.insert(at + k, job)

    def busy_s(self) -> float:
        return sum(p.busy_s for p in self.procs)


class HostCpuState(_Host):
    """One host's cores and the processes sharing them (see the module's rules)."""

    __slots__ = ("env", "name", "cores", "v", "t", "n_run", "heap", "seq", "timeouts",
                 "procs", "factor", "core_factors")

    def __init__(self, env: simpy.Environment, name: str, cores: int) -> None:
        if cores < 1:
            raise ValueError(f"host {name!r}: cores must be >= 1, got {cores}")
        self.env = env
        self.name = name
        self.cores = cores
        self.v = 0.0  # virtual time: CPU seconds received by every runnable process
        self.t = 0.0  # the wall time v is at
        self.n_run = 0
        self.heap: list[tuple[float, int, CpuProc, int]] = []
        self.seq = 0
        self.timeouts: list[float] = []  # heap: pending SimPy timeouts
        self.procs: list[CpuProc] = []
        self.factor = 1.0  # the host's speed: demands take this many times as long
        self.core_factors = [1.0] * cores

    def proc(self, name: str, wake_s: float = 0.0, cold_after_s: float = 1e-3) -> CpuProc:
        p = CpuProc(name, wake_s, cold_after_s)
        self.procs.append(p)
        return p

    # ------------------------------------------------------------------ calls
    def submit(self, p: CpuProc, demand_s: float, now: float, done: Done = None) -> None:
        """Queue a job of ``demand_s`` CPU seconds on ``p`` at ``now``; ``done(t)`` is
        called when it finishes (at once when ``p`` is idle and the job costs nothing)."""
        if not p.jobs and not p.running and not p.in_done and now >= p.held_until:
            w = self._wake(p, now)
            if demand_s + w <= 0.0:
                if done is not None:
                    done(now)
                return
            self._advance(now)
            p.wake_busy_s += w
            p.jobs.append((demand_s + w, done))
            self._start(p)
            self._reschedule()
            return
        p.jobs.append((demand_s, done))

    def cancel(self, p: CpuProc, now: float) -> None:
        """Drop ``p``'s jobs (a crashed container): none of their callbacks is called."""
        self._advance(now)
        if p.running:
            self._stop(p)
        p.jobs.clear()
        p.left_s = None
        self._reschedule()

    def hold(self, p: CpuProc, until: float, now: float) -> None:
        """``p`` does not run until ``until``; its running job resumes then."""
        if until <= p.held_until:
            return
        self._advance(now)
        if p.running:
            p.left_s = max(p.finish_v - self.v, 0.0)
            self._stop(p)
            self._reschedule()
        p.held_until = until
        ev = self.env.timeout(until - self.env.now if until > self.env.now else 0.0,
                              value=(p, until))
        ev.callbacks.append(self._unhold)

    def set_factor(self, factor: float, now: float) -> None:
        """From ``now`` on, work takes ``factor`` times its demand (the host's speed)."""
        self._advance(now)
        self.factor = factor
        self.core_factors = [factor] * self.cores
        self._reschedule()

    def set_core_factor(self, core: int, factor: float, now: float) -> None:
        """Core ``core``'s speed from ``now`` on; with no cores to hold, the host runs at
        the cores' total speed (``cores / sum(1 / factor)``)."""
        self._advance(now)
        self.core_factors[core] = factor
        self.factor = total_factor(self.core_factors)
        self._reschedule()

    # ------------------------------------------------------------------ internals
    def _rate(self) -> float:
        n = self.n_run
        return (1.0 if n <= self.cores else self.cores / n) / self.factor

    def _advance(self, now: float) -> None:
        if now > self.t:
            if self.n_run:
                self.v += (now - self.t) * self._rate()
            self.t = now

    def _wake(self, p: CpuProc, now: float) -> float:
        if p.wake_s and now > p.idle_since:
            return p.wake_s * -math.expm1(-(now - p.idle_since) / p.cold_after_s)
        return 0.0

    def _start(self, p: CpuProc) -> None:
        """Serve ``p``'s head job (or what a hold left of it) from now."""
        if p.left_s is not None:
            d, p.left_s = p.left_s, None
        else:
            d = p.jobs[0][0]
        p.token += 1
        p.running = True
        p.finish_v = self.v + d
        self.n_run += 1
        heapq.heappush(self.heap, (p.finish_v, self.seq, p, p.token))
        self.seq += 1

    def _stop(self, p: CpuProc) -> None:
        p.running = False
        p.token += 1
        self.n_run -= 1

    def _reschedule(self) -> None:
        heap = self.heap
        while heap and heap[0][3] != heap[0][2].token:
            heapq.heappop(heap)
        if not heap:
            return
        dt = (heap[0][0] - self.v) / self._rate()
        at = self.t + (dt if dt > 0.0 else 0.0)
        self._arm(at)

    def _fire(self, ev: simpy.Event) -> None:
        self._fired(ev)
        now = self.env.now
        self._advance(now)
        heap = self.heap
        while heap:
            fv, _, p, tok = heap[0]
            if tok != p.token:
                heapq.heappop(heap)
                continue
            # done when v has reached its finish, or when what is left is too little to
            # move the clock (what _reschedule would schedule is now): never a loop of
            # zero-length timeouts
            if fv > self.v + _REL_EPS * (1.0 + self.v) and (
                    self.t + (fv - self.v) / self._rate() > now):
                break
            heapq.heappop(heap)
            self._finish(p, now)
        self._reschedule()

    def _finish(self, p: CpuProc, now: float) -> None:
        """``p``'s head job is done at ``now``: count it, call back, start the next."""
        d, done = p.jobs.popleft()
        self._stop(p)
        p.busy_s += d
        if done is not None:
            p.in_done = True  # the callback's own work (submit_next) goes first
            done(now)
            p.in_done = False
        if p.jobs and now >= p.held_until:
            self._start(p)
        elif not p.jobs:
            p.idle_since = now

    def _unhold(self, ev: simpy.Event) -> None:
        p, until = ev.value  # type: ignore[misc]
        if until < p.held_until:
            return  # a later hold replaced this one
        self._advance(self.env.now)
        if not p.running and (p.jobs or p.left_s is not None):
            self._start(p)
        self._reschedule()


class SlicedHostCpuState(_Host):
    """One host's cores handed out in time slices (``HostCPU.slice_s`` > 0), as the
    kernel's scheduler does; the same calls as ``HostCpuState``.

    Rules:
    - A runnable process runs on a free core at full speed.  One that becomes runnable
      (a job submitted to it while idle, a hold ending) when every core is taken waits
      in one FIFO run queue: it gets a core when a running process blocks (its last job
      done, a hold, a crash) or when a running process's slice ends while somebody
      waits (that process goes to the back of the queue, what is left of its job kept).
    - A process given a core starts a slice of ``slice_s``; running on with nobody
      waiting, it starts a new slice every ``slice_s``, so one that comes to wait finds
      the current slices part-used.  This is Linux's EEVDF with ``RUN_TO_PARITY`` (the
      default since 6.6): a task woken while the cores are busy does not preempt, it
      waits out the running task's slice (0.75 ms x (1 + log2 of the cores, at most 8)).
      Slices going to zero give processor sharing (``HostCpuState``); with slices, a
      short job (the frontend's event, tens of microseconds) that finds the cores taken
      by longer ones waits up to a slice, and a loop that waits queues everything behind
      it: the tail that processor sharing leaves to the fitted pauses.
    - Holds, wake-up costs, ``submit_next``, ``cancel`` and the callbacks' order are as
      in ``HostCpuState``.

    Theory of operation: each process on a core has the wall time its current stretch
    began (``run_since``), the demand left of its head job then (``left_s``) and its
    slice's end (``slice_end``).  The host keeps a SimPy timeout at or before the next
    change (a job's end, or a slice's end while somebody waits) and, when it fires,
    finishes every due job and ends every due slice, in time order of the processes'
    dispatch (a process's own done callback runs while it still holds its core)."""

    __slots__ = ("env", "name", "cores", "slice_s", "running", "waiting", "timeouts",
                 "procs", "seq", "factor", "core_factors")

    def __init__(self, env: simpy.Environment, name: str, cores: int,
                 slice_s: float) -> None:
        if cores < 1:
            raise ValueError(f"host {name!r}: cores must be >= 1, got {cores}")
        if not (slice_s > 0.0 and math.isfinite(slice_s)):
            raise ValueError(f"host {name!r}: slice_s must be > 0 seconds, got {slice_s}")
        self.env = env
        self.name = name
        self.cores = cores
        self.slice_s = slice_s
        self.running: list[SlicedProc] = []
        self.waiting: collections.deque[SlicedProc] = collections.deque()
        self.timeouts: list[float] = []
        self.procs: list[CpuProc] = []
        self.seq = 0
        self.factor = 1.0  # the cores' total speed (informational: cores run at their own)
        self.core_factors = [1.0] * cores  # each core's: demands take this many times as long

    def proc(self, name: str, wake_s: float = 0.0, cold_after_s: float = 1e-3) -> CpuProc:
        p = SlicedProc(name, wake_s, cold_after_s)
        self.procs.append(p)
        return p

    # ------------------------------------------------------------------ calls
    def submit(self, p: CpuProc, demand_s: float, now: float, done: Done = None) -> None:
        """As ``HostCpuState.submit``."""
        assert isinstance(p, SlicedProc)
        if not p.jobs and not p.running and not p.in_done and now >= p.held_until:
            w = p.wake_s * -math.expm1(-(now - p.idle_since) / p.cold_after_s) if (
                p.wake_s and now > p.idle_since) else 0.0
            if demand_s + w <= 0.0:
                if done is not None:
                    done(now)
                return
            p.wake_busy_s += w
            p.jobs.append((demand_s + w, done))
            self._runnable(p, now)
            self._reschedule(now)
            return
        p.jobs.append((demand_s, done))

    def cancel(self, p: CpuProc, now: float) -> None:
        """As ``HostCpuState.cancel``."""
        assert isinstance(p, SlicedProc)
        self._off(p, now)
        p.jobs.clear()
        p.left_s = None
        self._reschedule(now)

    def hold(self, p: CpuProc, until: float, now: float) -> None:
        """As ``HostCpuState.hold``."""
        assert isinstance(p, SlicedProc)
        if until <= p.held_until:
            return
        self._off(p, now)
        p.held_until = until
        self._reschedule(now)
        ev = self.env.timeout(until - self.env.now if until > self.env.now else 0.0,
                              value=(p, until))
        ev.callbacks.append(self._unhold)

    def set_factor(self, factor: float, now: float) -> None:
        """As ``HostCpuState.set_factor``, for every core: what each running process has
        left is counted up to ``now`` at the old speed; slices are wall time and do not
        move."""
        for c in range(self.cores):
            self._core_speed(c, factor, now)
        self.factor = factor
        self._reschedule(now)

    def set_core_factor(self, core: int, factor: float, now: float) -> None:
        """Core ``core``'s speed from ``now`` on (``set_factor`` for one core): the process
        holding it has what is left counted at the old speed."""
        self._core_speed(core, factor, now)
        self.factor = total_factor(self.core_factors)
        self._reschedule(now)

    def _core_speed(self, core: int, factor: float, now: float) -> None:
        old = self.core_factors[core]
        for p in self.running:
            if p.core == core:
                if p.left_s is not None:
                    p.left_s = max(p.left_s - (now - p.run_since) / old, 0.0)
                p.run_since = now
        self.core_factors[core] = factor

    # ------------------------------------------------------------------ internals
    def _runnable(self, p: SlicedProc, now: float) -> None:
        """``p`` has work: a core if one is free, else the back of the run queue."""
        if len(self.running) < self.cores:
            self._dispatch(p, now)
            return
        if not self.waiting:  # slices run on unwatched until now: find where each is
            s = self.slice_s
            for r in self.running:
                if r.slice_end <= now:
                    r.slice_end += math.ceil((now - r.slice_end) / s) * s
                    if r.slice_end <= now:
                        r.slice_end += s
        p.queued = True
        self.waiting.append(p)

    def _dispatch(self, p: SlicedProc, now: float) -> None:
        """``p`` onto a free core: the one it last ran on when that is free (as the
        kernel wakes a task on its previous CPU when idle), else the lowest free one."""
        if p.left_s is None:
            p.left_s = p.jobs[0][0]
        taken = [r.core for r in self.running]
        c = p.core
        if c < 0 or c in taken:
            c = next(k for k in range(self.cores) if k not in taken)
        p.core = c
        p.running = True
        p.run_since = now
        p.slice_end = now + self.slice_s
        p.order = self.seq
        self.seq += 1
        self.running.append(p)

    def _off(self, p: SlicedProc, now: float) -> None:
        """Take ``p`` off its core or out of the run queue (what is left kept); a freed
        core goes to the head of the queue."""
        if p.running:
            if p.left_s is not None:  # None: taken off in its own done callback
                p.left_s = max(p.left_s - (now - p.run_since) / self.core_factors[p.core],
                               0.0)
            p.running = False
            self.running.remove(p)
            if self.waiting:
                self._dispatch(self._next_waiting(), now)
        elif p.queued:
            p.queued = False
            self.waiting.remove(p)

    def _next_waiting(self) -> SlicedProc:
        q = self.waiting.popleft()
        q.queued = False
        return q

    def _due(self, now: float) -> float:
        """The next change: a job's end, or a slice's end while somebody waits."""
        at = _INF
        waiting = bool(self.waiting)
        cf = self.core_factors
        for p in self.running:
            end = p.run_since + (p.left_s or 0.0) * cf[p.core]
            if end < at:
                at = end
            if waiting and p.slice_end < at:
                at = p.slice_end
        return at

    def _reschedule(self, now: float) -> None:
        at = self._due(now)
        if at != _INF:
            self._arm(at)

    def _fire(self, ev: simpy.Event) -> None:
        self._fired(ev)
        now = self.env.now
        eps = _REL_EPS * (1.0 + now)
        cf = self.core_factors
        progressed = True
        while progressed:
            progressed = False
            for p in sorted(self.running, key=_by_order):
                if not p.running:
                    continue
                if p.run_since + (p.left_s or 0.0) * cf[p.core] <= now + eps:
                    self._finish(p, now)
                    progressed = True
                elif self.waiting and p.slice_end <= now + eps:
                    self._off(p, now)  # preempted: the head of the queue takes the core
                    p.queued = True
                    self.waiting.append(p)
                    progressed = True
        self._reschedule(now)

    def _finish(self, p: SlicedProc, now: float) -> None:
        """``p``'s head job is done at ``now``: count it, call back, go on or block."""
        d, done = p.jobs.popleft()
        p.busy_s += d
        p.left_s = None
        if done is not None:
            p.in_done = True
            done(now)
            p.in_done = False
        if not p.running:  # held or cancelled by its own callback: already off
            if not p.jobs:
                p.idle_since = now
            return
        if p.jobs and now >= p.held_until:
            p.left_s = p.jobs[0][0]
            p.run_since = now
            return
        p.running = False
        self.running.remove(p)
        if not p.jobs:
            p.idle_since = now
        if self.waiting:
            self._dispatch(self._next_waiting(), now)

    def _unhold(self, ev: simpy.Event) -> None:
        p, until = ev.value  # type: ignore[misc]
        if until < p.held_until:
            return
        now = self.env.now
        if not p.running and not p.queued and (p.jobs or p.left_s is not None):
            self._runnable(p, now)
        self._reschedule(now)


class SlicedProc(CpuProc):
    """A process on a ``SlicedHostCpuState`` host."""

    __slots__ = ("run_since", "slice_end", "order", "queued", "core")

    def __init__(self, name: str, wake_s: float = 0.0, cold_after_s: float = 1e-3) -> None:
        super().__init__(name, wake_s, cold_after_s)
        self.core = -1  # the core it holds, or last held (-1: none yet)
        self.run_since = 0.0
        self.slice_end = 0.0
        self.order = 0
        self.queued = False


def _by_order(p: SlicedProc) -> int:
    return p.order


_INF = math.inf

HostCpu = HostCpuState | SlicedHostCpuState  # a host of either discipline
