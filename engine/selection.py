"""Model selection policies: select, combine, observe.

Rules (Clipper, NSDI 2017, sec. 5; constants from the C++ system unless stated):
- State is kept per (application, context); ``context=None`` is the application's global
  state, any other value (a user id) gets its own state: personalization.
- ``select`` names the models a query goes to; ``combine`` turns the answers that arrived
  into ``(output, confidence)``; ``observe`` takes a label and updates the state.
- Loss is in [0, 1]: 0/1 loss for class labels (equal to |y_hat - y| for binary 0/1
  labels), or |y_hat - y| clipped to 1 for numeric outputs (``absolute``).
- Exp3 (one model per query): weights start at 1, p_i = (1-gamma) w_i/sum(w) + gamma/K
  (gamma = 0 in Clipper's code), and after feedback on the model that answered,
  ``w_i <- w_i * exp(-eta * L / p_i)`` with eta = 0.01.
- Exp4 (ensemble): every model is queried; the output is the weighted vote over the
  answers (for 0/1 labels the same as thresholding the weighted mean at 0.5); every member
  that answered is updated with the same rule.
- Confidence is the weighted share of the winning output among *all* selected members, so
  that a missing member lowers it; single-model answers have confidence 1.
- Epsilon-greedy (epsilon = 0.1, running mean loss) and UCB1 (index mean loss minus
  sqrt(2 ln N / n_i), untried models first) observe only the model they chose.
- Weights are rescaled (not changed in ratio) when their sum falls below 1e-200, so they
  stay finite and positive forever.
- Ours, beyond Clipper: ``discount`` on Exp3/Exp4 forgets old losses (log-weights shrink
  by that fraction per feedback), and Exp4's ``update="full"`` uses Hedge's
  ``w_i <- w_i * exp(-eta * L_i)`` (every member is observed, so no importance weights).
  Clipper's importance-weighted Exp4 drives every member but the leader to the floor and
  then never leaves a failing leader; ``exp3_discounted``/``exp4_discounted`` name the
  variants that recover (fig. 8).
- Any other policy is a subclass of ``SelectionPolicy`` named by the config as
  ``package.module:Class``, ``path/to/file.py:Class`` or an entry point of group
  ``clipperlab.selection`` (``engine.plugins``); it implements ``select`` and may override
  ``combine``/``observe``/``probabilities``; it is built as ``Class(**policy_params)``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from .errors import ConfigError
from .plugins import ENTRY_POINT_GROUPS, resolve_class

__all__ = [
    "ABSplit",
    "EpsilonGreedy",
    "Exp3",
    "Exp4",
    "Exp3Discounted",
    "Exp4Discounted",
    "POLICIES",
    "PolicyState",
    "SelectionPolicy",
    "Static",
    "UCB1",
    "loss",
    "make_policy",
    "policy_class",
    "weighted_vote",
]

_RESCALE_BELOW = 1e-200


def loss(output: Any, label: Any, kind: str = "zero_one") -> float:
    """Loss of one prediction in [0, 1]."""
    if kind == "absolute":
        try:
            return min(abs(float(output) - float(label)), 1.0)
        except (TypeError, ValueError):
            return 0.0 if output == label else 1.0
    try:
        return 0.0 if output == label else 1.0
    except Exception:  # noqa: BLE001 - arrays and odd types compare as unequal
        return 1.0


def _hashable(x: Any) -> Any:
    if isinstance(x, list):
        return tuple(_hashable(v) for v in x)
    if isinstance(x, np.ndarray):
        return x.tobytes() if x.ndim else x.item()
    if isinstance(x, np.generic):
        return x.item()
    return x


def weighted_vote(
    answers: Mapping[str, Any], weights: Mapping[str, float], total_weight: float
) -> tuple[Any, float]:
    """Weighted vote over equal outputs: ``(winner, weight(winner) / total_weight)``.
    Ties go to the output first seen in ``answers`` order."""
    scores: dict[Any, float] = {}
    originals: dict[Any, Any] = {}
    for m, out in answers.items():
        k = _hashable(out)
        scores[k] = scores.get(k, 0.0) + weights.get(m, 0.0)
        originals.setdefault(k, out)
    if not scores:
        return None, 0.0
    best = max(scores, key=lambda k: scores[k])
    conf = scores[best] / total_weight if total_weight > 0 else 0.0
    return originals[best], min(max(conf, 0.0), 1.0)


class PolicyState:
    """Selection state of one (application, context): per-model weights and statistics."""

    __slots__ = ("models", "weights", "counts", "loss_sums", "rounds")

    def __init__(self, models: Sequence[str], weights: Sequence[float] | None = None) -> None:
        self.models: tuple[str, ...] = tuple(models)
        k = len(self.models)
        self.weights: list[float] = list(weights) if weights is not None else [1.0] * k
        self.counts: list[int] = [0] * k
        self.loss_sums: list[float] = [0.0] * k
        self.rounds = 0

    def index(self, model: str) -> int:
        return self.models.index(model)

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": list(self.models),
            "weights": list(self.weights),
            "counts": list(self.counts),
            "loss_sums": list(self.loss_sums),
            "rounds": self.rounds,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PolicyState:
        s = cls(d["models"], d["weights"])
        s.counts = [int(c) for c in d["counts"]]
        s.loss_sums = [float(x) for x in d["loss_sums"]]
        s.rounds = int(d["rounds"])
        return s

    def mean_loss(self, i: int) -> float:
        return self.loss_sums[i] / self.counts[i] if self.counts[i] else 0.0


class SelectionPolicy(ABC):
    """select / combine / observe over a ``PolicyState``."""

    name: ClassVar[str] = "base"
    ensemble: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        if params:
            raise ConfigError(f"policy {self.name!r} takes no parameter(s) {sorted(params)}")

    def new_state(self, models: Sequence[str]) -> PolicyState:
        return PolicyState(models)

    @abstractmethod
    def select(self, state: PolicyState, rng: np.random.Generator) -> tuple[str, ...]:
        """Models to query."""

    def feedback_models(self, state: PolicyState, rng: np.random.Generator) -> tuple[str, ...]:
        """Models whose predictions ``observe`` needs when the query is not known."""
        return self.select(state, rng)

    def combine(
        self, state: PolicyState, selected: tuple[str, ...], answers: Mapping[str, Any]
    ) -> tuple[Any, float]:
        if len(selected) == 1:
            m = selected[0]
            return (answers[m], 1.0) if m in answers else (None, 0.0)
        w = self._weights_by_name(state)
        total = sum(w.get(m, 0.0) for m in selected)
        return weighted_vote(answers, w, total)

    def observe(self, state: PolicyState, losses: Mapping[str, float]) -> None:
        """Update with the loss of each model that answered."""
        state.rounds += 1
        for m, lo in losses.items():
            if m in state.models:
                i = state.models.index(m)
                state.counts[i] += 1
                state.loss_sums[i] += lo

    def probabilities(self, state: PolicyState) -> list[float]:
        """Probability that ``select`` picks each model (ensembles: vote weights)."""
        total = sum(state.weights)
        k = len(state.models)
        if total <= 0 or k == 0:
            return [1.0 / k] * k if k else []
        return [w / total for w in state.weights]

    def _weights_by_name(self, state: PolicyState) -> dict[str, float]:
        return dict(zip(state.models, state.weights, strict=True))

    def params(self) -> dict[str, Any]:
        return {}


class Static(SelectionPolicy):
    """Always the same model (``model``, default the first linked)."""

    name = "static"

    def __init__(self, model: str | None = None) -> None:
        self.model = model

    def select(self, state: PolicyState, rng: np.random.Generator) -> tuple[str, ...]:
        if self.model is not None and self.model in state.models:
            return (self.model,)
        return state.models[:1]

    def probabilities(self, state: PolicyState) -> list[float]:
        chosen = self.select(state, np.random.default_rng(0))
        return [1.0 if m in chosen else 0.0 for m in state.models]

    def params(self) -> dict[str, Any]:
        return {"model": self.model}


class ABSplit(SelectionPolicy):
    """Weighted A/B split: model ``m`` gets ``split[m] / sum(split)`` of the traffic
    (models not named get none; an empty split is uniform)."""

    name = "ab"

    def __init__(self, split: Mapping[str, float] | None = None) -> None:
        split = dict(split or {})
        for m, w in split.items():
            if not (isinstance(w, int | float) and w >= 0 and math.isfinite(w)):
                raise ConfigError(
                    f"A/B split weight of {m!r} must be a finite number >= 0, got {w!r}"
                )
        self.split = split

    def new_state(self, models: Sequence[str]) -> PolicyState:
        if not self.split:
            return PolicyState(models)
        return PolicyState(models, [float(self.split.get(m, 0.0)) for m in models])

    def select(self, state: PolicyState, rng: np.random.Generator) -> tuple[str, ...]:
        if not state.models:
            return ()
        p = self.probabilities(state)
        return (state.models[_sample(p, float(rng.random()))],)

    def params(self) -> dict[str, Any]:
        return {"split": dict(self.split)}


def _sample(p: Sequence[float], u: float) -> int:
    acc = 0.0
    for i, pi in enumerate(p):
        acc += pi
        if u < acc:
            return i
    return len(p) - 1


def _exp_update(
    state: PolicyState,
    losses: Mapping[str, float],
    eta: float,
    p: Sequence[float] | None,
) -> None:
    """``w_i <- w_i * exp(-eta * L_i / p_i)`` (``p=None``: Hedge, ``exp(-eta * L_i)``)."""
    for m, lo in losses.items():
        if m not in state.models:
            continue
        i = state.models.index(m)
        scale = 1.0 if p is None else max(p[i], 1e-12)
        state.weights[i] *= math.exp(-eta * lo / scale)
    total = sum(state.weights)
    if total < _RESCALE_BELOW or not all(w > 0 for w in state.weights):
        # rescale so the largest weight is 1; floor at the smallest positive double ratio
        top = max(state.weights)
        if top <= 0 or not math.isfinite(top):
            state.weights = [1.0] * len(state.weights)
        else:
            state.weights = [max(w / top, 1e-300) for w in state.weights]


def _forget(state: PolicyState, discount: float) -> None:
    """Discounted losses: every log-weight (relative to the largest) shrinks toward 0,
    ``w_i <- (w_i / max w) ** (1 - discount)``: memory of about ``1/discount`` rounds."""
    top = max(state.weights, default=0.0)
    if discount <= 0 or top <= 0 or not math.isfinite(top):
        return
    keep = 1.0 - discount
    state.weights = [max((w / top) ** keep, 1e-300) for w in state.weights]


def _check_rates(name: str, eta: float, discount: float) -> None:
    if not (isinstance(eta, int | float) and eta > 0 and math.isfinite(eta)):
        raise ConfigError(f"{name} eta must be a finite number > 0, got {eta!r}")
    if not (isinstance(discount, int | float) and 0 <= discount < 1):
        raise ConfigError(f"{name} discount must be in [0, 1), got {discount!r}")


class Exp3(SelectionPolicy):
    """Exp3: sample one model by weight; importance-weighted exponential update.

    ``discount`` > 0 forgets old losses (our option, not Clipper's), so that weight taken
    from a model during a failure can come back after it recovers."""

    name = "exp3"

    def __init__(self, eta: float = 0.01, gamma: float = 0.0, discount: float = 0.0) -> None:
        _check_rates(self.name, eta, discount)
        if not 0 <= gamma <= 1:
            raise ConfigError(f"{self.name} gamma must be in [0, 1], got {gamma!r}")
        self.eta = eta
        self.gamma = gamma
        self.discount = discount

    def probabilities(self, state: PolicyState) -> list[float]:
        p = super().probabilities(state)
        k = len(p)
        if self.gamma and k:
            p = [(1 - self.gamma) * x + self.gamma / k for x in p]
        return p

    def select(self, state: PolicyState, rng: np.random.Generator) -> tuple[str, ...]:
        if not state.models:
            return ()
        return (state.models[_sample(self.probabilities(state), float(rng.random()))],)

    def observe(self, state: PolicyState, losses: Mapping[str, float]) -> None:
        _forget(state, self.discount)
        p = self.probabilities(state)
        super().observe(state, losses)
        _exp_update(state, losses, self.eta, p)

    def params(self) -> dict[str, Any]:
        return {"eta": self.eta, "gamma": self.gamma, "discount": self.discount}


class Exp4(SelectionPolicy):
    """Exp4: query every model, weighted vote, update every member that answered.

    ``update="importance"`` (Clipper's) divides each loss by the member's vote share;
    ``update="full"`` is Hedge, ``w_i <- w_i * exp(-eta * L_i)``, the full-information
    rule (every member is observed), which does not drive all but the leader to the floor.
    ``discount`` > 0 forgets old losses as in ``Exp3``."""

    name = "exp4"
    ensemble = True

    def __init__(
        self, eta: float = 0.01, discount: float = 0.0, update: str = "importance"
    ) -> None:
        _check_rates(self.name, eta, discount)
        if update not in ("importance", "full"):
            raise ConfigError(f"{self.name} update must be 'importance' or 'full', got {update!r}")
        self.eta = eta
        self.discount = discount
        self.update = update

    def select(self, state: PolicyState, rng: np.random.Generator) -> tuple[str, ...]:
        return state.models

    def observe(self, state: PolicyState, losses: Mapping[str, float]) -> None:
        _forget(state, self.discount)
        p = self.probabilities(state) if self.update == "importance" else None
        super().observe(state, losses)
        _exp_update(state, losses, self.eta, p)

    def params(self) -> dict[str, Any]:
        return {"eta": self.eta, "discount": self.discount, "update": self.update}


class Exp3Discounted(Exp3):
    """Exp3 with forgetting and exploration by default (eta 0.1, gamma 0.05, discount
    0.002: a memory of about 500 feedback items), for streams whose best model changes."""

    name = "exp3_discounted"

    def __init__(self, eta: float = 0.1, gamma: float = 0.05, discount: float = 0.002) -> None:
        super().__init__(eta=eta, gamma=gamma, discount=discount)


class Exp4Discounted(Exp4):
    """Exp4 as Hedge with forgetting by default (eta 0.1, discount 0.002)."""

    name = "exp4_discounted"

    def __init__(self, eta: float = 0.1, discount: float = 0.002, update: str = "full") -> None:
        super().__init__(eta=eta, discount=discount, update=update)


class EpsilonGreedy(SelectionPolicy):
    """With probability epsilon a uniformly random model, else the lowest mean loss."""

    name = "epsilon_greedy"

    def __init__(self, epsilon: float = 0.1) -> None:
        if not 0 <= epsilon <= 1:
            raise ConfigError(f"epsilon must be in [0, 1], got {epsilon!r}")
        self.epsilon = epsilon

    def _greedy(self, state: PolicyState) -> int:
        best, best_loss = 0, math.inf
        for i in range(len(state.models)):
            lo = state.mean_loss(i) if state.counts[i] else -1.0  # untried first
            if lo < best_loss:
                best, best_loss = i, lo
        return best

    def select(self, state: PolicyState, rng: np.random.Generator) -> tuple[str, ...]:
        k = len(state.models)
        if not k:
            return ()
        if float(rng.random()) < self.epsilon:
            return (state.models[int(rng.integers(k))],)
        return (state.models[self._greedy(state)],)

    def probabilities(self, state: PolicyState) -> list[float]:
        k = len(state.models)
        if not k:
            return []
        p = [self.epsilon / k] * k
        p[self._greedy(state)] += 1 - self.epsilon
        return p

    def params(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon}


class UCB1(SelectionPolicy):
    """UCB1 on losses: the model minimising mean loss - sqrt(2 ln N / n_i)."""

    name = "ucb1"

    def _choice(self, state: PolicyState) -> int:
        for i, c in enumerate(state.counts):
            if c == 0:
                return i
        n = sum(state.counts)
        scores = [
            state.mean_loss(i) - math.sqrt(2.0 * math.log(n) / state.counts[i])
            for i in range(len(state.models))
        ]
        return min(range(len(scores)), key=scores.__getitem__)

    def select(self, state: PolicyState, rng: np.random.Generator) -> tuple[str, ...]:
        if not state.models:
            return ()
        return (state.models[self._choice(state)],)

    def probabilities(self, state: PolicyState) -> list[float]:
        k = len(state.models)
        if not k:
            return []
        p = [0.0] * k
        p[self._choice(state)] = 1.0
        return p


POLICIES: dict[str, type[SelectionPolicy]] = {
    cls.name: cls
    for cls in (Static, ABSplit, Exp3, Exp4, Exp3Discounted, Exp4Discounted, EpsilonGreedy, UCB1)
}


def policy_class(name: str) -> type[SelectionPolicy]:
    """The policy class ``name`` stands for: a built-in name, ``package.module:Class``,
    ``path/to/file.py:Class`` or an entry point of group ``clipperlab.selection``
    (``engine.plugins``); a ``ConfigError`` naming the value and the rule otherwise."""
    return resolve_class(name, SelectionPolicy, POLICIES, "selection policy",
                         ENTRY_POINT_GROUPS["selection"])


def make_policy(name: str, params: Mapping[str, Any] | None = None) -> SelectionPolicy:
    """The policy called ``name`` built with ``params``; a clear error for anything else."""
    cls = policy_class(name)
    kw = dict(params or {})
    try:
        return cls(**kw)
    except ConfigError:
        raise
    except TypeError as e:
        raise ConfigError(f"bad parameters {kw!r} for policy {name!r}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a user's class may fail in any way
        raise ConfigError(
            f"selection policy {name!r}: cannot be built from policy_params {kw!r}: "
            f"{type(e).__name__}: {e}"
        ) from None
