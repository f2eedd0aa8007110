"""The batch-latency line each batching controller keeps (``LatencyModel``): latency as
a least-squares line in the batch size over the last ``window`` batches.

A module of its own so that the compiled build (``_build/mypyc_real.py``) compiles it with
the engine's core: admission control reads every replica's line once a query
(``Engine._predicted_late``), and interpreted that call was 0.4 us of a compiled query's
7-8 (``bench/frontend_bench.py``).  The controllers, which researchers subclass, stay
Python (``_controller``, ``batching``) and hold one of these; ``_controller`` re-exports it.
"""

from __future__ import annotations

from collections import deque
from itertools import chain
from typing import ClassVar, Final

import numpy as np

__all__ = ["LatencyModel"]

# LatencyModel._fold: from this many pending batches numpy folds them (below, a loop)
_NUMPY_FOLD_FROM: Final = 32


class LatencyModel:
    """Least-squares line ``latency = a*size + b`` over the last ``window`` batches,
    kept with running sums so that an update costs O(1) (batches are folded into the sums
    when the line is read; see ``FOLD_AT``)."""

    __slots__ = ("window", "_obs", "_n", "_sx", "_sy", "_sxx", "_sxy", "_pending", "_line",
                 "_line_ok")

    # Batches are added to ``_pending`` and folded into the sums when the line is read
    # (or FOLD_AT are pending): the same operations in the same order, so the same sums
    # bit for bit (small-batch run, a batch per query: 0.6 us per query less, measured);
    # folded in numpy, 2048 at a time cost 125 ns per batch, 256 at a time 210 (measured)
    FOLD_AT: ClassVar[int] = 2048  # (ClassVar: compiled, a class attribute still)

    def __init__(self, window: int = 50) -> None:
        self.window = window
        self._obs: deque[tuple[int, float]] = deque()
        self._n = 0
        self._sx = self._sy = self._sxx = self._sxy = 0.0
        self._pending: list[tuple[int, float]] = []
        # coefficients() as last computed, valid while _line_ok: the sums change only in
        # the folds, which clear it (admission control reads the line two or three times
        # a query: predict_s 0.83 -> 0.37 us, measured)
        self._line: tuple[float, float] | None = None
        self._line_ok = False

    def add(self, size: int, latency_s: float) -> None:
        p = self._pending
        p.append((size, latency_s))
        if len(p) >= self.FOLD_AT:
            self._fold()

    def _fold(self) -> None:
        p = self._pending
        if not p:
            return
        self._line_ok = False
        if len(p) >= _NUMPY_FOLD_FROM:
            self._fold_numpy()
            return
        obs = self._obs
        window = self.window
        n = self._n
        sx = self._sx
        sy = self._sy
        sxx = self._sxx
        sxy = self._sxy
        for ob in p:
            obs.append(ob)
            size, latency_s = ob
            sx = sx + size
            sy = sy + latency_s
            sxx = sxx + size * size
            sxy = sxy + size * latency_s
            if n >= window:  # full: the oldest leaves, the count stays
                s, y = obs.popleft()
                sx -= s
                sy -= y
                sxx -= s * s
                sxy -= s * y
            else:
                n += 1
        self._n = n
        self._sx = sx
        self._sy = sy
        self._sxx = sxx
        self._sxy = sxy
        p.clear()

    def _fold_numpy(self) -> None:
        """``_fold``'s loop in numpy, the same sums bit for bit: each sum is the loop's
        sequence of additions and subtractions (``a - b`` is ``a + -b`` exactly) taken
        one at a time in order by ``add.accumulate`` (np.sum would add pairwise).  The
        first ``grow`` pending batches only add (the window is filling); each later one
        adds and then takes off the batch ``window`` places before it.  256 batches in
        numpy: 0.3 us per batch less than the loop (measured)."""
        p = self._pending
        obs = self._obs
        window = self.window
        n0 = self._n  # == len(obs)
        m = len(p)
        grow = min(m, max(window - n0, 0))
        # (fromiter over the flattened pairs: a third of np.array over the tuples, measured)
        new = np.fromiter(chain.from_iterable(p), np.float64, 2 * m).reshape(m, 2)
        both = np.concatenate(
            (np.fromiter(chain.from_iterable(obs), np.float64, 2 * n0).reshape(n0, 2), new)
        )
        gone = both[n0 + grow - window : n0 + m - window]  # what each later batch evicts
        x, y = new[:, 0], new[:, 1]
        gx, gy = gone[:, 0], gone[:, 1]
        k = m - grow

        def run(start: float, add: np.ndarray, sub: np.ndarray) -> float:
            seq = np.empty(1 + grow + 2 * k)
            seq[0] = start
            seq[1 : 1 + grow] = add[:grow]
            seq[1 + grow :: 2] = add[grow:]
            seq[2 + grow :: 2] = -sub
            return float(np.add.accumulate(seq)[-1])

        self._sx = run(self._sx, x, gx)
        self._sy = run(self._sy, y, gy)
        self._sxx = run(self._sxx, x * x, gx * gx)
        self._sxy = run(self._sxy, x * y, gx * gy)
        self._n = min(n0 + m, window)
        keep = list(obs) + p
        obs.clear()
        if window > 0:
            obs.extend(keep[-window:])
        p.clear()

    @property
    def count(self) -> int:
        self._fold()
        return self._n

    def coefficients(self) -> tuple[float, float] | None:
        """``(a, b)`` in seconds per item and seconds, or None before any batch."""
        if self._pending:
            self._fold()
        elif self._line_ok:
            return self._line
        n = self._n
        line: tuple[float, float] | None
        if n == 0:
            line = None
        else:
            mean_x = self._sx / n
            mean_y = self._sy / n
            var = self._sxx / n - mean_x * mean_x
            if var <= 1e-12:  # one size only: attribute everything to the fixed cost
                line = 0.0, mean_y
            else:
                a = (self._sxy / n - mean_x * mean_y) / var
                a = max(a, 0.0)
                line = a, max(mean_y - a * mean_x, 0.0)
        self._line = line
        self._line_ok = True
        return line

    def predict_s(self, size: int) -> float | None:
        c = self.coefficients()
        return None if c is None else c[0] * size + c[1]
