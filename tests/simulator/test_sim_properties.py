"""Property tests of the driver over random small deployments and traces."""

from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from clipperlab.engine import Application, BatchingConfig, ModelSpec
from clipperlab.simulator import (
    AppDeployment,
    Deployment,
    ModelDeployment,
    Simulation,
    load_profile,
)
from clipperlab.workloads import DigitsInputs, Poisson, Workload
from tests.simulator.test_sim_driver import fake_driver_log


@settings(max_examples=12, deadline=None)
@given(
    policy=st.sampled_from(["none", "fixed", "aimd", "quantile", "triton", "bentoml"]),
    replicas=st.integers(1, 3),
    qps=st.sampled_from([300.0, 3000.0, 12000.0]),
    slo_ms=st.sampled_from([5, 15, 40]),
    wait_ms=st.sampled_from([0.0, 1.0, 4.0]),
    round_ms=st.sampled_from([0.0, 1.0]),
    seed=st.integers(0, 1000),
)
# a timer whose event time (now + delay) landed an ulp short of its own time stayed in
# the driver's heap of pending timers, and every later timer was taken for one behind
# it: deadline defaults answered late (47 us here), or a query never answered
@example(policy="fixed", replicas=1, qps=12000.0, slo_ms=5, wait_ms=1.0, round_ms=0.0,
         seed=1)
def test_driver_invariants(policy: str, replicas: int, qps: float, slo_ms: int,
                           wait_ms: float, round_ms: float, seed: int) -> None:
    """Every query answered once and not before it arrived; non-default answers by the
    deadline; one batch in flight per replica; batches within their cap; and the same
    decision log as the hand-driven loop, also with many arrivals at the same instant
    (arrival times rounded to the millisecond)."""
    bc = BatchingConfig(policy=policy, max_batch_size=32, wait_timeout_s=wait_ms / 1e3,
                        fit_after_batches=20, preferred_batch_sizes=(4, 8)
                        if policy == "triton" else ())
    dep = Deployment(
        apps=(AppDeployment(Application(name="p", slo_s=slo_ms / 1e3, default_output=-1),
                            ("m",)),),
        models=(ModelDeployment(spec=ModelSpec(name="m", batching=bc),
                                profile=load_profile("prototype-logistic-regression"),
                                replicas=replicas),),
    )
    trace = Workload(Poisson(qps), n_queries=400, app="p", inputs=DigitsInputs()).generate(seed)
    if round_ms:
        trace = dataclasses.replace(trace, arrival_at=np.round(trace.arrival_at, 3))
    res = Simulation(dep, trace, seed=seed, decision_log=True).run()
    q = res.queries
    assert q["reply_at"].notna().all()
    assert (q["reply_at"] >= q["arrival_at"]).all()
    ok = ~q["default"]
    assert (q.loc[ok, "reply_at"] <= q.loc[ok, "arrival_at"] + slo_ms / 1e3 + 1e-9).all()
    replies = [e[2] for e in res.log or [] if e[0] in ("reply", "refuse")]
    assert sorted(replies) == list(range(len(q)))
    b = res.batches
    assert (b["size"] <= 32).all()
    for _, g in b.groupby("replica"):
        g = g.sort_values("sent_at")
        assert (g["sent_at"].to_numpy()[1:] >= g["done_at"].to_numpy()[:-1]).all()
    assert fake_driver_log(dep, res, seed) == res.log
