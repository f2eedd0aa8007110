"""Capacity as a prediction: the highest rate at which the twin meets the objective.

The real capacity (``validation.ramp_to_capacity``) is the best throughput of a load ramp's
steps in which at least 95% of the queries got a prediction within the SLO.  The
prediction asks the same of the calibrated twin:

- ``capacity_search(holds, lo_qps, hi_qps)``: ``holds(rate)`` says whether the objective
  holds at ``rate`` and what good throughput it gave; the search brackets (halving ``lo``
  until it holds, doubling ``hi`` until it fails, at most ``MAX_STEPS`` each way) and then
  bisects in log space until ``hi / lo < 1 + rel_tol`` (default 2%).  The answer is the
  good throughput at the highest rate that held, as the ramp reports it.  The
  objective is assumed to hold below some rate and fail above it.
- ``twin_capacity``: ``holds`` from the twin: the workload re-timed to the rate for
  ``duration_s`` (``runs.retime``), replayed, and the share of queries answered with a
  prediction (not a default, not refused) within the SLO, the calibration's constant
  overhead outside the loop added, against ``good`` (0.95).
- When ``clipperlab.simulator`` offers its own capacity search (issue 13, item 1), the
  twin's prediction moves to it; the comparison and its columns stay.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pandas as pd

from clipperlab.calibration.runs import retime
from clipperlab.simulator import Deployment, Simulation
from clipperlab.workloads import Workload

__all__ = ["CapacityPoint", "capacity_search", "sim_good_share", "twin_capacity"]

GOOD_SHARE = 0.95
MAX_STEPS = 12


class CapacityPoint(NamedTuple):
    """One probe of the search: did the objective hold, and the good throughput (q/s)."""

    holds: bool
    good_qps: float


def capacity_search(holds: Callable[[float], CapacityPoint], lo_qps: float, hi_qps: float,
                    *, rel_tol: float = 0.02) -> float:
    """The good throughput at the highest rate where ``holds`` (module rules); NaN when
    the objective fails even at ``lo_qps / 2**MAX_STEPS``."""
    if not 0 < lo_qps < hi_qps or rel_tol <= 0:
        raise ValueError(f"need 0 < lo_qps < hi_qps and rel_tol > 0, got {lo_qps}, "
                         f"{hi_qps}, {rel_tol}")
    best: CapacityPoint | None = None
    for _ in range(MAX_STEPS):
        p = holds(lo_qps)
        if p.holds:
            best = p
            break
        hi_qps, lo_qps = lo_qps, lo_qps / 2
    if best is None:
        return math.nan
    for _ in range(MAX_STEPS):
        p = holds(hi_qps)
        if not p.holds:
            break
        best, lo_qps, hi_qps = p, hi_qps, hi_qps * 2
    else:
        return best.good_qps  # still holding: the search's ceiling
    while hi_qps / lo_qps > 1 + rel_tol:
        mid = math.sqrt(lo_qps * hi_qps)
        p = holds(mid)
        if p.holds:
            best, lo_qps = p, mid
        else:
            hi_qps = mid
    return best.good_qps


def sim_good_share(queries: pd.DataFrame, slo_s: float, overhead_s: float = 0.0) -> float:
    """The share of a simulated run's queries answered with a prediction within
    ``slo_s`` (``overhead_s`` added to each latency, as ``runs.sim_run`` does)."""
    if not len(queries):
        return 0.0
    lat = np.nan_to_num(queries["latency_s"].to_numpy(dtype=np.float64), nan=np.inf)
    ok = ~queries["default"].to_numpy(dtype=bool) & (lat + overhead_s <= slo_s)
    if "refused" in queries:
        ok &= ~queries["refused"].to_numpy(dtype=bool)
    return float(ok.mean())


def twin_capacity(twin: Deployment, workload: Workload, slo_s: float, *, lo_qps: float,
                  hi_qps: float, duration_s: float = 2.0, overhead_s: float = 0.0,
                  good: float = GOOD_SHARE, seed: int = 0, rel_tol: float = 0.02) -> float:
    """The twin's predicted capacity (q/s) for ``workload`` under ``slo_s``."""

    def holds(rate: float) -> CapacityPoint:
        tr = retime(workload, rate, duration_s, seed)
        q = Simulation(twin, tr, seed=seed).run().queries
        share = sim_good_share(q, slo_s, overhead_s)
        span = float(tr.arrival_at[-1] - tr.arrival_at[0]) or duration_s
        return CapacityPoint(share >= good, min(len(tr) / span, rate) * share)

    return capacity_search(holds, lo_qps, hi_qps, rel_tol=rel_tol)
