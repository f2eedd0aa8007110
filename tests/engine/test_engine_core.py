"""Engine flows driven by hand: queues, deadlines, stragglers, replicas, versions."""

from __future__ import annotations

import pytest

from clipperlab.engine import (
    Application,
    BatchingConfig,
    ConfigError,
    Conflict,
    Engine,
    Feedback,
    ModelSpec,
    NotFound,
    Prediction,
)
from clipperlab.engine._types import DefaultReason, ReleaseReason
from tests.fake import FakeDriver


def make(
    policy: str = "static",
    models: tuple[str, ...] = ("m",),
    batching: BatchingConfig | None = None,
    threshold: float = 0.0,
    slo_s: float = 0.020,
    **eng_kw: object,
) -> FakeDriver:
    eng = Engine(seed=1, decision_log=True, **eng_kw)  # type: ignore[arg-type]
    eng.add_application(
        Application(
            name="a", slo_s=slo_s, default_output=-1, policy=policy, confidence_threshold=threshold
        ),
        now=0.0,
    )
    for m in models:
        batching_m = batching or BatchingConfig(policy="aimd")
        eng.add_model(ModelSpec(name=m, batching=batching_m), now=0.0)
    eng.link("a", list(models), now=0.0)
    return FakeDriver(eng)


def test_query_is_batched_and_answered() -> None:
    """A query goes to an idle replica at once and its output comes back as the reply."""
    d = make()
    d.up("m")
    d.query(1, "a", 7)
    [sb] = d.sent
    assert sb.inputs == (7,) and sb.reason == ReleaseReason.CAP_REACHED
    d.now = 0.005
    d.complete(sb.batch_id, lambda x: x * 2)
    r = d.replies[1]
    assert r.prediction.output == 14 and not r.prediction.default
    assert r.prediction.models == ("m",) and r.latency_s == pytest.approx(0.005)


def test_deadline_without_replica_gives_flagged_default() -> None:
    """No replica: the query is answered at its deadline with the default and the reason."""
    d = make()
    d.query(1, "a", 7)
    assert not d.replies
    assert d.eng.next_deadline() == pytest.approx(0.020)
    d.advance(0.019)
    assert not d.replies
    d.advance(0.021)
    p = d.replies[1].prediction
    assert p.default and p.output == -1 and p.default_reason == DefaultReason.DEADLINE
    assert "latency SLO" in (p.explanation or "")
    assert d.reply_times[1] == pytest.approx(0.020)


def test_expired_requests_are_dropped_from_the_queue() -> None:
    """A request whose deadline passed is never sent to a replica that comes up later."""
    d = make()
    d.query(1, "a", 1)
    d.advance(0.030)
    d.up("m")
    assert d.sent == []
    assert d.eng.metrics.value("clipperlab_queue_expired_total", model="m", version="1") == 1


def test_late_result_after_deadline_does_not_reply_twice_but_fills_cache() -> None:
    """A straggler result: the query got the default; the output still fills the cache."""
    d = make()
    d.up("m")
    d.query(1, "a", 5, key="k5")
    [sb] = d.sent
    d.advance(0.050)
    assert d.replies[1].prediction.default
    d.complete(sb.batch_id)
    assert d.duplicate_replies == 0
    d.query(2, "a", 5, key="k5")
    assert d.replies[2].prediction.output == 5 and not d.replies[2].prediction.default
    assert len(d.sent) == 1  # answered from the cache


def test_identical_inflight_requests_coalesce() -> None:
    """Two queries for the same input while the first is in flight share one prediction."""
    d = make()
    d.up("m")
    d.query(1, "a", 5, key="k")
    d.query(2, "a", 5, key="k")
    assert len(d.sent) == 1
    d.complete(d.sent[0].batch_id)
    assert d.replies[1].prediction.output == d.replies[2].prediction.output == 5
    assert d.eng.metrics.value("clipperlab_cache_coalesced_total") == 1


def test_ensemble_answers_at_deadline_with_what_arrived() -> None:
    """Straggler mitigation: with one of two members late, the reply comes at the deadline."""
    d = make(policy="exp4", models=("m1", "m2"))
    r1, r2 = d.up("m1"), d.up("m2")
    d.query(1, "a", 3)
    assert len(d.sent) == 2
    d.now = 0.004
    [b1] = d.open_for(r1)
    d.complete(b1.batch_id)
    assert 1 not in d.replies
    d.advance(0.021)
    p = d.replies[1].prediction
    assert p.output == 3 and p.models == ("m1",) and p.missing == ("m2",)
    assert p.confidence == pytest.approx(0.5)
    assert d.open_for(r2)  # still computing; its result is not waited for


