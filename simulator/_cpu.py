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
  tens of microseconds, waiting out another task's slice, or behind it on its core's
  own run queue) is ``SlicedHostCpuState`` (``HostCPU.slice_s`` > 0: Linux's EEVDF
  scheduler, per-core run queues; the calibration's twin uses the kernel's slice);
  without it, that wait is left to the frontend's fitted ``pauses_s``.
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
# Linux's periodic load balance runs at the scheduler tick (4 ms at the common HZ = 250):
# an idle core takes a task waiting on another core's run queue then, not at once
BALANCE_TICK_S = 4e-3


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
                 "left_s", "busy_s", "wake_busy_s", "idle_since", "wake_s", "cold_after_s",
                 "wait_s")

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
        # time runnable without a core (a run queue's wait: time-sliced hosts; processor
        # sharing has no queue and leaves it 0), the kernel's schedstat run_delay
        self.wait_s = 0.0
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

    def submit_next(self, p: CpuProc, jobs: list[tuple[float, Done]], now: float,
                    after: int = 0) -> None:
        """Queue ``jobs`` (in order) ahead of ``p``'s waiting jobs, behind the one it is
        running: work an event's handler creates runs before the next event; with
        ``after``, behind the first ``after`` waiting jobs too (a handler's own work,
        queued just before)."""
        if not jobs:
            return
        if not p.jobs and not p.running and not p.in_done:
            for d, done in jobs:
                self.submit(p, d, now, done)
            return
        # behind the job being served; in a job's done callback that job is already off
        # the queue (time slices keep the core through the callback: ``running``)
        at = (1 if (p.running or p.left_s is not None) and not p.in_done else 0) + after
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
    """One host's cores handed out as Linux's scheduler (EEVDF, 6.6 on) does
    (``HostCPU.slice_s`` > 0); the same calls as ``HostCpuState``.

    Rules (each core has its own run queue; a process's *virtual time* is the CPU time
    it has received, its *deadline* a slice ahead of it, its *lag* what its core owed it
    when it left):
    - A process that becomes runnable (a job submitted to it while idle, a hold
      ending) runs on its last core if free, else on a free core.  With every core
      taken, woken by a process in its done callback (a job's end hands its result on:
      the generator's send, a container's batch, the loop's reply), it joins the
      waker's core's queue and gets that core when the waker blocks, as the kernel's
      sync wake-up does (``wake_affine``: a socket write wakes its reader on the
      writer's CPU; without it the event loop queued behind the container's slice on
      its own core: at the forest's 4,051 q/s step it waited 20% of the time in waits
      of 0.4 ms, p90 1.2 ms, where ``perf sched`` showed the server's loop waiting 5.8%
      in waits of 48 us, p99 0.15 ms; with it, 5.9% in waits of 97 us, p99 0.14 ms;
      ``results/validation/quiet-2026-12-04-v/sched_waits.md``).  Otherwise it joins
      the run queue of a core whose running process has had a slice since it got the
      core (its own core first, else the one running longest), else its own core's (a
      process that never ran: the shortest queue's).  It is placed
      at the core's average virtual time less its lag, scaled as the kernel's
      ``place_entity`` does, with a deadline a slice on.  A process leaving a core
      (blocking, held, moved) takes its lag along, at most ``max(2 x slice_s,
      tick_s)`` either way.
    - The kernel's pick on a core: of the processes there whose virtual time is at most
      their average (eligible), the earliest deadline.  A freed core (its process
      blocked, was held or crashed) goes to its queue's pick; an empty queue leaves it
      idle, even while another core's queue waits, until a balance tick (every
      ``tick_s``, the scheduler tick: 4 ms at the common HZ = 250), when each idle core
      takes the longest-waiting process of the longest queue.  With ``newidle`` a core
      whose queue is empty takes that process at once, as the kernel's newidle balance
      does when a CPU goes idle (the calibration's twin since 2026-12-05: without it,
      at the forest's 30,000-43,000 q/s on two nearly full cores, the twin's loop
      waited for a core 17-26% of the time where the server's waited 3-17%, and the
      twin's ramps failed at 25,000 q/s where the server passed 40,000;
      ``results/validation/quiet-2026-12-05-b``).
    - Scheduling points: a process joining a core's queue, every job's end on the
      host, and every tick.  At one, a running process past its deadline gets a new one
      and, once it has run a slice since it got the core (``RUN_TO_PARITY``), gives the
      core to the pick when that is another process (it goes to the back of the queue,
      what is left of its job kept).  So a process woken while the cores are busy
      preempts one that has had its turn and otherwise waits for the core it was
      queued on, which may mean waiting behind a long job while the other core idles:
      the waits measured with ``perf sched`` on two cores (the frontend, a container
      and the load generator; 2026-12-02), which one FIFO queue for all cores did not
      give (a container waited 0.7% of the time there, 6.9% on the machine; this
      model: 8.0%; ``results/validation/sched-2026-12-02/``).  Slices going to zero
      give processor sharing (``HostCpuState``).
    - Holds, wake-up costs, ``submit_next``, ``cancel`` and the callbacks' order are as
      in ``HostCpuState``.

    Theory of operation: each process on a core has the wall time its current stretch
    began (``run_since``), the demand left of its head job then (``left_s``), its
    virtual time as of ``vsince`` (``vr``: brought up to date lazily, one wall second
    of running a virtual second), its virtual time when it got the core (``vpick``) and
    its deadline (``dl``).  The host keeps a SimPy timeout at or before the next change
    (a job's end, or the next tick while somebody waits) and, when it fires, finishes
    every due job in time order of the processes' dispatch (a process's own done
    callback runs while it still holds its core), then holds a scheduling point on every
    core, and at a tick balances the idle cores."""

    __slots__ = ("env", "name", "cores", "slice_s", "tick_s", "newidle", "running", "queues",
                 "vbase", "timeouts", "procs", "seq", "factor", "core_factors", "wait_log")

    def __init__(self, env: simpy.Environment, name: str, cores: int,
                 slice_s: float, tick_s: float = BALANCE_TICK_S, newidle: bool = False
                 ) -> None:
        if cores < 1:
            raise ValueError(f"host {name!r}: cores must be >= 1, got {cores}")
        if not (slice_s > 0.0 and math.isfinite(slice_s)):
            raise ValueError(f"host {name!r}: slice_s must be > 0 seconds, got {slice_s}")
        self.env = env
        self.name = name
        self.cores = cores
        self.slice_s = slice_s
        self.tick_s = tick_s
        self.newidle = newidle
        self.running: list[SlicedProc] = []
        # each core's run queue
        self.queues: list[collections.deque[SlicedProc]] = [
            collections.deque() for _ in range(cores)]
        self.vbase = [0.0] * cores  # a core's average virtual time when it emptied
        # when set: every wait for a core, per process name (``bench/sched_waits.py``)
        self.wait_log: dict[str, list[float]] | None = None
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
    def _members(self, core: int, now: float) -> list[SlicedProc]:
        """The processes on ``core``'s run queue and the one running there (its virtual
        time brought up to ``now``)."""
        out = list(self.queues[core])
        for r in self.running:
            if r.core == core:
                r.vr += now - r.vsince
                r.vsince = now
                out.append(r)
        return out

    def _avg(self, members: list[SlicedProc], core: int) -> float:
        """The average virtual time of ``members`` (none: the core's when it emptied)."""
        return (sum(m.vr for m in members) / len(members) if members
                else self.vbase[core])

    def _place(self, p: SlicedProc, core: int, now: float) -> None:
        """``p`` joins ``core``: its virtual time the core's average less the lag it
        left with (scaled as the kernel's ``place_entity`` does), a slice to its
        deadline."""
        members = self._members(core, now)
        avg = self._avg(members, core)
        n = len(members)
        p.vr = avg - (p.vlag * (n + 1) / n if n else p.vlag)
        p.dl = p.vr + self.slice_s
        p.core = core

    def _leave(self, p: SlicedProc, now: float) -> None:
        """``p`` leaves its core (sleeps, is held, or moves): the lag it takes along."""
        members = self._members(p.core, now)
        if p not in members:
            members.append(p)
        avg = self._avg(members, p.core)
        lim = max(2.0 * self.slice_s, self.tick_s)
        p.vlag = min(max(avg - p.vr, -lim), lim)
        rest = [m for m in members if m is not p]
        self.vbase[p.core] = self._avg(rest, p.core) if rest else avg

    def _pick(self, core: int, now: float) -> SlicedProc | None:
        """EEVDF's choice on ``core``: of the processes there (queued and running) whose
        virtual time is at most their average (eligible), the earliest deadline."""
        members = self._members(core, now)
        if not members:
            return None
        avg = self._avg(members, core)
        eps = _REL_EPS * (1.0 + abs(avg))
        best = None
        for m in members:
            if m.vr <= avg + eps and (best is None or m.dl < best.dl):
                best = m
        return best if best is not None else min(members, key=_by_deadline)

    def _runnable(self, p: SlicedProc, now: float) -> None:
        """``p`` wakes: onto its last core if free, else a free core, else the run queue
        of the core whose process woke it from its done callback (a sync wake-up), else
        of a core whose process has had a slice since it got it (its own first, else the
        one running longest), else its own core's (a process that never ran: the
        shortest queue's); then a scheduling point there (``_check``)."""
        taken = {r.core for r in self.running}
        c = p.core
        if len(taken) < self.cores:
            if c < 0 or c in taken:
                c = next(k for k in range(self.cores) if k not in taken)
            self._place(p, c, now)
            self._dispatch(p, now, c)
            return
        # every core taken: a wake-up made by a process in its done callback (the waker,
        # about to block or take its next job) goes to the waker's core, as the kernel's
        # sync wake-up does (a socket write wakes its reader on the writer's CPU); else
        # where the running process has run past its protection (the kernel lets a
        # sleeper preempt a task that has had its turn), its own core first, else the
        # one running longest; none: its own core's queue
        best_c, best_run = -1, -1.0
        for r in self.running:
            if r.in_done and r is not p:
                best_c = r.core
                break
        else:
            for r in self.running:
                ran = r.vr + (now - r.vsince) - r.vpick
                if r.in_done or ran < self.slice_s:
                    continue
                if r.core == c:
                    best_c = c
                    break
                if ran > best_run:
                    best_c, best_run = r.core, ran
        if best_c >= 0:
            c = best_c
        elif c < 0:
            c = min(range(self.cores), key=lambda k: len(self.queues[k]))
        self._place(p, c, now)
        p.queued = True
        p.queued_at = now
        self.queues[c].append(p)
        self._check(c, now)

    def _check(self, core: int, now: float) -> None:
        """A scheduling point on ``core`` (a wake-up there, a job's end on the host, a
        tick): the running process, past its deadline, gets a new one, and once it has
        run a slice since it got the core it gives the core to the kernel's pick."""
        cur = next((r for r in self.running if r.core == core), None)
        if cur is None or cur.in_done or not self.queues[core]:
            return
        cur.vr += now - cur.vsince
        cur.vsince = now
        eps = _REL_EPS * (1.0 + abs(cur.vr))
        if cur.vr + eps >= cur.dl:
            cur.dl = cur.vr + self.slice_s  # its slice is out: a new deadline
        elif cur.vr - cur.vpick + eps < self.slice_s:
            return  # a slice from its pick not run yet (RUN_TO_PARITY)
        best = self._pick(core, now)
        if best is None or best is cur:
            return
        self._off(cur, now, keep_core=False)
        cur.queued = True
        cur.queued_at = now
        self.queues[core].append(cur)
        self.queues[core].remove(best)
        best.queued = False
        self._dispatch(best, now, core)

    def _dispatch(self, p: SlicedProc, now: float, core: int) -> None:
        """``p`` onto free core ``core``."""
        if p.queued_at >= 0.0:
            self._waited(p, now)
        if p.left_s is None:
            p.left_s = p.jobs[0][0]
        p.core = core
        p.running = True
        p.run_since = now
        p.vsince = now
        p.vpick = p.vr
        p.order = self.seq
        self.seq += 1
        self.running.append(p)

    def _off(self, p: SlicedProc, now: float, keep_core: bool = True) -> None:
        """Take ``p`` off its core or out of its run queue (what is left kept, its lag
        taken along); a freed core goes to the kernel's pick of its queue
        (``keep_core=False``: the caller gives it)."""
        if p.running:
            if p.left_s is not None:  # None: taken off in its own done callback
                p.left_s = max(p.left_s - (now - p.run_since) / self.core_factors[p.core],
                               0.0)
            p.vr += now - p.vsince
            p.vsince = now
            p.running = False
            self.running.remove(p)
            if keep_core:
                self._leave(p, now)
                self._freed(p.core, now)
        elif p.queued:
            p.queued = False
            self._waited(p, now)
            self.queues[p.core].remove(p)
            self._leave(p, now)

    def _waited(self, p: SlicedProc, now: float) -> None:
        """``p`` leaves a run queue: its wait counted (and logged)."""
        w = now - p.queued_at
        p.wait_s += w
        p.queued_at = -1.0
        if self.wait_log is not None:
            self.wait_log.setdefault(p.name, []).append(w)

    def _freed(self, core: int, now: float) -> None:
        """Core ``core`` has no process: the kernel's pick of its run queue takes it (an
        empty queue leaves it idle until a balance tick, ``_balance``; with ``newidle``
        it takes the longest-waiting process of the longest other queue at once)."""
        nxt = self._pick(core, now)
        if nxt is not None:
            self.queues[core].remove(nxt)
            nxt.queued = False
            self._dispatch(nxt, now, core)
        elif self.newidle:
            self._pull(core, now)

    def _pull(self, core: int, now: float) -> bool:
        """Idle ``core`` takes the longest-waiting process of the longest run queue, if
        any waits (a balance: the tick's, or newidle's)."""
        q = max(self.queues, key=len)
        if not q:
            return False
        nxt = q.popleft()
        nxt.queued = False
        self._leave(nxt, now)
        self._place(nxt, core, now)
        self._dispatch(nxt, now, core)
        return True

    def _balance(self, now: float) -> None:
        """At a tick, each idle core takes the longest-waiting process of the longest
        other run queue (Linux balances load at its ticks: a task queued behind another
        may wait while a core idles until then)."""
        if len(self.running) >= self.cores:
            return
        taken = {r.core for r in self.running}
        for c in range(self.cores):
            if c not in taken and not self._pull(c, now):
                return

    def _due(self, now: float) -> float:
        """The next change: a job's end, or the next tick while somebody waits."""
        at = _INF
        cf = self.core_factors
        for p in self.running:
            end = p.run_since + (p.left_s or 0.0) * cf[p.core]
            if end < at:
                at = end
        queues = self.queues
        if any(queues):
            tick = (math.floor(now / self.tick_s * (1.0 + _REL_EPS)) + 1) * self.tick_s
            if tick < at:
                at = tick
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
        if any(self.queues):
            for c in range(self.cores):
                self._check(c, now)
            tick = self.tick_s
            if abs(now - round(now / tick) * tick) <= eps:
                self._balance(now)
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
        p.vr += now - p.vsince
        p.vsince = now
        p.running = False
        self.running.remove(p)
        if not p.jobs:
            p.idle_since = now
        self._leave(p, now)
        self._freed(p.core, now)

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

    __slots__ = ("run_since", "order", "queued", "queued_at", "core", "vr", "vsince", "dl",
                 "vlag", "vpick")

    def __init__(self, name: str, wake_s: float = 0.0, cold_after_s: float = 1e-3) -> None:
        super().__init__(name, wake_s, cold_after_s)
        self.core = -1  # the core it holds, waits for, or last held (-1: none yet)
        self.run_since = 0.0
        self.order = 0
        self.queued = False
        self.queued_at = -1.0  # when it joined a run queue (-1: in none)
        self.vr = 0.0  # virtual time: CPU time received, the kernel's vruntime
        self.vsince = 0.0  # when ``vr`` was last brought up to date (while running)
        self.dl = 0.0  # virtual deadline: ``vr`` at its slice's end
        self.vlag = 0.0  # what its core owed it when it left (EEVDF's lag)
        self.vpick = 0.0  # ``vr`` when it last got a core


def _by_order(p: SlicedProc) -> int:
    return p.order


def _by_deadline(p: SlicedProc) -> float:
    return p.dl


_INF = math.inf

HostCpu = HostCpuState | SlicedHostCpuState  # a host of either discipline
