"""Queues, batches and time: when a replica takes a batch, what a finished batch answers.

Whenever a replica of a model version is idle and the version's queue (earliest deadline
first) is not empty, the replica's batching controller decides: send a batch now
(``SendBatch``, with the reason), shed requests it cannot serve, or wait until a time the
engine reports through ``next_deadline()``.  Requests whose deadline passed in the queue
are dropped (their queries are answered by the deadline timers).  A ``BatchDone`` fills
the cache and hands each output to the tasks waiting for it; a ``BatchFailed`` counts the
model as missing for them.  Either is taken only from the replica the batch was sent to:
one that names another replica is ignored and counted
(``clipperlab_batch_results_ignored_total``).  ``_fire`` handles everything due: task deadlines and
controllers' wake-ups.  A part of ``Engine`` (``core.py``).

Small batches (issue 14): a query that finds a replica idle and its queue empty is sent
alone by ``on_query`` without entering the queue when the controller would send it
(``_send``: the decision ``_kick`` takes for a queue of one, inlined there), and a
one-query result is answered without the general loop (and, for a query of one model when
nothing is remembered or logged, without ``_finish``; its ``Prediction``, for an int
output, is one object per output and application, shared by those replies); both take the
general path's decisions, bit for bit (tests/simulator/test_sim_hot_path.py pits them
against it).
"""

from __future__ import annotations

import heapq
from typing import Any, Final

from ._answers import _FOLD_AT, _Answers, _Reply, _tuple_new, one_model_prediction
from ._state import _Batch, _Replica, _Task, _Version, _Wanted
from ._types import (
    BatchDone,
    BatchFailed,
    DefaultReason,
    Instruction,
    ReleaseReason,
    ReplicaId,
    send_batch_of,
)
from .batching import QueueView, Wait
from .metrics import Counter

# The engine's hot constants, defined once here (and in _answers) and imported by core:
# compiled (mypyc), a module global or an imported name is a dict look-up at each use
# (10-14 ns) and a Final one a C static (1 ns), imported from a module compiled with it
# too (measured on two one-function modules: 1.1 ns)
_INF: Final = float("inf")
_CAP_REACHED: Final = ReleaseReason.CAP_REACHED
_REPLICA_IDLE: Final = ReleaseReason.REPLICA_IDLE
_heappush: Final = heapq.heappush
_heappop: Final = heapq.heappop