def test_ensemble_answers_as_soon_as_all_members_reply() -> None:
    d = make(policy="exp4", models=("m1", "m2", "m3"))
    for m in ("m1", "m2", "m3"):
        d.up(m)
    d.query(1, "a", 0)
    outs = {"m1": 1, "m2": 1, "m3": 0}
    d.now = 0.003
    for sb in list(d.open.values()):
        d.complete(sb.batch_id, lambda x, m=sb.replica.model: outs[m])
    p = d.replies[1].prediction
    assert p.output == 1 and p.confidence == pytest.approx(2 / 3) and not p.default
    assert d.reply_times[1] == pytest.approx(0.003)


def test_low_confidence_becomes_flagged_default() -> None:
    d = make(policy="exp4", models=("m1", "m2"), threshold=0.9)
    d.up("m1"), d.up("m2")
    d.query(1, "a", 0)
    outs = {"m1": 1, "m2": 0}
    for sb in list(d.open.values()):
        d.complete(sb.batch_id, lambda x, m=sb.replica.model: outs[m])
    p = d.replies[1].prediction
    assert p.default and p.default_reason == DefaultReason.LOW_CONFIDENCE
    assert p.confidence == pytest.approx(0.5) and p.output == -1


def test_no_model_linked_gives_default_at_once() -> None:
    eng = Engine()
    eng.add_application(Application(name="empty", default_output=0), now=0.0)
    d = FakeDriver(eng)
    d.query(1, "empty")
    assert d.replies[1].prediction.default_reason == DefaultReason.NO_MODEL


def test_replica_down_requeues_in_flight_batch_to_another_replica() -> None:
    d = make()
    r0 = d.up("m", ordinal=0)
    d.query(1, "a", 1)
    [sb] = d.sent
    assert sb.replica == r0
    r1 = d.up("m", ordinal=1)
    d.down(r0)
    [sb2] = d.open_for(r1)
    assert sb2.inputs == (1,)
    d.complete(sb2.batch_id)
    assert d.replies[1].prediction.output == 1


def test_failed_batch_counts_models_as_missing() -> None:
    d = make()
    d.up("m")
    d.query(1, "a", 1)
    d.fail(d.sent[0].batch_id)
    p = d.replies[1].prediction
    assert p.default and p.default_reason == DefaultReason.MODEL_ERROR


def test_wrong_number_of_outputs_is_a_failed_batch() -> None:
    d = make()
    rid = d.up("m")
    d.query(1, "a", 1)
    sb = d.sent[0]
    from clipperlab.engine import BatchDone

    d.handle(d.eng.on_batch_done(BatchDone(replica=rid, batch_id=sb.batch_id, outputs=[]), 0.001))
    assert d.replies[1].prediction.default_reason == DefaultReason.MODEL_ERROR


def test_new_version_and_rollback_route_queries() -> None:
    """Queries go to the active version; rollback returns to the previous one."""
    d = make()
    d.eng.add_model(ModelSpec(name="m", version="2"), now=0.0)
    d.up("m", "1")
    d.up("m", "2")
    d.query(1, "a", 1)
    assert d.sent[-1].replica.version == "1"
    d.complete(d.sent[-1].batch_id)
    d.eng.set_model_version("m", "2", now=0.0)
    d.query(2, "a", 1)
    assert d.sent[-1].replica.version == "2"
    d.complete(d.sent[-1].batch_id)
    assert d.eng.rollback("m", now=0.0) == "1"
    d.query(3, "a", 1)
    assert d.sent[-1].replica.version == "1"
    assert all(not d.replies[i].prediction.default for i in (1, 2))
    with pytest.raises(NotFound, match="no version '9'"):
        d.eng.set_model_version("m", "9", now=0.0)


def test_bounded_queue_refuses_with_explanation() -> None:
    d = make(batching=BatchingConfig(policy="aimd", max_queue=2))
    for i in range(3):
        d.query(i, "a", i)
    r = d.replies[2]
    assert r.refused and r.prediction.default_reason == DefaultReason.OVERLOADED
    assert "full" in (r.prediction.explanation or "")
    assert 0 not in d.replies and 1 not in d.replies


