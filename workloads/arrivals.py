"""Arrival processes: when queries arrive, as absolute times in seconds from 0.

Rules:
- Every process is a frozen dataclass (plain data, so the real mode's load generator can
  use the same object) with ``times(n, rng)`` returning ``n`` non-decreasing arrival times
  (seconds, float64, first gap drawn like every other), and ``mean_qps`` for reporting.
- ``ConstantRate`` is the paper's open-loop constant rate (the prototype's load generator);
  ``Poisson`` has exponential gaps; ``Gamma`` has gamma gaps with a coefficient of
  variation ``cv`` (cv = 1 is Poisson, cv > 1 is burstier, as in Clockwork/INFaaS-style
  studies); ``MMPP`` is a Markov-modulated Poisson process cycling through states with
  exponential dwell times (bursts); ``TraceReplay`` replays a CSV of timestamps.
- Rates must be finite and > 0; a bad value raises ``WorkloadError`` naming the field.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import WorkloadError

__all__ = ["ArrivalProcess", "ConstantRate", "Gamma", "MMPP", "Poisson", "TraceReplay"]


def _positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise WorkloadError(f"{name} must be a finite number > 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class ArrivalProcess:
    """Base class; subclasses implement ``times``."""

    def times(self, n: int, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    @property
    def mean_qps(self) -> float:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class ConstantRate(ArrivalProcess):
    """One query every ``1/qps`` seconds, starting at ``1/qps`` (the paper's load)."""

    qps: float

    def __post_init__(self) -> None:
        _positive("ConstantRate.qps", self.qps)

    def times(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.arange(1, n + 1, dtype=np.float64) / float(self.qps)

    @property
    def mean_qps(self) -> float:
        return float(self.qps)


@dataclass(frozen=True, slots=True)
class Poisson(ArrivalProcess):
    """Exponential inter-arrival gaps with mean ``1/qps``."""

    qps: float

    def __post_init__(self) -> None:
        _positive("Poisson.qps", self.qps)

    def times(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.asarray(np.cumsum(rng.exponential(1.0 / self.qps, n)), dtype=np.float64)

    @property
    def mean_qps(self) -> float:
        return float(self.qps)


@dataclass(frozen=True, slots=True)
class Gamma(ArrivalProcess):
    """Gamma inter-arrival gaps: mean ``1/qps``, coefficient of variation ``cv``
    (shape ``1/cv**2``; cv = 1 is Poisson)."""

    qps: float
    cv: float = 1.0

    def __post_init__(self) -> None:
        _positive("Gamma.qps", self.qps)
        _positive("Gamma.cv", self.cv)

    def times(self, n: int, rng: np.random.Generator) -> np.ndarray:
        shape = 1.0 / (self.cv * self.cv)
        scale = 1.0 / (self.qps * shape)
        return np.asarray(np.cumsum(rng.gamma(shape, scale, n)), dtype=np.float64)

    @property
    def mean_qps(self) -> float:
        return float(self.qps)


@dataclass(frozen=True, slots=True)
class MMPP(ArrivalProcess):
    """Markov-modulated Poisson bursts: state ``i`` emits Poisson arrivals at
    ``rates_qps[i]`` for an exponential dwell of mean ``mean_dwell_s[i]``, then moves to
    state ``i+1`` (cyclically).  Starts in state 0.  E.g. ``MMPP((5e3, 40e3), (0.5, 0.05))``
    is a 5K qps base load with 50 ms bursts at 40K qps."""

    rates_qps: tuple[float, ...]
    mean_dwell_s: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.rates_qps) < 1 or len(self.rates_qps) != len(self.mean_dwell_s):
            raise WorkloadError(
                "MMPP.rates_qps and MMPP.mean_dwell_s must be non-empty and of equal length, "
                f"got {len(self.rates_qps)} and {len(self.mean_dwell_s)}"
            )
        for i, r in enumerate(self.rates_qps):
            _positive(f"MMPP.rates_qps[{i}]", r)
        for i, d in enumerate(self.mean_dwell_s):
            _positive(f"MMPP.mean_dwell_s[{i}]", d)

    def times(self, n: int, rng: np.random.Generator) -> np.ndarray:
        out: list[np.ndarray] = []
        got = 0
        t = 0.0
        k = len(self.rates_qps)
        state = 0
        while got < n:
            dwell = rng.exponential(self.mean_dwell_s[state])
            rate = self.rates_qps[state]
            m = rng.poisson(rate * dwell)
            if m:
                pts = np.sort(rng.uniform(t, t + dwell, m))
                out.append(pts)
                got += m
            t += dwell
            state = (state + 1) % k
        return np.concatenate(out)[:n] if out else np.zeros(0)

    @property
    def mean_qps(self) -> float:
        total = sum(self.mean_dwell_s)
        return sum(r * d for r, d in zip(self.rates_qps, self.mean_dwell_s, strict=True)) / total


@dataclass(frozen=True, slots=True)
class TraceReplay(ArrivalProcess):
    """Arrival times read from column ``column`` of a CSV file with a header (seconds,
    shifted so that the first arrival is at 0), scaled by ``time_scale`` (0.5 replays twice
    as fast).  When more queries are asked for than the trace holds, the trace repeats,
    each copy shifted by the trace's span plus one mean gap."""

    csv_path: str
    column: str = "timestamp"
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        _positive("TraceReplay.time_scale", self.time_scale)

    def load(self) -> np.ndarray:
        path = Path(self.csv_path)
        try:
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames is None or self.column not in reader.fieldnames:
                    raise WorkloadError(
                        f"{path}: column {self.column!r} not found; "
                        f"header is {reader.fieldnames}"
                    )
                vals = []
                for lineno, row in enumerate(reader, start=2):
                    try:
                        vals.append(float(row[self.column]))
                    except (TypeError, ValueError):
                        raise WorkloadError(
                            f"{path}:{lineno}: {self.column} must be a number of seconds, "
                            f"got {row[self.column]!r}"
                        ) from None
        except OSError as e:
            raise WorkloadError(f"{path}: cannot read the trace ({e.strerror})") from None
        arr = np.asarray(vals, dtype=np.float64)
        if arr.size == 0:
            raise WorkloadError(f"{path}: the trace has no timestamps")
        if np.any(np.diff(arr) < 0):
            arr = np.sort(arr)
        out: np.ndarray = (arr - arr[0]) * self.time_scale
        return out

    def times(self, n: int, rng: np.random.Generator) -> np.ndarray:
        base = self.load()
        if n <= base.size:
            return base[:n].copy()
        span = float(base[-1]) + (float(base[-1]) / max(base.size - 1, 1))
        reps = -(-n // base.size)
        tiled = np.concatenate([base + i * span for i in range(reps)])
        return tiled[:n]

    @property
    def mean_qps(self) -> float:
        base = self.load()
        return (base.size - 1) / float(base[-1]) if base[-1] > 0 else float("inf")
