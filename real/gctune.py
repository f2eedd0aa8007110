"""Keep the garbage collector's full passes (and the C library's page faults on big
buffers: ``tune_malloc``) off a serving process's request path.

Measured: with numpy, scikit-learn and the engine's remembered queries on the heap, one
generation-2 collection paused the frontend's event loop for ~50 ms at 4,000 queries/s,
which turned a whole batch of queries into deadline defaults.  A model container has the
same heap (scikit-learn and a loaded random forest: ~140,000 tracked objects, a full pass
of 60-110 ms on this machine) and showed it: its profiles had ~50 ms batches at one batch
size, in two runs of the same procedure.  Objects alive at start are frozen (never scanned
again) and full collections are made 10x rarer; reference counting frees almost
everything on the query path anyway.  Only a process that is ours calls it (``clipperlab
serve``, the container process), never a library user's.
"""

from __future__ import annotations

import ctypes
import gc

__all__ = ["MALLOC_KEEP_MB", "MALLOC_KEEP_MB_MAX", "tune_gc", "tune_malloc"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
MALLOC_KEEP_MB = 256  # the default of the frontend's and the container's setting
MALLOC_KEEP_MB_MAX = 512  # 2 x this in bytes must fit mallopt's int


def tune_gc() -> None:
    """Freeze what is alive now and make full collections 10x rarer (module rules)."""
    gc.collect()
    gc.freeze()
    g0, g1, _ = gc.get_threshold()
    gc.set_threshold(max(g0, 5000), g1, 100)


def tune_malloc(keep_mb: int) -> bool:
    """Serve buffers of up to ``keep_mb`` MiB from the heap and keep freed ones there for
    the next batch (glibc's ``mallopt``: ``M_MMAP_THRESHOLD`` = ``keep_mb`` MiB,
    ``M_TRIM_THRESHOLD`` = twice that).  glibc maps a big buffer afresh and unmaps it
    when freed (its threshold grows with what is freed, up to 32 MiB), so every batch of
    images paid a page fault and a zeroed page per 4 KiB of its frame, in each buffer it
    went through: 64 images of 3x224x224 floats (38.5 MB) took 74-83 ms from the frame
    written to the answer read, 15-25 ms kept (``bench/rpc_frames.py``).  The
    cost is memory: up to ``2 x keep_mb`` MiB freed may stay in the process after a
    burst of big batches.  ``keep_mb`` 0 leaves the C library as it is.  False where it
    does not apply (0, or a C library without ``mallopt``)."""
    if not 0 <= keep_mb <= MALLOC_KEEP_MB_MAX:
        raise ValueError(f"malloc_keep_mb = {keep_mb} must be in [0, {MALLOC_KEEP_MB_MAX}]")
    if keep_mb == 0:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    keep = keep_mb << 20
    return bool(mallopt(_M_MMAP_THRESHOLD, keep)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 * keep))
