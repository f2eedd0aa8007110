"""Metrics the engine keeps from the ``now`` it is given.

The simulator and the real server export the same names: the real server copies them into
Prometheus collectors, the simulator prints them as a table.  Histograms use fixed bucket
bounds (cumulative on export, as Prometheus expects) plus a sum and a count; an
observation is appended and folded in (one bisect and two additions) when they are read;
many pending are folded in numpy, with the same bisection and the same additions in order.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, Final

import numpy as np

__all__ = [
    "BATCH_SIZE_BUCKETS",
    "LATENCY_BUCKETS_S",
    "METRIC_HELP",
    "Counter",
    "Histogram",
    "Metrics",
]

# Histogram.fold: from this many pending values numpy folds them (below, a loop is quicker)
_NUMPY_FOLD_FROM: Final = 64

LATENCY_BUCKETS_S: Final[tuple[float, ...]] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.025,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_SIZE_BUCKETS: Final[tuple[float, ...]] = tuple(float(2**i) for i in range(0, 17))

METRIC_HELP: Final[dict[str, str]] = {
    "clipperlab_queries_total": "Application queries received",
    "clipperlab_replies_total": "Application queries answered (default or not)",
    "clipperlab_defaults_total": "Queries answered with the default output, by reason",
    "clipperlab_query_latency_seconds": "Time from a query's arrival to its reply",
    "clipperlab_batches_total": "Batches sent to replicas, by release reason",
    "clipperlab_batch_size": "Queries per batch sent",
    "clipperlab_batch_latency_seconds": "Batch latency from assembly start to results",
    "clipperlab_model_predictions_total": "Predictions computed by models",
    "clipperlab_model_errors_total": "Batches a model failed to compute",
    "clipperlab_batch_results_ignored_total": "Batch results or failures from a replica the "
    "batch was not sent to (ignored)",
    "clipperlab_queue_expired_total": "Model requests dropped from a queue after their deadline",
    "clipperlab_queue_hopeless_total": "Model requests dropped because they could not make "
    "their deadline (drop_hopeless)",
    "clipperlab_admission_refused_total": "Queries answered at once with the default because "
    "their predicted wait plus batch latency passed their deadline (admission_control)",
    "clipperlab_user_state_evictions_total": "Per-user selection states evicted (least "
    "recently used) to keep an application within max_user_states",
    "clipperlab_cache_hits_total": "Prediction cache hits",
    "clipperlab_cache_misses_total": "Prediction cache misses",
    "clipperlab_cache_coalesced_total": "Requests that joined an identical in-flight request",
    "clipperlab_cache_evictions_total": "Prediction cache evictions",
    "clipperlab_feedback_total": "Feedback items applied to selection state",
    "clipperlab_missing_predictions_total": "Selected models that had not answered at reply time",
}


class Counter:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class Histogram:
    """Fixed buckets, a sum and a count.  Observations are appended to ``pending`` and
    folded into the buckets, the sum and the count when any of them is read, or once
    ``pending`` holds ``FOLD_AT``: the same additions in the same order as observing each
    at once, so the same numbers bit for bit.  Read on the engine's thread (as the engine
    writes).  Hot paths append to ``pending`` themselves and call ``fold`` at ``FOLD_AT``
    (three histograms per query: 15.6 -> 13.9 us per query in the small-batch run,
    measured against observing each at once).  Observations of exactly 0.0 (a cache hit's
    latency) may instead be counted in ``zeros``: adding 0.0 leaves a sum as it was, so
    folding them apart gives the same numbers too."""

    __slots__ = ("bounds", "_counts", "_sum", "_count", "pending", "zeros")

    FOLD_AT: ClassVar[int] = 512

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self._counts = [0] * (len(self.bounds) + 1)
        self._sum = 0.0
        self._count = 0
        self.pending: list[float] = []
        self.zeros = 0  # observations of 0.0 not yet folded (``observe_zero``)

    def observe(self, value: float) -> None:
        p = self.pending
        p.append(value)
        if len(p) >= self.FOLD_AT:
            self.fold()

    def observe_zero(self) -> None:
        """``observe(0.0)``, without the value: a counter, folded with the rest (a cache
        hit's latency; frontend_bench, compiled, hits: the pending list's folds were 2.6% of
        the frontend's CPU)."""
        self.zeros += 1

    def fold(self) -> None:
        """Fold the pending observations into the buckets, the sum and the count."""
        z = self.zeros
        if z:
            self.zeros = 0
            self._counts[bisect.bisect_left(self.bounds, 0.0)] += z
            self._count += z
        p = self.pending
        if not p:
            return
        if len(p) < _NUMPY_FOLD_FROM:
            counts = self._counts
            bounds = self.bounds
            total = self._sum
            for v in p:
                counts[bisect.bisect_left(bounds, v)] += 1
                total += v
            self._sum = total
        else:
            # the loop above in numpy, the same numbers: searchsorted(side="left") is
            # bisect_left (a NaN, never less than a bound, goes to the first bucket as
            # bisect puts it), and add.accumulate adds one value at a time in order, as
            # the loop does (np.sum would add pairwise); 0.3 us per query less in the
            # small-batch run (three histograms, measured)
            a = np.fromiter(p, np.float64, len(p))  # (ints too: half of np.array's time)
            at = np.searchsorted(self.bounds, a, side="left")
            counts = self._counts
            per = np.bincount(at, minlength=len(counts))
            if per[-1]:  # searchsorted puts a NaN above every bound; bisect, in the first
                nan = int(np.count_nonzero(np.isnan(a)))
                per[-1] -= nan
                per[0] += nan
            for k in np.flatnonzero(per).tolist():
                counts[k] += int(per[k])
            a = np.concatenate(((self._sum,), a))
            self._sum = float(np.add.accumulate(a)[-1])
        self._count += len(p)
        p.clear()

    @property
    def counts(self) -> list[int]:
        """Observations per bucket (the last: above every bound)."""
        self.fold()
        return self._counts

    @counts.setter
    def counts(self, value: list[int]) -> None:
        self.fold()
        self._counts = value

    @property
    def sum(self) -> float:
        self.fold()
        return self._sum

    @sum.setter
    def sum(self, value: float) -> None:
        self.fold()
        self._sum = value

    @property
    def count(self) -> int:
        self.fold()
        return self._count

    @count.setter
    def count(self, value: int) -> None:
        self.fold()
        self._count = value

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, cumulative count)`` pairs ending with ``(inf, count)``."""
        out, acc = [], 0
        for b, c in zip((*self.bounds, float("inf")), self.counts, strict=True):
            acc += c
            out.append((b, acc))
        return out

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding the ``q`` quantile (coarse)."""
        if self.count == 0:
            return float("nan")
        target = q * self.count
        for b, c in self.cumulative():
            if c >= target:
                return b
        return float("inf")


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: tuple[tuple[str, str], ...]
    metric: Counter | Histogram


