"""Capacity as a prediction: the highest arrival rate at which a deployment meets its
objective (issue 13, item 3; ``clipperlab validate`` puts it beside the measured one).

Rules:
- The objective holds at a rate when the share of queries *answered in time* -- a reply
  within ``slo_s`` of the query's arrival that is not a default (nor refused) -- is at
  least ``attainment``, pooled over the runs of every seed in ``seeds`` (a query never
  answered counts as late).  ``slo_s`` is by default the application's SLO.
- The workload's shape is kept and only its rate changes: each seed's trace is generated
  once (``workload.generate(seed)``) and its arrival and feedback times are divided by
  ``rate / base rate`` (``base rate``: the trace's own, queries over its span), so every
  rate sees the same queries, in the same order, with the same gaps up to scale.
- Search: from ``start_qps`` (by default the workload's own rate) the rate doubles while
  the objective holds and halves while it fails, until one rate holds and one fails;
  then bisection between the highest that held and the lowest that failed until they are
  within ``rel_tol`` of each other (or ``max_runs`` rates were tried).  The answer is the
  highest rate that held; the objective is assumed to get no better as the rate grows
  (true of a queue; near capacity the seeds' noise can blur it, so the result keeps
  every step).
- The simulation is the deployment's, host CPU model included when it has one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from clipperlab.workloads import Trace, Workload

from .deployment import Deployment
from .driver import Simulation
from .errors import SimConfigError

__all__ = ["CapacityResult", "attained_share", "capacity"]


@dataclass(frozen=True, slots=True)
class CapacityResult:
    """``qps``: the highest rate (queries per second) at which the objective held (0 when
    none did); ``failed_qps``: the lowest rate at which it failed (inf when none did);
    ``steps``: every rate tried with the share answered in time there, in order."""

    qps: float
    failed_qps: float
    slo_s: float
    attainment: float
    seeds: tuple[int, ...]
    steps: tuple[tuple[float, float], ...]


def attained_share(queries: Any, slo_s: float) -> float:
    """The share of ``SimResult.queries`` answered in time (see the module's rules)."""
    lat = queries["latency_s"].to_numpy(dtype=np.float64)
    if lat.size == 0:
        return 1.0
    ok = (lat <= slo_s) & ~queries["default"].to_numpy(dtype=bool)
    if "refused" in queries:
        ok &= ~queries["refused"].to_numpy(dtype=bool)
    return float(np.count_nonzero(ok) / lat.size)  # NaN latencies compare False


def _scaled(trace: Trace, factor: float) -> Trace:
    """``trace`` with its times divided by ``factor`` (the rate times ``factor``)."""
    return dataclasses.replace(trace, arrival_at=trace.arrival_at / factor,
                               feedback_at=trace.feedback_at / factor)


def _base_qps(trace: Trace) -> float:
    t = trace.arrival_at
    span = float(t[-1] - t[0]) if t.size > 1 else 0.0
    if span <= 0:
        raise SimConfigError("capacity: the workload needs at least two queries at "
                             "different times to have a rate")
    return (t.size - 1) / span


def capacity(
    deployment: Deployment,
    workload: Workload,
    slo_s: float | None = None,
    attainment: float = 0.99,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    start_qps: float | None = None,
    rel_tol: float = 0.02,
    max_runs: int = 40,
    engine_options: dict[str, Any] | None = None,
) -> CapacityResult:
    """The highest rate at which ``deployment`` answers at least ``attainment`` of
    ``workload``'s queries within ``slo_s`` (see the module's rules)."""
    if not 0 < attainment <= 1:
        raise SimConfigError(f"capacity: attainment: expected a share in (0, 1], got "
                             f"{attainment!r}")
    if not 0 < rel_tol < 1:
        raise SimConfigError(f"capacity: rel_tol: expected a number in (0, 1), got "
                             f"{rel_tol!r}")
    if not seeds:
        raise SimConfigError("capacity: seeds: expected at least one seed")
    if slo_s is None:
        apps = {a.app.name: a.app for a in deployment.apps}
        if workload.app not in apps:
            raise SimConfigError(f"capacity: workload app {workload.app!r} is not deployed; "
                                 f"deployed: {sorted(apps)}")
        slo_s = apps[workload.app].slo_s
    if not (math.isfinite(slo_s) and slo_s > 0):
        raise SimConfigError(f"capacity: slo_s: expected seconds > 0, got {slo_s!r}")
    traces = [workload.generate(s) for s in seeds]
    base = [_base_qps(t) for t in traces]
    rate = float(start_qps) if start_qps is not None else float(np.mean(base))
    if not (math.isfinite(rate) and rate > 0):
        raise SimConfigError(f"capacity: start_qps: expected a rate > 0, got {rate!r}")
    steps: list[tuple[float, float]] = []

    def holds(qps: float) -> bool:
        n = ok = 0.0
        for s, tr, b in zip(seeds, traces, base, strict=True):
            q = Simulation(deployment, _scaled(tr, qps / b), seed=s,
                           engine_options=engine_options).run().queries
            ok += attained_share(q, slo_s) * len(q)
            n += len(q)
        share = ok / n
        steps.append((qps, share))
        return share >= attainment

    lo, hi = 0.0, math.inf
    while len(steps) < max_runs and (hi == math.inf or lo == 0.0):
        if holds(rate):
            lo = rate
            if hi < math.inf:
                break
            rate *= 2
        else:
            hi = rate
            if lo > 0:
                break
            rate /= 2
    while len(steps) < max_runs and lo > 0 and hi < math.inf and hi - lo > rel_tol * hi:
        mid = (lo + hi) / 2
        if holds(mid):
            lo = mid
        else:
            hi = mid
    return CapacityResult(qps=lo, failed_qps=hi, slo_s=float(slo_s),
                          attainment=float(attainment), seeds=tuple(seeds),
                          steps=tuple(steps))
