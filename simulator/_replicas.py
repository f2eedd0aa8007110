"""Simulated replicas: one SimPy event per batch, batches, crashes.

On ``SendBatch`` the batch's whole timeline is computed at once: the inputs cross the
host's link (FIFO, ``batch x input_bytes x 8 / bandwidth_bps`` plus the link latency; the
frontend's NIC is shared when configured), the container computes for a draw from the
latency profile at the padded size (a container that slept pays a wake-up; stragglers slow
it down), and the outputs come back after the link latency. One SimPy timeout at that time
(an entry on the driver's own heap when it runs without SimPy: ``_send_own``, the same
timeline without the branches such a run cannot take) reports the batch done (no
process per replica: a process cost a wake-up event and two generator resumes per batch).
The engine sends a replica one batch at a time. A crash ends the replica's incarnation
(``gen``): its batch in flight is lost (recorded ``"lost"``) and its timeout, when it
fires, finds a newer incarnation and does nothing. The host CPU model (``_hostcpu.py``)
keeps one process per incarnation instead: its batches wait for a CPU between the link and
the way back.

Several frontends (``Deployment.frontends``): each frontend's engine sends a replica one
batch at a time, so a container may hold one batch per frontend.  It computes them one at
a time in the order they reached it (``free_at``: when it is done with what it has): a
batch that finds it busy starts when it is free (and pays no wake-up).  Every engine
learns of a crash and of a restart; a crash loses every batch the container holds.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import simpy

from clipperlab.engine import ReplicaId, SendBatch

from ._frontend import _Frontend, _Inbound, _LinkState, _wake_cost
from .faults import Crash, Straggler, parse_replica
from .profiles import ProfileSampler
from .records import BatchRecord, MemberRecord

__all__ = ["_Rep", "_Replicas"]

_OUTPUT_BYTES = 8  # per item on the way back


class _Rep:
    """One replica's driver-side state."""

    __slots__ = ("rid", "model_idx", "host", "link", "sampler", "stragglers", "rng", "gen",
                 "wake", "inflight", "up", "idle_since", "wake_s", "cold_after_s",
                 "service_s", "draw_s", "cpu", "free_at")

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
        self.inflight: dict[int, BatchRecord] = {}  # by frontend: its batch in the container
        self.free_at = 0.0  # when the container is done with the batches it holds
        self.up = False
        self.idle_since = 0.0  # when its last batch finished (wake-up cost)
        self.wake_s = wake_s
        self.cold_after_s = cold_after_s
        self.service_s = 0.0  # its last batch's time in the container (the host CPU model)
        self.draw_s = 0.0  # its profile draw alone (no wake-up, no straggler fault)
        self.cpu: Any = None  # its process on its host's CPU (the host CPU model)