class Metrics:
    """A registry of labelled counters and histograms."""

    def __init__(self) -> None:
        self._counters: dict[tuple[str, tuple[tuple[str, str], ...]], Counter] = {}
        self._hists: dict[tuple[str, tuple[tuple[str, str], ...]], Histogram] = {}

    def counter(self, name: str, **labels: str) -> Counter:
        key = (name, tuple(sorted(labels.items())))
        c = self._counters.get(key)
        if c is None:
            c = self._counters[key] = Counter()
        return c

    def histogram(
        self, name: str, *, bounds: Sequence[float] = LATENCY_BUCKETS_S, **labels: str
    ) -> Histogram:
        key = (name, tuple(sorted(labels.items())))
        h = self._hists.get(key)
        if h is None:
            h = self._hists[key] = Histogram(bounds)
        return h

    def samples(self) -> Iterator[Sample]:
        for (name, labels), c in sorted(self._counters.items(), key=lambda kv: kv[0]):
            yield Sample(name, labels, c)
        for (name, labels), h in sorted(self._hists.items(), key=lambda kv: kv[0]):
            yield Sample(name, labels, h)

    def value(self, name: str, **labels: str) -> float:
        """A counter's value (0 when never incremented); histograms give their count."""
        key = (name, tuple(sorted(labels.items())))
        if key in self._counters:
            return self._counters[key].value
        if key in self._hists:
            return float(self._hists[key].count)
        return 0.0

    def total(self, name: str) -> float:
        """Sum of a counter over all its label sets."""
        return sum(c.value for (n, _), c in self._counters.items() if n == name)

    def as_dict(self) -> dict[str, float]:
        """Flat ``{"name{label=value}": number}`` view; histograms give _count and _sum."""
        out: dict[str, float] = {}
        for s in self.samples():
            lab = ",".join(f"{k}={v}" for k, v in s.labels)
            base = f"{s.name}{{{lab}}}" if lab else s.name
            if isinstance(s.metric, Counter):
                out[base] = s.metric.value
            else:
                out[base.replace(s.name, s.name + "_count", 1)] = s.metric.count
                out[base.replace(s.name, s.name + "_sum", 1)] = s.metric.sum
        return out
