"""Memory a stranger can grow is bounded (issue 11, defect 5): per-user selection state is
an LRU with a cap per application, and queries remembered for feedback are bounded by
count and by bytes, without their inputs."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from clipperlab.engine import (
    Application,
    BatchDone,
    ConfigError,
    Engine,
    Feedback,
    ModelSpec,
    Query,
    ReplicaId,
    Reply,
)
from tests.fake import FakeDriver


def _engine(**kw: object) -> FakeDriver:
    eng = Engine(**kw)  # type: ignore[arg-type]
    eng.add_application(Application(name="a", policy="exp3", slo_s=1.0), now=0.0)
    eng.add_model(ModelSpec(name="m"), now=0.0)
    eng.add_model(ModelSpec(name="n"), now=0.0)
    eng.link("a", ["m", "n"], now=0.0)
    d = FakeDriver(eng)
    d.up("m"), d.up("n")
    return d


def _ask(d: FakeDriver, qid: int, user: object, out: int = 1) -> None:
    d.query(qid, "a", qid, context=user)
    for sb in list(d.open.values()):
        d.complete(sb.batch_id, lambda x: out)


def test_user_states_are_capped_per_application_and_evictions_counted() -> None:
    """5,000 distinct users against a cap of 100: at most 100 user states (plus the
    shared one) are held, and every eviction is counted."""
    d = _engine(max_user_states=100)
    for i in range(5_000):
        _ask(d, i, f"user-{i}")
    states = d.eng.selection_states("a")
    assert len([c for c in states if c is not None]) == 100
    assert d.eng.metrics.value("clipperlab_user_state_evictions_total", app="a") == 4_900
    assert set(states) >= {f"user-{i}" for i in range(4_900, 5_000)}


def test_recently_used_users_survive_eviction() -> None:
    """The least recently used user goes first: one who keeps coming back stays."""
    d = _engine(max_user_states=3)
    for i in range(50):
        _ask(d, 2 * i, "regular")
        _ask(d, 2 * i + 1, f"passer-by-{i}")
    assert "regular" in d.eng.selection_states("a")


def test_user_state_learned_is_kept_below_the_cap() -> None:
    """Below the cap nothing changes: a user's feedback moves that user's weights only."""
    d = _engine(max_user_states=10)
    _ask(d, 1, "u1", out=0)
    d.feedback_(1, "a", 1, query_id=1)
    for i in range(2, 9):
        _ask(d, i, f"u{i}")
    w = d.eng.selection_state("a", "u1").weights
    assert min(w) < 1.0
    assert d.eng.selection_state("a", "u2").weights == [1.0, 1.0]


def test_a_user_without_state_falls_back_to_the_shared_state_when_full() -> None:
    """Once the application holds its cap of users, a new (or evicted) user starts from
    the application's shared state, not from nothing."""
    d = _engine(max_user_states=2)
    for i in range(20):  # the shared state learns that both models answer 0, label 1
        _ask(d, i, None, out=0)
        d.feedback_(i, "a", 1, query_id=i)
    shared = list(d.eng.selection_state("a").weights)
    assert shared != [1.0, 1.0]
    _ask(d, 100, "u1"), _ask(d, 101, "u2")
    _ask(d, 102, "u3")  # the application is full: u1 goes, u3 starts from the shared state
    assert d.eng.selection_state("a", "u3").weights == shared
    assert "u1" not in d.eng.selection_states("a")


def test_max_user_states_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="max_user_states must be >= 1, got 0"):
        Engine(max_user_states=0)
    with pytest.raises(ConfigError, match="remember_bytes must be >= 0, got -1"):
        Engine(remember_bytes=-1)


def _served(eng: Engine, qid: int, x: object, output: object) -> Reply:
    """Query ``x`` and answer its batch with ``output``, holding no reference after."""
    out = eng.on_query(Query(qid, "b", x), 0.0)
    (sb,) = out
    done = eng.on_batch_done(
        BatchDone(replica=sb.replica, batch_id=sb.batch_id, outputs=[output]),  # type: ignore[union-attr]
        0.001,
    )
    (reply,) = [r for r in done if isinstance(r, Reply)]
    return reply


def _single(**kw: object) -> Engine:
    eng = Engine(**kw)  # type: ignore[arg-type]
    eng.add_application(Application(name="b", slo_s=1.0), now=0.0)
    eng.add_model(ModelSpec(name="m"), now=0.0)
    eng.link("b", ["m"], now=0.0)
    eng.on_replica_up(ReplicaId("m", "1", 0), 0.0)
    return eng


