"""The one place where experiments call the simulator: build a deployment, run it.

Experiments stay thin: they describe a deployment with ``simulator.Deployment`` and a
workload with ``workloads.Workload``, and read the raw tables of the ``SimResult``; every
serving decision is the engine's, every timing the simulator's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from clipperlab.engine import BatchingConfig
from clipperlab.simulator import (
    AccuracyOutputs,
    AppDeployment,
    Deployment,
    Host,
    LatencyProfile,
    Link,
    ModelDeployment,
    ReplayOutputs,
    SimResult,
    Simulation,
    list_profiles,
    load_profile,
)
from clipperlab.workloads import (
    ConstantRate,
    DigitsInputs,
    InputSource,
    SyntheticTensors,
    Trace,
    Workload,
)

__all__ = [
    "AccuracyOutputs",
    "AppDeployment",
    "Deployment",
    "Host",
    "ModelDeployment",
    "ReplayOutputs",
    "LatencyProfile",
    "Link",
    "SimResult",
    "Simulation",
    "SyntheticTensors",
    "list_profiles",
    "load_profile",
    "profile_name",
    "ramp_times",
    "ramped_trace",
    "run_single",
]

# Names of the six prototype fits (clipper-facts.md) -> shipped profile stems.
PAPER_MODELS: tuple[str, ...] = (
    "noop", "logistic-regression", "linear-svm", "spark-svm", "random-forest", "kernel-svm",
)


def profile_name(model: str, source: str = "prototype") -> str:
    """Stem of the shipped profile for ``model`` from ``source`` (prototype or measured)."""
    return f"{source}-{model}"


def run_single(
    profile: LatencyProfile | str,
    batching: BatchingConfig,
    *,
    rate_qps: float,
    n_queries: int,
    slo_s: float,
    seed: int,
    replicas: int = 1,
    link: Link | None = None,
    inputs: InputSource | None = None,
    **kw: Any,
) -> SimResult:
    """One application, one model, ``replicas`` replicas on hosts of their own."""
    dep = Deployment.single(
        profile, batching=batching, slo_s=slo_s, replicas=replicas, link=link, **kw
    )
    wl = Workload(
        ConstantRate(rate_qps), n_queries=n_queries,
        inputs=inputs if inputs is not None else DigitsInputs(binary=True),
    )
    return Simulation(dep, wl, seed=seed).run()


def ramp_times(arrival_at: np.ndarray, ramp_s: float) -> np.ndarray:
    """Arrival times stretched so the rate grows linearly from 0 to the original rate over
    ``ramp_s`` seconds, then stays: a time ``s`` of the original (constant-rate) stream
    maps to ``sqrt(2 * ramp_s * s)`` while ``s < ramp_s / 2`` and to ``s + ramp_s / 2``
    after.  Adaptive batching starts at a batch of one; a ramp lets it grow with the load
    instead of drowning in a backlog it then takes seconds to clear."""
    if ramp_s <= 0:
        return arrival_at
    s = np.asarray(arrival_at, dtype=np.float64)
    half = ramp_s / 2
    return np.where(s < half, np.sqrt(2.0 * ramp_s * np.maximum(s, 0.0)), s + half)


def ramped_trace(workload: Workload, seed: int, ramp_s: float) -> Trace:
    """``workload.generate(seed)`` with its arrivals ramped (see ``ramp_times``)."""
    trace = workload.generate(seed)
    if ramp_s <= 0:
        return trace
    return dataclasses.replace(trace, arrival_at=ramp_times(trace.arrival_at, ramp_s))
