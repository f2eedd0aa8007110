"""Running independent simulations on several processes: an experiment's points, a
calibration's twin runs (the fits' replays, the capacity ramps, the levels' draws).

Rules: ``pmap(fn, items, jobs)`` returns ``[fn(x) for x in items]`` in order.  ``jobs`` 1
runs in this process; more uses a pool of forked processes (from a fork server when this
process runs other threads, spawned where there is no fork; ``fn`` must be a module-level
function, items picklable); 0 means one per CPU.  numpy's OpenBLAS starts a thread per
further core when it loads, so on a machine of several cores a process that imported
numpy takes the fork server: each pool then pays its children's imports once.
Every simulation is seeded by its item, so the results do not depend on ``jobs``.
Sweeps set ``jobs`` to 1 inside each job: the sweep is already parallel.  With progress
bars on (``report.progress.bars``), a bar counts finished items.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import TypeVar

from clipperlab.report.progress import track

__all__ = ["cpu_count", "pmap"]

T = TypeVar("T")
R = TypeVar("R")


def _threads() -> int:
    """Threads of this process, native ones too (Ray's and gRPC's are not Python's)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _start_method() -> str:
    """``fork`` where there is one and this process runs one thread (fast, and works from
    any ``__main__``).  With other threads running (a Ray driver, a gRPC server), a forked
    copy can die in their fork handlers or on a lock held at the fork (the suite saw
    ``BrokenProcessPool``): then ``forkserver`` (children forked from a clean,
    single-threaded server; ``fn`` must be importable), else ``spawn``."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and _threads() <= 1:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


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