def test_remembered_queries_do_not_keep_their_inputs() -> None:
    """Feedback by query id needs what the query was answered with, not its input: a
    large input is freed once the query is answered."""
    eng = _single()
    x = np.zeros(100_000)
    ref = weakref.ref(x)
    _served(eng, 1, x, 0)
    del x
    gc.collect()
    assert ref() is None


def test_remembered_outputs_are_bounded_by_bytes_oldest_first() -> None:
    """With remember_bytes of 2 MB, outputs of 800 kB each: only the two newest are kept;
    feedback naming a forgotten query gets the clear error, a kept one is applied."""
    eng = _single(remember_bytes=2_000_000)
    for q in range(1, 11):
        _served(eng, q, q, np.zeros(100_000))
    with pytest.raises(ConfigError, match="query_id 1 is not remembered"):
        eng.on_feedback(_fb(1), 0.01)
    applied = eng.on_feedback(_fb(10), 0.01)
    assert applied and applied[0].losses == {"m": 1.0}  # type: ignore[union-attr]


def test_remembered_queries_are_bounded_by_count() -> None:
    eng = _single(remember_queries=5)
    for q in range(1, 21):
        _served(eng, q, q, 0)
    with pytest.raises(ConfigError, match="query_id 15 is not remembered"):
        eng.on_feedback(_fb(15), 0.01)
    assert eng.on_feedback(_fb(16), 0.01)


def _fb(qid: int) -> Feedback:
    return Feedback(feedback_id=1000 + qid, app="b", label=1, query_id=qid)


def test_alike_answered_queries_share_one_record_and_feedback_reads_each_right() -> None:
    """Queries answered alike (one model, the same int output, the same user) share one
    remembered record instead of a tracked object each: the server's cache hits kept the
    garbage collector busy with 20,000 of them.  Feedback naming any of them still reads
    its own answer and user; a query answered otherwise gets a record of its own."""
    eng = _single()
    eng.add_application(Application(name="c", slo_s=1.0), now=0.0)
    eng.link("c", ["m"], now=0.0)
    outputs = {}
    for q in range(1, 41):
        out = 0 if q <= 30 else 1
        _served(eng, q, q, out)
        outputs[q] = out
    # cache hits: query 41's input is queried with its digest, then hit four times
    first = eng.on_query(Query(41, "c", "x", input_key=b"k", context="u1"), 0.0)
    (sb,) = first
    eng.on_batch_done(BatchDone(replica=sb.replica, batch_id=sb.batch_id,  # type: ignore[union-attr]
                                outputs=[1]), 0.001)
    for q in range(42, 46):
        (hit,) = eng.on_query(Query(q, "c", "x", input_key=b"k", context="u1"), 0.002)
        assert isinstance(hit, Reply) and hit.prediction.output == 1
    records = {id(r) for r in eng._recent.values()}
    assert len(eng._recent) == 45
    assert len(records) == 3  # output 0 of "b"; output 1 of "b"; output 1 of "c" for u1
    for q in (1, 30, 31, 40):
        (applied,) = eng.on_feedback(Feedback(feedback_id=100 + q, app="b", label=1,
                                              query_id=q), 0.01)
        assert applied.losses == {"m": float(outputs[q] != 1)}  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="query_id 44 is not remembered"):
        eng.on_feedback(Feedback(feedback_id=200, app="b", label=1, query_id=44), 0.01)
    (applied,) = eng.on_feedback(Feedback(feedback_id=201, app="c", label=0, query_id=44), 0.01)
    assert applied.losses == {"m": 1.0}  # type: ignore[union-attr]
    assert "u1" in eng.selection_states("c")


def test_a_reused_query_id_remembers_the_newer_query_once() -> None:
    """A driver reusing a query id: feedback names the newer query, the id is held once
    (the count bound sees one entry, the byte bound its newer answer), also when the two
    queries share one remembered record (alike answers)."""
    eng = _single(remember_queries=3)
    _served(eng, 1, "x", 0)
    _served(eng, 1, "y", 0)  # alike: the same shared record as before, under the same id
    _served(eng, 1, "z", 1)  # answered otherwise: a record of its own
    assert list(eng._recent) == [1] and list(eng._recent_order) == [1]
    (applied,) = eng.on_feedback(_fb(1), 0.01)
    assert applied.losses == {"m": 0.0}  # type: ignore[union-attr]  # the newer answer, 1
    _served(eng, 2, 2, 0), _served(eng, 3, 3, 0), _served(eng, 4, 4, 0)
    assert list(eng._recent) == [2, 3, 4]  # 1 held once: evicted first, once
    big = _single(remember_bytes=1_000_000)
    for _ in range(5):  # 800 kB each under one id: counted once, never forgotten
        _served(big, 7, 7, np.zeros(100_000))
    assert big._recent_bytes == 800_000 and list(big._recent) == [7]
