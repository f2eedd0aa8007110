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

import pandas as pd

from clipperlab.engine import Engine, FeedbackApplied, Metrics
from clipperlab.report.latency import summarise

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
        engines: list[Engine] | None = None,
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
        # one engine per frontend (Deployment.frontends); ``engine`` is frontend 0's, and
        # ``metrics`` and ``log`` are every frontend's together
        self.engines = engines if engines is not None else [engine]
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
