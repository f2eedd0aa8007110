"""Capacity as a prediction (issue 13, item 3): the highest rate at which the objective
holds, against the M/D/1 queue's waiting-time distribution."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from clipperlab.engine import BatchingConfig
from clipperlab.simulator import Deployment, LatencyProfile, Link, SimConfigError
from clipperlab.simulator.capacity import attained_share, capacity
from clipperlab.workloads import Poisson, Workload

D_S = 1e-3  # every batch of one takes exactly 1 ms


def md1_wait_cdf(lam: float, t: float) -> float:
    """P(wait <= t) in an M/D/1 queue with service ``D_S`` (Erlang's formula)."""
    if t < 0:
        return 0.0
    rho = lam * D_S
    return (1 - rho) * sum((lam * (k * D_S - t)) ** k / math.factorial(k)
                           * math.exp(-lam * (k * D_S - t)) for k in range(int(t / D_S) + 1))


def md1_capacity(slo_s: float, attainment: float) -> float:
    """The rate at which P(wait + D <= slo) is ``attainment``, by bisection."""
    lo, hi = 1.0, 1 / D_S
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if md1_wait_cdf(mid, slo_s - D_S) >= attainment else (lo, mid)
    return lo


def fixed_service(slo_s: float) -> Deployment:
    prof = LatencyProfile(name="d", batch_sizes=(1,), levels=(0.0, 1.0),
                          latency_s=((D_S, D_S),))
    return Deployment.single(prof, batching=BatchingConfig(policy="none"), slo_s=slo_s,
                             link=Link(bandwidth_bps=1e18, latency_s=0.0))


def test_capacity_of_one_fixed_time_replica_follows_md1() -> None:
    """One replica, 1 ms per query, Poisson arrivals, 99% within the SLO: with a loose
    SLO (20 ms) the capacity is near 1/D (M/D/1: 886 q/s); with a tight one (3 ms) it is
    far lower (M/D/1: 320 q/s).  The engine drops queries already late from the queue
    (answered by default), which shortens the wait of the rest, so the simulated capacity
    sits at or a few percent above the M/D/1 answer, which drops nothing."""
    got = {}
    for slo in (0.020, 0.003):
        r = capacity(fixed_service(slo), Workload(Poisson(500.0), n_queries=6000),
                     attainment=0.99, seeds=(0, 1), start_qps=400.0, rel_tol=0.03)
        expect = md1_capacity(slo, 0.99)
        assert 0.98 * expect <= r.qps <= 1.10 * expect, (slo, r.qps, expect)
        assert r.qps < r.failed_qps <= r.qps * 1.031 + 1e-9
        assert r.slo_s == slo and r.steps[0][0] == 400.0
        # every rate that held had the share, every one that failed did not
        for qps, share in r.steps:
            assert (share >= 0.99) == (qps <= r.qps)
        got[slo] = r.qps
    assert got[0.020] > 0.85 / D_S
    assert got[0.003] < 0.45 * got[0.020]


def test_attained_share_counts_late_default_and_unanswered() -> None:
    """In time means answered within the SLO and not a default; an unanswered query
    (no latency) is late."""
    q = pd.DataFrame({"latency_s": [0.001, 0.002, 0.030, float("nan"), 0.001],
                      "default": [False, True, False, False, False],
                      "refused": [False, False, False, False, False]})
    assert attained_share(q, 0.020) == pytest.approx(2 / 5)


def test_bad_arguments_are_named() -> None:
    dep = fixed_service(0.02)
    wl = Workload(Poisson(500.0), n_queries=100)
    with pytest.raises(SimConfigError, match=r"attainment: expected a share in \(0, 1\]"):
        capacity(dep, wl, attainment=1.5)
    with pytest.raises(SimConfigError, match=r"workload app 'other' is not deployed"):
        capacity(dep, Workload(Poisson(500.0), n_queries=100, app="other"))
