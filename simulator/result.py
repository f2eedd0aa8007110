"""What a simulation run returns: raw per-query and per-batch records, summarised after.

Rules:
- ``queries`` has one row per query of the trace (``query_id`` is the trace position plus
  the workload's offset), ``batches`` one row per batch sent; percentiles and rates are
  computed from these raw timestamps after the run, never kept as running estimates.
- Latency columns are seconds; times (``*_at``) are simulated seconds from 0.
- ``summary()`` definitions: ``throughput_qps`` = answers that are not defaults divided by
  the span from the first arrival to the last reply; ``model_throughput_qps`` = inputs in
  completed batches over the same span (what the containers computed, late or not: under
  overload with an unbounded queue most answers come after their deadline); latencies are
  over every admitted query (defaults included: they are answered at their deadline);
  ``accuracy`` counts a default as wrong; ``missing_share`` is missing member predictions
  over selected members.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
from clipperlab.engine import Engine, FeedbackApplied, Metrics

__all__ = ["SimResult"]


class SimResult:
    """Raw records, the engine's metrics and decision log, and summaries.

    ``queries``, ``batches`` and ``members`` are built from the raw records on first access
    (so a run that only needs ``metrics`` pays nothing for them).  ``crashes`` lists
    ``(time, replica, "crash"|"restart")``; ``feedback`` the ``(time, FeedbackApplied)``.
    """

    def __init__(
        self,
        *,
        build_queries: Callable[[], pd.DataFrame],
        build_batches: Callable[[], pd.DataFrame],
        build_members: Callable[[], pd.DataFrame | None],
        metrics: Metrics,
        log: list[tuple[Any, ...]] | None,
        engine: Engine,
        sim_s: float,
        wall_s: float,
        seed: int,
        crashes: list[tuple[float, str, str]],
        feedback: list[tuple[float, FeedbackApplied]],
    ) -> None:
        self._build_queries = build_queries
        self._build_batches = build_batches
        self._build_members = build_members
        self.metrics = metrics
        self.log = log
        self.engine = engine
        self.sim_s = sim_s
        self.wall_s = wall_s
        self.seed = seed
        self.crashes = crashes
        self.feedback = feedback

    @cached_property
    def queries(self) -> pd.DataFrame:
        return self._build_queries()

    @cached_property
    def batches(self) -> pd.DataFrame:
        return self._build_batches()

    @cached_property
    def members(self) -> pd.DataFrame | None:
        return self._build_members()

    def summary(self, app: str | None = None) -> dict[str, float]:
        """Throughput, latency percentiles (ms), default rate, batch size, accuracy."""
        q = self.queries if app is None else self.queries[self.queries["app"] == app]
        return summarise(q, self.batches)

    def summary_table(self) -> pd.DataFrame:
        """One row per application plus ``all`` when there are several."""
        rows = []
        for app in sorted(self.queries["app"].unique()):
            rows.append({"app": app, **self.summary(app)})
        if len(rows) > 1:
            rows.append({"app": "all", **self.summary()})
        return pd.DataFrame(rows)


def summarise(q: pd.DataFrame, batches: pd.DataFrame) -> dict[str, float]:
    n = len(q)
    out: dict[str, float] = {"queries": float(n)}
    if n == 0:
        return out
    arr = q["arrival_at"].to_numpy()
    rep = q["reply_at"].to_numpy()
    answered = ~np.isnan(rep)
    refused = q["refused"].to_numpy(dtype=bool)
    default = q["default"].to_numpy(dtype=bool)
    span_offered = float(arr.max() - arr.min()) if n > 1 else 0.0
    out["offered_qps"] = (n - 1) / span_offered if span_offered > 0 else float("nan")
    span = float(np.nanmax(rep) - arr.min()) if answered.any() else 0.0
    good = answered & ~default
    out["throughput_qps"] = float(good.sum()) / span if span > 0 else float("nan")
    lat = q["latency_s"].to_numpy()[answered & ~refused]
    if lat.size:
        p50, p90, p99 = np.percentile(lat, [50, 90, 99])
        out.update(mean_ms=float(lat.mean() * 1e3), p50_ms=float(p50 * 1e3),
                   p90_ms=float(p90 * 1e3), p99_ms=float(p99 * 1e3),
                   max_ms=float(lat.max() * 1e3))
    out["default_rate"] = float(default.mean())
    out["refused_rate"] = float(refused.mean())
    out["unanswered"] = float((~answered).sum())
    if "correct" in q:
        out["accuracy"] = float(q["correct"].to_numpy(dtype=bool).mean())
    if "n_selected" in q and q["n_selected"].sum() > 0:
        out["missing_share"] = float(q["n_missing"].sum() / q["n_selected"].sum())
    if len(batches):
        ok = batches["status"] == "done"
        sizes = batches.loc[ok, "size"]
        out["batches"] = float(ok.sum())
        out["mean_batch_size"] = float(sizes.mean()) if len(sizes) else float("nan")
        if span > 0:
            out["model_throughput_qps"] = float(sizes.sum()) / span
    return out
