"""``clipperlab plan`` on an ensemble with straggler mitigation, against hand-checked
answers: two members with fixed service times, one fast (1 ms) and one slow (10 ms, at
most 100 q/s a replica), under 400 q/s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from clipperlab.experiments.plan_search import Search
from clipperlab.experiments.plan_space import plan_from_dict
from clipperlab.simulator import LatencyProfile, save_profile

LAM = 400.0
BATCH_OF_ONE = {"policy": "none"}  # and the server's overload defaults: hopeless requests
# are dropped, so a member at c replicas answers about c x 100 of the 400 q/s in time


@pytest.fixture(scope="module")
def profiles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = {}
    d = tmp_path_factory.mktemp("ens")
    for name, s in (("fast", 0.001), ("slow", 0.010)):
        path = d / f"{name}.json"
        save_profile(LatencyProfile(name, (1,), (0.0, 1.0), ((s, s),)), path)
        out[name] = str(path)
    return out


def ensemble_plan(profiles: dict[str, str], **objective: Any) -> dict[str, Any]:
    return {
        "plan": {"seeds": 2, "margin_ms": 0.0},
        "objective": {"attainment": 0.99, "within_ms": 30.0, **objective},
        "hosts": [{"name": "h", "cpus": 64, "latency_s": 0.0, "bandwidth_bps": 1e15}],
        "applications": [{"name": "e", "slo_ms": 50, "policy": "exp4",
                          "models": ["fast", "slow"]}],
        "models": [{"name": m, "profile": p} for m, p in profiles.items()],
        "search": {"models": {m: {"replicas": [1, 6], "batching": [BATCH_OF_ONE]}
                              for m in profiles}},
        "workload": {"app": "e", "n_queries": 3000, "arrivals": {"kind": "poisson",
                                                               "qps": LAM}},
    }


def test_answers_without_a_straggler_count_at_the_deadline(profiles: dict[str, str],
                                                            tmp_path: Path) -> None:
    """No limit on missing members: the slow member at 1 replica (100 of 400 q/s) only
    delays answers to the deadline, which the planner moves from the application's 50 ms
    to the objective's 30 ms, and every one of them carries the fast member's answer: one
    replica of each meets 99% in time."""
    spec = plan_from_dict(ensemble_plan(profiles), "t", tmp_path)
    assert spec.app_tables()[0]["slo_ms"] == pytest.approx(30.0)
    lb, _ = spec.lower_bounds(spec.shapes()[0])
    assert lb == {"fast": 1, "slow": 1}  # a member need not answer: no bound
    res = Search(spec).search()
    assert res.best is not None and res.best.candidate.replicas() == {"fast": 1, "slow": 1}
    per = res.best.per_app().iloc[0]
    assert per["attainment"] >= 0.99
    assert 0.33 < per["missing_share"] < 0.42  # about (1 - 100/400) / 2 of the answers


def test_a_missing_share_limit_sizes_the_straggler(profiles: dict[str, str],
                                                   tmp_path: Path) -> None:
    """At most 20% of the members' answers missing: the slow member must answer at least
    1 - 2 x 0.2 = 60% of 400 q/s, so at least 3 replicas (the bound); with 3 it answers
    about 300 of 400 (12.5% of the answers missing), with 2 about 200 (25%)."""
    spec = plan_from_dict(ensemble_plan(profiles, max_missing_share=0.2), "t", tmp_path)
    lb, _ = spec.lower_bounds(spec.shapes()[0])
    assert lb == {"fast": 1, "slow": 3}
    res = Search(spec).search()
    assert res.best is not None and res.best.candidate.replicas() == {"fast": 1, "slow": 3}
    assert res.best.per_app().iloc[0]["missing_share"] <= 0.2
    two = Search(spec).evaluate(res.best.candidate.with_replicas({"fast": 1, "slow": 2}))
    assert two.meets is False and two.per_app().iloc[0]["missing_share"] > 0.2
    assert "missing" in two.reason
    # a margin of 10 points plans for 10%: 1 - 2 x 0.1 = 80% of 400 q/s, 4 replicas
    doc = ensemble_plan(profiles, max_missing_share=0.2)
    doc["plan"]["missing_margin"] = 0.1
    spec = plan_from_dict(doc, "t", tmp_path)
    assert spec.lower_bounds(spec.shapes()[0])[0] == {"fast": 1, "slow": 4}


def test_the_descent_removes_the_dearest_replicas_first() -> None:
    """From 3 GPU (cost 4) + 3 CPU (cost 1) replicas, with "x + y >= 4" holding, the
    descent takes GPU replicas away first, to x=1, y=3 (cost 7), where no single removal
    holds; taking CPU replicas first would stop at x=3, y=1 (cost 13)."""
    from types import SimpleNamespace

    from clipperlab.experiments.plan_search import Evaluation
    from clipperlab.experiments.plan_space import Candidate, Choice

    costs = {"gpu": 4.0, "cpu": 1.0}
    shape = Candidate((Choice("y", "cpu", "aimd", 1), Choice("x", "gpu", "aimd", 1)))
    seen: list[dict[str, int]] = []

    class Oracle(Search):
        def evaluate(self, cand: Candidate) -> Evaluation:
            r = cand.replicas()
            seen.append(r)
            ev = Evaluation(cand, sum(costs[c.hardware] * c.replicas for c in cand.choices))
            ev.meets = r["x"] + r["y"] >= 4
            return ev

    s = Oracle.__new__(Oracle)
    s.spec = SimpleNamespace(costs=costs)  # type: ignore[assignment]
    s._descend(shape, {"y": 3, "x": 3}, {"y": 1, "x": 1})  # the cheap model listed first
    assert seen == [{"x": 2, "y": 3}, {"x": 1, "y": 3}, {"x": 1, "y": 2}]
