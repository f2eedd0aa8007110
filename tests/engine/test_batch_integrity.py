"""Batch integrity: a batch that cannot be sent fails (its replica is free again, its
queries get an explained default, the rest of the instructions still go out, the timer is
re-armed), and a result or failure that names another replica than the one the batch was
sent to changes nothing (issue 11, defects 1 and 2)."""

from __future__ import annotations

from clipperlab.engine import (
    Application,
    BatchDone,
    BatchFailed,
    BatchingConfig,
    Engine,
    ModelSpec,
    ReplicaId,
    SendBatch,
)
from tests.fake import FakeDriver

SLO_S = 1.0


class FlakySendDriver(FakeDriver):
    """A fake driver whose ``send_batch`` raises for the replicas in ``broken``."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.broken: set[ReplicaId] = set()

    def send_batch(self, batch: SendBatch, now: float) -> None:
        if batch.replica in self.broken:
            raise IndexError("number of dimensions must be within [0, 64]")
        super().send_batch(batch, now)


def _engine(decision_log: bool = False) -> Engine:
    eng = Engine(seed=0, decision_log=decision_log)
    eng.add_application(Application(name="a", slo_s=SLO_S, default_output=-1), now=0.0)
    eng.add_application(Application(name="b", slo_s=SLO_S, default_output=-2), now=0.0)
    for m in ("m", "n"):
        eng.add_model(ModelSpec(name=m, batching=BatchingConfig(policy="none")), now=0.0)
    eng.link("a", ["m"], now=0.0)
    eng.link("b", ["n"], now=0.0)
    return eng


def _ignored(eng: Engine) -> float:
    return sum(
        s.metric.value
        for s in eng.sync_metrics().samples()
        if s.name == "clipperlab_batch_results_ignored_total"
    )


def test_a_send_that_raises_fails_its_batch_and_frees_the_replica() -> None:
    """The query of a batch that could not be sent is answered at once with the
    model-error default; the replica takes the next query instead of staying busy."""
    d = FlakySendDriver(_engine())
    rid = d.up("m")
    d.broken.add(rid)
    d.query(1, "a", [1.0])
    assert 1 in d.replies
    r = d.replies[1].prediction
    assert r.default and r.output == -1 and "failed" in (r.explanation or "")
    d.broken.clear()
    d.query(2, "a", [2.0])
    [sb] = d.open_for(rid)
    d.complete(sb.batch_id, lambda x: 7)
    assert d.replies[2].prediction.output == 7 and not d.replies[2].prediction.default


def test_instructions_after_a_failed_send_are_still_carried_out() -> None:
    """One engine call that releases two batches: the first send raises, the second batch
    still goes out, and the timer is re-armed from the engine's deadline."""
    eng = _engine()
    d = FlakySendDriver(eng)
    rm, rn = d.up("m"), d.up("n")
    d.broken.add(rm)
    sends = [
        SendBatch(replica=rm, batch_id=901, inputs=(1,), reason="x", padded_size=1),
        SendBatch(replica=rn, batch_id=902, inputs=(2,), reason="x", padded_size=1),
    ]
    d.timer_at = 123.0  # a stale slot: handle must re-arm it even though a send raised
    d.handle(list(sends))
    assert [sb.batch_id for sb in d.sent] == [902]
    assert d.timer_at == eng.next_deadline()


def test_a_failed_send_leaves_every_query_answered() -> None:
    """Queued queries behind a batch that cannot be sent are each tried and answered
    (with the default) rather than left waiting on a replica marked busy."""
    d = FlakySendDriver(_engine())
    for i in range(5):
        d.query(i, "a", [float(i)])
    rid = ReplicaId("m", "1", 0)
    d.broken.add(rid)
    d.up("m")
    assert sorted(d.replies) == [0, 1, 2, 3, 4]
    assert all(r.prediction.default for r in d.replies.values())
    assert d.timer_at == d.eng.next_deadline() and d.duplicate_replies == 0


def test_a_result_from_another_replica_is_ignored_and_counted() -> None:
    """A ``BatchDone`` naming a replica the batch was not sent to answers nothing and
    does not free the replica; the real replica's result is then taken."""
    eng = _engine(decision_log=True)
    d = FakeDriver(eng)
    rm = d.up("m")
    rn = d.up("n")
    d.query(1, "a", [1.0])
    [sb] = d.open_for(rm)
    d.on_batch_done(BatchDone(replica=rn, batch_id=sb.batch_id, outputs=[999]), d.now)
    assert d.replies == {} and _ignored(eng) == 1
    d.on_batch_failed(BatchFailed(replica=rn, batch_id=sb.batch_id, error="x"), d.now)
    assert d.replies == {} and _ignored(eng) == 2
    d.complete(sb.batch_id, lambda x: 5)
    assert d.replies[1].prediction.output == 5 and not d.replies[1].prediction.default
    # the forged result did not fill the cache nor free "n" twice: n still takes batches
    d.query(2, "b", [2.0])
    [sb2] = d.open_for(rn)
    d.complete(sb2.batch_id, lambda x: 6)
    assert d.replies[2].prediction.output == 6


def test_a_forged_result_of_the_wrong_length_is_ignored_too() -> None:
    """The sender is checked before anything else: a foreign result with the wrong
    number of outputs does not fail the real batch either."""
    eng = _engine()
    d = FakeDriver(eng)
    rm, rn = d.up("m"), d.up("n")
    d.query(1, "a", [1.0])
    [sb] = d.open_for(rm)
    d.on_batch_done(BatchDone(replica=rn, batch_id=sb.batch_id, outputs=[1, 2, 3]), d.now)
    assert d.replies == {} and _ignored(eng) == 1
    d.complete(sb.batch_id, lambda x: 4)
    assert d.replies[1].prediction.output == 4
