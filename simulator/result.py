"""What a simulation run returns: raw per-query and per-batch records, summarised after.

Rules:
- ``queries`` has one row per query of the trace (``query_id`` is the trace position plus
  the workload's offset), ``batches`` one row per batch sent; percentiles and rates are
  computed from these raw timestamps after the run, never kept as running estimates.
- Latency columns are seconds; times (``*_at``) are simulated seconds from 0.
- ``summary()`` definitions: ``throughput_qps`` = answers that are not defaults divided by
  the span from the first arrival to the last reply; latencies are over every admitted
  query (defaults included: they are answered at their deadline); ``accuracy`` counts a
  default as wrong; ``missing_share`` is missing member predictions over selected members.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from engine import Engine, Metrics

__all__ = ["SimResult"]


@dataclass
class SimResult:
    """Raw records, the engine's metrics and decision log, and summaries."""

    queries: pd.DataFrame
    batches: pd.DataFrame
    metrics: Metrics
    log: list[tuple[Any, ...]] | None
    engine: Engine
    members: pd.DataFrame | None
    sim_s: float
    wall_s: float
    seed: int

    def summary(self, app: str | None = None) -> dict[str, float]:
        """Throughput, latency percentiles (ms), default rate, batch size, accuracy."""
        q = self.queries if app is None else self.queries[self.queries["app"] == app]
        return summarise(q, self.batches)

    def summary_table(self) -> pd.DataFrame:
        """One row per application plus ``all``."""
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
    return out
