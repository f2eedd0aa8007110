"""Selection policies: formulas, combine, confidence, personalization, feedback joins."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clipperlab.engine import (
    Application,
    BatchingConfig,
    ConfigError,
    Engine,
    ModelSpec,
    PolicyState,
    make_policy,
)
from clipperlab.engine.selection import UCB1, ABSplit, EpsilonGreedy, Exp3, Exp4, Static, loss
from tests.fake import FakeDriver


def test_loss_functions() -> None:
    assert loss(1, 1) == 0.0 and loss(1, 0) == 1.0 and loss(3, 4) == 1.0
    assert loss(0.25, 1.0, "absolute") == 0.75 and loss(5.0, 1.0, "absolute") == 1.0


def test_exp3_update_matches_formula() -> None:
    pol = Exp3(eta=0.5)
    st = pol.new_state(["a", "b", "c"])
    p = pol.probabilities(st)
    assert p == pytest.approx([1 / 3] * 3)
    pol.observe(st, {"b": 1.0})
    assert st.weights == pytest.approx([1.0, math.exp(-0.5 * 1.0 / (1 / 3)), 1.0])
    p2 = pol.probabilities(st)
    assert sum(p2) == pytest.approx(1.0) and p2[1] < p2[0]


def test_exp3_gamma_mixes_uniform_exploration() -> None:
    pol = Exp3(eta=1.0, gamma=0.3)
    st = pol.new_state(["a", "b"])
    st.weights = [1.0, 0.0]
    assert pol.probabilities(st) == pytest.approx([0.85, 0.15])


def test_exp4_weighted_vote_and_update() -> None:
    pol = Exp4(eta=0.1)
    st = pol.new_state(["a", "b", "c"])
    st.weights = [0.5, 0.3, 0.3]
    out, conf = pol.combine(st, st.models, {"a": 1, "b": 0, "c": 0})
    assert out == 0 and conf == pytest.approx(0.6 / 1.1)
    p = pol.probabilities(st)
    pol.observe(st, {"a": 1.0, "b": 0.0, "c": 0.0})
    assert st.weights[0] == pytest.approx(0.5 * math.exp(-0.1 / p[0]))
    assert st.weights[1:] == pytest.approx([0.3, 0.3])


def test_weights_stay_finite_and_positive_under_long_losses() -> None:
    pol = Exp3(eta=5.0)
    st = pol.new_state(["a", "b"])
    for _ in range(10_000):
        pol.observe(st, {"a": 1.0})
    assert all(w > 0 and math.isfinite(w) for w in st.weights)
    assert sum(pol.probabilities(st)) == pytest.approx(1.0)


def test_epsilon_greedy_and_ucb_prefer_the_better_model() -> None:
    rng = np.random.default_rng(0)
    for pol in (EpsilonGreedy(epsilon=0.1), UCB1()):
        st = pol.new_state(["bad", "good"])
        for _ in range(500):
            [m] = pol.select(st, rng)
            pol.observe(st, {m: float(rng.random() < (0.6 if m == "bad" else 0.1))})
        picks = [pol.select(st, rng)[0] for _ in range(200)]
        assert picks.count("good") > 150, pol.name


def test_ab_split_follows_the_split() -> None:
    pol = ABSplit(split={"a": 3, "b": 1})
    st = pol.new_state(["a", "b"])
    rng = np.random.default_rng(1)
    picks = [pol.select(st, rng)[0] for _ in range(4000)]
    assert picks.count("a") / 4000 == pytest.approx(0.75, abs=0.03)


def test_static_policy_and_bad_parameters() -> None:
    st = PolicyState(["a", "b"])
    assert Static(model="b").select(st, np.random.default_rng()) == ("b",)
    with pytest.raises(ConfigError, match="eta"):
        make_policy("exp3", {"eta": -1})
    with pytest.raises(ConfigError, match="bad parameters"):
        make_policy("exp4", {"bogus": 1})


def test_state_round_trips_through_dict() -> None:
    st = PolicyState(["a", "b"], [0.2, 0.8])
    st.counts = [3, 4]
    st.loss_sums = [1.0, 0.5]
    st.rounds = 7
    again = PolicyState.from_dict(st.to_dict())
    assert again.to_dict() == st.to_dict()


def _ensemble_engine(policy: str = "exp4", **kw: object) -> FakeDriver:
    eng = Engine(seed=3)
    eng.add_application(
        Application(name="a", policy=policy, default_output=-1, policy_params=kw), now=0.0
    )
    for m in ("good", "bad"):
        eng.add_model(ModelSpec(name=m, batching=BatchingConfig(policy="none")), now=0.0)
    eng.link("a", ["good", "bad"], now=0.0)
    return FakeDriver(eng)


def test_feedback_joins_cached_predictions_without_recomputing() -> None:
    d = _ensemble_engine()
    d.up("good"), d.up("bad")
    d.query(1, "a", 7, key="k7")
    outs = {"good": 1, "bad": 0}
    for sb in list(d.open.values()):
        d.complete(sb.batch_id, lambda x, m=sb.replica.model: outs[m])
    n_sent = len(d.sent)
    d.feedback_(10, "a", 1, 7, key="k7")
    fa = d.feedback[10]
    assert fa.from_cache == 2 and fa.computed == 0 and len(d.sent) == n_sent
    assert fa.losses == {"good": 0.0, "bad": 1.0}
    w = d.eng.selection_state("a").weights
    assert w[0] == 1.0 and w[1] < 1.0


def test_feedback_asks_models_only_for_what_cache_lacks() -> None:
    d = _ensemble_engine()
    d.up("good"), d.up("bad")
    d.feedback_(11, "a", 1, 9, key="k9")
    assert len(d.sent) == 2 and 11 not in d.feedback
    outs = {"good": 1, "bad": 0}
    for sb in list(d.open.values()):
        d.complete(sb.batch_id, lambda x, m=sb.replica.model: outs[m])
    assert d.feedback[11].computed == 2


def test_feedback_by_query_id_uses_what_the_query_was_answered_with() -> None:
    d = _ensemble_engine(policy="exp3", eta=1.0)
    d.up("good"), d.up("bad")
    d.query(1, "a", 5)
    [sb] = list(d.open.values())
    chosen = sb.replica.model
    d.complete(sb.batch_id, lambda x: 0)
    d.feedback_(20, "a", 1, query_id=1)
    assert d.feedback[20].losses == {chosen: 1.0}


def test_feedback_without_input_or_known_query_is_refused() -> None:
    d = _ensemble_engine()
    with pytest.raises(ConfigError, match="query_id 99 is not remembered"):
        d.feedback_(1, "a", 1, query_id=99)


def test_personalized_state_is_kept_per_context() -> None:
    """Feedback for user u1 changes u1's weights only."""
    d = _ensemble_engine()
    d.up("good"), d.up("bad")
    outs = {"good": 1, "bad": 0}
    for i, user in enumerate(["u1", "u1", "u2"]):
        d.query(i, "a", i, key=f"k{i}", context=user)
        for sb in list(d.open.values()):
            d.complete(sb.batch_id, lambda x, m=sb.replica.model: outs[m])
    d.feedback_(1, "a", 0, i, key="k0", context="u1")  # label 0: 'bad' was right for u1
    u1 = d.eng.selection_state("a", "u1").weights
    u2 = d.eng.selection_state("a", "u2").weights
    glob = d.eng.selection_state("a").weights
    assert u1[0] < 1.0 and u1[1] == 1.0
    assert u2 == [1.0, 1.0] and glob == [1.0, 1.0]