class _Batches(_Answers):
    """Batching, batch results and timers (a part of ``Engine``)."""

    def _kick(self, ver: _Version, now: float, out: list[Instruction]) -> None:
        """Let idle replicas of ``ver`` take batches while their controllers agree."""
        queue = ver.queue
        idle = ver.idle
        while idle and queue:
            head_deadline, _, head = queue[0]
            if head_deadline <= now:
                _heappop(queue)
                self._expire(head, now)
                continue
            rep = idle[0]
            ctrl = rep.ctrl
            if ver.drop_hopeless and len(queue) > 1:
                # Alone in the queue with a replica idle, a hopeless request delays no one:
                # it is served, and its batch corrects an estimate that may be stale (one
                # slow batch would otherwise have every later request dropped for good).
                est = ctrl.latency.predict_s(min(len(queue), ctrl.cap))
                if est is not None and head_deadline < now + est:
                    _heappop(queue)
                    self._drop_hopeless(head, now, out, est)
                    continue
            qlen = len(queue)
            if rep.plain and (qlen >= ctrl.cap or not ctrl.wait_timeout_s > 0.0):
                # BatchController.decide's two branches without a wait, inlined (no
                # QueueView, no Dispatch: 0.65 us less per batch, measured)
                cap = ctrl.cap
                if qlen >= cap:
                    size, reason = cap, _CAP_REACHED
                else:
                    size, reason = qlen, _REPLICA_IDLE
                padded = 0
            else:
                d = ctrl.decide(
                    now, QueueView(qlen, head.arrival_at, ver.newest_arrival_at, head_deadline)
                )
                if isinstance(d, Wait):
                    if ver.wake_at is None or d.until_at < ver.wake_at or ver.wake_at <= now:
                        ver.wake_at = d.until_at
                        _heappush(self._wakes, (d.until_at, next(self._seq), ver))
                        if d.until_at < self.due_at:
                            self.due_at = d.until_at
                    return
                if d.shed:
                    for _ in range(min(d.shed, len(queue))):
                        self._shed(_heappop(queue)[2], now, out)
                    continue
                size, reason, padded = d.size, d.reason, d.padded_size
            reqs: list[_Wanted]
            if size >= qlen:
                # The whole queue, in the order heappop would give (deadline, then arrival):
                # one sort, linear on a queue already in deadline order (one objective,
                # queries in arrival order), against a heappop a request (2 log n tuple
                # comparisons each).  A sorted list is a heap, so the queue stays one.
                # None has expired: the head's deadline is after now (checked above).
                queue.sort()
                reqs = [e[2] for e in queue]
                queue.clear()
            else:
                reqs = []
                for _ in range(size):
                    dl, _, req = _heappop(queue)
                    if dl <= now:
                        self._expire(req, now)
                        if not queue:
                            break
                    else:
                        reqs.append(req)
                if not reqs:
                    continue
            idle.popleft()
            self._send(ver, rep, reqs, head.arrival_at, reason, padded, now, out)

    def _send(
        self,
        ver: _Version,
        rep: _Replica,
        reqs: list[_Wanted],
        head_arrival_at: float,
        reason: str,
        padded: int,
        now: float,
        out: list[Instruction],
    ) -> None:
        """``rep`` (just taken off the idle list) takes ``reqs`` as a batch: ``SendBatch``."""
        ver.wake_at = None
        ia = rep.idle_since
        assembly_at = head_arrival_at if head_arrival_at > ia else ia  # max(), inlined
        bid = next(self._batch_ids)
        batch = _Batch(bid, rep, reqs, assembly_at, ver)
        rep.batch = batch
        self._batches[bid] = batch
        n = len(reqs)
        c = ver.m_batches.get(reason)
        if c is None:
            c = self._batch_counter(ver, reason)
        c.value += 1
        h = ver.m_batch_size  # Histogram.observe, inlined as in _finish
        p = h.pending
        p.append(n)
        if len(p) >= _FOLD_AT:
            h.fold()
        out.append(
            send_batch_of(
                rep.id,
                bid,
                (reqs[0].input,) if n == 1 else tuple([r.input for r in reqs]),
                reason,
                padded if padded > n else n,
            )
        )
        if self.log is not None:
            self.log.append(("batch", now, str(rep.id), bid, n, reason))

    def _batch_counter(self, ver: _Version, reason: str) -> Counter:
        """``ver``'s counter of batches sent for ``reason`` (made on first use)."""
        c = ver.m_batches[reason] = self.metrics.counter(
            "clipperlab_batches_total",
            model=ver.mid.name,
            version=ver.mid.version,
            reason=reason,
        )
        return c

    def _expire(self, req: _Wanted, now: float) -> None:
        """A request reached its deadline in the queue; keep it only for live waiters
        with a later deadline (coalesced requests)."""
        live = [t.deadline for t in req.waiters if not t.done and t.deadline > now]
        if live:
            req.deadline = max(live)
            _heappush(req.version.queue, (req.deadline, req.seq, req))
            return
        # Every waiter's deadline has passed: the deadline timers answer them.
        req.version.m_expired.value += 1
        if req.key is not None:
            self._pending.pop((req.version.mid.name, req.version.mid.version, req.key), None)

    def _drop_hopeless(
        self, req: _Wanted, now: float, out: list[Instruction], est_s: float
    ) -> None:
        """A request that cannot make its deadline even if sent now is not computed; its
        waiters stop waiting for it (an ensemble answers with its other members, a query
        left with nothing gets the ``shed_hopeless`` default, explained)."""
        ver = req.version
        ver.m_hopeless.value += 1
        if req.key is not None:
            self._pending.pop((ver.mid.name, ver.mid.version, req.key), None)
        why = DefaultReason.EXPLANATIONS[DefaultReason.HOPELESS].format(
            model=ver.mid.name, batch_ms=est_s * 1e3, left_ms=(req.deadline - now) * 1e3
        )
        for t in req.waiters:
            if not t.done:
                t.shed = (DefaultReason.HOPELESS, why)
                t.waiting -= 1
                if t.waiting == 0:
                    self._finish(t, now, out)

    def _shed(self, req: _Wanted, now: float, out: list[Instruction]) -> None:
        req.version.m_expired.value += 1
        if req.key is not None:
            self._pending.pop((req.version.mid.name, req.version.mid.version, req.key), None)
        for t in req.waiters:
            if not t.done:
                if not t.feedback:
                    self._refuse_shed(t, now, out, req.version.mid.name)
                else:
                    t.waiting -= 1
                    if t.waiting == 0:
                        self._finish(t, now, out)

    def on_batch_done(self, done: BatchDone, now: float) -> list[Instruction]:
        return self.on_outputs(done.replica, done.batch_id, done.outputs, now)

    def on_outputs(
        self,
        replica: ReplicaId,
        batch_id: int,
        outputs: tuple[Any, ...] | list[Any],
        now: float,
    ) -> list[Instruction]:
        """``on_batch_done(BatchDone(replica=..., batch_id=..., outputs=...), now)``
        without building the event (a driver's hot path: 0.3 us per batch, measured)."""
        out: list[Instruction] = []
        if now >= self.due_at:
            self._fire(now, out)
        batch = self._batches.get(batch_id)
        if batch is None:
            return out  # the replica went down meanwhile; its requests were re-queued
        rid = batch.replica.id
        if rid is not replica and rid != replica:  # (the same object, as a rule: no compare)
            self._foreign_result(replica, now)
            return out
        n = len(outputs)
        if n != len(batch.requests):
            return out + self.on_batch_failed(
                BatchFailed(
                    replica=replica,
                    batch_id=batch_id,
                    error=f"{n} outputs for a batch of {len(batch.requests)}",
                ),
                now,
            )
        del self._batches[batch_id]
        rep = batch.replica
        ver = batch.version  # not _versions[rep.id.model_id] (a ModelId built: 1.1 us, measured)
        latency = now - batch.assembly_at
        rep.ctrl.observe(n, latency, now)
        h = ver.m_batch_latency  # Histogram.observe, inlined as in _finish
        p = h.pending
        p.append(latency)
        if len(p) >= _FOLD_AT:
            h.fold()
        ver.m_predictions.value += n
        name = ver.mid.name
        requests = batch.requests
        if n == 1 and type(requests[0]) is _Task:
            # a batch of one query that is its own request (the small-batch case): the
            # loop below for it, without zip (with on_query's direct batch: 9.3 -> 7.9 us
            # per query through the engine alone, measured)
            task = requests[0]
            if not task.done:
                output = outputs[0]
                waiting = task.waiting - 1
                task.waiting = waiting
                one = len(task.selected) == 1  # not in the condition: see Engine.on_query
                if waiting == 0 and (one and not self.remember_queries
                                     and self.log is None):
                    # _finish of a query answered by its one model, inlined (nothing to
                    # remember, no log; nothing reads its answers after): with _idle
                    # inlined, 0.4 us per query less, measured
                    task.done = True
                    latency = now - task.arrival_at
                    app = task.app
                    h = app.m_latency
                    p = h.pending
                    p.append(latency)
                    if len(p) >= _FOLD_AT:
                        h.fold()
                    pred = one_model_prediction(app, output, task.selected)
                    out.append(_tuple_new(_Reply, (task.id, pred, latency, False)))
                else:
                    task.answers[name] = output
                    if waiting == 0:
                        self._finish(task, now, out)
            rep.batch = None  # _idle, inlined
            if rep.up:
                rep.idle_since = now
                ver.idle.append(rep)
                if ver.queue:
                    self._kick(ver, now, out)
            return out
        version = ver.mid.version
        cache = self.cache
        pending = self._pending
        for req, output in zip(requests, outputs, strict=True):
            if type(req) is _Task:  # a query that is its own request
                if not req.done:
                    req.answers[name] = output
                    req.waiting -= 1
                    if req.waiting == 0:
                        self._finish(req, now, out)
                continue
            if req.key is not None:
                ck = (name, version, req.key)
                cache.put(ck, output)
                pending.pop(ck, None)
            for t in req.waiters:
                if not t.done:
                    t.answers[name] = output
                    t.waiting -= 1
                    if t.waiting == 0:
                        self._finish(t, now, out)
        self._idle(rep, ver, now, out)
        return out

    def on_batch_failed(self, failed: BatchFailed, now: float) -> list[Instruction]:
        """The model could not compute the batch: its queries count it as missing."""
        out: list[Instruction] = []
        self._fire(now, out)
        batch = self._batches.get(failed.batch_id)
        if batch is None:
            return out
        if batch.replica.id != failed.replica:
            self._foreign_result(failed.replica, now)
            return out
        del self._batches[failed.batch_id]
        rep = batch.replica
        ver = batch.version
        ver.m_errors.value += 1
        if self.log is not None:
            self.log.append(("batch_failed", now, str(rep.id), failed.batch_id, failed.error))
        for req in batch.requests:
            if req.key is not None:
                self._pending.pop((ver.mid.name, ver.mid.version, req.key), None)
            for t in req.waiters:
                if not t.done:
                    t.failed += 1
                    t.waiting -= 1
                    if t.waiting == 0:
                        self._finish(t, now, out)
        self._idle(rep, ver, now, out)
        return out

    def _foreign_result(self, replica: ReplicaId, now: float) -> None:
        """A result or failure for a batch that was sent to another replica: ignored (it
        cannot answer, fail or free anything) and counted."""
        self.metrics.counter("clipperlab_batch_results_ignored_total").value += 1
        if self.log is not None:
            self.log.append(("foreign_result", now, str(replica)))

    def _idle(self, rep: _Replica, ver: _Version, now: float, out: list[Instruction]) -> None:
        rep.batch = None
        if rep.up:
            rep.idle_since = now
            ver.idle.append(rep)
            if ver.queue:
                self._kick(ver, now, out)

    # ================================================================== time
    def next_deadline(self) -> float | None:
        """The absolute time at which ``on_timer`` must be called next (None: no timer).

        O(1): it may be a little early (a query that has since been answered); calling
        ``on_timer`` then is harmless and moves it on to the next live deadline.  After any
        ``on_*(now)`` call it is later than ``now``: whatever was due has been handled.
        ``due_at`` holds the same time as a float (``inf``: none), for a driver's hot path
        to compare without a call (the simulator's, twice per query)."""
        due = self.due_at
        return None if due == _INF else due

    def _recompute_due(self) -> float | None:
        """The exact earliest live deadline or wake-up, dropping stale timer entries."""
        best: float | None = None
        dl = self._deadlines
        while dl and dl[0][2].done:
            _heappop(dl)
        if dl:
            best = dl[0][0]
        wk = self._wakes
        while wk and wk[0][2].wake_at != wk[0][0]:
            _heappop(wk)
        if wk and (best is None or wk[0][0] < best):
            best = wk[0][0]
        for fifo in self._fifos.values():
            while fifo and fifo[0].done:
                fifo.popleft()
            if fifo and (best is None or fifo[0].deadline < best):
                best = fifo[0].deadline
        return best

    def on_timer(self, now: float) -> list[Instruction]:
        out: list[Instruction] = []
        self._fire(now, out)
        return out

    def _fire(self, now: float, out: list[Instruction]) -> None:
        dl = self._deadlines
        while dl and dl[0][0] <= now:
            task = _heappop(dl)[2]
            if not task.done:
                self._finish(task, now, out)
        for fifo in self._fifos.values():
            while fifo and fifo[0].deadline <= now:
                task = fifo.popleft()
                if not task.done:
                    self._finish(task, now, out)
        wk = self._wakes
        while wk and wk[0][0] <= now:
            at, _, ver = _heappop(wk)
            if ver.wake_at == at:
                ver.wake_at = None
                self._kick(ver, now, out)
        nxt = self._recompute_due()
        self.due_at = _INF if nxt is None else nxt
