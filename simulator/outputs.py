"""What simulated models answer.

Rules:
- Outputs are decided per (model, query) before the run, with numpy, so they do not depend
  on how queries were batched or in what order batches finished: the same seed gives the
  same answers whatever the batching policy.
- ``AccuracyOutputs(accuracy)``: the label with probability ``accuracy``, otherwise a wrong
  class (binary: the other one; k classes: uniform over the k - 1 wrong ones).  Draws for
  each model come from a generator seeded by (simulation seed, model name), so models make
  independent mistakes.
- ``ReplayOutputs(source, task)``: the predictions a real model made on the data set,
  indexed by the query's input index.  ``source`` is a profile name or path whose JSON
  holds ``predictions[task]`` (the measured profiles record out-of-fold predictions on the
  digits tasks; see ``clipperlab.simulator.measure_profiles``), or a ``.json`` list / ``.npy`` /
  ``.csv``
  file of one prediction per input.  ``source=None`` means the model's own profile.
- ``ConstantOutputs(value)``: always ``value`` (e.g. a no-op model).
- Accuracy degradation (``clipperlab.simulator.faults.Degrade``) replaces a model's outputs over a
  window of query ids by an ``AccuracyOutputs`` draw at the degraded accuracy.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SimConfigError
from .profiles import LatencyProfile, load_profile

__all__ = ["AccuracyOutputs", "ConstantOutputs", "OutputModel", "ReplayOutputs", "model_rng"]


def model_rng(seed: int, name: str, salt: str = "outputs") -> np.random.Generator:
    """A generator for one model, independent of the others and of the arrival stream."""
    return np.random.default_rng([seed, zlib.crc32(name.encode()), zlib.crc32(salt.encode())])


@dataclass(frozen=True, slots=True)
class OutputModel:
    """Base class: ``outputs(labels, input_index, n_classes, profile, rng)`` returns one
    output per query (a numpy array)."""

    def outputs(
        self,
        labels: np.ndarray,
        input_index: np.ndarray,
        n_classes: int,
        task: str,
        profile: LatencyProfile,
        rng: np.random.Generator,
    ) -> np.ndarray:
        raise NotImplementedError


def noisy_labels(
    labels: np.ndarray, accuracy: float, n_classes: int, rng: np.random.Generator
) -> np.ndarray:
    """``labels`` with a share ``1 - accuracy`` replaced by a wrong class."""
    n = labels.size
    wrong = rng.random(n) >= accuracy
    out = labels.copy()
    if n_classes <= 1:
        return out
    if n_classes == 2:
        out[wrong] = 1 - labels[wrong]
    else:
        shift = rng.integers(1, n_classes, n)
        out[wrong] = (labels[wrong] + shift[wrong]) % n_classes
    return out


@dataclass(frozen=True, slots=True)
class AccuracyOutputs(OutputModel):
    accuracy: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.accuracy <= 1.0:
            raise SimConfigError(f"outputs.accuracy: expected a number in [0, 1], got "
                                 f"{self.accuracy!r}")

    def outputs(self, labels: np.ndarray, input_index: np.ndarray, n_classes: int, task: str,
                profile: LatencyProfile, rng: np.random.Generator) -> np.ndarray:
        return noisy_labels(labels, self.accuracy, n_classes, rng)


@dataclass(frozen=True, slots=True)
class ReplayOutputs(OutputModel):
    source: str | None = None
    task: str | None = None

    def outputs(self, labels: np.ndarray, input_index: np.ndarray, n_classes: int, task: str,
                profile: LatencyProfile, rng: np.random.Generator) -> np.ndarray:
        preds = self.load(profile, self.task or task)
        if input_index.size and int(input_index.max()) >= preds.size:
            raise SimConfigError(
                f"outputs: the recorded predictions ({preds.size}) do not cover input index "
                f"{int(input_index.max())} of the workload"
            )
        out: np.ndarray = preds[input_index]
        return out

    def load(self, profile: LatencyProfile, task: str) -> np.ndarray:
        src = self.source
        if src is None or not src.endswith((".npy", ".csv", ".json")) or (
            src.endswith(".json") and _is_profile(src)
        ):
            prof = profile if src is None else load_profile(src)
            got = prof.predictions.get(task)
            if got is None:
                raise SimConfigError(
                    f"outputs: profile {prof.name!r} has no recorded predictions for task "
                    f"{task!r}; it has {sorted(prof.predictions) or 'none'}"
                )
            return np.asarray(got, dtype=np.int64)
        p = Path(src)
        try:
            if p.suffix == ".npy":
                return np.asarray(np.load(p), dtype=np.int64).ravel()
            if p.suffix == ".csv":
                return np.loadtxt(p, delimiter=",", dtype=np.int64, ndmin=1)
            return np.asarray(json.loads(p.read_text()), dtype=np.int64).ravel()
        except (OSError, ValueError) as e:
            raise SimConfigError(f"{p}: cannot read recorded predictions ({e})") from None


def _is_profile(path: str) -> bool:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "predictions" in data


@dataclass(frozen=True, slots=True)
class ConstantOutputs(OutputModel):
    value: Any = 0

    def outputs(self, labels: np.ndarray, input_index: np.ndarray, n_classes: int, task: str,
                profile: LatencyProfile, rng: np.random.Generator) -> np.ndarray:
        return np.full(labels.size, self.value, dtype=object if not isinstance(
            self.value, int | float) else type(self.value))


OUTPUT_KINDS: dict[str, type[OutputModel]] = {
    "accuracy": AccuracyOutputs,
    "replay": ReplayOutputs,
    "constant": ConstantOutputs,
}
