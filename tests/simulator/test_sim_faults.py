"""Faults: crash and restart, stragglers, accuracy degradation over a query window."""

from __future__ import annotations

import numpy as np
import pytest

from clipperlab.engine import BatchingConfig
from clipperlab.simulator import (
    AccuracyOutputs,
    Crash,
    Degrade,
    Deployment,
    ReplayOutputs,
    SimConfigError,
    Simulation,
    Straggler,
)
from clipperlab.workloads import DigitsInputs, Poisson, Workload


def run(faults, n: int = 6000, replicas: int = 2, **kw):  # type: ignore[no-untyped-def]
    dep = Deployment.single("prototype-linear-svm", replicas=replicas, faults=faults,
                            batching=BatchingConfig(policy="aimd"), **kw)
    return Simulation(dep, Workload(Poisson(8000), n_queries=n), seed=5,
                      decision_log=True).run()


def test_crash_and_restart() -> None:
    """A crashed replica gets no batch while down, its in-flight batch is lost and
    re-queued, every query is still answered, and it serves again after the restart."""
    res = run([Crash("m#0", at_s=0.2, restart_after_s=0.1)])
    b = res.batches
    r0 = b[b["replica"] == 0]
    assert not ((r0["sent_at"] > 0.2) & (r0["sent_at"] < 0.3)).any()
    assert (r0["sent_at"] >= 0.3).any()
    assert (b["status"] == "lost").sum() <= 1
    assert res.queries["reply_at"].notna().all()
    assert [w for _, _, w in res.crashes] == ["crash", "restart"]


def test_crash_without_restart_sole_replica() -> None:
    """With its only replica dead for good, queries get the deadline default."""
    res = run([Crash("m#0", at_s=0.1)], replicas=1, n=2000)
    q = res.queries
    after = q[q["arrival_at"] > 0.1]
    assert len(after) and after["default"].all()
    assert (after["default_reason"] == "deadline").all()


def test_straggler_slows_its_batches() -> None:
    """A 3x straggler's batches take about 3x as long while it straggles."""
    res = run([Straggler("m#1", slowdown=3.0, from_s=0.0, until_s=0.4)])
    b = res.batches[res.batches["status"] == "done"]
    svc = b["done_at"] - b["start_at"]
    per_item = svc / (0.0127e-3 * b["size"] + 3.496e-3)
    slow = per_item[(b["replica"] == 1) & (b["sent_at"] < 0.4)].median()
    fast = per_item[(b["replica"] == 0)].median()
    assert slow / fast == pytest.approx(3.0, rel=0.2)


def test_straggler_extra_delay() -> None:
    """An extra exponential delay with probability p adds about p x mean to batch time."""
    base = run([], n=3000)
    slow = run([Straggler("m#0", extra_delay_s=0.004, probability=0.5)], n=3000)

    def svc(r, rep):  # type: ignore[no-untyped-def]
        b = r.batches
        b = b[(b["replica"] == rep) & (b["status"] == "done")]
        return float((b["done_at"] - b["start_at"]).mean())

    assert svc(slow, 0) - svc(base, 0) > 0.001


def test_degradation_window() -> None:
    """Degrade: the model is wrong inside the query window and right outside it."""
    dep = Deployment.single("prototype-noop", outputs=AccuracyOutputs(1.0),
                            faults=[Degrade("m", from_query=1000, to_query=2000, accuracy=0.0)])
    res = Simulation(dep, Workload(Poisson(2000), n_queries=3000), seed=0).run()
    q = res.queries
    ok = ~q["default"]
    inside = q[(q["query_id"] >= 1000) & (q["query_id"] < 2000) & ok]
    outside = q[((q["query_id"] < 1000) | (q["query_id"] >= 2000)) & ok]
    assert inside["correct"].mean() == 0.0 and outside["correct"].mean() == 1.0


def test_accuracy_generator_and_replay() -> None:
    """The generator hits its accuracy; replay answers what the real model answered."""
    res = Simulation(Deployment.single("prototype-noop", outputs=AccuracyOutputs(0.8)),
                     Workload(Poisson(2000), n_queries=4000, inputs=DigitsInputs(
                         binary=False)), seed=0).run()
    assert res.summary()["accuracy"] == pytest.approx(0.8, abs=0.04)
    rep = Simulation(Deployment.single("prototype-noop", outputs=ReplayOutputs(
        "measured-random-forest")), Workload(Poisson(2000), n_queries=1000), seed=0).run()
    from clipperlab.simulator import load_profile

    preds = np.asarray(load_profile("measured-random-forest").predictions["digits-binary-3"])
    q = rep.queries[~rep.queries["default"]]
    assert (q["output"].astype(int).to_numpy() == preds[q["input_index"]]).all()


def test_fault_validation() -> None:
    """Faults on replicas that do not exist are refused, naming the replica."""
    with pytest.raises(SimConfigError, match="fault on 'm#5': model 'm' has 2 replica"):
        Deployment.single("prototype-noop", replicas=2, faults=[Crash("m#5", at_s=1.0)])
    with pytest.raises(SimConfigError, match="expected a replica name like 'svm#0'"):
        Crash("m", at_s=1.0)
    with pytest.raises(SimConfigError, match="crash.at_s"):
        Crash("m#0", at_s=-1.0)
    with pytest.raises(SimConfigError, match="degrade: model 'x' is not deployed"):
        Deployment.single("prototype-noop", faults=[Degrade("x", 0, 10)])
