"""The prediction cache: a function cache of model outputs with CLOCK eviction.

Rules (Clipper, NSDI 2017, sec. 4.2; the C++ system's defaults):
- Keys are ``(model name, model version, input digest)``; values are model outputs.
- The budget is in bytes of stored entries (C++ default 32 MiB).  An entry costs the size
  of its output plus a fixed overhead for the key and bookkeeping.
- CLOCK approximates LRU: a hit sets the entry's reference bit; to make room the hand
  sweeps the ring, clearing set bits, and evicts the first entry whose bit is clear.
- Pending (in-flight) predictions are not stored here: the engine keeps them in its table
  of outstanding model requests, where identical requests coalesce, and ``put``s the value
  when it arrives, late or not.  Only complete entries are ever evicted.
- An entry larger than the whole budget is not stored.
"""

from __future__ import annotations

import sys
from collections.abc import Hashable
from typing import Any, Final

__all__ = ["ENTRY_OVERHEAD_BYTES", "MISS", "PredictionCache", "output_size_bytes"]

ENTRY_OVERHEAD_BYTES: Final = 64


class _Miss:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISS"


MISS: Final[Any] = _Miss()


def output_size_bytes(output: Any) -> int:
    """Bytes an output occupies: ``nbytes`` of arrays, length of bytes/str, else sizeof."""
    t = type(output)
    if t is float or t is int or t is bool:  # no ``nbytes`` to look for (a failing getattr)
        return sys.getsizeof(output)
    nbytes = getattr(output, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    if isinstance(output, bytes | bytearray | str):
        return len(output)
    if isinstance(output, list | tuple):
        return sum(output_size_bytes(x) for x in output) + 8 * len(output)
    return sys.getsizeof(output)


class PredictionCache:
    """CLOCK cache of predictions under ``capacity_bytes``."""

    def __init__(self, capacity_bytes: int = 32 << 20) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        self.used_bytes = 0
        # key -> [value, size, referenced]; the ring holds keys in insertion order.
        self._entries: dict[Hashable, list[Any]] = {}
        self._ring: list[Hashable | None] = []
        self._slot: dict[Hashable, int] = {}
        self._free: list[int] = []
        self._hand = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.insertions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def get(self, key: Hashable) -> Any:
        """The cached output, or ``MISS``; a hit marks the entry recently used."""
        e = self._entries.get(key)
        if e is None:
            self.misses += 1
            return MISS
        e[2] = True
        self.hits += 1
        return e[0]

    def peek(self, key: Hashable) -> Any:
        """Like ``get`` without touching counters or reference bits."""
        e = self._entries.get(key)
        return MISS if e is None else e[0]

    def put(self, key: Hashable, value: Any) -> bool:
        """Store ``value``; returns False when it cannot fit at all."""
        size = output_size_bytes(value) + ENTRY_OVERHEAD_BYTES
        if size > self.capacity_bytes:
            return False
        old = self._entries.get(key)
        if old is not None:
            self.used_bytes += size - old[1]
            old[0], old[1], old[2] = value, size, True
        else:
            self.used_bytes += size
            self._entries[key] = [value, size, False]
            if self._free:
                i = self._free.pop()
                self._ring[i] = key
            else:
                i = len(self._ring)
                self._ring.append(key)
            self._slot[key] = i
            self.insertions += 1
        while self.used_bytes > self.capacity_bytes:
            self._evict_one(protect=key)
        return True

    def _evict_one(self, protect: Hashable) -> None:
        ring = self._ring
        n = len(ring)
        while True:
            if self._hand >= n:
                self._hand = 0
            k = ring[self._hand]
            self._hand += 1
            if k is None or k == protect:
                continue
            e = self._entries[k]
            if e[2]:
                e[2] = False
                continue
            del self._entries[k]
            i = self._slot.pop(k)
            ring[i] = None
            self._free.append(i)
            self.used_bytes -= e[1]
            self.evictions += 1
            return
