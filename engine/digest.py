"""Input digests: the prediction cache's key for an input.

A digest must be cheap and the same in every driver: BLAKE2b (16 bytes) over the raw
bytes of the input with its dtype and shape, so ``[1, 2]`` as int64 and as float64 differ.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

__all__ = ["input_digest"]


def input_digest(x: Any) -> bytes:
    """16-byte digest of an input (numpy array, bytes, str, or a nested list of numbers)."""
    h = hashlib.blake2b(digest_size=16)
    if isinstance(x, bytes | bytearray | memoryview):
        h.update(b"b:")
        h.update(x)
    elif isinstance(x, str):
        h.update(b"s:")
        h.update(x.encode())
    else:
        a = np.ascontiguousarray(x)
        h.update(f"{a.dtype.str}{a.shape}:".encode())
        h.update(a.tobytes())
    return h.digest()
