"""Intervals on fitted numbers: the bootstrap over the runs (or repeats) a number came from.

Rules:
- ``bootstrap_fit(rows, fit)``: ``fit`` maps a list of rows (runs, repeats) to one or more
  numbers; the estimate is ``fit(rows)``, and each number's interval is the central
  ``level`` (default 90%) of ``fit`` over ``n_boot`` (default 1000) resamples of the rows
  with replacement, seeded.  The percentile interval is widened to contain the estimate
  when a skewed resampling leaves it out (a non-negative fit at its bound can), so
  ``lo <= value <= hi`` always.  Resamples whose fit is not finite are dropped.
- With fewer than two rows there is nothing to resample: ``lo == hi == value``, ``n``
  says so.  More rows from the same spread give a narrower interval (about 1/sqrt(n)).
- ``bootstrap(values)``: the same for a statistic of numbers (the median by default),
  e.g. a capacity measured by several ramps.
- ``Interval`` prints as ``value [lo, hi]`` (``format``), its unit in the name it is
  filed under (``query_cpu_us``, ``capacity_qps``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple, TypeVar

import numpy as np

__all__ = ["Interval", "bootstrap", "bootstrap_fit"]

T = TypeVar("T")
N_BOOT = 1000
LEVEL = 0.9


class Interval(NamedTuple):
    """A fitted number and its bootstrap interval (``n``: the rows it came from)."""

    value: float
    lo: float
    hi: float
    n: int

    def format(self, fmt: str = "{:.3g}") -> str:
        """``value [lo, hi]``, each with ``fmt``."""
        return f"{fmt.format(self.value)} [{fmt.format(self.lo)}, {fmt.format(self.hi)}]"

    def scaled(self, factor: float) -> Interval:
        """The same interval in another unit (``factor`` > 0)."""
        return Interval(self.value * factor, self.lo * factor, self.hi * factor, self.n)

    def __str__(self) -> str:
        return self.format()


def bootstrap_fit(rows: Sequence[T], fit: Callable[[list[T]], Sequence[float]], *,
                  n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0
                  ) -> list[Interval]:
    """Each number ``fit`` gives, with its bootstrap interval over ``rows`` (module rules)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    data = list(rows)
    est = [float(v) for v in fit(data)]
    if len(data) < 2 or n_boot < 1:
        return [Interval(v, v, v, len(data)) for v in est]
    rng = np.random.default_rng(seed)
    draws = np.full((n_boot, len(est)), math.nan)
    for i in range(n_boot):
        pick = rng.integers(0, len(data), len(data))
        got = [float(v) for v in fit([data[j] for j in pick])]
        if len(got) == len(est):
            draws[i] = got
    tail = (1 - level) / 2 * 100
    out = []
    for k, v in enumerate(est):
        col = draws[:, k]
        col = col[np.isfinite(col)]
        if not col.size or not math.isfinite(v):
            out.append(Interval(v, v, v, len(data)))
            continue
        lo, hi = (float(x) for x in np.percentile(col, [tail, 100 - tail]))
        out.append(Interval(v, min(lo, v), max(hi, v), len(data)))
    return out


def bootstrap(values: Sequence[float],
              statistic: Callable[[np.ndarray], float] = lambda a: float(np.median(a)), *,
              n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> Interval:
    """``statistic`` of ``values`` (the median by default) with its bootstrap interval."""
    def fit(rows: list[float]) -> list[float]:
        return [statistic(np.asarray(rows, dtype=np.float64))]

    return bootstrap_fit(list(values), fit, n_boot=n_boot, level=level, seed=seed)[0]
