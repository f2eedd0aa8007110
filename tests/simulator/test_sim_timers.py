"""The frontend's timers fire as uvloop's do (issue 13: delayed batching's batches were
larger in the twin than on the real server): uvloop rounds a timer's delay to whole
milliseconds and libuv counts it from its loop clock cut down to the millisecond, so a
timer fires up to a millisecond early or late; the real driver then clamps the engine's
time up to the deadline, so a delayed batch leaves early."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from clipperlab.engine import BatchingConfig
from clipperlab.simulator import Deployment, FrontendCPU, HostCPU, LatencyProfile, Simulation
from clipperlab.simulator._frontend import libuv_fire_at
from clipperlab.workloads import Poisson, Workload

MS = 1e-3


@pytest.mark.parametrize(
    ("now_ms", "at_ms", "fire_ms"),
    [
        (10.3, 12.3, 12.0),  # 2 ms from a clock at 10: early by 0.3 ms
        (10.9, 12.9, 12.0),  # early by 0.9 ms
        (10.0, 12.0, 12.0),  # on the millisecond: on time
        (10.2, 11.9, 12.0),  # 1.7 ms rounds to 2 from 10: late by 0.1 ms
        (10.2, 11.4, 11.0),  # 1.2 ms rounds to 1: early by 0.4 ms
        (10.3, 10.6, 10.3),  # 0.3 ms rounds to 0: at once (call_soon), never before now
    ],
)
def test_libuv_fire_time(now_ms: float, at_ms: float, fire_ms: float) -> None:
    assert libuv_fire_at(now_ms * MS, at_ms * MS, MS) == pytest.approx(fire_ms * MS)


def _latency(host_cpu: bool, resolution_s: float) -> np.ndarray:
    """Queries far apart through delayed batching (2 ms wait, a fixed 1 ms model, no
    loop costs): their latencies."""
    prof = LatencyProfile.from_line("fixed-1ms", 0.0, 1e-3, p99_over_mean=1.0)
    dep = Deployment.single(prof, batching=BatchingConfig(policy="aimd", wait_timeout_s=2e-3),
                            slo_s=0.05)
    dep = dataclasses.replace(dep, frontend_cpu=FrontendCPU(timer_resolution_s=resolution_s),
                              host_cpu=HostCPU(cpus=2) if host_cpu else None)
    q = Simulation(dep, Workload(Poisson(20.0), n_queries=400), seed=3).run().queries
    return q["latency_s"].to_numpy()


@pytest.mark.parametrize("host_cpu", [False, True])
def test_a_delayed_batch_leaves_up_to_a_millisecond_early(host_cpu: bool) -> None:
    """With the millisecond timer a lone query's batch leaves up to a millisecond early
    (a delay rounded to whole milliseconds, counted from the clock cut down) or up to
    half a millisecond late (a delay rounded up), on average earlier than with an exact
    timer; with and without the host CPU model."""
    exact = _latency(host_cpu, 0.0)
    waited = exact > exact.min() + 1e-3  # the batch waited out the 2 ms
    assert waited.mean() > 0.9
    early = exact[waited] - _latency(host_cpu, 1e-3)[waited]
    assert early.min() >= -0.5e-3 - 1e-9 and early.max() < 1e-3
    assert (early > 0).mean() > 0.6
    assert 0.2e-3 < early.mean() < 0.6e-3
