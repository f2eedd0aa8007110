"""Selection state merged across frontends: each publishes what it learned, the others add it.

Several frontends each keep their own engine, so each learns from the feedback it
receives.  Every ``selection_merge_every_s`` a frontend takes the states that changed
since the last merge (``Engine.take_selection_changes``, the same changes the store
saves), publishes one delta per (application, context) and adds the deltas it receives
from the others to its own states.  With the load spread evenly, every frontend then
learns from all the feedback, one merge period late.

Rules:
- A ``PolicyState`` has multiplicative weights (Exp3/Exp4: ``w_i <- w_i exp(-eta L_i/p_i)``)
  and additive statistics (``counts``, ``loss_sums``, ``rounds``: epsilon-greedy, UCB1).
  A delta is ``log(w_now / w_base)`` per model and the differences of the statistics;
  adding one multiplies each weight by ``exp(d_i)`` and adds the statistics, then rescales
  the weights so the largest is 1 (probabilities depend on their ratios only).
- ``base`` is a state as of the last merge: the local delta published and every remote
  delta added.  A state this frontend has no base for grew from the policy's fresh state
  (``new_state``), which is where every frontend's copy starts.
- A delta whose models differ from the receiver's (a relink in between) is dropped, and so
  is one for an application the receiver does not have; a relink starts the states anew.
- Exact for the statistics and for Exp3/Exp4 without forgetting (log-weight changes add up,
  as if one frontend had seen every loss, each weighted by its frontend's probabilities);
  forgetting (``discount``) shrinks log-weights toward 0 on each frontend by its own
  feedback count, so its merge is an approximation.
- The other choice, ``selection_sync = "partition"``: no deltas; each user's state lives on
  the frontend the load balancer sends that user to (routing by user), the shared store
  keeps whichever frontend wrote last.
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable, Mapping
from typing import Any

from clipperlab.engine import Engine, EngineError, PolicyState
from clipperlab.engine.core import SelectionChanges
from clipperlab.engine.selection import make_policy

from .store_base import context_from_json

__all__ = ["SelectionMerger", "add_delta", "state_delta"]

_FLOOR = 1e-300  # the engine's smallest weight (engine/selection.py)


def state_delta(base: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, Any] | None:
    """What ``now`` learned since ``base`` (None: nothing, or the models differ)."""
    if list(base["models"]) != list(now["models"]):
        return None
    dw = [math.log(max(n, _FLOOR)) - math.log(max(b, _FLOOR))
          for b, n in zip(base["weights"], now["weights"], strict=True)]
    top = max(dw, default=0.0)
    dw = [d - top for d in dw]  # a shift of every log-weight changes no probability
    dc = [int(n) - int(b) for b, n in zip(base["counts"], now["counts"], strict=True)]
    dl = [float(n) - float(b) for b, n in zip(base["loss_sums"], now["loss_sums"], strict=True)]
    dr = int(now["rounds"]) - int(base["rounds"])
    if not (dr or any(dc) or any(dl) or any(abs(d) > 1e-12 for d in dw)):
        return None
    return {"models": list(now["models"]), "log_weights": dw, "counts": dc,
            "loss_sums": dl, "rounds": dr}


def add_delta(doc: Mapping[str, Any], delta: Mapping[str, Any]) -> dict[str, Any] | None:
    """``doc`` with ``delta`` added (None: the models differ)."""
    if list(doc["models"]) != list(delta["models"]):
        return None
    w = [max(x, _FLOOR) * math.exp(d)
         for x, d in zip(doc["weights"], delta["log_weights"], strict=True)]
    top = max(w, default=1.0)
    if not (top > 0 and math.isfinite(top)):
        w, top = [1.0] * len(w), 1.0
    return {
        "models": list(doc["models"]),
        "weights": [max(x / top, _FLOOR) for x in w],
        "counts": [a + b for a, b in zip(doc["counts"], delta["counts"], strict=True)],
        "loss_sums": [a + b for a, b in zip(doc["loss_sums"], delta["loss_sums"], strict=True)],
        "rounds": int(doc["rounds"]) + int(delta["rounds"]),
    }


class SelectionMerger:
    """One frontend's side of the merge: its bases, the deltas it publishes, the deltas it
    adds.  Every call runs on the frontend's event loop."""

    def __init__(self) -> None:
        self.bases: dict[tuple[str, str], dict[str, Any]] = {}
        self.published = 0
        self.applied = 0
        self.dropped = 0

    def _fresh(self, engine: Engine, app: str, models: list[str]) -> dict[str, Any]:
        a = engine.registry.apps[app]
        return make_policy(a.policy, a.policy_params).new_state(models).to_dict()

    def local_deltas(
        self, engine: Engine, changes: Mapping[str, SelectionChanges]
    ) -> list[dict[str, Any]]:
        """The deltas of ``changes`` (taken from ``engine`` just now); their states become
        the bases."""
        out: list[dict[str, Any]] = []
        for app, ch in changes.items():
            if ch.rewrite:
                for key in [k for k in self.bases if k[0] == app]:
                    del self.bases[key]
            for ctx in ch.removed:
                self.bases.pop((app, json.dumps(ctx)), None)
            for ctx, doc in ch.changed.items():
                key = (app, json.dumps(ctx))
                base = self.bases.get(key)
                if base is None:
                    if app not in engine.registry.apps:
                        continue
                    base = self._fresh(engine, app, list(doc["models"]))
                self.bases[key] = doc
                d = state_delta(base, doc)
                if d is not None:
                    out.append({"app": app, "context": key[1], "delta": d})
        self.published += len(out)
        return out

    def apply(self, engine: Engine, deltas: list[dict[str, Any]], *, now: float) -> int:
        """Add another frontend's deltas to this engine's states (and to their bases, so
        they are not published again); returns how many were added."""
        n = 0
        for item in deltas:
            app, ctx_json, delta = item["app"], item["context"], item["delta"]
            context: Hashable = context_from_json(ctx_json)
            try:
                doc = engine.selection_state(app, context).to_dict()
            except EngineError:
                self.dropped += 1
                continue
            merged = add_delta(doc, delta)
            if merged is None:
                self.dropped += 1
                continue
            key = (app, ctx_json)
            base = self.bases.get(key) or self._fresh(engine, app, list(doc["models"]))
            self.bases[key] = add_delta(base, delta) or merged
            engine.load_selection_state(app, context, PolicyState.from_dict(merged), now=now)
            n += 1
        self.applied += n
        return n