def test_admin_errors_name_the_problem() -> None:
    eng = Engine()
    eng.add_application(Application(name="a"), now=0.0)
    with pytest.raises(Conflict, match="'a' already exists"):
        eng.add_application(Application(name="a"), now=0.0)
    with pytest.raises(NotFound, match="model 'nope'"):
        eng.link("a", ["nope"], now=0.0)
    with pytest.raises(ConfigError, match="slo_s"):
        Application(name="b", slo_s=0)
    with pytest.raises(ConfigError, match="batching policy 'magic'"):
        BatchingConfig(policy="magic")
    with pytest.raises(ConfigError, match="selection policy 'best'"):
        eng.add_application(Application(name="c", policy="best"), now=0.0)
    with pytest.raises(NotFound, match="application 'zzz'"):
        FakeDriver(eng).query(1, "zzz")


def test_policy_switch_without_restart_keeps_weights() -> None:
    d = make(policy="exp3", models=("m1", "m2"))
    st = d.eng.selection_state("a")
    st.weights[0] = 0.25
    d.eng.update_application("a", policy="exp4", now=0.0)
    assert d.eng.selection_state("a").weights[0] == 0.25
    d.up("m1"), d.up("m2")
    d.query(1, "a", 0)
    assert len(d.sent) == 2  # exp4 queries every member


def test_every_release_and_default_reason_is_counted() -> None:
    d = make()
    d.up("m")
    d.query(1, "a", 1)
    d.advance(0.1)
    m = d.eng.sync_metrics()
    assert m.value("clipperlab_batches_total", model="m", version="1", reason="cap_reached") == 1
    assert m.value("clipperlab_defaults_total", app="a", reason="deadline") == 1
    kinds = [e[0] for e in d.eng.log or []]
    assert kinds == ["batch", "reply"]


def test_query_with_past_deadline_is_answered_at_once() -> None:
    """A query whose own deadline has passed gets the default now, and no model is asked."""
    d = make()
    d.up("m")
    d.now = 1.0
    d.query(1, "a", 5, deadline=0.5)
    p = d.replies[1].prediction
    assert p.default and p.default_reason == DefaultReason.DEADLINE and d.sent == []


def test_next_deadline_is_always_after_now() -> None:
    """The contract drivers rely on: after any call, the next timer is in the future."""
    d = make(batching=BatchingConfig(policy="fixed", max_batch_size=4, wait_timeout_s=0.002))
    d.up("m")
    for i in range(30):
        d.now = i * 0.0007
        d.query(i, "a", i, deadline=d.now + (0.001 if i % 5 == 0 else 0.02))
        nd = d.eng.next_deadline()
        assert nd is None or nd > d.now
        for sb in list(d.open.values())[:1]:
            d.complete(sb.batch_id)
            nd = d.eng.next_deadline()
            assert nd is None or nd > d.now


def test_one_model_answers_share_a_prediction_per_int_output() -> None:
    """Answers of one model with the same int output share one Prediction (the one-query
    path), equal to the general path's; after a relink the answers name the new model;
    other outputs get their own."""
    eng = Engine(seed=1, remember_queries=0)
    eng.add_application(Application(name="a", slo_s=0.020, default_output=-1), now=0.0)
    for m in ("m", "n"):
        eng.add_model(ModelSpec(name=m, batching=BatchingConfig(policy="aimd")), now=0.0)
    eng.link("a", ["m"], now=0.0)
    d = FakeDriver(eng)
    d.up("m")
    d.up("n")

    def answer(qid: int, output: object) -> Prediction:
        d.query(qid, "a", qid)
        d.now += 0.001
        d.complete(d.sent[-1].batch_id, lambda _: output)
        return d.replies[qid].prediction

    first, second, other = answer(1, 3), answer(2, 3), answer(3, 4)
    assert first is second and first == Prediction(3, 1.0, False, None, None, ("m",), ())
    assert other == Prediction(4, 1.0, False, None, None, ("m",), ())
    listed = answer(4, [3])
    assert listed == Prediction([3], 1.0, False, None, None, ("m",), ()) and listed is not first
    eng.unlink("a", ["m"], now=d.now)
    eng.link("a", ["n"], now=d.now)
    after = answer(5, 3)
    assert after.models == ("n",) and after.output == 3 and after is not first
    assert answer(6, 3) is after


