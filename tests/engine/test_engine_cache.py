"""The CLOCK prediction cache."""

from __future__ import annotations

import pytest

from clipperlab.engine.cache import ENTRY_OVERHEAD_BYTES, MISS, PredictionCache, output_size_bytes


def entry(n: int) -> bytes:
    return b"x" * n


def test_put_get_and_miss() -> None:
    c = PredictionCache(10_000)
    assert c.get("a") is MISS
    c.put("a", 1)
    assert c.get("a") == 1
    assert (c.hits, c.misses) == (1, 1)


def test_never_exceeds_budget() -> None:
    size = 100 + ENTRY_OVERHEAD_BYTES
    c = PredictionCache(size * 3)
    for i in range(10):
        c.put(i, entry(100))
        assert c.used_bytes <= c.capacity_bytes
    assert len(c) == 3 and c.evictions == 7


def test_clock_gives_referenced_entries_a_second_chance() -> None:
    """A hit sets the reference bit; the hand evicts the first unreferenced entry."""
    size = 100 + ENTRY_OVERHEAD_BYTES
    c = PredictionCache(size * 3)
    for k in "abc":
        c.put(k, entry(100))
    c.get("a")  # a is referenced
    c.put("d", entry(100))  # hand: a (clear bit, skip) -> b evicted
    assert "a" in c and "b" not in c and "c" in c and "d" in c
    c.put("e", entry(100))  # hand continues at c: c evicted
    assert "c" not in c and "a" in c


def test_oversized_entry_is_not_stored() -> None:
    c = PredictionCache(50)
    assert not c.put("big", entry(1000))
    assert "big" not in c and c.used_bytes == 0


def test_overwrite_updates_size() -> None:
    c = PredictionCache(10_000)
    c.put("k", entry(10))
    c.put("k", entry(20))
    assert c.used_bytes == 20 + ENTRY_OVERHEAD_BYTES and c.peek("k") == entry(20)


@pytest.mark.parametrize("value,size", [(b"abc", 3), ("abcd", 4), ([b"ab", b"c"], 3 + 16)])
def test_output_sizes(value: object, size: int) -> None:
    assert output_size_bytes(value) == size


def test_zero_capacity_caches_nothing() -> None:
    c = PredictionCache(0)
    c.put("a", 1)
    assert c.get("a") is MISS
