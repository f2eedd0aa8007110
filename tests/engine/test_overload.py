"""Overload holds goodput (issue 11, defect 8): in simulated time, at 5x a known service
rate with a 20 ms objective, admission control by predicted wait keeps in-time answers
near capacity, and every shed query's answer says why."""

from __future__ import annotations

import heapq
from typing import Any

import pytest

from clipperlab.engine import Application, BatchingConfig, Engine, ModelSpec
from clipperlab.engine._types import DefaultReason
from tests.fake import FakeDriver

SLO_S = 0.020


class _Run:
    """One open-loop run: arrivals every ``1/rate_qps`` seconds; a batch of ``b`` takes
    ``fixed_s + per_item_s * b``; one replica."""

    def __init__(self, batching: dict[str, Any], rate_qps: float, *, fixed_s: float,
                 per_item_s: float, duration_s: float = 5.0) -> None:
        eng = Engine()
        eng.add_application(Application(name="a", slo_s=SLO_S, default_output=-1), now=0.0)
        eng.add_model(ModelSpec(name="m", batching=BatchingConfig(**batching)), now=0.0)
        eng.link("a", ["m"], now=0.0)
        d = self.d = FakeDriver(eng)
        d.up("m")
        done: list[tuple[float, int]] = []
        timed: set[int] = set()
        self.arrival: dict[int, float] = {}
        qid, t = 0, 0.0
        while t < duration_s or done:
            if t < duration_s and (not done or t <= done[0][0]):
                d.advance(t)
                self.arrival[qid] = t
                d.query(qid, "a", qid)
                qid, t = qid + 1, t + 1.0 / rate_qps
            else:
                at, bid = heapq.heappop(done)
                d.advance(at)
                d.complete(bid, lambda x: 1)
            for bid, sb in d.open.items():
                if bid not in timed:
                    timed.add(bid)
                    heapq.heappush(done, (d.now + fixed_s + per_item_s * len(sb.inputs), bid))
        d.advance(duration_s + 1.0)
        self.duration_s = duration_s
        self.queries = qid

    @property
    def in_time_qps(self) -> float:
        d = self.d
        good = sum(
            1
            for q, r in d.replies.items()
            if not r.prediction.default and d.reply_times[q] - self.arrival[q] <= SLO_S + 1e-9
        )
        return good / self.duration_s

    def defaults(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.d.replies.values():
            if r.prediction.default:
                reason = r.prediction.default_reason or ""
                out[reason] = out.get(reason, 0) + 1
        return out


# (batching, fixed_s, per_item_s, capacity in time): no batching at 5 ms a query is 200/s;
# AIMD with 2 ms + 1 ms per item can at best send 18 in 20 ms (900/s).
CASES = {
    "none": ({"policy": "none"}, 0.005, 0.0, 200.0),
    "aimd": ({"policy": "aimd"}, 0.002, 0.001, 900.0),
}
REAL_DEFAULT = {"admission_control": True, "drop_hopeless": True}


@pytest.mark.parametrize("case", sorted(CASES))
def test_goodput_stays_near_capacity_at_five_times_the_load(case: str) -> None:
    batching, fixed_s, per_item_s, capacity = CASES[case]
    run = _Run({**batching, **REAL_DEFAULT}, 5 * capacity, fixed_s=fixed_s,
               per_item_s=per_item_s)
    assert run.in_time_qps >= 0.8 * capacity
    assert len(run.d.replies) == run.queries and run.d.duplicate_replies == 0


@pytest.mark.parametrize("case", sorted(CASES))
def test_admission_control_alone_holds_goodput(case: str) -> None:
    """Refusing at arrival is enough by itself (drop_hopeless only tidies up)."""
    batching, fixed_s, per_item_s, capacity = CASES[case]
    run = _Run({**batching, "admission_control": True}, 5 * capacity, fixed_s=fixed_s,
               per_item_s=per_item_s)
    assert run.in_time_qps >= 0.7 * capacity


def test_shed_queries_are_answered_at_once_explained_and_counted() -> None:
    batching, fixed_s, per_item_s, capacity = CASES["aimd"]
    run = _Run({**batching, **REAL_DEFAULT}, 5 * capacity, fixed_s=fixed_s,
               per_item_s=per_item_s, duration_s=2.0)
    d = run.d
    shed = [
        (q, r) for q, r in d.replies.items()
        if r.prediction.default_reason == DefaultReason.PREDICTED_LATE
    ]
    assert len(shed) > run.queries / 2
    for q, r in shed:
        assert d.reply_times[q] == run.arrival[q]  # answered on arrival, never queued
        assert r.prediction.explanation is not None
        assert r.prediction.explanation.startswith("shed: predicted wait ")
        assert "exceeds the" in r.prediction.explanation and "model m" in r.prediction.explanation
        assert not r.refused and r.prediction.output == -1
    m = d.eng.metrics
    for reason, n in run.defaults().items():
        assert m.value("clipperlab_defaults_total", app="a", reason=reason) == n
    assert m.value("clipperlab_admission_refused_total", model="m", version="1") == len(shed)


def test_below_capacity_nothing_is_shed() -> None:
    batching, fixed_s, per_item_s, capacity = CASES["aimd"]
    run = _Run({**batching, **REAL_DEFAULT}, 0.5 * capacity, fixed_s=fixed_s,
               per_item_s=per_item_s, duration_s=2.0)
    assert run.defaults() == {}


def test_defaults_are_unchanged_for_the_simulator_and_the_figures() -> None:
    """Admission control and drop_hopeless are off unless asked for (real mode asks)."""
    cfg = BatchingConfig()
    assert not cfg.admission_control and not cfg.drop_hopeless


def test_one_slow_batch_does_not_shed_every_later_query() -> None:
    """A cold start: the first batch takes 10x the objective, so the latency estimate says
    every later query would be late.  An idle replica with an empty queue still takes the
    next query, whose quick batch corrects the estimate: later queries get predictions."""
    eng = Engine()
    eng.add_application(Application(name="a", slo_s=SLO_S, default_output=-1), now=0.0)
    eng.add_model(ModelSpec(name="m", batching=BatchingConfig(policy="none", **REAL_DEFAULT)),
                  now=0.0)
    eng.link("a", ["m"], now=0.0)
    d = FakeDriver(eng)
    d.up("m")
    d.query(0, "a", 0)
    (bid,) = d.open
    d.advance(0.2)  # a 200 ms first batch against a 20 ms objective
    d.complete(bid, lambda x: 1)
    served = 0
    for q in range(1, 41):  # one query every 50 ms, each batch 2 ms
        d.advance(0.2 + 0.05 * q)
        d.query(q, "a", q)
        for b in list(d.open):
            d.advance(d.now + 0.002)
            d.complete(b, lambda x: 1)
        served += not d.replies[q].prediction.default
    assert served == 40
