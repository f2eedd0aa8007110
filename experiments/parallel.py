"""Running an experiment's independent simulations on several processes.

Rules: ``pmap(fn, items, jobs)`` returns ``[fn(x) for x in items]`` in order.  ``jobs`` 1
runs in this process; more uses a pool of forked processes (spawned where there is no
fork; ``fn`` must be a module-level function, items picklable); 0 means one per CPU.
Every simulation is seeded by its item, so the results do not depend on ``jobs``.
Sweeps set ``jobs`` to 1 inside each job: the sweep is already parallel.  With progress
bars on (``progress.bars``), a bar counts finished items.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import TypeVar

from .progress import track

__all__ = ["cpu_count", "pmap"]

T = TypeVar("T")
R = TypeVar("R")


def _start_method() -> str:
    """``fork`` where there is one (fast, and works from any ``__main__``), else spawn."""
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


def cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def pmap(
    fn: Callable[[T], R], items: Sequence[T], jobs: int = 1, *, desc: str = "points"
) -> list[R]:
    """``[fn(x) for x in items]``, on ``jobs`` processes (0: one per CPU)."""
    n = cpu_count() if jobs == 0 else jobs
    n = min(n, len(items))
    if n <= 1:
        return [fn(x) for x in track(items, desc=desc)]
    ctx = multiprocessing.get_context(_start_method())
    with ProcessPoolExecutor(max_workers=n, mp_context=ctx) as pool:
        futures = [pool.submit(fn, x) for x in items]
        for _ in track(as_completed(futures), desc=desc, total=len(futures)):
            pass
        return [f.result() for f in futures]
