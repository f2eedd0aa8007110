"""One latency summary: the definitions every room reports latency and throughput by.

Rules:
- Percentiles are numpy's linear interpolation; an empty set gives NaN.
- ``latency_ms``: mean, p50, p90, p99 and max of a latency array, in milliseconds.
- ``summarise`` reads a per-query table (the simulator's ``SimResult.queries``, the load
  generator's ``load.csv``: ``arrival_at``, ``reply_at``, ``latency_s``, ``default``,
  ``refused``; optional ``correct``, ``n_selected``/``n_missing``) and, optionally, a
  per-batch table (``status``, ``size``):
  - ``offered_qps``: arrivals per second over the arrival span;
  - ``throughput_qps``: answered, non-default queries per second from the first arrival
    to the last reply;
  - latency over answered, non-refused queries (defaults included, as a client sees them);
  - ``default_rate``, ``refused_rate``, ``unanswered``; ``accuracy`` and
    ``missing_share`` when the table has them; batch counts, mean size and the models'
    own throughput when batches are given;
  - the load generator's own, only when the table has its columns (the raw table of
    ``clipperlab.calibration.loadgen.run_load``): with ``status``, ``errors`` (answers
    with an HTTP status other than 200 or 503; 0, no answer, is not one); with
    ``lag_s``, ``mean_lag_ms`` and ``max_lag_ms`` (how late the generator sent,
    ``sent_at - arrival_at``) when any query was sent.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

__all__ = ["latency_ms", "pct", "summarise"]


def pct(values: np.ndarray, q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, NaN when empty."""
    if len(values) == 0:
        return math.nan
    return float(np.percentile(values, q))


def latency_ms(latency_s: np.ndarray) -> dict[str, float]:
    """``mean_ms``, ``p50_ms``, ``p90_ms``, ``p99_ms``, ``max_ms`` of latencies in seconds
    (NaN for an empty array)."""
    lat = np.asarray(latency_s, dtype=np.float64)
    if not lat.size:
        return dict.fromkeys(("mean_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms"), math.nan)
    p50, p90, p99 = np.percentile(lat, [50, 90, 99])
    return {"mean_ms": float(lat.mean() * 1e3), "p50_ms": float(p50 * 1e3),
            "p90_ms": float(p90 * 1e3), "p99_ms": float(p99 * 1e3),
            "max_ms": float(lat.max() * 1e3)}


def summarise(q: pd.DataFrame, batches: pd.DataFrame | None = None) -> dict[str, float]:
    """Throughput, latency (ms), defaults and batches of a per-query table (see above)."""
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
        out.update(latency_ms(lat))
    out["default_rate"] = float(default.mean())
    out["refused_rate"] = float(refused.mean())
    out["unanswered"] = float((~answered).sum())
    if "correct" in q:
        out["accuracy"] = float(q["correct"].to_numpy(dtype=bool).mean())
    if "n_selected" in q and q["n_selected"].sum() > 0:
        out["missing_share"] = float(q["n_missing"].sum() / q["n_selected"].sum())
    if "status" in q:
        st = q["status"].to_numpy()
        out["errors"] = float(((st != 200) & (st != 503) & (st != 0)).sum())
    if "lag_s" in q:
        lag = q["lag_s"].to_numpy(dtype=np.float64)
        if np.isfinite(lag).any():
            out["mean_lag_ms"] = float(np.nanmean(lag) * 1e3)
            out["max_lag_ms"] = float(np.nanmax(lag) * 1e3)
    if batches is not None and len(batches):
        ok = batches["status"] == "done"
        sizes = batches.loc[ok, "size"]
        out["batches"] = float(ok.sum())
        out["mean_batch_size"] = float(sizes.mean()) if len(sizes) else float("nan")
        if span > 0:
            out["model_throughput_qps"] = float(sizes.sum()) / span
    return out
