"""The engine's runtime state: tasks, model requests, replicas, batches, versions, apps.

Plain slotted classes, private to the engine (``core.py`` drives them).  A ``_Task`` is a
query or a feedback item waiting for model answers; a ``_Request`` is one prediction wanted
from one model version, shared by coalesced waiters (a query for one model with an
uncached input is its own request); a ``_Version`` holds a model version's queue, replicas
and metrics; an ``_App`` an application's policy, per-context selection state and metrics
(a task holds its ``_App``, so an application removed while the task waits is still
answered through it).  ``_EngineFields`` names the engine's own fields, which the
engine's parts (``_admin.py``, ``_answers.py``, ``_batches.py``, ``core.py``) share.

Per-user selection state is bounded: an application holds at most ``max_user_states``
contexts besides its shared state (``context=None``), least recently used first out (an
``OrderedDict`` in recency order).  While it is full, a user without a state of its own
(new, or evicted earlier) starts from a copy of the shared state when there is one, else
from the policy's fresh state; below the cap nothing changes.  What changed since the
store last saved (``dirty``, ``evicted``, or ``rewrite`` for everything) is kept beside
the states, bounded the same way, so a save writes only that.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import numpy as np

from ._types import ModelId, Prediction, ReplicaId
from .batching import BatchController
from .cache import PredictionCache
from .metrics import BATCH_SIZE_BUCKETS, Counter, Metrics
from .registry import Application, ModelSpec, Registry
from .selection import PolicyState, SelectionPolicy, Static, make_policy


class _Task:
    """A query or a feedback item waiting for model answers.

    A query for one model with an uncached input is its own model request: it goes into
    the queue itself (``input``, ``version``, ``seq`` set), saving an object per query."""

    __slots__ = (
        "input",
        "version",
        "seq",
        "id",
        "shed",
        "app",
        "state",
        "selected",
        "answers",
        "waiting",
        "failed",
        "deadline",
        "arrival_at",
        "done",
        "context",
    )
    feedback = False
    key: Hashable | None = None  # as a request: never cached
    input: Any
    version: _Version
    seq: int

    @property
    def waiters(self) -> tuple[_Task, ...]:
        return (self,)

    def __init__(
        self,
        id_: int,
        app: _App,
        state: PolicyState,
        selected: tuple[str, ...],
        deadline: float,
        arrival_at: float,
        context: Hashable | None,
    ) -> None:
        self.id = id_
        self.app = app
        self.state = state
        self.selected = selected
        self.answers: dict[str, Any] = {}
        self.waiting = len(selected)
        self.failed = 0
        self.deadline = deadline
        self.arrival_at = arrival_at
        self.done = False
        self.context = context
        # (reason, explanation) when a model shed it (admission control, drop_hopeless)
        self.shed: tuple[str, str] | None = None


class _FeedbackTask(_Task):
    """A feedback item: waits for the predictions its policy needs, then observes."""

    __slots__ = ("label", "from_cache")
    feedback = True

    def __init__(
        self,
        id_: int,
        app: _App,
        state: PolicyState,
        selected: tuple[str, ...],
        deadline: float,
        arrival_at: float,
        context: Hashable | None,
        label: Any,
    ) -> None:
        super().__init__(id_, app, state, selected, deadline, arrival_at, context)
        self.label = label
        self.from_cache = 0


class _Request:
    """One prediction wanted from one model version; shared by coalesced waiters."""

    __slots__ = ("version", "key", "input", "deadline", "arrival_at", "waiters", "seq")

    def __init__(
        self,
        version: _Version,
        key: Hashable | None,
        input_: Any,
        deadline: float,
        arrival_at: float,
        waiter: _Task,
        seq: int,
    ) -> None:
        self.version = version
        self.key = key
        self.input = input_
        self.deadline = deadline
        self.arrival_at = arrival_at
        self.waiters = [waiter]
        self.seq = seq


_Wanted = _Request | _Task  # what a model queue holds


class _Replica:
    __slots__ = ("id", "ctrl", "batch", "idle_since", "plain", "up")

    def __init__(self, id_: ReplicaId, ctrl: BatchController, now: float) -> None:
        self.id = id_
        self.ctrl = ctrl
        self.batch: _Batch | None = None
        self.idle_since = now
        # in its version's replicas (on_replica_down clears it): `rep.id in ver.replicas`
        # without hashing the id, once per batch
        self.up = True
        # its controller decides as the base class does (the engine may skip building the
        # QueueView and Dispatch when no wait applies: _Batches._kick)
        self.plain = type(ctrl).decide is BatchController.decide


class _Batch:
    __slots__ = ("id", "replica", "requests", "assembly_at", "version")

    def __init__(
        self,
        id_: int,
        replica: _Replica,
        requests: list[_Wanted],
        assembly_at: float,
        version: _Version,
    ) -> None:
        self.id = id_
        self.replica = replica
        self.requests = requests
        self.assembly_at = assembly_at
        self.version = version  # its replica's (what _versions[replica.id.model_id] holds)


class _Version:
    __slots__ = (
        "mid",
        "spec",
        "queue",
        "replicas",
        "idle",
        "wake_at",
        "newest_arrival_at",
        "m_predictions",
        "m_batch_size",
        "m_batch_latency",
        "m_expired",
        "m_batches",
        "m_errors",
        "limit",
        "drop_hopeless",
        "admission",
        "m_hopeless",
        "m_admission",
    )

    def __init__(self, spec: ModelSpec, metrics: Metrics) -> None:
        self.mid = ModelId(spec.name, spec.version)
        self.spec = spec
        self.queue: list[tuple[float, int, _Wanted]] = []
        self.replicas: dict[ReplicaId, _Replica] = {}
        self.idle: deque[_Replica] = deque()
        self.wake_at: float | None = None
        self.newest_arrival_at = 0.0
        self.limit: int | None = spec.batching.max_queue
        self.drop_hopeless = spec.batching.drop_hopeless
        self.admission = spec.batching.admission_control
        lab = {"model": spec.name, "version": spec.version}
        self.m_predictions = metrics.counter("clipperlab_model_predictions_total", **lab)
        self.m_errors = metrics.counter("clipperlab_model_errors_total", **lab)
        self.m_expired = metrics.counter("clipperlab_queue_expired_total", **lab)
        self.m_hopeless = metrics.counter("clipperlab_queue_hopeless_total", **lab)
        self.m_admission = metrics.counter("clipperlab_admission_refused_total", **lab)
        self.m_batch_size = metrics.histogram(
            "clipperlab_batch_size",
            bounds=BATCH_SIZE_BUCKETS,
            model=spec.name,
            version=spec.version,
        )
        self.m_batch_latency = metrics.histogram(
            "clipperlab_batch_latency_seconds", model=spec.name, version=spec.version
        )
        self.m_batches: dict[str, Counter] = {}


class _App:
    __slots__ = (
        "spec",
        "policy",
        "states",
        "models",
        "m_queries",
        "m_replies",
        "m_latency",
        "m_feedback",
        "m_missing",
        "fifo",
        "refused",
        "fixed",
        "max_users",
        "dirty",
        "evicted",
        "rewrite",
        "m_user_evictions",
        "shared",
        "m_defaults",
    )

    def __init__(self, spec: Application, metrics: Metrics, max_users: int = 10_000) -> None:
        self.spec = spec
        self.policy: SelectionPolicy = make_policy(spec.policy, spec.policy_params)
        # recency order (least recently used first); None, the shared state, is never evicted
        self.states: OrderedDict[Hashable | None, PolicyState] = OrderedDict()
        self.max_users = max_users
        self.dirty: set[Hashable | None] = set()  # observed since the last save
        self.evicted: set[Hashable | None] = set()  # evicted since the last save
        self.rewrite = False  # the store must replace every row of this application
        self.models: tuple[str, ...] = ()
        # Queries that use the application's SLO have deadlines in arrival order, so a
        # FIFO (shared by every application with the same SLO) replaces a heap.
        self.fifo: deque[_Task] = deque()
        lab = {"app": spec.name}
        self.m_queries = metrics.counter("clipperlab_queries_total", **lab)
        self.m_replies = metrics.counter("clipperlab_replies_total", **lab)  # set on sync
        self.refused = 0  # replies without a latency observation (refused, shed)
        self.fixed: tuple[str, ...] | None = None
        self.m_latency = metrics.histogram("clipperlab_query_latency_seconds", app=spec.name)
        self.m_feedback = metrics.counter("clipperlab_feedback_total", **lab)
        self.m_missing = metrics.counter("clipperlab_missing_predictions_total", **lab)
        self.m_user_evictions = metrics.counter("clipperlab_user_state_evictions_total", **lab)
        # One-model answers with an int output, by output: equal Predictions are one
        # object shared by the Replies (_Batches.on_outputs; at most _SHARED_PREDICTIONS there)
        self.shared: dict[int, Prediction] = {}
        # clipperlab_defaults_total by reason, made on the first default of each
        # (_Answers._count_default: Metrics.counter sorts and hashes its labels each call)
        self.m_defaults: dict[str, Counter] = {}

    def state(self, context: Hashable | None) -> PolicyState:
        """The state of ``context``, made (and the least recent user evicted) if needed."""
        states = self.states
        s = states.get(context)
        if s is not None:
            if context is not None:
                states.move_to_end(context)
            return s
        shared = states.get(None) if context is not None else None
        if self._full() and shared is not None:
            s = PolicyState.from_dict(shared.to_dict())
        else:
            s = self.policy.new_state(self.models)
        self.put_state(context, s)
        return s

    def _full(self) -> bool:
        return len(self.states) - (None in self.states) >= self.max_users

    def put_state(self, context: Hashable | None, state: PolicyState) -> None:
        """Hold ``state`` for ``context`` as its most recent user, evicting beyond the cap."""
        states = self.states
        if context is not None and context not in states:
            while self._full():
                self._evict_oldest()
        states[context] = state
        states.move_to_end(context)

    def _evict_oldest(self) -> None:
        states = self.states
        ctx = next(iter(states))
        if ctx is None:  # the shared state stays; look past it
            states.move_to_end(None)
            ctx = next(iter(states))
        del states[ctx]
        self.m_user_evictions.value += 1
        self.dirty.discard(ctx)
        if not self.rewrite:
            self.evicted.add(ctx)
            if len(self.evicted) > self.max_users:  # cheaper to rewrite than to list
                self.rewrite = True
                self.evicted.clear()

    def take_changes(self) -> tuple[dict[Hashable | None, PolicyState], list[Any], bool]:
        """What changed since the last call: (changed states, evicted contexts, rewrite);
        with rewrite, every held state is "changed" and the evicted list is empty."""
        if self.rewrite:
            changed = dict(self.states)
            removed: list[Any] = []
        else:
            changed = {c: self.states[c] for c in self.dirty if c in self.states}
            removed = list(self.evicted)
        rewrite = self.rewrite
        self.dirty = set()
        self.evicted = set()
        self.rewrite = False
        return changed, removed, rewrite

    def set_policy(self, policy: SelectionPolicy) -> None:
        self.policy = policy
        self.relink(self.models)

    def relink(self, models: tuple[str, ...]) -> None:
        self.models = models
        # A static policy's choice does not depend on state: computed once, not per query.
        self.fixed = (
            self.policy.select(PolicyState(models), None)  # type: ignore[arg-type]
            if isinstance(self.policy, Static)
            else None
        )
        for ctx, old in list(self.states.items()):
            new = self.policy.new_state(models)
            for i, m in enumerate(models):
                if m in old.models:
                    j = old.models.index(m)
                    new.weights[i] = old.weights[j]
                    new.counts[i] = old.counts[j]
                    new.loss_sums[i] = old.loss_sums[j]
            new.rounds = old.rounds
            self.states[ctx] = new
        self.rewrite = True
        self.evicted.clear()


class _Remembered(NamedTuple):
    """What feedback naming an answered query's id reads of it (``_answers._remember``):
    a record, not the task, so that a cache hit answered without a task builds none.
    Below ``_App``: compiled (mypyc), a NamedTuple naming a class defined after it
    crashes the module's import."""

    app: _App
    context: Hashable | None
    # the answers by model; for a query its one model answered, its Prediction (the
    # model and output in one object, shared by equal int outputs: no dict kept a query)
    answers: dict[str, Any] | Prediction
    size_bytes: int  # of the answers (_answers._size_bytes), for remember_bytes

    def by_model(self) -> dict[str, Any]:
        """The answers by model name."""
        a = self.answers
        if isinstance(a, dict):
            return dict(a)
        return {a.models[0]: a.output}


