"""The run's inputs, decided before it starts: merged arrivals and every model's outputs.

Several workloads (one per application) merge into one arrival order (stable: earlier
workloads first on ties).  A model's output for each query is drawn up front from its
output model (``clipperlab.simulator.outputs``), so the run itself draws nothing for it:
an accuracy-parameterised model is a function of its input (one draw per input of the
pool), and a ``Degrade`` fault replaces the outputs of its query window with noisy labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from clipperlab.workloads import Trace

from .deployment import ModelDeployment
from .faults import Degrade, Fault
from .outputs import AccuracyOutputs, model_rng, noisy_labels

__all__ = ["merge", "model_outputs", "n_classes"]


def merge(traces: list[Trace]) -> tuple[np.ndarray, np.ndarray]:
    """Order of all rows by arrival (stable: earlier workloads first on ties), and the
    workload each row of that order comes from."""
    arr = np.concatenate([t.arrival_at for t in traces]) if traces else np.zeros(0)
    src = np.concatenate([np.full(len(t), j, dtype=np.int64) for j, t in enumerate(traces)])
    order = np.argsort(arr, kind="stable")
    return order, src[order]


def model_outputs(
    m: ModelDeployment,
    traces: list[Trace],
    order: np.ndarray,
    src: np.ndarray,
    labels: np.ndarray,
    *,
    seed: int,
    faults: Sequence[Fault],
) -> np.ndarray:
    """Model ``m``'s output for every row of the merged order."""
    rng = model_rng(seed, m.name)
    parts = []
    for t in traces:
        k = n_classes(t)
        if isinstance(m.outputs, AccuracyOutputs):
            # a model is a function of its input: draw once per input of the pool
            pool_labels = _pool_labels(t)
            pool_out = m.outputs.outputs(pool_labels, np.arange(pool_labels.size), k,
                                         t.task, m.profile, rng)
            parts.append(np.asarray(pool_out)[t.input_index])
        else:
            parts.append(np.asarray(m.outputs.outputs(
                t.label, t.input_index, k, t.task, m.profile, rng)))
    out = np.concatenate(parts)[order] if parts else np.zeros(0)
    n = order.size
    for f in faults:
        if isinstance(f, Degrade) and f.model == m.name:
            lo, hi = f.from_query, min(f.to_query, n)
            if lo < hi:
                frng = model_rng(seed, m.name, f"degrade-{lo}-{hi}")
                k = max(n_classes(traces[int(src[lo])]), 2)
                out = out.copy()
                out[lo:hi] = noisy_labels(labels[lo:hi], f.accuracy, k, frng)
    return out


def _pool_labels(t: Trace) -> np.ndarray:
    """Label of every input index the trace uses (others 0)."""
    size = int(t.input_index.max()) + 1 if len(t) else 0
    lab = np.zeros(size, dtype=np.int64)
    lab[t.input_index] = t.label
    return lab


def n_classes(t: Trace) -> int:
    """The number of classes of a trace's task (at least 2)."""
    if t.n_classes:
        return int(t.n_classes)
    return max(int(t.label.max()) + 1 if len(t) else 2, 2)
