"""The one place where experiments call the simulator: build a deployment, run it.

Experiments stay thin: they describe a deployment with ``simulator.Deployment`` and a
workload with ``workloads.Workload``, and read the raw tables of the ``SimResult``; every
serving decision is the engine's, every timing the simulator's.
"""

from __future__ import annotations

from typing import Any

from engine import BatchingConfig
from simulator.deployment import Deployment, Link
from simulator.driver import Simulation
from simulator.profiles import LatencyProfile, list_profiles, load_profile
from simulator.result import SimResult
from workloads import ConstantRate, DigitsInputs, InputSource, SyntheticTensors, Workload

__all__ = [
    "Deployment",
    "LatencyProfile",
    "Link",
    "SimResult",
    "Simulation",
    "SyntheticTensors",
    "list_profiles",
    "load_profile",
    "profile_name",
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
