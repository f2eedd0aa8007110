"""Removing an application (Clipper's ``delete_application``): what was admitted is still
answered, what comes later is refused as for an unknown name, the models stay."""

from __future__ import annotations

import pytest

from clipperlab.engine import Application, BatchingConfig, Engine, ModelSpec, NotFound
from clipperlab.engine._types import DefaultReason
from tests.fake import FakeDriver


def make() -> FakeDriver:
    eng = Engine(seed=1)
    eng.add_application(Application(name="a", slo_s=0.020, default_output=-1), now=0.0)
    eng.add_application(Application(name="b", slo_s=0.050, default_output=-2), now=0.0)
    eng.add_model(ModelSpec(name="m", batching=BatchingConfig(policy="fixed",
                                                              max_batch_size=1)), now=0.0)
    eng.link("a", ["m"], now=0.0)
    eng.link("b", ["m"], now=0.0)
    return FakeDriver(eng)


def test_in_flight_and_queued_queries_are_answered_later_ones_refused() -> None:
    """A query in flight gets its model's answer, one still queued gets the explained
    deadline default; after the removal a query naming the application is NotFound."""
    d = make()
    d.up("m")
    d.query(1, "a", 7)  # sent to the replica at once (batches of 1)
    d.query(2, "a", 8)  # queued behind it
    [sb] = d.sent
    d.admin(lambda now: d.eng.remove_application("a", now=now), d.now)
    with pytest.raises(NotFound, match="'a' does not exist"):
        d.query(3, "a", 9)
    d.now = 0.005
    d.complete(sb.batch_id, lambda x: x * 2)
    assert d.replies[1].prediction.output == 14 and not d.replies[1].prediction.default
    assert 2 not in d.replies  # query 2 went to the replica freed by query 1's batch
    d.advance(0.030)  # its deadline (0.020) passes before its batch comes back
    p2 = d.replies[2].prediction
    assert p2.default and p2.output == -1 and p2.default_reason == DefaultReason.DEADLINE
    assert p2.explanation
    assert sorted(d.replies) == [1, 2] and d.duplicate_replies == 0


def test_links_and_state_go_models_stay() -> None:
    """The application leaves the registry with its links and selection state; its
    models, and the other applications linked to them, serve on."""
    d = make()
    eng = d.eng
    eng.selection_state("a", "user")
    eng.remove_application("a", now=0.0)
    assert "a" not in eng.registry.apps and "a" not in eng.registry.links
    assert eng.registry.apps_of_model("m") == ["b"]
    assert eng.active_version("m") == "1"
    for call in (lambda: eng.selection_state("a"), lambda: eng.probabilities("a"),
                 lambda: eng.remove_application("a", now=0.0),
                 lambda: eng.link("a", ["m"], now=0.0)):
        with pytest.raises(NotFound, match="'a'"):
            call()
    assert "a" not in eng.take_selection_changes()
    d.up("m")
    d.query(1, "b", 3)
    d.complete(d.sent[0].batch_id)
    assert d.replies[1].prediction.output == 3


def test_feedback_is_refused_after_removal() -> None:
    """Feedback naming a removed application is NotFound, even for a remembered query."""
    d = make()
    d.up("m")
    d.query(1, "a", 7)
    d.complete(d.sent[0].batch_id)
    d.eng.remove_application("a", now=0.0)
    with pytest.raises(NotFound):
        d.feedback_(1, "a", 7, query_id=1)


def test_removed_models_batch_bound_is_recomputed() -> None:
    """The removed application's SLO no longer bounds its former models' batches."""
    d = make()
    rid = d.up("m")
    assert d.eng.controller(rid).latency_bound_s == pytest.approx(0.020)
    d.eng.remove_application("a", now=0.0)
    assert d.eng.controller(rid).latency_bound_s == pytest.approx(0.050)


def test_a_new_application_of_the_same_name_starts_afresh() -> None:
    """Added again, the name serves with its new settings and no links."""
    d = make()
    d.eng.remove_application("a", now=0.0)
    d.eng.add_application(Application(name="a", slo_s=0.010, default_output=-9), now=0.0)
    assert d.eng.registry.links["a"] == []
    d.query(1, "a", 7)
    p = d.replies[1].prediction
    assert p.default and p.output == -9 and p.default_reason == DefaultReason.NO_MODEL
