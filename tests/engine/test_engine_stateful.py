"""Stateful property tests: the engine against simple reference models.

Each machine applies random actions to the real object and checks invariants after every
step: every query is answered exactly once (and by its deadline), no batch exceeds its
controller's cap, no non-default reply comes after the deadline, the cache stays within
its budget and returns exactly what was stored, selection probabilities are a
distribution and Exp3/Exp4 weights follow the formula.
"""

from __future__ import annotations

import math
from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from clipperlab.engine import (
    Application,
    BatchDone,
    BatchFailed,
    BatchingConfig,
    Engine,
    Instruction,
    ModelSpec,
    Query,
    ReplicaId,
    SendBatch,
)
from clipperlab.engine.cache import MISS, PredictionCache, output_size_bytes
from clipperlab.engine.selection import Exp3, Exp4
from tests.fake import FakeDriver

SLO_S = 0.010
MODELS = ("m1", "m2", "m3")


def model_fn(model: str, x: tuple[int, int]) -> int:
    return (x[1] * 7 + len(model)) % 3


BATCHING = st.sampled_from(
    [
        BatchingConfig(policy="none"),
        BatchingConfig(policy="fixed", max_batch_size=4),
        BatchingConfig(policy="aimd"),
        BatchingConfig(policy="aimd", wait_timeout_s=0.002),
        BatchingConfig(policy="quantile", fit_after_batches=5, refit_every_batches=5),
        BatchingConfig(
            policy="tfserving", max_batch_size=8, wait_timeout_s=0.001, allowed_batch_sizes=(2, 4)
        ),
        BatchingConfig(
            policy="triton", max_batch_size=8, preferred_batch_sizes=(2, 4), wait_timeout_s=0.001
        ),
        BatchingConfig(policy="bentoml", max_batch_size=8),
        BatchingConfig(policy="fixed", max_batch_size=3, max_queue=5),
    ]
)


class EngineMachine(RuleBasedStateMachine):
    """Queries, time, batch completions and failures, replicas going up and down."""

    @initialize(
        batching=BATCHING,
        policy=st.sampled_from(["static", "exp3", "exp4", "ucb1"]),
        cache=st.booleans(),
    )
    def setup(self, batching: BatchingConfig, policy: str, cache: bool) -> None:
        self.eng = Engine(seed=0, cache_capacity_bytes=2_000 if cache else 0)
        self.eng.add_application(
            Application(name="a", slo_s=SLO_S, default_output=-1, policy=policy),
            now=0.0,
        )
        for m in MODELS:
            self.eng.add_model(ModelSpec(name=m, batching=batching), now=0.0)
        self.eng.link("a", list(MODELS), now=0.0)
        self.d = FakeDriver(self.eng)
        self.deadlines: dict[int, float] = {}
        self.inputs: dict[int, int] = {}
        self.next_qid = 0
        self.use_keys = cache
        # when each (input or query, model) result was delivered
        self.done_at: dict[tuple[int, str], list[float]] = {}
        self.up: set[ReplicaId] = set()
        for m in MODELS:
            self._apply(self.eng.on_replica_up(ReplicaId(m, "1", 0), self.d.now))
            self.up.add(ReplicaId(m, "1", 0))

    def _ident(self, qid: int) -> int:
        return self.inputs[qid] if self.use_keys else qid

    def _apply(self, instrs: list[Instruction]) -> None:
        """Check and record ``instrs``."""
        for ins in instrs:
            if isinstance(ins, SendBatch):
                cap = self.eng.controller(ins.replica).cap
                assert 1 <= len(ins.inputs) <= cap, (len(ins.inputs), cap)
                assert ins.padded_size >= len(ins.inputs)
        before = set(self.d.replies)
        self.d.handle(instrs)
        for qid in set(self.d.replies) - before:
            p = self.d.replies[qid].prediction
            if not p.default:
                # A reply may come late only when the driver was late with the deadline
                # timer; even then it holds only answers delivered by the deadline.
                for m in p.models:
                    times = self.done_at.get((self._ident(qid), m), [])
                    assert any(t <= self.deadlines[qid] + 1e-12 for t in times), (qid, m, p)
                if len(p.models) == 1 and self.eng.apps()["a"].policy != "exp4":
                    assert p.output == model_fn(p.models[0], (qid, self.inputs[qid]))

    @rule(x=st.integers(0, 5))
    def query(self, x: int) -> None:
        qid = self.next_qid
        self.next_qid += 1
        self.deadlines[qid] = self.d.now + SLO_S
        self.inputs[qid] = x
        key = f"x{x}" if self.use_keys else None
        self._apply(self.eng.on_query(Query(qid, "a", (qid, x), key), self.d.now))

    @rule(dt=st.floats(0.0, 0.008))
    def advance(self, dt: float) -> None:
        to = self.d.now + dt
        while True:
            nd = self.eng.next_deadline()
            if nd is None or nd > to:
                break
            self.d.now = max(self.d.now, nd)
            self._apply(self.eng.on_timer(self.d.now))
        self.d.now = to

    @precondition(lambda self: bool(self.d.open))
    @rule(data=st.data(), dt=st.floats(0.0, 0.004))
    def complete(self, data: st.DataObject, dt: float) -> None:
        # Jump without firing timers: a driver may deliver a completion before a timer
        # due at the same or an earlier time; the engine must handle the timer first.
        self.d.now += dt
        bid = data.draw(st.sampled_from(sorted(self.d.open)))
        sb = self.d.open.pop(bid)
        outs = [model_fn(sb.replica.model, x) for x in sb.inputs]
        for q, x in sb.inputs:
            ident = x if self.use_keys else q
            self.done_at.setdefault((ident, sb.replica.model), []).append(self.d.now)
        self._apply(
            self.eng.on_batch_done(
                BatchDone(replica=sb.replica, batch_id=bid, outputs=outs), self.d.now
            )
        )

    @precondition(lambda self: bool(self.d.open))
    @rule(data=st.data())
    def fail(self, data: st.DataObject) -> None:
        bid = data.draw(st.sampled_from(sorted(self.d.open)))
        sb = self.d.open.pop(bid)
        self._apply(
            self.eng.on_batch_failed(
                BatchFailed(replica=sb.replica, batch_id=bid, error="x"), self.d.now
            )
        )

    @precondition(lambda self: len(self.up) > 0)
    @rule(data=st.data())
    def replica_down(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.up)))
        self.up.discard(rid)
        self._apply(self.eng.on_replica_down(rid, self.d.now))
        for bid in [b for b, sb in self.d.open.items() if sb.replica == rid]:
            del self.d.open[bid]

    @rule(model=st.sampled_from(MODELS), ordinal=st.integers(0, 2))
    def replica_up(self, model: str, ordinal: int) -> None:
        rid = ReplicaId(model, "1", ordinal)
        if rid in self.up:
            return
        self.up.add(rid)
        self._apply(self.eng.on_replica_up(rid, self.d.now))

    @invariant()
    def answered_once_and_by_deadline(self) -> None:
        if not hasattr(self, "d"):
            return
        assert self.d.duplicate_replies == 0
        for qid, dl in self.deadlines.items():
            if dl < self.d.now:
                assert qid in self.d.replies, f"query {qid} unanswered after its deadline"

    @invariant()
    def cache_within_budget(self) -> None:
        if hasattr(self, "eng"):
            c = self.eng.cache
            assert c.used_bytes <= c.capacity_bytes

    def teardown(self) -> None:
        if hasattr(self, "d"):
            self.advance(1.0)
            assert set(self.d.replies) == set(self.deadlines)