def test_exp3_moves_traffic_away_from_a_failing_model() -> None:
    """End to end through the engine: feedback shifts Exp3's choice to the good model."""
    d = _ensemble_engine(policy="exp3", eta=0.2)
    d.up("good"), d.up("bad")
    outs = {"good": 1, "bad": 0}
    for i in range(300):
        d.query(i, "a", i)
        for sb in list(d.open.values()):
            d.complete(sb.batch_id, lambda x, m=sb.replica.model: outs[m])
        d.feedback_(i, "a", 1, query_id=i)
    p = d.eng.probabilities("a")
    assert p["good"] > 0.95


def _fail_and_recover(pol: Exp3 | Exp4, rounds: int = 3000) -> tuple[float, float, float]:
    """Model 'a' is right, then wrong for a window, then right again; 'b' is right 80% of
    the time throughout.  Returns a's probability before, during (end) and after."""
    rng = np.random.default_rng(0)
    st = pol.new_state(["a", "b"])
    marks = []
    for t in range(rounds):
        a_wrong = rounds // 3 <= t < 2 * rounds // 3
        losses = {"a": 1.0 if a_wrong else 0.0, "b": float(rng.random() < 0.2)}
        if isinstance(pol, Exp3):
            m = pol.select(st, rng)[0]
            losses = {m: losses[m]}
        pol.observe(st, losses)
        if t + 1 in (rounds // 3, 2 * rounds // 3, rounds):
            marks.append(pol.probabilities(st)[0])
    return marks[0], marks[1], marks[2]


def test_discounted_policies_move_weight_away_and_back() -> None:
    """With forgetting, weight leaves the failing model and returns after it recovers."""
    for pol in (
        Exp3(eta=0.1, gamma=0.05, discount=0.002),
        Exp4(eta=0.1, discount=0.002, update="full"),
    ):
        before, during, after = _fail_and_recover(pol)
        assert before > 0.8 and during < 0.2 and after > 0.8, (pol.name, before, during, after)


def test_clipper_exp4_importance_update_never_abandons_the_leader() -> None:
    """Clipper's Exp4 rule divides by vote share: the runner-up collapses to the floor while
    the leader is right, so the leader keeps its weight through its failure (why the
    discounted Hedge variant exists)."""
    before, during, _ = _fail_and_recover(Exp4(eta=0.1))
    assert before > 0.99 and during > 0.99


def test_discounted_policies_are_named_policies() -> None:
    assert make_policy("exp4_discounted").params() == {
        "eta": 0.1,
        "discount": 0.002,
        "update": "full",
    }
    assert make_policy("exp3_discounted").params()["gamma"] == 0.05
    with pytest.raises(ConfigError, match="discount"):
        make_policy("exp3", {"discount": 1.0})
    with pytest.raises(ConfigError, match="update"):
        make_policy("exp4", {"update": "sometimes"})