class _Replicas(_Frontend):
    """Replica processes, batch timelines and crash faults (a part of ``Simulation``)."""

    # the driver's own heap of events, when it runs without SimPy's (driver.py)
    _events: list[tuple[float, int, _Rep | None, Any, BatchRecord | None]] | None
    _eids: itertools.count[int]

    def _start_replica(self, rep: _Rep, now: float) -> None:
        now = self._loop_at(now)
        rep.gen += 1
        rep.up = True
        rep.free_at = now
        if self._cpus is not None:  # the host CPU model: a process per incarnation
            rep.wake = self.env.event()
            self.env.process(self._replica(rep, rep.gen))
        for fe in self._fes:
            fe.on_replica_up(rep.rid, now)

    def _replica(self, rep: _Rep, gen: int) -> Any:
        """A replica incarnation's process (the host CPU model installs its own)."""
        raise NotImplementedError  # pragma: no cover - only the host CPU model has one

    def _back(self, ev: simpy.Event) -> None:
        """A batch's timeout fired: its outputs are back, unless its replica crashed (a
        newer incarnation) meanwhile."""
        rep, gen, sb = ev.value  # type: ignore[misc]
        if rep.gen == gen:
            self._done(rep, sb, self.env.now)

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
                for row in rep.inflight.values():
                    row.status = "lost"
                    row.done_at = math.nan
                rep.inflight.clear()
                if self._cpus is not None:  # the host CPU model: its CPU job is dropped
                    self._cpus[rep.host].cancel(rep.cpu, now)
                for fe in self._fes:
                    fe.on_replica_down(rid, fe._loop_at(now))
            for fe in self._fes:
                fe._ensure_timer()

    def send_batch(self, sb: SendBatch, now: float) -> None:
        """Start ``sb`` on its replica at ``now`` (when the frontend's loop has paid for
        sending it): its timeline, its record, its replica's wake-up."""
        fc = self._fc
        if fc is not None:
            cost = fc.batch_send_s + fc.item_s * len(sb.inputs)
            now = self._loop_free = self._loop_free + cost
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
        service = rep.draw_s = rep.sampler(padded)
        if self._nfe > 1 and rep.free_at > arrive:
            # the container is busy with another frontend's batch: this one waits for it
            arrive = rep.free_at
        elif rep.wake_s:
            # a container that slept pays a wake-up (ModelDeployment.wake_s)
            idle = arrive - rep.idle_since
            if idle > 0:
                w = _wake_cost(rep.wake_s, idle, rep.cold_after_s)
                self.replica_wake_s += w
                if self.record_wake_idle:
                    self.replica_idle_s.append(idle)
                service += w
        if rep.stragglers:
            for f in rep.stragglers:
                if f.from_s <= now < f.until_s:
                    service *= f.slowdown
                    if f.extra_delay_s > 0 and (
                        f.probability >= 1.0 or rep.rng.random() < f.probability
                    ):
                        service += rep.rng.exponential(f.extra_delay_s)
        rep.free_at = arrive + service
        done_at = arrive + service + lat + n * _OUTPUT_BYTES * 8.0 / bw
        rep.service_s = service
        row = BatchRecord(rep.model_idx, sb.replica.ordinal, sb.batch_id, n, padded, sb.reason,
                          now, arrive, done_at, "sent", self.fe_index)
        self._b_rows.append(row)
        rep.inflight[self.fe_index] = row
        if self._cpus is not None:  # the host CPU model's process takes it from here
            rep.wake.succeed((sb, done_at))  # type: ignore[union-attr]
            return
        # scheduled from env.now as the replica's process did, so the same float time
        # (a run on the driver's own heap sends with _send_own instead)
        env = self.env
        env.timeout(done_at - env.now, (rep, rep.gen, sb)).callbacks.append(self._back)

    def _send_own(self, sb: SendBatch, now: float) -> None:
        """``send_batch`` in a run on the driver's own heap (``driver.py``, ``_run_events``:
        no frontend loop, no host CPU model, one frontend, no faults, so no straggler and
        no crash): the same timeline and record, with the branches that cannot apply
        left out, and the record carried in the heap entry (``(time, eid, replica,
        batch, record)``) rather than in ``inflight``, which only a crash reads: 0.4 CPU us
        per batch less in the small-batch run (measured).  ``test_sim_hot_path.py`` pits
        such runs against the same runs on SimPy's queue, which take ``send_batch``."""
        rep = self._reps[sb.replica]
        inputs = sb.inputs
        n = len(inputs)
        padded = sb.padded_size if sb.padded_size > n else n
        ub = self._uniform_bytes
        if ub is not None:
            nbytes = n * ub
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
        service = rep.draw_s = rep.sampler(padded)
        if rep.wake_s:
            idle = arrive - rep.idle_since
            if idle > 0:
                w = _wake_cost(rep.wake_s, idle, rep.cold_after_s)
                self.replica_wake_s += w
                if self.record_wake_idle:
                    self.replica_idle_s.append(idle)
                service += w
        rep.free_at = arrive + service
        done_at = arrive + service + lat + n * _OUTPUT_BYTES * 8.0 / bw
        rep.service_s = service
        row = BatchRecord(rep.model_idx, sb.replica.ordinal, sb.batch_id, n, padded, sb.reason,
                          now, arrive, done_at, "sent", 0)
        self._b_rows.append(row)
        t = self.env._now  # scheduled from env.now as a SimPy timeout: the same float time
        heapq.heappush(self._events,  # type: ignore[arg-type]
                       (t + (done_at - t), next(self._eids), rep, sb, row))

    def _own_sender(self) -> Callable[[SendBatch, float], None]:
        """The ``send_batch`` of a run on the driver's own heap: ``_send_own``, or, without
        a frontend link and with one input size (the common case), the same steps as a
        closure over the run's parts (no ``self.`` look-ups, no frontend-link branches):
        0.2 CPU us per batch less in the small-batch run (measured)."""
        if self._fe is not None or self._uniform_bytes is None:
            return self._send_own
        reps = self._reps
        ub = self._uniform_bytes
        b_rows = self._b_rows
        events = self._events
        assert events is not None
        eids = self._eids
        env = self.env
        push = heapq.heappush
        out_bits = _OUTPUT_BYTES * 8.0

        def send(sb: SendBatch, now: float) -> None:
            rep = reps[sb.replica]
            inputs = sb.inputs
            n = len(inputs)
            padded = sb.padded_size
            if padded < n:
                padded = n
            link = rep.link
            start = link.free_at
            if now > start:
                start = now
            bw = link.bandwidth_bps
            xfer = n * ub * 8.0 / bw
            link.free_at = start + xfer
            lat = link.latency_s  # (+ 0.0 without a frontend link: the same sums)
            arrive = start + xfer + lat
            service = rep.draw_s = rep.sampler(padded)
            if rep.wake_s:
                idle = arrive - rep.idle_since
                if idle > 0:
                    w = _wake_cost(rep.wake_s, idle, rep.cold_after_s)
                    self.replica_wake_s += w
                    if self.record_wake_idle:
                        self.replica_idle_s.append(idle)
                    service += w
            rep.free_at = arrive + service
            done_at = arrive + service + lat + n * out_bits / bw
            rep.service_s = service
            row = BatchRecord(rep.model_idx, sb.replica.ordinal, sb.batch_id, n, padded,
                              sb.reason, now, arrive, done_at, "sent", 0)
            b_rows.append(row)
            t = env._now  # scheduled from env.now as a SimPy timeout: the same float time
            push(events, (t + (done_at - t), next(eids), rep, sb, row))

        return send

    def _done(self, rep: _Rep, sb: SendBatch, now: float) -> None:
        rep.idle_since = now
        row = rep.inflight.pop(self.fe_index, None)
        if row is not None:
            row.done_at = now  # SimPy's clock (done_at up to rounding)
            row.status = "done"
        if self.record_members:
            self._members.append(MemberRecord(sb.inputs, rep.model_idx, now))
        if self._fc is not None:
            self._inbox.append(_Inbound(now, rep, sb))  # the event loop handles it
            return
        self.handle(self.engine.on_batch_done(self._batch_done(rep, sb), now), now)
