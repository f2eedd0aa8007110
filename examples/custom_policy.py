"""A selection policy of one's own: softmax (Boltzmann) exploration over mean losses.

Rules: model ``i`` is picked with probability proportional to
``exp(-mean_loss_i / temperature)`` (untried models have mean loss 0, so they are tried
early); only the model that answered is observed (``SelectionPolicy.observe`` keeps the
counts and loss sums).  ``temperature`` (default 0.1) comes from ``policy_params``.

Name it in a config (a relative path is taken from the config's folder)::

    [[applications]]
    name = "digits"
    policy = "custom_policy.py:Softmax"
    policy_params = { temperature = 0.05 }

or through the admin API: ``{"app_name": "digits", "policy":
"/abs/path/examples/custom_policy.py:Softmax"}`` to ``/admin/set_policy``.
"""

from __future__ import annotations

import math

import numpy as np

from clipperlab.engine import ConfigError, PolicyState, SelectionPolicy


class Softmax(SelectionPolicy):
    name = "softmax"

    def __init__(self, temperature: float = 0.1) -> None:
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not (
            temperature > 0 and math.isfinite(temperature)
        ):
            raise ConfigError(f"temperature: expected a number > 0, got {temperature!r}")
        self.temperature = float(temperature)

    def probabilities(self, state: PolicyState) -> list[float]:
        scores = [-state.mean_loss(i) / self.temperature for i in range(len(state.models))]
        top = max(scores, default=0.0)
        w = [math.exp(s - top) for s in scores]
        return [x / sum(w) for x in w]

    def select(self, state: PolicyState, rng: np.random.Generator) -> tuple[str, ...]:
        if not state.models:
            return ()
        i = int(rng.choice(len(state.models), p=self.probabilities(state)))
        return (state.models[i],)

    def params(self) -> dict[str, float]:
        return {"temperature": self.temperature}
