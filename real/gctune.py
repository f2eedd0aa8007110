"""Keep the garbage collector's full passes off a serving process's request path.

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

import gc

__all__ = ["tune_gc"]


def tune_gc() -> None:
    """Freeze what is alive now and make full collections 10x rarer (module rules)."""
    gc.collect()
    gc.freeze()
    g0, g1, _ = gc.get_threshold()
    gc.set_threshold(max(g0, 5000), g1, 100)