TestEngineMachine = EngineMachine.TestCase
TestEngineMachine.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class CacheMachine(RuleBasedStateMachine):
    """The CLOCK cache against a dict: hits return exactly what was put last."""

    def __init__(self) -> None:
        super().__init__()
        self.cache = PredictionCache(600)
        self.ref: dict[int, Any] = {}

    @rule(k=st.integers(0, 20), v=st.binary(max_size=120))
    def put(self, k: int, v: bytes) -> None:
        self.cache.put(k, v)
        self.ref[k] = v

    @rule(k=st.integers(0, 20))
    def get(self, k: int) -> None:
        got = self.cache.get(k)
        if got is not MISS:
            assert got == self.ref[k]

    @invariant()
    def budget(self) -> None:
        assert self.cache.used_bytes <= self.cache.capacity_bytes
        assert self.cache.used_bytes == sum(
            output_size_bytes(self.ref[k]) + 64 for k in self.ref if k in self.cache
        )


TestCacheMachine = CacheMachine.TestCase
TestCacheMachine.settings = settings(max_examples=80, stateful_step_count=60, deadline=None)


class SelectionMachine(RuleBasedStateMachine):
    """Exp3/Exp4 against a log-weight reference implementation of the update rule."""

    def __init__(self) -> None:
        super().__init__()
        self.k = 4
        self.models = [f"m{i}" for i in range(self.k)]
        self.exp3 = Exp3(eta=0.3)
        self.exp4 = Exp4(eta=0.3)
        self.s3 = self.exp3.new_state(self.models)
        self.s4 = self.exp4.new_state(self.models)
        self.log3 = [0.0] * self.k
        self.log4 = [0.0] * self.k

    @staticmethod
    def _probs(logw: list[float]) -> list[float]:
        top = max(logw)
        w = [math.exp(x - top) for x in logw]
        return [x / sum(w) for x in w]

    @rule(i=st.integers(0, 3), lo=st.floats(0.0, 1.0))
    def exp3_feedback(self, i: int, lo: float) -> None:
        p = self._probs(self.log3)
        self.log3[i] -= 0.3 * lo / max(p[i], 1e-12)
        self.exp3.observe(self.s3, {self.models[i]: lo})

    @rule(losses=st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4))
    def exp4_feedback(self, losses: list[float]) -> None:
        p = self._probs(self.log4)
        for i, lo in enumerate(losses):
            self.log4[i] -= 0.3 * lo / max(p[i], 1e-12)
        self.exp4.observe(self.s4, dict(zip(self.models, losses, strict=True)))

    @invariant()
    def distributions(self) -> None:
        for pol, s, logw in ((self.exp3, self.s3, self.log3), (self.exp4, self.s4, self.log4)):
            p = pol.probabilities(s)
            assert all(x >= 0 for x in p) and math.isclose(sum(p), 1.0, rel_tol=1e-9)
            assert all(w > 0 and math.isfinite(w) for w in s.weights)
            ref = self._probs(logw)
            if min(ref) > 1e-250:  # below that the engine floors weights to stay positive
                for a, b in zip(p, ref, strict=True):
                    assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)


TestSelectionMachine = SelectionMachine.TestCase
TestSelectionMachine.settings = settings(max_examples=60, stateful_step_count=50, deadline=None)
