"""The batch-latency line (``LatencyModel``) read between batches is always the line of
every batch so far: a line kept from one read to the next is never stale."""

from __future__ import annotations

import random

from clipperlab.engine.batching import LatencyModel, make_controller
from clipperlab.engine.registry import BatchingConfig


def _fresh(batches: list[tuple[int, float]], window: int) -> tuple[float, float] | None:
    line = LatencyModel(window)
    for size, latency_s in batches:
        line.add(size, latency_s)
    return line.coefficients()


def test_a_line_read_between_batches_is_the_line_of_all_batches_so_far() -> None:
    """Reads (``coefficients``, ``predict_s``, ``count``) at random points, batches added
    directly and through an AIMD controller's inline ``observe`` (which folds by itself
    every ``FOLD_AT`` batches, with no read in between): each read equals a fresh line fed
    the same batches, bit for bit."""
    rng = random.Random(7)
    ctrl = make_controller(BatchingConfig(policy="aimd"), 0.02)
    line = ctrl.latency
    assert type(line) is LatencyModel
    batches: list[tuple[int, float]] = []
    for step in range(3 * LatencyModel.FOLD_AT + 50):
        size = rng.randint(1, 64)
        latency_s = 0.0005 * size + rng.random() * 1e-3
        if rng.random() < 0.5:
            ctrl.observe(size, latency_s, now=step * 0.01)
        else:
            line.add(size, latency_s)
        batches.append((size, latency_s))
        if rng.random() < 0.02 or step % LatencyModel.FOLD_AT == LatencyModel.FOLD_AT - 1:
            want = _fresh(batches, line.window)
            assert line.coefficients() == want, step
            assert line.coefficients() == want, step  # the kept line, read again
            if want is not None:
                assert line.predict_s(8) == want[0] * 8 + want[1]
    # a line kept by a read, then exactly FOLD_AT batches with no read between them: the
    # last one folds inside observe (or add), leaving nothing pending for the next read
    for through in ("observe", "add"):
        assert line.coefficients() == _fresh(batches, line.window)
        for _ in range(LatencyModel.FOLD_AT):
            if through == "observe":
                ctrl.observe(5, 0.004, now=1e6)
            else:
                line.add(5, 0.004)
            batches.append((5, 0.004))
        assert line.coefficients() == _fresh(batches, line.window)
    assert line.count == min(len(batches), line.window)


def test_an_empty_line_reads_none_until_its_first_batch() -> None:
    """No batch: no line (and that answer is not kept past the first batch)."""
    line = LatencyModel(10)
    assert line.coefficients() is None and line.predict_s(4) is None
    line.add(2, 0.002)
    assert line.coefficients() == (0.0, 0.002)
