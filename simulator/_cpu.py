"""Host CPUs: each host's cores shared by its processes, by processor sharing.

Rules (``Deployment.host_cpu``, ``HostCPU``):
- A host has ``cores``; its processes (the frontend's event loop, each replica's container,
  the load generator) each run their jobs one after another (FIFO), a job being CPU
  seconds of work (its *demand*).  A process with work is *runnable*; with ``n``
  runnable processes on ``c`` cores each runs at rate ``min(1, c / n)`` (egalitarian
  processor sharing): alone or with a free core a job takes its demand in wall time;
  three busy processes on two cores each get two thirds of a core.
- Why processor sharing and not CFS time slices: Linux's CFS gives runnable tasks equal
  shares of the cores over its scheduling period (a few ms, ``sched_latency_ns``; 0.75 ms
  minimum slices), and the jobs here are either short (the frontend's events, tens of
  microseconds, well under a slice: they queue behind whatever runs) or long (a batch of
  milliseconds, many slices: it gets its fair share).  Processor sharing is the limit of
  CFS with small slices, it is exact for the long jobs and has closed forms to test
  against (M/G/1-PS); what slices add for the short ones (waiting out a slice of another
  task) is left to the frontend's fitted ``pauses_s``.
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
from collections.abc import Callable

import simpy

__all__ = ["CpuProc", "HostCpuState"]

Done = Callable[[float], object] | None
_REL_EPS = 1e-12  # a job within this share of v of its finish is done (rounding)


class CpuProc:
    """A process on a host: its FIFO of jobs (demand in CPU seconds, done callback)."""

    __slots__ = ("name", "jobs", "running", "in_done", "token", "finish_v", "held_until",
                 "left_s", "busy_s", "idle_since", "wake_s", "cold_after_s")

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
        self.idle_since = 0.0
        self.wake_s = wake_s
        self.cold_after_s = cold_after_s


class HostCpuState:
    """One host's cores and the processes sharing them (see the module's rules)."""

    __slots__ = ("env", "name", "cores", "v", "t", "n_run", "heap", "seq", "timeouts",
                 "procs")

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
            p.jobs.append((demand_s + w, done))
            self._start(p)
            self._reschedule()
            return
        p.jobs.append((demand_s, done))

    def submit_next(self, p: CpuProc, jobs: list[tuple[float, Done]], now: float) -> None:
        """Queue ``jobs`` (in order) ahead of ``p``'s waiting jobs, behind the one it is
        running: work an event's handler creates runs before the next event."""
        if not jobs:
            return
        if not p.jobs and not p.running and not p.in_done:
            for d, done in jobs:
                self.submit(p, d, now, done)
            return
        at = 1 if p.running or p.left_s is not None else 0
        for k, job in enumerate(jobs):
            p.jobs.insert(at + k, job)

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

    def busy_s(self) -> float:
        return sum(p.busy_s for p in self.procs)

    # ------------------------------------------------------------------ internals
    def _rate(self) -> float:
        n = self.n_run
        return 1.0 if n <= self.cores else self.cores / n

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
        timeouts = self.timeouts
        if timeouts and timeouts[0] <= at:
            return  # an earlier timeout is pending: it looks again when it fires
        heapq.heappush(timeouts, at)
        env = self.env
        ev = env.timeout(at - env.now if at > env.now else 0.0, value=at)
        ev.callbacks.append(self._fire)

    def _fire(self, ev: simpy.Event) -> None:
        at: float = ev.value  # type: ignore[assignment]
        timeouts = self.timeouts
        while timeouts and timeouts[0] <= at:
            heapq.heappop(timeouts)
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
