"""Feedback, per-user contexts and cacheable inputs flow from the workload to the engine."""

from __future__ import annotations

from clipperlab.engine import Application, BatchingConfig, ModelSpec
from clipperlab.simulator import (
    AccuracyOutputs,
    AppDeployment,
    Deployment,
    ModelDeployment,
    Simulation,
)
from clipperlab.simulator import load_profile as lp
from clipperlab.workloads import DigitsInputs, FeedbackStream, Poisson, UserContexts, Workload


def ensemble(policy: str) -> Deployment:
    p = lp("prototype-noop")
    return Deployment(
        apps=(AppDeployment(Application(name="d", policy=policy, default_output=-1,
                                        policy_params={"eta": 0.5} if policy == "exp3" else {}),
                            ("good", "bad")),),
        models=(ModelDeployment(spec=ModelSpec(name="good"), profile=p,
                                outputs=AccuracyOutputs(0.95)),
                ModelDeployment(spec=ModelSpec(name="bad"), profile=p,
                                outputs=AccuracyOutputs(0.3))),
    )


def test_feedback_moves_selection() -> None:
    """With a label for every query, Exp3 learns to pick the accurate model."""
    wl = Workload(Poisson(2000), n_queries=4000, app="d", inputs=DigitsInputs(),
                  feedback=FeedbackStream(1.0, 0.01))
    res = Simulation(ensemble("exp3"), wl, seed=0).run()
    assert len(res.feedback) == 4000
    probs = res.engine.probabilities("d")
    assert probs["good"] > 0.9
    late = res.queries[res.queries["query_id"] >= 3000]
    assert late["correct"].mean() > 0.85


def test_contexts_keep_state_per_user() -> None:
    """Queries carry their user as the selection context: one state per user."""
    wl = Workload(Poisson(2000), n_queries=1000, app="d", contexts=UserContexts(7),
                  feedback=FeedbackStream(0.5, 0.01))
    res = Simulation(ensemble("exp4"), wl, seed=0).run()
    assert set(res.engine.selection_states("d")) == set(range(7))
    assert set(res.queries["context"]) == set(range(7))


def test_cacheable_inputs_hit_the_cache() -> None:
    """cacheable=True sends the input index as the cache key: repeated digits hit."""
    dep = Deployment.single("prototype-noop", batching=BatchingConfig(policy="aimd"))
    res = Simulation(dep, Workload(Poisson(2000), n_queries=5000, cacheable=True),
                     seed=0).run()
    assert res.metrics.total("clipperlab_cache_hits_total") > 1000
    salted = Simulation(dep, Workload(Poisson(2000), n_queries=5000), seed=0).run()
    assert salted.metrics.total("clipperlab_cache_hits_total") == 0
    assert res.batches["size"].sum() < salted.batches["size"].sum()
