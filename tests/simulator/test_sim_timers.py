"""The frontend's timers fire as uvloop's do (issue 13: delayed batching's batches were
larger in the twin than on the real server): uvloop rounds a timer's delay to whole
milliseconds; a loop that sleeps until it sleeps that from the real time, and a loop woken
by another event runs it once libuv's clock, cut down to the millisecond, has passed the
due time: up to a millisecond early.  The real driver then clamps the engine's time up to
the deadline, so a delayed batch leaves early."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from clipperlab.engine import BatchingConfig
from clipperlab.simulator import Deployment, FrontendCPU, HostCPU, LatencyProfile, Simulation
from clipperlab.simulator._frontend import libuv_fire_at, libuv_poll_at
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


@pytest.mark.parametrize(
    ("now_ms", "at_ms", "fire_ms"),
    [
        (10.3, 12.3, 12.3),  # a sleeping loop sleeps the rounded delay: on time
        (10.2, 11.9, 12.2),  # 1.7 ms rounds to 2: late by 0.3 ms
        (10.2, 11.4, 11.2),  # 1.2 ms rounds to 1: early by 0.2 ms
        (10.3, 10.6, 10.3),  # 0.3 ms rounds to 0: at once
    ],
)
def test_libuv_poll_time(now_ms: float, at_ms: float, fire_ms: float) -> None:
    assert libuv_poll_at(now_ms * MS, at_ms * MS, MS) == pytest.approx(fire_ms * MS)


def _run(host_cpu: bool, resolution_s: float, qps: float) -> tuple[np.ndarray, float]:
    """Delayed batching (2 ms wait) over a fixed 1 ms model, no loop costs: the
    latencies and the mean batch size."""
    prof = LatencyProfile.from_line("fixed-1ms", 0.0, 1e-3, p99_over_mean=1.0)
    dep = Deployment.single(prof, batching=BatchingConfig(policy="aimd", wait_timeout_s=2e-3),
                            slo_s=0.05)
    dep = dataclasses.replace(dep, frontend_cpu=FrontendCPU(timer_resolution_s=resolution_s),
                              host_cpu=HostCPU(cpus=2) if host_cpu else None)
    res = Simulation(dep, Workload(Poisson(qps), n_queries=3000), seed=3).run()
    return res.queries["latency_s"].to_numpy(), float(res.batches["size"].mean())


@pytest.mark.parametrize("host_cpu", [False, True])
def test_a_lone_querys_timer_is_on_time(host_cpu: bool) -> None:
    """Queries far apart (20/s): the loop sleeps until the 2 ms timer, which fires on
    time (2 ms is whole milliseconds), as with an exact timer, except for the few
    queries another arrival woke the loop for in the meantime."""
    exact, _ = _run(host_cpu, 0.0, 20.0)
    uv, _ = _run(host_cpu, 1e-3, 20.0)
    assert (np.abs(uv - exact) < 1e-9).mean() > 0.9


@pytest.mark.parametrize("host_cpu", [False, True])
def test_a_busy_loop_runs_its_timer_early(host_cpu: bool) -> None:
    """Queries every third of a millisecond wake the loop between a timer's arming and
    its deadline: once the millisecond clock passes the due time the next event runs the
    timer, up to a millisecond early, so batches leave sooner and hold fewer queries
    than with an exact timer, never more than a millisecond sooner."""
    exact, size_exact = _run(host_cpu, 0.0, 3000.0)
    uv, size_uv = _run(host_cpu, 1e-3, 3000.0)
    assert size_uv < 0.95 * size_exact
    assert np.median(uv) < np.median(exact)
    assert uv.min() > exact.min() - 1e-3
