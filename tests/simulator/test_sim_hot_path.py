"""The small-batch hot path (issue 14) takes the decisions the plain code takes: the
engine's inlined ``decide`` against ``BatchController.decide`` itself, and the per-batch
builders against the dataclasses' own constructors."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clipperlab.engine import BatchDone, BatchingConfig, ReplicaId, SendBatch
from clipperlab.engine._types import batch_done_of, send_batch_of
from clipperlab.engine.batching import (
    AIMDController,
    BatchController,
    Dispatch,
    FixedController,
    NoBatchingController,
    QuantileController,
    QueueView,
    Wait,
)
from clipperlab.simulator import Deployment, LatencyProfile, Simulation
from clipperlab.workloads import Poisson, Workload


class _Deciding(BatchController):
    """Calls the base's ``decide`` through an override, so the engine cannot inline it."""

    def decide(self, now: float, queue: QueueView) -> Dispatch | Wait:
        return super().decide(now, queue)


class DecidingNone(_Deciding, NoBatchingController):
    pass


class DecidingFixed(_Deciding, FixedController):
    pass


class DecidingAIMD(_Deciding, AIMDController):
    pass


class DecidingQuantile(_Deciding, QuantileController):
    pass


OVERRIDDEN = {"none": DecidingNone, "fixed": DecidingFixed, "aimd": DecidingAIMD,
              "quantile": DecidingQuantile}


def _log(policy: str, wait_s: float, qps: float, replicas: int, seed: int,
         profile: LatencyProfile | str) -> list[tuple]:  # type: ignore[type-arg]
    bc = BatchingConfig(policy=policy, wait_timeout_s=wait_s, max_batch_size=16,
                        fit_after_batches=20)
    dep = Deployment.single(profile, batching=bc, slo_s=0.010, replicas=replicas)
    res = Simulation(dep, Workload(Poisson(qps), n_queries=600), seed=seed,
                     decision_log=True).run()
    assert res.log is not None
    return res.log


@settings(max_examples=10, deadline=None)
@given(
    policy=st.sampled_from(sorted(OVERRIDDEN)),
    wait_ms=st.sampled_from([0.0, 1.0]),
    qps=st.sampled_from([300.0, 5000.0, 30000.0]),
    replicas=st.integers(1, 2),
    seed=st.integers(0, 100),
)
def test_inlined_decide_takes_the_base_decisions(policy: str, wait_ms: float, qps: float,
                                                 replicas: int, seed: int) -> None:
    """Batches, reasons and replies are the same whether the engine inlines the base
    ``decide`` (a built-in controller) or calls it (the same controller overriding it)."""
    prof = "prototype-logistic-regression"
    cls = OVERRIDDEN[policy]
    assert cls.decide is not BatchController.decide
    fast = _log(policy, wait_ms / 1e3, qps, replicas, seed, prof)
    slow = _log(f"{__name__}:{cls.__name__}", wait_ms / 1e3, qps, replicas, seed, prof)
    assert fast == slow
    assert any(e[0] == "batch" for e in fast)


RID = ReplicaId("m", "1", 3)


@given(batch_id=st.integers(0, 2**40), inputs=st.lists(st.integers(), max_size=5),
       reason=st.sampled_from(["cap_reached", "replica_idle"]), padded=st.integers(0, 64))
def test_send_batch_of_is_the_dataclass(batch_id: int, inputs: list[int], reason: str,
                                        padded: int) -> None:
    fast = send_batch_of(RID, batch_id, tuple(inputs), reason, padded)
    ref = SendBatch(replica=RID, batch_id=batch_id, inputs=tuple(inputs), reason=reason,
                    padded_size=padded)
    assert type(fast) is SendBatch
    assert (fast, hash(fast), repr(fast)) == (ref, hash(ref), repr(ref))
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.batch_id = 0  # type: ignore[misc]


@given(batch_id=st.integers(0, 2**40), outputs=st.lists(st.integers(), max_size=5))
def test_batch_done_of_is_the_dataclass(batch_id: int, outputs: list[int]) -> None:
    fast = batch_done_of(RID, batch_id, outputs)
    ref = BatchDone(replica=RID, batch_id=batch_id, outputs=outputs)
    assert type(fast) is BatchDone
    assert (fast, repr(fast)) == (ref, repr(ref))
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.outputs = []  # type: ignore[misc]
