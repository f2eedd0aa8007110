"""Capacity as a prediction: the twin's capacity, searched by ``clipperlab.simulator.capacity``.

The real capacity (``validation.ramp_to_capacity``) is the best good throughput of a load
ramp's steps in which at least 95% of the queries got a prediction within the SLO.  The
prediction asks the same of the calibrated twin, through the simulator's own search
(``simulator.capacity``: doubling, then bisection to ``rel_tol``), with this adapter:

- The objective is the ramp's: at least ``good`` (0.95) of the queries answered with a
  prediction (not a default, not refused) within the SLO, the calibration's constant
  overhead outside the loop added to every latency (so the simulator is asked for
  ``slo_s - overhead_s``).
- The workload keeps its shape; it is given ``n = duration_s x est_qps`` queries
  (``est_qps``: what the twin's parts allow, never the measured capacity), so a probe near
  the capacity runs about ``duration_s`` simulated seconds, and the search starts at half
  of ``est_qps``.
- The answer is the good throughput at the highest rate that held (the rate times the
  share answered in time there), as the ramp reports the real one.
"""

from __future__ import annotations

import dataclasses
import math

from clipperlab.simulator import Deployment, capacity
from clipperlab.workloads import Workload

__all__ = ["GOOD_SHARE", "twin_capacity"]

GOOD_SHARE = 0.95
MIN_QUERIES = 2000
MAX_QUERIES = 60_000


def twin_capacity(twin: Deployment, workload: Workload, slo_s: float, *, est_qps: float,
                  duration_s: float = 2.0, overhead_s: float = 0.0,
                  good: float = GOOD_SHARE, seed: int = 0, rel_tol: float = 0.02) -> float:
    """The twin's predicted capacity (good q/s) for ``workload`` under ``slo_s`` (module
    rules); 0 when the objective holds at no rate (the overhead alone over the SLO)."""
    if not (math.isfinite(est_qps) and est_qps > 0):
        raise ValueError(f"est_qps: expected a rate > 0 q/s, got {est_qps!r}")
    budget_s = slo_s - overhead_s
    if budget_s <= 0:
        return 0.0
    n = int(min(max(duration_s * est_qps, MIN_QUERIES), MAX_QUERIES))
    wl = dataclasses.replace(workload, n_queries=n, duration_s=None)
    res = capacity(twin, wl, budget_s, good, seeds=(seed,), start_qps=est_qps / 2,
                   rel_tol=rel_tol)
    shares = dict(res.steps)
    return res.qps * shares.get(res.qps, 1.0) if res.qps > 0 else 0.0
