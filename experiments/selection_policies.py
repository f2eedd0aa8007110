"""Discounted Exp3/Exp4: the engine's policies with a forgetting factor, so that weight
taken from a model that failed comes back after it recovers (fig. 8).

Why: Clipper's Exp3/Exp4 (``engine.selection``) keep ``log w_i = -eta * (sum of
importance-weighted losses)`` over the whole stream.  After a model fails for 5K queries
its log-weight is tens of units below the others, and once it recovers the gap closes
only at ``eta * (difference of error rates)`` per query: tens of thousands of queries
for models within a few percent of each other.  Exp3 moves weight away during a failure
but not back within the paper's window; Exp4 may not even move away (``Exp4Discounted``).

Rule (discounted exponential weights, as in Garivier & Moulines' discounted bandits):
before each update every log-weight (relative to the largest) shrinks toward 0 by
``discount``, ``w_i <- w_i ** (1 - discount)``; then the update runs: the engine's own for
Exp3, Hedge's for Exp4 (see ``Exp4Discounted``).  A log-weight is then a discounted sum of
losses with memory about ``1 / discount`` queries; for Exp3 ``discount = 0`` is the
engine's policy exactly.  Exp3's ``gamma`` exploration bounds the
importance weights (1 / p_i <= K / gamma).

These are plug-ins: ``register()`` adds ``exp3_discounted`` and ``exp4_discounted`` to
``engine.selection.POLICIES`` (the table ``make_policy`` reads), in this process.  They are
not engine policies: the engine owner is asked to adopt a ``discount`` parameter on
Exp3/Exp4 so that the real server offers them without this import.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from engine.selection import POLICIES, Exp3, Exp4, PolicyState, SelectionPolicy

__all__ = ["Exp3Discounted", "Exp4Discounted", "register"]


def _check(discount: float) -> float:
    if not (0.0 <= discount < 1.0 and math.isfinite(discount)):
        raise ValueError(f"discount must be in [0, 1), got {discount!r}")
    return float(discount)


def _forget(state: PolicyState, discount: float) -> None:
    if discount <= 0:
        return
    top = max(state.weights)
    if top <= 0 or not math.isfinite(top):
        return
    keep = 1.0 - discount
    # relative to the top weight, so that the ratio shrinks and nothing underflows
    state.weights = [max((w / top) ** keep, 1e-300) for w in state.weights]


class Exp3Discounted(Exp3):
    """Exp3 whose log-weights forget at rate ``discount`` per feedback."""

    name = "exp3_discounted"

    def __init__(self, eta: float = 0.1, gamma: float = 0.05, discount: float = 0.002) -> None:
        super().__init__(eta=eta, gamma=gamma)
        self.discount = _check(discount)

    def observe(self, state: PolicyState, losses: Mapping[str, float]) -> None:
        _forget(state, self.discount)
        super().observe(state, losses)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "discount": self.discount}


class Exp4Discounted(Exp4):
    """Exp4 as Hedge (every member is observed, so no importance weights:
    ``w_i <- w_i * exp(-eta * L_i)``) whose log-weights forget at rate ``discount``.

    The engine's Exp4 divides each member's loss by its vote share, as Clipper's C++ code
    did; with full information that drives every member but the leader to the 1e-300
    floor within a few hundred queries, after which a failure of the leader cannot be
    compensated for (fig. 8 measures it)."""

    name = "exp4_discounted"

    def __init__(self, eta: float = 0.1, discount: float = 0.002) -> None:
        super().__init__(eta=eta)
        self.discount = _check(discount)

    def observe(self, state: PolicyState, losses: Mapping[str, float]) -> None:
        _forget(state, self.discount)
        SelectionPolicy.observe(self, state, losses)  # counts and loss sums
        for m, lo in losses.items():
            if m in state.models:
                i = state.models.index(m)
                state.weights[i] = max(state.weights[i] * math.exp(-self.eta * lo), 1e-300)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "discount": self.discount}


def register() -> None:
    """Make ``exp3_discounted`` and ``exp4_discounted`` known to ``make_policy``."""
    POLICIES.setdefault(Exp3Discounted.name, Exp3Discounted)
    POLICIES.setdefault(Exp4Discounted.name, Exp4Discounted)
