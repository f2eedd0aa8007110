"""The engine: queues, replicas, batches, cache and selection wired together.

Theory of operation.  A query for application ``a`` arrives with ``now``.  The
application's selection policy (state kept per context) names the models to ask.  For each
model the request goes to the model's *active version*: a cache hit answers at once; a
request identical to one in flight joins it; otherwise a model request enters the
version's queue, ordered by deadline (earliest first) and shared by the version's replicas.
Whenever a replica is idle and its queue is not empty, the replica's batching controller
decides: send a batch now (``SendBatch``, with the reason) or wait until a time the engine
reports through ``next_deadline()``.  A ``BatchDone`` fills the cache and hands each output
to the queries waiting for it.  A query is answered (``Reply``) when every selected model
has answered, or at its deadline with what arrived (straggler mitigation); with nothing, or
with a confidence under the threshold, the answer is the application's default, flagged and
explained.  Requests still queued at their deadline are dropped (their queries have been
answered by then).  Feedback joins cached predictions, asks models only for what the cache
lacks, and updates the selection state.

Invariants (checked by the property tests): every admitted query gets exactly one
``Reply``; no batch exceeds its controller's cap; a non-default reply is never sent after
the query's deadline; the cache never exceeds its byte budget.

Overload (Clipper answers late queries with the default; we also refuse what cannot be
on time): a model version with ``admission_control`` predicts, before queueing a
request, when it would be answered (the queue ahead over its replicas' throughput, plus
its own batch, from the controllers' latency lines); a request predicted past its
deadline is not queued and its query is answered at once with the
``shed_predicted_late`` default, explained.  ``drop_hopeless`` does the same check again
when a batch is formed (``shed_hopeless``).  Both are counted by reason in
``clipperlab_defaults_total``.

Bounded memory: per-user selection state holds at most ``max_user_states`` users per
application (least recently used evicted, ``_state.py``); answered queries kept for
feedback at most ``remember_queries`` and ``remember_bytes`` (``_answers.py``).

Drivers call ``on_*`` with the current time and then arm one timer at
``next_deadline()``; when it fires they call ``on_timer(now)`` (``driver.py`` does this
once for every driver).  The engine's parts: ``core.py`` (replicas, queries, feedback),
``_admin.py``, ``_batches.py``, ``_answers.py``, ``_state.py``.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Hashable, Mapping
from typing import Any, Final, NamedTuple, TypeAlias

import numpy as np

from ._admin import _Admin
from ._answers import _FOLD_AT
from ._batches import _CAP_REACHED, _INF, _REPLICA_IDLE, _Batches, _heappush
from ._state import _Batch, _FeedbackTask, _Replica, _Request, _Task, _Version
from ._types import (
    DefaultReason,
    Feedback,
    Instruction,
    Query,
    ReplicaId,
    SendBatch,
    _SendBatchSlots,
)
from .batching import make_controller
from .cache import MISS, PredictionCache
from .errors import ConfigError, Conflict, NotFound
from .metrics import Metrics
from .registry import Registry

__all__ = ["Engine", "SelectionChanges"]

_new: Final = object.__new__
# Query's fields as the plain tuple Engine.on_query also takes
_QueryFields: TypeAlias = tuple[int, str, Any, Hashable | None, Hashable | None, float | None]
# Admission control admits a query when its predicted wait and batch latency, times this,
# fit before its deadline.  The engine's latency line is a mean over batch latencies, which
# leave out the frontend's own path (HTTP in, reply out) and the spread around the line:
# without headroom 54% of admitted queries came back late at 5x overload (45% of capacity
# in time, bench/overload_bench.py, no-op 5 ms, 20 ms objective); with 1.25, 93%.
_ADMISSION_HEADROOM: Final = 1.25


class SelectionChanges(NamedTuple):
    """What changed in one application's selection state since the last save: states to
    write (``PolicyState.to_dict`` documents, copied), contexts evicted, and whether every
    stored row of the application must go first (then ``changed`` holds every state)."""

    changed: dict[Hashable | None, dict[str, Any]]
    removed: list[Hashable | None]
    rewrite: bool


class Engine(_Admin, _Batches):
    """Clipper's serving decisions as a state machine: events in, instructions out.

    ``rng`` drives every random choice (selection sampling); ``decision_log=True`` records
    each batch, reply and feedback as a tuple in ``self.log`` for replay comparisons.
    ``remember_queries`` and ``remember_bytes`` bound how many answered queries (and how
    many bytes of their outputs) are kept so that feedback naming a ``query_id`` can be
    joined with what that query was answered with; ``max_user_states`` bounds the
    per-user selection states of each application.
    """

    def __init__(
        self,
        *,
        rng: np.random.Generator | None = None,
        seed: int = 0,
        cache_capacity_bytes: int = 32 << 20,
        decision_log: bool = False,
        remember_queries: int = 100_000,
        remember_bytes: int = 64 << 20,
        max_user_states: int = 10_000,
        feedback_timeout_s: float = 10.0,
    ) -> None:
        for name, v in (
            ("remember_queries", remember_queries),
            ("remember_bytes", remember_bytes),
        ):
            if v < 0:
                raise ConfigError(f"{name} must be >= 0, got {v}")
        if max_user_states < 1:
            raise ConfigError(f"max_user_states must be >= 1, got {max_user_states}")
        self.rng = rng if rng is not None else np.random.default_rng(seed)
        self.registry = Registry()
        self.metrics = Metrics()
        self.cache = PredictionCache(cache_capacity_bytes)
        self.log = [] if decision_log else None
        self.remember_queries = remember_queries
        self.remember_bytes = remember_bytes
        self.max_user_states = max_user_states
        self.feedback_timeout_s = feedback_timeout_s
        self._apps = {}
        self._versions = {}
        self._active = {}
        self._pending = {}
        self._batches = {}
        self._deadlines = []
        self._fifos = {}
        # A lower bound on the next time something is due (next_deadline, as a float;
        # read-only outside the engine); _fire recomputes it.
        self.due_at = _INF
        self._wakes = []
        self._recent = {}
        self._recent_order = deque()
        self._order_append = self._recent_order.append
        self._order_popleft = self._recent_order.popleft
        self._recent_bytes = 0
        self._last_record = None
        self._seq = itertools.count()
        self._batch_ids = itertools.count(1)
        m = self.metrics
        self._m_hits = m.counter("clipperlab_cache_hits_total")
        self._m_misses = m.counter("clipperlab_cache_misses_total")
        self._m_coalesced = m.counter("clipperlab_cache_coalesced_total")
        self._m_evictions = m.counter("clipperlab_cache_evictions_total")

    # ================================================================== replicas
    def on_replica_up(self, replica: ReplicaId, now: float) -> list[Instruction]:
        ver = self._versions.get(replica.model_id)
        if ver is None:
            raise NotFound(f"model {replica.model!r} has no version {replica.version!r}")
        if replica in ver.replicas:
            raise Conflict(f"replica {replica} is already up")
        out: list[Instruction] = []
        self._fire(now, out)  # after the checks: an error must not swallow due replies
        ctrl = make_controller(ver.spec.batching, self._bound_for(replica.model, ver.spec))
        rep = _Replica(replica, ctrl, now)
        ver.replicas[replica] = rep
        ver.limit = ctrl.max_queue
        ver.idle.append(rep)
        self._kick(ver, now, out)
        return out

    def on_replica_down(self, replica: ReplicaId, now: float) -> list[Instruction]:
        """A replica is gone: its batch in flight goes back to the queue."""
        rep = self._replica(replica)
        out: list[Instruction] = []
        self._fire(now, out)  # after the check: an error must not swallow due replies
        ver = self._versions[replica.model_id]
        del ver.replicas[replica]
        rep.up = False
        if rep in ver.idle:
            ver.idle.remove(rep)
        if rep.batch is not None:
            self._batches.pop(rep.batch.id, None)
            for req in rep.batch.requests:
                _heappush(ver.queue, (req.deadline, req.seq, req))
            rep.batch = None
        self._kick(ver, now, out)
        return out

    # ================================================================== queries
    def on_query(
        self,
        query: Query | _QueryFields,
        now: float,
    ) -> list[Instruction]:
        """Admit ``query`` at ``now``.  A plain tuple of ``Query``'s fields in their order
        does as well (the engine only unpacks it): a driver's hot path need not build the
        NamedTuple (0.2 us per query, measured in the small-batch simulation)."""
        # unpacked as the plain tuple it is (a Query is one too): compiled, by index, not
        # through an iterator made a query for the union's sake
        fields: _QueryFields = query
        qid, app_name, input_, key, context, qdeadline = fields
        app = self._apps.get(app_name)
        if app is None:
            raise NotFound(f"application {app_name!r} does not exist")
        out: list[Instruction] = []
        if now >= self.due_at:  # after the check: an error must not swallow due replies
            self._fire(now, out)
        app.m_queries.value += 1
        states = app.states
        state = states.get(context)
        if state is None:
            state = app.state(context)
        elif context is not None:
            states.move_to_end(context)  # recency, for the per-application cap
        selected = app.fixed
        if selected is None:
            selected = app.policy.select(state, self.rng)
        # not `len(selected) == 1` in the conditions: mypy narrows the tuple to tuple[str]
        # there, and compiled (mypyc) every call after would pass a copy of it, so that
        # one-model answers no longer share their Prediction (_answers, one_model_prediction)
        one = len(selected) == 1
        if key is not None and qdeadline is None and one:
            # The common cached path (one model, the input's digest known): a hit is
            # answered here, without a task, as _want and _finish would answer it (cache
            # hits 4.9-5.3 -> 2.8-3.3 us through the engine, measured); a miss goes on as
            # _want's.
            ver = self._active[selected[0]]
            limit = ver.limit
            if limit is None or len(ver.queue) < limit:  # else refused below, as before
                mid = ver.mid
                ck = (mid.name, mid.version, key)
                v = self.cache.get(ck)
                if v is not MISS:
                    self._m_hits.value += 1
                    self._answer_hit(qid, app, selected, v, now, context, out)
                    return out
                deadline = now + app.spec.slo_s  # (not read for a hit: an attribute less)
                task = _Task(qid, app, state, selected, deadline, now, context)
                self._want_missed(task, ver, input_, key, ck, now, out)
                if task.waiting == 0:  # shed by admission control
                    if not task.done:
                        self._finish(task, now, out)
                else:
                    app.fifo.append(task)
                    if deadline < self.due_at:
                        self.due_at = deadline
                return out
        deadline = now + app.spec.slo_s if qdeadline is None else qdeadline
        task = _Task(qid, app, state, selected, deadline, now, context)
        if qdeadline is not None and qdeadline <= now:  # already too late: no model is asked
            self._finish(task, now, out)
            return out
        if one and key is None:  # the common uncached path, inlined
            ver = self._active[selected[0]]
            limit = ver.limit
            if limit is not None and len(ver.queue) >= limit:
                self._refuse(task, now, out, DefaultReason.OVERLOADED, ver.mid.name, limit)
                return out
            if ver.admission and self._predicted_late(task, ver, now):
                self._finish(task, now, out)
                return out
            seq = next(self._seq)
            task.input = input_
            task.version = ver
            task.seq = seq
            ver.newest_arrival_at = now
            idle = ver.idle
            if idle and not ver.queue and deadline > now and idle[0].plain:
                # A replica idle and nobody queued: unless it would wait, the batch is this
                # query alone, as _kick decides (BatchController.decide with a queue of
                # one), without the trip through the queue (the small-batch case, issue 14;
                # with on_batch_done's one-task path: 9.3 -> 7.9 us per query, measured)
                rep = idle[0]
                ctrl = rep.ctrl
                cap = ctrl.cap
                if cap <= 1 or not ctrl.wait_timeout_s > 0.0:
                    idle.popleft()
                    reason = _CAP_REACHED if cap <= 1 else _REPLICA_IDLE
                    # self._send(ver, rep, [task], now, reason, 0, now, out), inlined for
                    # a batch of one (0.3 us per query less, measured)
                    ver.wake_at = None
                    ia = rep.idle_since
                    bid = next(self._batch_ids)
                    # send_batch_of(rep.id, bid, (input_,), reason, 1), below, without its
                    # call.  (The batch is built by its constructor: compiled with mypyc, a
                    # class cannot be made by object.__new__ and its fields set after.)
                    batch = _Batch(bid, rep, [task], now if now > ia else ia, ver)
                    rep.batch = batch
                    self._batches[bid] = batch
                    c = ver.m_batches.get(reason)
                    if c is None:
                        c = self._batch_counter(ver, reason)
                    c.value += 1
                    p = ver.m_batch_size.pending  # Histogram.observe, inlined
                    p.append(1)
                    if len(p) >= _FOLD_AT:
                        ver.m_batch_size.fold()
                    sb = _new(_SendBatchSlots)
                    sb.replica = rep.id
                    sb.batch_id = bid
                    sb.inputs = (input_,)
                    sb.reason = reason
                    sb.padded_size = 1
                    sb.__class__ = SendBatch  # type: ignore[assignment]
                    out.append(sb)  # type: ignore[arg-type]
                    if self.log is not None:
                        self.log.append(("batch", now, str(rep.id), bid, 1, reason))
                else:
                    _heappush(ver.queue, (deadline, seq, task))
                    self._kick(ver, now, out)
            else:
                _heappush(ver.queue, (deadline, seq, task))
                if idle:
                    self._kick(ver, now, out)
        elif not selected:
            self._finish(task, now, out)
            return out
        else:
            versions = [self._active[m] for m in selected]
            for ver in versions:
                limit = ver.limit
                if limit is not None and len(ver.queue) >= limit:
                    self._refuse(task, now, out, DefaultReason.OVERLOADED, ver.mid.name, limit)
                    return out
            for ver in versions:
                self._want(task, ver, input_, key, now, out)
        if task.waiting == 0:
            if not task.done:
                self._finish(task, now, out)
        else:
            if qdeadline is None:
                app.fifo.append(task)
            else:
                _heappush(self._deadlines, (deadline, next(self._seq), task))
            if deadline < self.due_at:
                self.due_at = deadline
        return out

    def _want(
        self,
        task: _Task,
        ver: _Version,
        input_: Any,
        key: Hashable | None,
        now: float,
        out: list[Instruction],
    ) -> None:
        """Get ``ver``'s prediction for ``task``: cache, coalesce, or enqueue."""
        name = ver.mid.name
        if key is not None:
            ck = (name, ver.mid.version, key)
            v = self.cache.get(ck)
            if v is not MISS:
                self._m_hits.value += 1
                if isinstance(task, _FeedbackTask):
                    task.from_cache += 1
                task.answers[name] = v
                task.waiting -= 1
                return
            self._want_missed(task, ver, input_, key, ck, now, out)
            return
        if input_ is None and task.feedback:
            raise ConfigError("feedback needs an input (or a query_id the engine remembers)")
        self._request(task, ver, input_, None, None, now, out)

    def _want_missed(
        self,
        task: _Task,
        ver: _Version,
        input_: Any,
        key: Hashable,
        ck: tuple[str, str, Hashable],
        now: float,
        out: list[Instruction],
    ) -> None:
        """``_want`` after a cache miss on ``ck``: join the same request in flight, or
        enqueue one."""
        self._m_misses.value += 1
        req = self._pending.get(ck)
        if req is not None:
            self._m_coalesced.value += 1
            req.waiters.append(task)
            if task.deadline > req.deadline:
                req.deadline = task.deadline
            return
        self._request(task, ver, input_, key, ck, now, out)

    def _request(
        self,
        task: _Task,
        ver: _Version,
        input_: Any,
        key: Hashable | None,
        ck: tuple[str, str, Hashable] | None,
        now: float,
        out: list[Instruction],
    ) -> None:
        """Queue a model request of ``task`` at ``ver`` (unless admission control sheds
        it); ``ck``: its cache key, under which identical requests join it."""
        if ver.admission and not task.feedback and self._predicted_late(task, ver, now):
            task.waiting -= 1
            return
        seq = next(self._seq)
        req = _Request(ver, key, input_, task.deadline, now, task, seq)
        if ck is not None:
            self._pending[ck] = req
        _heappush(ver.queue, (task.deadline, seq, req))
        ver.newest_arrival_at = now
        if ver.idle:
            self._kick(ver, now, out)

    def _predicted_late(self, task: _Task, ver: _Version, now: float) -> bool:
        """Admission control: would a request of ``task`` queued at ``ver`` now miss the
        task's deadline?  Then it is marked shed (with the numbers) and counted.

        Predicted wait: until the first replica is free (its batch in flight, from when it
        was assembled, by the controller's latency line), then the queue ahead at the
        replicas' combined throughput (cap / latency of a full batch each); then its own
        batch of ``min(queue + 1, cap)``; the sum, times ``_ADMISSION_HEADROOM``, must fit
        before the deadline.  No estimate yet (no batch observed, no replica),
        or an idle replica with an empty queue: admitted."""
        reps = ver.replicas
        if not reps:
            return False
        n = len(ver.queue)
        rate = 0.0
        free_in = _INF
        # The line read once per replica and applied here, as LatencyModel.predict_s
        # computes it (a * size + b, the same floats), not three predict_s calls
        a = b = 0.0
        cap = 1
        for rep in reps.values():
            ctrl = rep.ctrl
            line = ctrl.latency.coefficients()
            if line is None:
                return False
            a, b = line
            cap = ctrl.cap
            full_s = a * cap + b
            rate += cap / full_s if full_s > 0.0 else _INF
            batch = rep.batch
            if batch is None:
                free_in = 0.0
            elif free_in > 0.0:
                left = batch.assembly_at + (a * len(batch.requests) + b) - now
                free_in = min(free_in, left if left > 0.0 else 0.0)
        if free_in == 0.0 and n == 0:
            # An idle replica and nobody waiting: serving this query delays no one, and
            # refusing it would leave the latency estimate as it is for good (one slow
            # batch, a cold start, would shed every later query).  It goes through and
            # its batch corrects the estimate.
            return False
        wait_s = free_in + (n / rate if rate < _INF else 0.0)
        own_s = a * min(n + 1, cap) + b  # the last replica's line and cap, as before
        if now + _ADMISSION_HEADROOM * (wait_s + own_s) <= task.deadline:
            return False
        ver.m_admission.value += 1
        reason = DefaultReason.PREDICTED_LATE
        task.shed = (
            reason,
            DefaultReason.EXPLANATIONS[reason].format(
                wait_ms=wait_s * 1e3,
                batch_ms=own_s * 1e3,
                model=ver.mid.name,
                left_ms=(task.deadline - now) * 1e3,
            ),
        )
        return True

    # ================================================================== saving
    def take_selection_changes(self) -> dict[str, SelectionChanges]:
        """Selection state changed since the last call, per application, as plain data
        that another thread may serialize while the engine goes on (O(changed states))."""
        out = {}
        for name, app in self._apps.items():
            changed, removed, rewrite = app.take_changes()
            if changed or removed or rewrite:
                docs = {ctx: st.to_dict() for ctx, st in changed.items()}
                out[name] = SelectionChanges(docs, removed, rewrite)
        return out

    def selection_unsaved(self, changes: Mapping[str, SelectionChanges]) -> None:
        """A save of ``changes`` failed: the next one rewrites those applications."""
        for name in changes:
            app = self._apps.get(name)
            if app is not None:
                app.rewrite = True
                app.evicted.clear()

    # ================================================================== feedback
    def on_feedback(self, feedback: Feedback, now: float) -> list[Instruction]:
        """Apply a label: join it with the query's answers or cached predictions, ask the
        models for what is missing, then update the selection state."""
        app = self._app(feedback.app)
        out: list[Instruction] = []
        self._fire(now, out)  # after the check: an error must not swallow due replies
        ctx = feedback.context
        recent = self._recent.get(feedback.query_id) if feedback.query_id is not None else None
        if recent is not None and recent.app is app:
            ctx = recent.context if ctx is None else ctx
            state = app.state(ctx)
            answers = recent.by_model()
            task = _FeedbackTask(
                feedback.feedback_id,
                app,
                state,
                tuple(answers),
                now,
                now,
                ctx,
                feedback.label,
            )
            task.answers = answers
            task.from_cache = len(task.answers)
            task.waiting = 0
            self._finish(task, now, out)
            return out
        if feedback.input is None and feedback.input_key is None:
            raise ConfigError(
                "feedback needs an input, or the query_id of a recent query"
                + (
                    f" (query_id {feedback.query_id} is not remembered)"
                    if feedback.query_id is not None
                    else ""
                )
            )
        state = app.state(ctx)
        selected = app.policy.feedback_models(state, self.rng)
        task = _FeedbackTask(
            feedback.feedback_id,
            app,
            state,
            selected,
            now + self.feedback_timeout_s,
            now,
            ctx,
            feedback.label,
        )
        for m in selected:
            self._want(task, self._active[m], feedback.input, feedback.input_key, now, out)
        if task.waiting == 0:
            if not task.done:
                self._finish(task, now, out)
        else:
            _heappush(self._deadlines, (task.deadline, next(self._seq), task))
            if task.deadline < self.due_at:
                self.due_at = task.deadline
        return out
