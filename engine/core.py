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

Drivers call ``on_*`` with the current time and then arm one timer at
``next_deadline()``; when it fires they call ``on_timer(now)``.
"""

from __future__ import annotations

import heapq
import itertools
from bisect import bisect_left
from collections import deque
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from ._state import _App, _Batch, _FeedbackTask, _Replica, _Request, _Task, _Version, _Wanted
from ._types import (
    BatchDone,
    BatchFailed,
    DefaultReason,
    Feedback,
    FeedbackApplied,
    Instruction,
    ModelId,
    Prediction,
    Query,
    ReplicaId,
    Reply,
    SendBatch,
)
from .batching import BatchController, QueueView, Wait, make_controller
from .cache import MISS, PredictionCache
from .errors import ConfigError, Conflict, NotFound
from .metrics import Metrics
from .registry import Application, ModelSpec, Registry
from .selection import PolicyState, loss, make_policy

__all__ = ["Engine"]

_DEFAULT_BOUND_S = 0.020
_INF = float("inf")
_tuple_new = tuple.__new__  # builds a NamedTuple without its Python-level __new__


class Engine:
    """Clipper's serving decisions as a state machine: events in, instructions out.

    ``rng`` drives every random choice (selection sampling); ``decision_log=True`` records
    each batch, reply and feedback as a tuple in ``self.log`` for replay comparisons.
    ``remember_queries`` bounds how many answered queries are kept so that feedback naming
    a ``query_id`` can be joined with what that query was answered with.
    """

    def __init__(
        self,
        *,
        rng: np.random.Generator | None = None,
        seed: int = 0,
        cache_capacity_bytes: int = 32 << 20,
        decision_log: bool = False,
        remember_queries: int = 100_000,
        feedback_timeout_s: float = 10.0,
    ) -> None:
        self.rng = rng if rng is not None else np.random.default_rng(seed)
        self.registry = Registry()
        self.metrics = Metrics()
        self.cache = PredictionCache(cache_capacity_bytes)
        self.log: list[tuple[Any, ...]] | None = [] if decision_log else None
        self.remember_queries = remember_queries
        self.feedback_timeout_s = feedback_timeout_s
        self._apps: dict[str, _App] = {}
        self._versions: dict[ModelId, _Version] = {}
        self._active: dict[str, _Version] = {}
        self._pending: dict[tuple[str, str, Hashable], _Request] = {}
        self._batches: dict[int, _Batch] = {}
        self._deadlines: list[tuple[float, int, _Task]] = []
        self._fifos: dict[float, deque[_Task]] = {}
        # A lower bound on the next time something is due; _fire recomputes it.
        self._due_at = _INF
        self._wakes: list[tuple[float, int, _Version]] = []
        self._recent: dict[int, _Task] = {}
        self._recent_limit = remember_queries + max(remember_queries // 4, 1)
        self._seq = itertools.count()
        self._batch_ids = itertools.count(1)
        m = self.metrics
        self._m_hits = m.counter("clipperlab_cache_hits_total")
        self._m_misses = m.counter("clipperlab_cache_misses_total")
        self._m_coalesced = m.counter("clipperlab_cache_coalesced_total")
        self._m_evictions = m.counter("clipperlab_cache_evictions_total")

    # ================================================================== administration
    def add_application(self, app: Application) -> None:
        self.registry.add_application(app)
        a = self._apps[app.name] = _App(app, self.metrics)
        a.fifo = self._fifos.setdefault(app.slo_s, deque())

    def update_application(self, name: str, **changes: Any) -> Application:
        """Change an application's settings (SLO, policy, threshold...) without a restart.
        Selection state is kept when the policy changes (weights carry over)."""
        old = self._app(name)
        spec = self.registry.update_application(name, **changes)
        policy = make_policy(spec.policy, spec.policy_params)
        old.spec = spec
        old.fifo = self._fifos.setdefault(spec.slo_s, deque())
        if "policy" in changes or "policy_params" in changes:
            old.set_policy(policy)
        self._refresh_bounds()
        return spec

    def add_model(self, spec: ModelSpec) -> None:
        activated = self.registry.add_model(spec)
        ver = _Version(spec, self.metrics)
        self._versions[ver.mid] = ver
        if activated:
            self._active[spec.name] = ver

    def link(self, app: str, models: Sequence[str]) -> list[str]:
        linked = self.registry.link(app, list(models))
        self._apps[app].relink(tuple(linked))
        self._refresh_bounds()
        return linked

    def unlink(self, app: str, models: Sequence[str]) -> list[str]:
        linked = self.registry.unlink(app, list(models))
        self._apps[app].relink(tuple(linked))
        self._refresh_bounds()
        return linked

    def set_model_version(self, name: str, version: str) -> None:
        self.registry.set_version(name, version)
        self._active[name] = self._versions[ModelId(name, version)]

    def rollback(self, name: str, version: str | None = None) -> str:
        v = self.registry.rollback(name, version)
        self._active[name] = self._versions[ModelId(name, v)]
        return v

    def active_version(self, name: str) -> str:
        self.registry.model(name)
        return self.registry.active[name]

    def selection_state(self, app: str, context: Hashable | None = None) -> PolicyState:
        return self._app(app).state(context)

    def selection_states(self, app: str) -> dict[Hashable | None, PolicyState]:
        return dict(self._app(app).states)

    def load_selection_state(self, app: str, context: Hashable | None, state: PolicyState) -> None:
        a = self._app(app)
        a.states[context] = state
        if state.models != a.models:
            a.relink(a.models)

    def probabilities(self, app: str, context: Hashable | None = None) -> dict[str, float]:
        a = self._app(app)
        s = a.state(context)
        return dict(zip(s.models, a.policy.probabilities(s), strict=True))

    def replicas(self, name: str | None = None) -> list[ReplicaId]:
        return sorted(
            r
            for v in self._versions.values()
            for r in v.replicas
            if name is None or r.model == name
        )

    def controller(self, replica: ReplicaId) -> BatchController:
        return self._replica(replica).ctrl

    def describe_model(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": name,
            "active_version": self.active_version(name),
            "versions": {},
        }
        for mid, v in self._versions.items():
            if mid.name == name:
                out["versions"][mid.version] = {
                    "spec": v.spec.to_dict(),
                    "queued": len(v.queue),
                    "replicas": {
                        str(r.id): {"busy": r.batch is not None, **r.ctrl.describe()}
                        for r in v.replicas.values()
                    },
                }
        return out

    def _app(self, name: str) -> _App:
        a = self._apps.get(name)
        if a is None:
            raise NotFound(f"application {name!r} does not exist")
        return a

    def _version(self, name: str, version: str | None) -> _Version:
        spec = self.registry.model(name, version)
        return self._versions[ModelId(spec.name, spec.version)]

    def _replica(self, rid: ReplicaId) -> _Replica:
        v = self._versions.get(rid.model_id)
        r = v.replicas.get(rid) if v is not None else None
        if r is None:
            raise NotFound(f"replica {rid} is not up")
        return r

    def _bound_for(self, name: str, spec: ModelSpec) -> float:
        if spec.batching.latency_bound_s is not None:
            return spec.batching.latency_bound_s
        slos = [self._apps[a].spec.slo_s for a in self.registry.apps_of_model(name)]
        return min(slos) if slos else _DEFAULT_BOUND_S

    def _refresh_bounds(self) -> None:
        for v in self._versions.values():
            bound = self._bound_for(v.mid.name, v.spec)
            for r in v.replicas.values():
                r.ctrl.latency_bound_s = bound

    # ================================================================== replicas
    def on_replica_up(self, replica: ReplicaId, now: float) -> list[Instruction]:
        out: list[Instruction] = []
        self._fire(now, out)
        ver = self._versions.get(replica.model_id)
        if ver is None:
            raise NotFound(f"model {replica.model!r} has no version {replica.version!r}")
        if replica in ver.replicas:
            raise Conflict(f"replica {replica} is already up")
        ctrl = make_controller(ver.spec.batching, self._bound_for(replica.model, ver.spec))
        rep = _Replica(replica, ctrl, now)
        ver.replicas[replica] = rep
        ver.limit = ctrl.max_queue
        ver.idle.append(rep)
        self._kick(ver, now, out)
        return out

    def on_replica_down(self, replica: ReplicaId, now: float) -> list[Instruction]:
        """A replica is gone: its batch in flight goes back to the queue."""
        out: list[Instruction] = []
        self._fire(now, out)
        rep = self._replica(replica)
        ver = self._versions[replica.model_id]
        del ver.replicas[replica]
        if rep in ver.idle:
            ver.idle.remove(rep)
        if rep.batch is not None:
            self._batches.pop(rep.batch.id, None)
            for req in rep.batch.requests:
                heapq.heappush(ver.queue, (req.deadline, req.seq, req))
            rep.batch = None
        self._kick(ver, now, out)
        return out

    # ================================================================== queries
    def on_query(self, query: Query, now: float) -> list[Instruction]:
        out: list[Instruction] = []
        if now >= self._due_at:
            self._fire(now, out)
        qid, app_name, input_, key, context, qdeadline = query
        app = self._apps.get(app_name)
        if app is None:
            raise NotFound(f"application {app_name!r} does not exist")
        app.m_queries.value += 1
        state = app.states.get(context)
        if state is None:
            state = app.state(context)
        selected = app.fixed
        if selected is None:
            selected = app.policy.select(state, self.rng)
        deadline = now + app.spec.slo_s if qdeadline is None else qdeadline
        task = _Task(qid, app, state, selected, deadline, now, context)
        if qdeadline is not None and qdeadline <= now:  # already too late: no model is asked
            self._finish(task, now, out)
            return out
        if len(selected) == 1 and key is None:  # the common uncached path, inlined
            ver = self._active[selected[0]]
            limit = ver.limit
            if limit is not None and len(ver.queue) >= limit:
                self._refuse(task, now, out, DefaultReason.OVERLOADED, ver.mid.name, limit)
                return out
            seq = next(self._seq)
            task.input = input_
            task.version = ver
            task.seq = seq
            heapq.heappush(ver.queue, (deadline, seq, task))
            ver.newest_arrival_at = now
            if ver.idle:
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
                heapq.heappush(self._deadlines, (deadline, next(self._seq), task))
            if deadline < self._due_at:
                self._due_at = deadline
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
                if task.feedback:
                    task.from_cache += 1  # type: ignore[attr-defined]
                task.answers[name] = v
                task.waiting -= 1
                return
            self._m_misses.value += 1
            req = self._pending.get(ck)
            if req is not None:
                self._m_coalesced.value += 1
                req.waiters.append(task)
                if task.deadline > req.deadline:
                    req.deadline = task.deadline
                return
        elif input_ is None and task.feedback:
            raise ConfigError("feedback needs an input (or a query_id the engine remembers)")
        seq = next(self._seq)
        req = _Request(ver, key, input_, task.deadline, now, task, seq)
        if key is not None:
            self._pending[ck] = req
        heapq.heappush(ver.queue, (task.deadline, seq, req))
        ver.newest_arrival_at = now
        if ver.idle:
            self._kick(ver, now, out)

    def _refuse(
        self, task: _Task, now: float, out: list[Instruction], reason: str, model: str, limit: int
    ) -> None:
        app = task.app
        expl = DefaultReason.EXPLANATIONS[reason].format(model=model, limit=limit)
        pred = Prediction(app.spec.default_output, 0.0, True, reason, expl, (), task.selected)
        task.done = True
        self._count_default(app, reason)
        app.refused += 1
        out.append(Reply(task.id, pred, 0.0, True))
        if self.log is not None:
            self.log.append(("refuse", now, task.id, reason))

    # ================================================================== batching
    def _kick(self, ver: _Version, now: float, out: list[Instruction]) -> None:
        """Let idle replicas of ``ver`` take batches while their controllers agree."""
        queue = ver.queue
        idle = ver.idle
        while idle and queue:
            head_deadline, _, head = queue[0]
            if head_deadline <= now:
                heapq.heappop(queue)
                self._expire(head, now)
                continue
            rep = idle[0]
            if ver.drop_hopeless:
                est = rep.ctrl.latency.predict_s(min(len(queue), rep.ctrl.cap))
                if est is not None and head_deadline < now + est:
                    heapq.heappop(queue)
                    self._drop_hopeless(head, now, out)
                    continue
            d = rep.ctrl.decide(
                now, QueueView(len(queue), head.arrival_at, ver.newest_arrival_at, head_deadline)
            )
            if isinstance(d, Wait):
                if ver.wake_at is None or d.until_at < ver.wake_at or ver.wake_at <= now:
                    ver.wake_at = d.until_at
                    heapq.heappush(self._wakes, (d.until_at, next(self._seq), ver))
                    if d.until_at < self._due_at:
                        self._due_at = d.until_at
                return
            if d.shed:
                for _ in range(min(d.shed, len(queue))):
                    self._shed(heapq.heappop(queue)[2], now, out)
                continue
            size = min(d.size, len(queue))
            reqs: list[_Wanted] = []
            heappop = heapq.heappop
            for _ in range(size):
                dl, _, req = heappop(queue)
                if dl <= now:
                    self._expire(req, now)
                    if not queue:
                        break
                else:
                    reqs.append(req)
            if not reqs:
                continue
            idle.popleft()
            ver.wake_at = None
            assembly_at = max(rep.idle_since, head.arrival_at)
            bid = next(self._batch_ids)
            batch = _Batch(bid, rep, reqs, assembly_at)
            rep.batch = batch
            self._batches[bid] = batch
            n = len(reqs)
            c = ver.m_batches.get(d.reason)
            if c is None:
                c = ver.m_batches[d.reason] = self.metrics.counter(
                    "clipperlab_batches_total",
                    model=ver.mid.name,
                    version=ver.mid.version,
                    reason=d.reason,
                )
            c.value += 1
            ver.m_batch_size.observe(n)
            out.append(
                SendBatch(
                    replica=rep.id,
                    batch_id=bid,
                    inputs=tuple([r.input for r in reqs]),
                    reason=d.reason,
                    padded_size=max(d.padded_size, n),
                )
            )
            if self.log is not None:
                self.log.append(("batch", now, str(rep.id), bid, n, d.reason))

    def _expire(self, req: _Wanted, now: float) -> None:
        """A request reached its deadline in the queue; keep it only for live waiters
        with a later deadline (coalesced requests)."""
        live = [t.deadline for t in req.waiters if not t.done and t.deadline > now]
        if live:
            req.deadline = max(live)
            heapq.heappush(req.version.queue, (req.deadline, req.seq, req))
            return
        # Every waiter's deadline has passed: the deadline timers answer them.
        req.version.m_expired.value += 1
        if req.key is not None:
            self._pending.pop((req.version.mid.name, req.version.mid.version, req.key), None)

    def _drop_hopeless(self, req: _Wanted, now: float, out: list[Instruction]) -> None:
        """A request that cannot make its deadline even if sent now is not computed; its
        waiters stop waiting for it (an ensemble answers with its other members)."""
        ver = req.version
        ver.m_hopeless.value += 1
        if req.key is not None:
            self._pending.pop((ver.mid.name, ver.mid.version, req.key), None)
        for t in req.waiters:
            if not t.done:
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

    def _refuse_shed(self, task: _Task, now: float, out: list[Instruction], model: str) -> None:
        app = task.app
        reason = DefaultReason.SHED
        expl = DefaultReason.EXPLANATIONS[reason].format(model=model)
        pred = Prediction(app.spec.default_output, 0.0, True, reason, expl, (), task.selected)
        task.done = True
        self._count_default(app, reason)
        app.refused += 1
        out.append(Reply(task.id, pred, now - task.arrival_at, True))
        if self.log is not None:
            self.log.append(("reply", now, task.id, pred.output, True, reason, ()))

    def on_batch_done(self, done: BatchDone, now: float) -> list[Instruction]:
        out: list[Instruction] = []
        if now >= self._due_at:
            self._fire(now, out)
        batch = self._batches.pop(done.batch_id, None)
        if batch is None:
            return out  # the replica went down meanwhile; its requests were re-queued
        outputs = done.outputs
        if len(outputs) != len(batch.requests):
            self._batches[done.batch_id] = batch
            return out + self.on_batch_failed(
                BatchFailed(
                    replica=done.replica,
                    batch_id=done.batch_id,
                    error=f"{len(outputs)} outputs for a batch of {len(batch.requests)}",
                ),
                now,
            )
        rep = batch.replica
        ver = self._versions[rep.id.model_id]
        n = len(outputs)
        latency = now - batch.assembly_at
        rep.ctrl.observe(n, latency, now)
        ver.m_batch_latency.observe(latency)
        ver.m_predictions.value += n
        name = ver.mid.name
        version = ver.mid.version
        cache = self.cache
        pending = self._pending
        for req, output in zip(batch.requests, outputs, strict=True):
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
        batch = self._batches.pop(failed.batch_id, None)
        if batch is None:
            return out
        rep = batch.replica
        ver = self._versions[rep.id.model_id]
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

    def _idle(self, rep: _Replica, ver: _Version, now: float, out: list[Instruction]) -> None:
        rep.batch = None
        if rep.id in ver.replicas:
            rep.idle_since = now
            ver.idle.append(rep)
            if ver.queue:
                self._kick(ver, now, out)

    # ================================================================== time
    def next_deadline(self) -> float | None:
        """The absolute time at which ``on_timer`` must be called next (None: no timer).

        O(1): it may be a little early (a query that has since been answered); calling
        ``on_timer`` then is harmless and moves it on to the next live deadline.  After any
        ``on_*(now)`` call it is later than ``now``: whatever was due has been handled."""
        due = self._due_at
        return None if due == _INF else due

    def _recompute_due(self) -> float | None:
        """The exact earliest live deadline or wake-up, dropping stale timer entries."""
        best: float | None = None
        dl = self._deadlines
        while dl and dl[0][2].done:
            heapq.heappop(dl)
        if dl:
            best = dl[0][0]
        wk = self._wakes
        while wk and wk[0][2].wake_at != wk[0][0]:
            heapq.heappop(wk)
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
            task = heapq.heappop(dl)[2]
            if not task.done:
                self._finish(task, now, out)
        for fifo in self._fifos.values():
            while fifo and fifo[0].deadline <= now:
                task = fifo.popleft()
                if not task.done:
                    self._finish(task, now, out)
        wk = self._wakes
        while wk and wk[0][0] <= now:
            at, _, ver = heapq.heappop(wk)
            if ver.wake_at == at:
                ver.wake_at = None
                self._kick(ver, now, out)
        nxt = self._recompute_due()
        self._due_at = _INF if nxt is None else nxt

    # ================================================================== answers
    def _finish(self, task: _Task, now: float, out: list[Instruction]) -> None:
        task.done = True
        if task.feedback:
            self._apply_feedback(task, now, out)  # type: ignore[arg-type]
            return
        app = task.app
        answers = task.answers
        selected = task.selected
        spec = app.spec
        if answers and len(selected) == 1:
            pred = _tuple_new(
                Prediction, (answers[selected[0]], 1.0, False, None, None, selected, ())
            )
        elif not answers:
            if not selected:
                reason = DefaultReason.NO_MODEL
            elif task.failed == len(selected):
                reason = DefaultReason.MODEL_ERROR
            else:
                reason = DefaultReason.DEADLINE
            self._count_default(app, reason)
            if selected:
                app.m_missing.value += len(selected)
            pred = Prediction(
                spec.default_output,
                0.0,
                True,
                reason,
                DefaultReason.EXPLANATIONS[reason],
                (),
                selected,
            )
        else:
            output, conf = app.policy.combine(task.state, selected, answers)
            models = tuple(m for m in selected if m in answers)
            missing = tuple(m for m in selected if m not in answers)
            if missing:
                app.m_missing.value += len(missing)
            if conf < spec.confidence_threshold:
                reason = DefaultReason.LOW_CONFIDENCE
                self._count_default(app, reason)
                expl = DefaultReason.EXPLANATIONS[reason].format(
                    confidence=conf, threshold=spec.confidence_threshold
                )
                pred = Prediction(spec.default_output, conf, True, reason, expl, models, missing)
            else:
                pred = Prediction(output, conf, False, None, None, models, missing)
        latency = now - task.arrival_at
        h = app.m_latency
        h.counts[bisect_left(h.bounds, latency)] += 1
        h.sum += latency
        h.count += 1
        out.append(_tuple_new(Reply, (task.id, pred, latency, False)))
        if self.remember_queries:
            recent = self._recent
            recent[task.id] = task
            if len(recent) > self._recent_limit:
                # drop the oldest quarter at once: O(1) per query, amortised
                for k in list(itertools.islice(recent, len(recent) - self.remember_queries)):
                    del recent[k]
        if self.log is not None:
            self.log.append(
                ("reply", now, task.id, pred.output, pred.default, pred.default_reason, pred.models)
            )

    def _count_default(self, app: _App, reason: str) -> None:
        self.metrics.counter(
            "clipperlab_defaults_total", app=app.spec.name, reason=reason
        ).value += 1

    # ================================================================== feedback
    def on_feedback(self, feedback: Feedback, now: float) -> list[Instruction]:
        """Apply a label: join it with the query's answers or cached predictions, ask the
        models for what is missing, then update the selection state."""
        out: list[Instruction] = []
        self._fire(now, out)
        app = self._app(feedback.app)
        ctx = feedback.context
        recent = self._recent.get(feedback.query_id) if feedback.query_id is not None else None
        if recent is not None and recent.app is app:
            ctx = recent.context if ctx is None else ctx
            state = app.state(ctx)
            task = _FeedbackTask(
                feedback.feedback_id,
                app,
                state,
                tuple(recent.answers),
                now,
                now,
                ctx,
                feedback.label,
            )
            task.answers = dict(recent.answers)
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
            heapq.heappush(self._deadlines, (task.deadline, next(self._seq), task))
            if task.deadline < self._due_at:
                self._due_at = task.deadline
        return out

    def _apply_feedback(self, task: _FeedbackTask, now: float, out: list[Instruction]) -> None:
        app = task.app
        kind = app.spec.loss
        losses = {m: loss(o, task.label, kind) for m, o in task.answers.items()}
        if losses:
            app.policy.observe(task.state, losses)
        app.m_feedback.value += 1
        out.append(
            FeedbackApplied(
                feedback_id=task.id,
                losses=losses,
                from_cache=task.from_cache,
                computed=len(task.answers) - task.from_cache,
            )
        )
        if self.log is not None:
            self.log.append(("feedback", now, task.id, tuple(sorted(losses.items()))))

    # ================================================================== metrics
    def sync_metrics(self) -> Metrics:
        """The metrics, with counters kept elsewhere (cache evictions) brought up to date."""
        self._m_evictions.value = float(self.cache.evictions)
        for app in self._apps.values():
            app.m_replies.value = float(app.m_latency.count + app.refused)
        return self.metrics

    def apps(self) -> Mapping[str, Application]:
        return dict(self.registry.apps)
