"""Query inputs and their labels.

Rules:
- An input source is a frozen dataclass with ``load() -> (X, y)``: ``X`` is the pool of
  inputs (one row per distinct input), ``y`` their labels (int64).  A workload draws
  input *indices* into that pool; the simulator only needs the indices (and
  ``input_bytes`` for network transfer), the real mode sends ``X[i]``.
- ``DigitsInputs`` is scikit-learn's bundled digits set (1,797 8x8 images, 64 features,
  no download).  ``binary=True`` is the paper's task "is it a 3?": label 1 for the digit
  ``positive_digit``, else 0; the paper used balanced classes, so ``balanced=True`` (the
  default for the binary task) draws positives and negatives with equal probability.
- ``SyntheticTensors`` is a pool of random tensors of ``shape`` and ``dtype`` with labels in
  ``range(n_classes)``; ``(784,)`` float64 gives the paper's MNIST size, 6,272 bytes.
- ``input_bytes`` is the size of one input as sent on the wire (``X[i].nbytes``);
  ``wire_bytes`` overrides it (e.g. digits padded to MNIST's 6,272 bytes).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .errors import WorkloadError

__all__ = ["DigitsInputs", "InputSource", "SyntheticTensors"]


@functools.lru_cache(maxsize=2)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.asarray(d.data, dtype=np.float64)
    y = np.asarray(d.target, dtype=np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


@dataclass(frozen=True, slots=True)
class InputSource:
    """Base class of input sources."""

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    @property
    def input_bytes(self) -> int:
        raise NotImplementedError

    @property
    def n_classes(self) -> int:
        raise NotImplementedError

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` input indices into the pool, uniformly at random."""
        x, _ = self.load()
        return rng.integers(0, x.shape[0], n, dtype=np.int64)


@dataclass(frozen=True, slots=True)
class DigitsInputs(InputSource):
    """scikit-learn's digits: ``binary=True`` is "is it a ``positive_digit``?"."""

    binary: bool = True
    positive_digit: int = 3
    balanced: bool = True
    wire_bytes: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.positive_digit <= 9:
            raise WorkloadError(
                f"DigitsInputs.positive_digit must be a digit 0-9, got {self.positive_digit!r}"
            )
        if self.wire_bytes is not None and self.wire_bytes < 1:
            raise WorkloadError(f"DigitsInputs.wire_bytes must be >= 1, got {self.wire_bytes}")

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        x, y = _digits()
        if self.binary:
            return x, (y == self.positive_digit).astype(np.int64)
        return x, y

    @property
    def input_bytes(self) -> int:
        return self.wire_bytes if self.wire_bytes is not None else 64 * 8

    @property
    def n_classes(self) -> int:
        return 2 if self.binary else 10

    @property
    def task(self) -> str:
        """The name recorded predictions are filed under (see ``clipperlab.simulator.outputs``)."""
        return f"digits-binary-{self.positive_digit}" if self.binary else "digits-10"

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        x, y = self.load()
        if not (self.binary and self.balanced):
            return rng.integers(0, x.shape[0], n, dtype=np.int64)
        pos = np.flatnonzero(y == 1)
        neg = np.flatnonzero(y == 0)
        is_pos = rng.random(n) < 0.5
        out = neg[rng.integers(0, neg.size, n)]
        out[is_pos] = pos[rng.integers(0, pos.size, int(is_pos.sum()))]
        return out


@dataclass(frozen=True, slots=True)
class SyntheticTensors(InputSource):
    """``pool`` random tensors of ``shape``/``dtype`` (seeded by ``pool_seed``), labels
    uniform in ``range(n_classes)``."""

    shape: tuple[int, ...] = (784,)
    dtype: str = "float64"
    pool: int = 1024
    classes: int = 2
    pool_seed: int = 0

    def __post_init__(self) -> None:
        if not self.shape or any(int(s) < 1 for s in self.shape):
            raise WorkloadError(f"SyntheticTensors.shape must be positive ints, got {self.shape}")
        try:
            np.dtype(self.dtype)
        except TypeError:
            raise WorkloadError(
                f"SyntheticTensors.dtype {self.dtype!r} is not a numpy dtype"
            ) from None
        if self.pool < 1:
            raise WorkloadError(f"SyntheticTensors.pool must be >= 1, got {self.pool}")
        if self.classes < 1:
            raise WorkloadError(f"SyntheticTensors.classes must be >= 1, got {self.classes}")

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        return _synthetic(tuple(int(s) for s in self.shape), self.dtype, self.pool,
                          self.classes, self.pool_seed)

    @property
    def input_bytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize

    @property
    def n_classes(self) -> int:
        return self.classes

    @property
    def task(self) -> str:
        return f"synthetic-{self.classes}"


@functools.lru_cache(maxsize=4)
def _synthetic(
    shape: tuple[int, ...], dtype: str, pool: int, n_classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        x = rng.integers(0, 256, (pool, *shape)).astype(dt)
    elif dt.kind == "b":
        x = rng.random((pool, *shape)) < 0.5
    else:
        x = rng.standard_normal((pool, *shape)).astype(dt)
    y = rng.integers(0, n_classes, pool, dtype=np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y
