"""Numbers the figures report, computed from a run's raw timestamps after the run.

Rules (the same for every figure, so they compare):
- A warm-up is left out of every measure: queries that *arrived* before the window's start
  (a share of the run, or a time, whichever is later) do not count, nor batches *sent*
  before it (adaptive batching starts at a batch of one and needs time to grow).
- Throughput is answered (non-default) queries per second of the measured window, the
  window running from its start to the last arrival; under overload that is the peak
  throughput the paper reports.  ``offered_qps`` is arrivals per second in the same window.
- Latency is the time from a query's arrival to its reply (default replies included, as a
  client sees them); ``answered_`` latencies count non-default replies only.
- Percentiles are numpy's linear interpolation; an empty set gives NaN.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from clipperlab.report.latency import latency_ms, pct

__all__ = ["RAW", "batch_stats", "latency_stats", "pct", "raw_batches", "split_raw", "window"]

RAW = "_raw"  # key under which a point's row carries its raw batches to ``split_raw``
_BATCH_COLS = ("model", "replica", "batch_id", "size", "padded_size", "reason", "sent_at",
               "start_at", "done_at", "status")


def window(
    arrival_at: np.ndarray, warmup_frac: float, warmup_s: float = 0.0
) -> tuple[float, float]:
    """(start, end) of the measured window: after ``warmup_frac`` of the arrival span and
    after ``warmup_s`` seconds, whichever is later."""
    if len(arrival_at) == 0:
        return 0.0, 0.0
    t0, t1 = float(arrival_at.min()), float(arrival_at.max())
    return max(t0 + warmup_frac * (t1 - t0), t0 + warmup_s), t1


def latency_stats(
    arrival_at: np.ndarray,
    latency_s: np.ndarray,
    default: np.ndarray,
    *,
    warmup_frac: float,
    warmup_s: float = 0.0,
) -> dict[str, Any]:
    """Throughput, default share and latency quantiles (ms) over the measured window."""
    start, end = window(arrival_at, warmup_frac, warmup_s)
    keep = arrival_at >= start
    lat = latency_s[keep]
    dflt = default[keep].astype(bool)
    span_s = max(end - start, 1e-12)
    answered = lat[~dflt]
    n = int(keep.sum())
    return {
        "queries": n,
        "offered_qps": n / span_s,
        "throughput_qps": len(answered) / span_s,
        "default_share": float(dflt.mean()) if n else math.nan,
        **{k: v for k, v in latency_ms(lat).items() if k in ("mean_ms", "p50_ms", "p99_ms")},
        **{f"answered_{k}": v for k, v in latency_ms(answered).items()
           if k in ("mean_ms", "p99_ms")},
    }


def batch_stats(
    sent_at: np.ndarray, done_at: np.ndarray, size: np.ndarray, *, start_at: float
) -> dict[str, Any]:
    """Batches sent after ``start_at``: count, queries processed per second (the
    container's throughput, whether or not the answers were still in time), mean and p99
    batch size, mean and p99 batch latency (ms, from sending to the outputs' return)."""
    keep = sent_at >= start_at
    s = size[keep]
    lat = (done_at[keep] - sent_at[keep]) * 1e3
    span_s = float(done_at[keep].max()) - start_at if keep.any() else 0.0
    return {
        "batches": int(keep.sum()),
        "processed_qps": float(s.sum()) / span_s if span_s > 0 else math.nan,
        "mean_batch": float(s.mean()) if len(s) else math.nan,
        "p99_batch": pct(s, 99),
        "batch_mean_ms": float(lat.mean()) if len(lat) else math.nan,
        "batch_p99_ms": pct(lat, 99),
    }


def raw_batches(batches: pd.DataFrame, **keys: Any) -> pd.DataFrame:
    """A run's batch records with the point's ``keys`` as leading columns (for ``raw/``)."""
    cols = [c for c in _BATCH_COLS if c in batches.columns]
    out = batches[cols].copy()
    if "model" in out:
        out["model"] = out["model"].astype(str)
    for i, (k, v) in enumerate(keys.items()):
        out.insert(i, k, v)
    return out


def split_raw(rows: list[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Rows that may carry raw batches under ``RAW`` -> (tidy table, all raw batches)."""
    raws = [r[RAW] for r in rows if RAW in r]
    table = pd.DataFrame([{k: v for k, v in r.items() if k != RAW} for r in rows])
    return table, (pd.concat(raws, ignore_index=True) if raws else None)
