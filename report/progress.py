"""Progress bars for runs that take more than a few seconds.

Rules: bars are off unless a caller turns them on (``clipperlab experiment`` does, unless
``--no-progress``), so library calls and tests print nothing.  When on, a bar goes to
stderr and only where stderr is a terminal (tqdm's ``disable=None``): piped output and
logs stay clean.  ``track`` wraps an experiment's loop over its points;
``simulator.parallel.pmap`` uses it for its items.  A sweep draws its own bar over jobs
and leaves the jobs' bars off.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Iterable, Iterator, Sized
from typing import TypeVar

__all__ = ["bars", "enabled", "track"]

T = TypeVar("T")

_ON: contextvars.ContextVar[bool] = contextvars.ContextVar("clipperlab_progress", default=False)


@contextlib.contextmanager
def bars(on: bool = True) -> Iterator[None]:
    """Inside this block, ``track`` draws bars (``on``) or not."""
    token = _ON.set(on)
    try:
        yield
    finally:
        _ON.reset(token)


def enabled() -> bool:
    return _ON.get()


def track(
    items: Iterable[T], *, desc: str, total: int | None = None, unit: str = "point"
) -> Iterator[T]:
    """``items``, with a bar of ``total`` (default ``len(items)``) steps while bars are on."""
    if not _ON.get():
        yield from items
        return
    from tqdm import tqdm

    if total is None and isinstance(items, Sized):
        total = len(items)
    with tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None,
              dynamic_ncols=True) as bar:
        for item in items:
            yield item
            bar.update(1)
