"""Shared pieces of the model-selection experiments (figs. 6-8, 10, cache): zoo models as
simulated deployments, traces over the zoo's pool, and replaying a policy's state.

Rules:
- A zoo model is simulated with the latency profile closest to it (``PROFILE_OF``:
  mostly those timed on this machine by ``clipperlab.simulator.measure_profiles``; models without
  their own profile borrow one of similar cost, named in the table) and
  answers with its recorded pool predictions (``ReplayOutputs`` of the zoo's ``.npy``).
- Every model gets one replica on a host of its own (one core each, as in the paper).
- ``weights_over_time`` replays the ``FeedbackApplied`` losses a run produced, in order,
  through a fresh state of the same policy (the engine's own ``observe``): the state after
  feedback ``j`` is exactly the engine's at that point, without instrumenting the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipperlab.engine import Application, BatchingConfig, ModelSpec, make_policy
from clipperlab.engine.plugins import is_reference
from clipperlab.engine.selection import POLICIES, PolicyState, policy_class
from clipperlab.simulator import (
    AppDeployment,
    Deployment,
    Fault,
    Host,
    ModelDeployment,
    ReplayOutputs,
    load_profile,
)

from .framework import Results

__all__ = [
    "adaptive_params",
    "MODES",
    "PROFILE_OF",
    "check_mode",
    "check_models",
    "deployment",
    "weights_over_time",
]

MODES = ("sim", "real", "both")

# zoo model -> measured profile (this machine); knn/naive_bayes/decision_tree/specialists
# have no profile of their own: knn borrows the kernel SVM's (a distance to every training
# point), the two cheap ones the linear SVM's.  The random forest uses the paper
# prototype's fit: the measured one has a heavy tail (p99 145 ms at batch 2, pauses of the
# measuring process) that turns 6% of its answers into deadline defaults at 100 ms.
PROFILE_OF: dict[str, str] = {
    "logreg": "measured-logistic-regression",
    "linear_svm": "measured-linear-svm",
    "rbf_svm": "measured-kernel-svm",
    "random_forest": "prototype-random-forest",
    "knn": "measured-kernel-svm",
    "naive_bayes": "measured-linear-svm",
    "decision_tree": "measured-linear-svm",
    "torch_cnn": "measured-torch-cnn",
}


def run_modes(
    mode: str,
    sim: Callable[[list[pd.DataFrame]], list[dict[str, Any]]],
    real: Callable[[], list[dict[str, Any]]],
) -> Results:
    """Rows from the simulator (``sim(raw)`` appends raw batch tables to ``raw``), from the
    real server, or both, as one table: the shape every selection experiment returns."""
    rows: list[dict[str, Any]] = []
    raw: list[pd.DataFrame] = []
    if mode in ("sim", "both"):
        rows += sim(raw)
    if mode in ("real", "both"):
        rows += real()
    return Results(table=pd.DataFrame(rows),
                   raw={"batches": pd.concat(raw, ignore_index=True)} if raw else {})


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def adaptive_params(policy: str, tuned: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The parameters an experiment runs ``policy`` with: its tuned ones when the
    experiment has them, none for a selection policy of one's own (``module:Class``,
    ``file.py:Class`` or an entry point, checked here: ``ConfigError`` names a bad one)."""
    if policy in tuned:
        return dict(tuned[policy])
    if not is_reference(policy) and policy in POLICIES:
        raise ValueError(f"policies: {policy!r} is not an adaptive policy; expected one of "
                         f"{', '.join(tuned)} or a policy of one's own (module:Class)")
    policy_class(policy)
    return {}


def check_models(models: Sequence[str]) -> None:
    """Models must be zoo models, at least one, none twice."""
    from clipperlab.workloads.zoo import ZOO_MODELS

    bad = [m for m in models if m not in ZOO_MODELS]
    if bad or not models or len(set(models)) != len(models):
        raise ValueError(f"models must be distinct zoo models ({'+'.join(ZOO_MODELS)}), "
                         f"got {'+'.join(models) or 'none'}")


def deployment(
    apps: Sequence[Application],
    links: Mapping[str, Sequence[str]],
    predictions: Mapping[str, Path],
    *,
    batching: BatchingConfig | None = None,
    faults: Sequence[Fault] = (),
    cache_capacity_bytes: int = 32 << 20,
    profile_of: Mapping[str, str] | None = None,
) -> Deployment:
    """Applications linked to zoo models that replay ``predictions`` (model -> ``.npy``)."""
    batching = batching or BatchingConfig(policy="aimd", wait_timeout_s=0.001)
    prof = dict(PROFILE_OF, **(profile_of or {}))
    models = []
    hosts = []
    for i, (name, path) in enumerate(predictions.items()):
        p = load_profile(prof.get(name, "measured-logistic-regression"))
        hosts.append(Host(f"h{i:02d}", cpus=1))
        models.append(ModelDeployment(
            spec=ModelSpec(name=name, batching=batching), profile=p, replicas=1,
            hosts=(f"h{i:02d}",), outputs=ReplayOutputs(source=str(path))))
    return Deployment(
        apps=tuple(AppDeployment(a, tuple(links[a.name])) for a in apps),
        models=tuple(models), hosts=tuple(hosts), faults=tuple(faults),
        cache_capacity_bytes=cache_capacity_bytes,
    )


def weights_over_time(
    policy: str,
    params: Mapping[str, Any],
    models: Sequence[str],
    feedback: Sequence[tuple[float, Any]],
    *,
    every: int = 1,
) -> pd.DataFrame:
    """Selection probabilities after every ``every``-th feedback: columns ``feedback``
    (count), ``time_s``, and one per model."""
    pol = make_policy(policy, params)
    state: PolicyState = pol.new_state(list(models))
    rows: list[list[float]] = []
    for j, (t, fa) in enumerate(feedback):
        if fa.losses:
            pol.observe(state, fa.losses)
        if (j + 1) % every == 0 or j + 1 == len(feedback):
            rows.append([j + 1, t, *pol.probabilities(state)])
    return pd.DataFrame(rows, columns=["feedback", "time_s", *models])


def cumulative_error(correct: np.ndarray) -> np.ndarray:
    """Running error rate: mistakes so far / queries so far."""
    c = np.asarray(correct, dtype=np.float64)
    return np.cumsum(1.0 - c) / np.arange(1, c.size + 1)
