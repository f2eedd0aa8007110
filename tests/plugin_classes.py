"""Policies of one's own for tests, named by file (``tests/plugin_classes.py:Class``):
good ones, and one of each way a named class can be wrong."""

from __future__ import annotations

import numpy as np

from clipperlab.engine import BatchController, BatchingConfig, PolicyState, SelectionPolicy


class Doubling(BatchController):
    """Cap 1, 2, 4, ... up to ``params.top`` (default 8): one step per batch."""

    name = "doubling"

    def __init__(self, config: BatchingConfig, latency_bound_s: float) -> None:
        super().__init__(config, latency_bound_s)
        self.top = int(config.params.get("top", 8))
        self._cap = 1

    @property
    def cap(self) -> int:
        return self._cap

    def observe(self, size: int, latency_s: float, now: float) -> None:
        super().observe(size, latency_s, now)
        self._cap = min(self._cap * 2, self.top)


class LastModel(SelectionPolicy):
    """Always the last linked model."""

    name = "last"

    def select(self, state: PolicyState, rng: np.random.Generator) -> tuple[str, ...]:
        return state.models[-1:]


class NoCap(BatchController):
    """Leaves ``cap`` abstract."""


class ZeroCap(BatchController):
    @property
    def cap(self) -> int:
        return 0


class Needy(BatchController):
    """Cannot be built from a config: wants a third argument."""

    def __init__(self, config: BatchingConfig, latency_bound_s: float, extra: int) -> None:
        super().__init__(config, latency_bound_s)

    @property
    def cap(self) -> int:
        return 1


class NotAPolicy:
    """A class unrelated to either interface."""


not_a_class = 42
