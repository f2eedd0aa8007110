"""Property tests of the selection policies under adversarial and stochastic losses.

The engine's policies (``clipperlab.engine.selection``, Clipper's and the discounted variants) are
driven directly: select, combine, observe.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clipperlab.engine.selection import make_policy

POLICIES: list[tuple[str, dict[str, Any]]] = [
    ("exp3", {}),
    ("exp3", {"eta": 0.5, "gamma": 0.1}),
    ("exp4", {}),
    ("exp4", {"eta": 1.0}),
    ("epsilon_greedy", {}),
    ("ucb1", {}),
    ("exp3_discounted", {}),
    ("exp4_discounted", {}),
]
MODELS = ("a", "b", "c", "d")


def _check_state(pol: Any, state: Any) -> None:
    assert all(math.isfinite(w) and w > 0 for w in state.weights), state.weights
    p = pol.probabilities(state)
    assert len(p) == len(state.models)
    assert all(0.0 <= x <= 1.0 for x in p)
    assert math.isclose(sum(p), 1.0, abs_tol=1e-9), p


losses_st = st.lists(
    st.lists(st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0)),
             min_size=len(MODELS), max_size=len(MODELS)),
    min_size=1, max_size=300,
)


@pytest.mark.parametrize(("name", "params"), POLICIES)
@settings(max_examples=40, deadline=None)
@given(losses=losses_st, seed=st.integers(0, 2**16))
def test_adversarial_losses_keep_weights_finite_and_probabilities_summing_to_one(
    name: str, params: dict[str, Any], losses: list[list[float]], seed: int
) -> None:
    """Any loss sequence, including all-ones on the leader and all-zeros on the rest:
    weights stay finite and positive, probabilities stay a distribution."""
    pol = make_policy(name, params)
    state = pol.new_state(MODELS)
    rng = np.random.default_rng(seed)
    for row in losses:
        chosen = pol.select(state, rng)
        assert chosen and set(chosen) <= set(MODELS)
        pol.observe(state, {m: row[MODELS.index(m)] for m in chosen})
        _check_state(pol, state)


@pytest.mark.parametrize(("name", "params"), POLICIES)
def test_extreme_adversary_that_punishes_the_favourite(name: str, params: dict[str, Any]) -> None:
    """An adaptive adversary gives loss 1 to the most probable model, 0 to the others,
    for many rounds: the state stays valid (no underflow to 0, no overflow, no NaN)."""
    pol = make_policy(name, params)
    state = pol.new_state(MODELS)
    rng = np.random.default_rng(0)
    for _ in range(3000):
        p = pol.probabilities(state)
        fav = MODELS[int(np.argmax(p))]
        chosen = pol.select(state, rng)
        pol.observe(state, {m: 1.0 if m == fav else 0.0 for m in chosen})
    _check_state(pol, state)


def _regret_run(name: str, params: dict[str, Any], rounds: int, seed: int) -> tuple[float, float]:
    """A stationary binary stream: model ``a`` is right 95% of the time, the others 55%.
    Returns (policy's loss, uniform random choice's expected loss) over the second half."""
    acc = np.array([0.95, 0.55, 0.55, 0.55])
    pol = make_policy(name, params)
    state = pol.new_state(MODELS)
    rng = np.random.default_rng(seed)
    ours = uniform = 0.0
    for t in range(rounds):
        y = int(rng.integers(0, 2))
        right = rng.random(len(MODELS)) < acc
        outs = {m: (y if right[i] else 1 - y) for i, m in enumerate(MODELS)}
        chosen = pol.select(state, rng)
        out, _ = pol.combine(state, chosen, {m: outs[m] for m in chosen})
        pol.observe(state, {m: float(outs[m] != y) for m in chosen})
        if t >= rounds // 2:
            ours += float(out != y)
            uniform += float(np.mean([outs[m] != y for m in MODELS]))
    return ours, uniform


@pytest.mark.parametrize(("name", "params"), POLICIES)
def test_regret_falls_below_uniform_choice_on_a_stationary_stream(
    name: str, params: dict[str, Any]
) -> None:
    """With one clearly best model, each policy's loss over rounds 1000-2000 is well below
    that of picking a model uniformly at random (expected 0.35 per round here)."""
    for seed in (1, 2):
        ours, uniform = _regret_run(name, params, 2000, seed)
        assert ours < 0.75 * uniform, (name, seed, ours, uniform)


def test_discounted_policies_forget_and_exp3_with_no_discount_is_the_engines() -> None:
    """discount = 0 gives exactly the engine's Exp3; a positive discount lets a punished
    model's weight come back once its losses stop."""
    rng = np.random.default_rng(0)
    plain = make_policy("exp3", {"eta": 0.1, "gamma": 0.05})
    zero = make_policy("exp3_discounted", {"eta": 0.1, "gamma": 0.05, "discount": 0.0})
    s1, s2 = plain.new_state(MODELS), zero.new_state(MODELS)
    for _ in range(200):
        losses = {m: float(rng.random() < 0.3) for m in MODELS[:2]}
        plain.observe(s1, losses)
        zero.observe(s2, losses)
    assert s1.weights == s2.weights
    for name in ("exp3_discounted", "exp4_discounted"):
        pol = make_policy(name, {})
        s = pol.new_state(MODELS)
        for _ in range(300):
            pol.observe(s, {"a": 1.0, "b": 0.0, "c": 0.0, "d": 0.0})
        low = pol.probabilities(s)[0]
        for _ in range(3000):
            pol.observe(s, {"a": 0.0, "b": 0.0, "c": 0.0, "d": 0.0})
        assert pol.probabilities(s)[0] > 4 * low
    with pytest.raises(ValueError, match="discount"):
        make_policy("exp3_discounted", {"discount": 1.5})