class _EngineFields:
    """The fields ``Engine.__init__`` sets, declared once for the engine's parts (mixins)."""

    rng: np.random.Generator
    registry: Registry
    metrics: Metrics
    cache: PredictionCache
    log: list[tuple[Any, ...]] | None
    remember_queries: int
    remember_bytes: int
    max_user_states: int
    feedback_timeout_s: float
    _apps: dict[str, _App]
    _versions: dict[ModelId, _Version]
    _active: dict[str, _Version]  # model name -> its active version
    _pending: dict[tuple[str, str, Hashable], _Request]  # (model, version, key): coalescing
    _batches: dict[int, _Batch]  # in flight, by batch id
    _deadlines: list[tuple[float, int, _Task]]  # heap: tasks with their own deadline
    _fifos: dict[float, deque[_Task]]  # per SLO: tasks in deadline order without a heap
    due_at: float  # next_deadline() as a float (inf: none); drivers read it, never write
    _wakes: list[tuple[float, int, _Version]]  # heap: when a waiting controller wakes
    _recent: dict[int, _Remembered]  # answered queries, for feedback naming a query id
    _recent_order: deque[int]  # the query ids in _recent, oldest first (never replaced:
    _order_append: Callable[[int], None]  # its bound append and popleft are kept)
    _order_popleft: Callable[[], int]
    _recent_bytes: int
    _last_record: _Remembered | None  # the newest one-model record, shared by alike queries
    _seq: itertools.count[int]
    _batch_ids: itertools.count[int]
    _m_hits: Counter
    _m_misses: Counter
    _m_coalesced: Counter
    _m_evictions: Counter