def test_a_batchs_one_model_answers_share_a_prediction_per_int_output() -> None:
    """Queries answered together in one batch (the general _finish, queries remembered
    for feedback) share the Prediction of an int output with the one-query path; a bool
    or float output equal to it gets its own, and feedback still finds each answer."""
    d = make(batching=BatchingConfig(policy="fixed", max_batch_size=8))
    d.up("m")
    for qid in range(1, 7):
        d.query(qid, "a", qid)
    assert [len(sb.inputs) for sb in d.sent] == [1]  # the first goes alone; 5 queue
    d.now = 0.001
    d.complete(d.sent[0].batch_id, lambda _: 3)
    outputs = {2: 3, 3: 3, 4: True, 5: 3.0, 6: 4}
    d.now = 0.002
    d.complete(d.sent[1].batch_id, lambda x: outputs[x])
    p = {q: d.replies[q].prediction for q in range(1, 7)}
    want = Prediction(3, 1.0, False, None, None, ("m",), ())
    assert p[1] is p[2] is p[3] and p[1] == want
    assert p[4].output is True and p[4] is not p[1]
    assert type(p[5].output) is float and p[5] is not p[1]
    assert p[6] == Prediction(4, 1.0, False, None, None, ("m",), ())
    assert [d.replies[q].latency_s for q in (2, 6)] == [0.002, 0.002]
    d.eng.on_feedback(Feedback(feedback_id=1, app="a", label=3, query_id=3), d.now)
    assert d.eng.metrics.value("clipperlab_feedback_total", app="a") == 1


@pytest.mark.parametrize("output", [5, 2.5, "cat"])
def test_cache_hit_path_answers_as_the_general_path(output: object) -> None:
    """A one-model cache hit (on_query's own path, no task) and one through the general
    path (a query with its own deadline) give equal replies, metrics, log entries and
    memory for feedback; the hit marks the entry recently used."""
    d = make()
    d.up("m")
    d.query(1, "a", "x", key="k")
    d.complete(d.sent[0].batch_id, lambda x: output)
    d.now = 0.1
    d.query(2, "a", "x", key="k")  # the hit path
    d.query(3, "a", "x", key="k", deadline=0.2)  # the general path
    assert len(d.sent) == 1
    r2, r3 = d.replies[2], d.replies[3]
    assert r2.prediction == r3.prediction and r2.prediction.output == output
    if type(output) is int:  # an int output's one shared Prediction, hit or miss
        assert r2.prediction is d.replies[1].prediction is r3.prediction
    assert (r2.latency_s, r2.refused) == (r3.latency_s, r3.refused) == (0.0, False)
    m = d.eng.metrics
    assert m.value("clipperlab_cache_hits_total") == 2
    assert m.value("clipperlab_cache_misses_total") == 1
    assert d.eng.cache.hits == 2
    log = [e for e in d.eng.log if e[0] == "reply"]
    assert log[-2][2:] == (2, output, False, None, ("m",))
    assert log[-1][2:] == (3, output, False, None, ("m",))
    d.feedback_(10, "a", output, query_id=2)
    d.feedback_(11, "a", output, query_id=3)
    f10, f11 = d.feedback[10], d.feedback[11]
    assert (f10.losses, f10.from_cache, f10.computed) == (f11.losses, 1, 0)


def test_cache_hit_path_sets_the_clock_bit() -> None:
    """A hit through on_query's own path gives its entry a second chance: the next
    eviction takes the other entry."""
    d = make(cache_capacity_bytes=2 * (28 + 64) + 10)  # two int entries
    d.up("m")
    for qid, k in ((1, "k1"), (2, "k2")):
        d.query(qid, "a", k, key=k)
        d.complete(d.sent[-1].batch_id, lambda x: 7)
    d.query(3, "a", "k1", key="k1")  # hit: k1 referenced
    assert len(d.sent) == 2
    d.query(4, "a", "k3", key="k3")
    d.complete(d.sent[-1].batch_id, lambda x: 7)  # room for k3: k2 goes, not k1
    version = d.eng.registry.active["m"]
    assert ("m", version, "k1") in d.eng.cache and ("m", version, "k2") not in d.eng.cache
