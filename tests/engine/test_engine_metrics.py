"""Histograms fold their pending observations in on read: the buckets, sum and count are
those of observing each value at once, bit for bit, whenever they are read."""

from __future__ import annotations

import bisect

from hypothesis import given
from hypothesis import strategies as st

from clipperlab.engine.metrics import LATENCY_BUCKETS_S, Histogram


class _Eager:
    """A histogram that observes each value at once (the rule before folding)."""

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS_S, v)] += 1
        self.sum += v
        self.count += 1


values = (st.floats(0.0, 10.0) | st.integers(0, 64) | st.sampled_from(LATENCY_BUCKETS_S)
          | st.floats(allow_nan=False, width=64))


@given(chunks=st.lists(st.lists(values | st.just(0.0), max_size=700), max_size=4),
       appended=st.booleans(), zeros_apart=st.booleans())
def test_folded_histogram_is_the_eager_one(
    chunks: list[list[float]], appended: bool, zeros_apart: bool
) -> None:
    """Observed (or appended to ``pending`` as the engine's hot paths do; zeros maybe
    counted apart, as cache hits are), then read between chunks: the same counts, sum and
    count as observing each at once, and never more than ``FOLD_AT`` observations pending."""
    h, ref = Histogram(LATENCY_BUCKETS_S), _Eager()
    for chunk in chunks:
        for v in chunk:
            if zeros_apart and v == 0.0 and repr(v) == "0.0":
                h.observe_zero()
            elif appended:
                h.pending.append(v)
                if len(h.pending) >= Histogram.FOLD_AT:
                    h.fold()
            else:
                h.observe(v)
            ref.observe(v)
            assert len(h.pending) < Histogram.FOLD_AT
        assert (h.counts, h.count) == (ref.counts, ref.count)
        assert repr(h.sum) == repr(ref.sum)  # bit for bit (inf - inf: nan, as the loop)
        assert h.cumulative()[-1] == (float("inf"), ref.count)


@given(chunk=st.lists(values | st.just(float("nan")), min_size=60, max_size=600))
def test_numpy_fold_is_the_loop(chunk: list[float]) -> None:
    """Folded in numpy (many pending) or in the loop (few): the counts, sum and count of
    observing each at once, NaN (bisect's first bucket) and infinities included."""
    h, ref = Histogram(LATENCY_BUCKETS_S), _Eager()
    for v in chunk:
        h.pending.append(v)
        ref.observe(v)
    h.fold()
    assert (h.counts, h.count, repr(h.sum)) == (ref.counts, ref.count, repr(ref.sum))


def test_setting_folds_first() -> None:
    """Assigning the sum, count or buckets (merging frontends' metrics) keeps what was
    pending: it is folded before the new value is set, not added after it."""
    h = Histogram(LATENCY_BUCKETS_S)
    h.observe(0.5)
    h.sum += 1.0
    h.count += 1
    assert (h.sum, h.count, h.pending) == (1.5, 2, [])
    h.observe(0.5)
    h.counts = [0] * len(h.counts)
    assert (h.counts, h.sum, h.count) == ([0] * len(h.counts), 2.0, 3)
