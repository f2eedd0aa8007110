"""Capacity as a prediction: the real ramp's procedure, run on the real server and on the twin.

The measured capacity is what a load ramp finds, and the prediction is the same ramp run
on the calibrated twin: one procedure (``ramp``), two probes, so both sides measure the
same quantity with the same resolution.  Rules of ``ramp``:

- The offered rate starts at ``start_qps`` and grows x``step`` per step (``step_s`` seconds
  of the workload's trace re-timed to that rate, seeded per ramp ``repeat``).  A step
  passes when at least ``good`` (0.95) of its queries got a prediction (not a default,
  not refused) within the SLO of their *scheduled* time, as the client saw it.
- The first failing step is run a second time before it counts (a pause of the machine
  can fail one step); after a confirmed failure one more step runs at the geometric mean
  of the last good and the first bad rate; the ramp stops at the second failure (or
  ``max_qps``).
- The capacity is the best good throughput of the passing steps: ``min(throughput, rate x
  good share)``.  With ``step`` 1.4 that is up to ~18% (the midpoint step's
  ``sqrt(1.4)``) below the rate at which the objective stops holding: a bisection to 2%
  (``clipperlab.simulator.capacity``) answers a different, higher number, which is why
  the prediction runs the ramp and not the bisection.

``twin_capacity``: the ramp on the twin (``ramp_probe_twin``: the twin replays the step's
trace as the generator sends it, at its millisecond ticks (``runs.ticked``), the
generator's CPU included when the twin has the host CPU model, latency from the
scheduled arrival plus the calibration's constant overhead outside the loop; a
confirming re-run draws with the next seed, each ramp its own); the prediction is the
median over ``repeats`` ramps, as the measured capacity is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from clipperlab.report.latency import summarise
from clipperlab.simulator import Deployment, Simulation
from clipperlab.simulator.capacity import attained_share
from clipperlab.workloads import Workload

__all__ = ["GOOD_SHARE", "RAMP_S", "RAMP_START_QPS", "RAMP_STEP", "RampResult", "ramp",
           "ramp_probe_twin", "ramp_trace_seed", "twin_capacity"]

GOOD_SHARE = 0.95
RAMP_S = 2.0  # seconds per step
RAMP_STEP = 1.4  # rate growth per step
RAMP_START_QPS = 100.0

# probe(rate, attempt) -> (good share, throughput q/s); attempt 1 is a confirming re-run
Probe = Callable[[float, int], tuple[float, float]]


@dataclass(frozen=True, slots=True)
class RampResult:
    """``capacity_qps``: the best good throughput of the passing steps (the first rate
    tried when none passed); ``steps``: every step as ``(rate, good share, throughput)``,
    in order; ``last_good_qps``: the highest rate that passed (0 when none did)."""

    capacity_qps: float
    last_good_qps: float
    steps: tuple[tuple[float, float, float], ...]


def ramp(probe: Probe, start_qps: float, max_qps: float, *, step: float = RAMP_STEP,
         good: float = GOOD_SHARE) -> RampResult:
    """The ramp of the module's rules over ``probe``."""
    if not (math.isfinite(start_qps) and start_qps > 0):
        raise ValueError(f"start_qps: expected a rate > 0 q/s, got {start_qps!r}")
    if not step > 1:
        raise ValueError(f"step: expected a growth factor > 1, got {step!r}")
    rate, best = float(start_qps), 0.0
    last_good = first_bad = 0.0
    steps: list[tuple[float, float, float]] = []
    while rate < max_qps:
        share, thr = probe(rate, 0)
        if share < good and last_good and not first_bad:
            share, thr = probe(rate, 1)  # confirm: one bad step can be noise
        steps.append((rate, share, thr))
        if share < good:
            if first_bad or not last_good:
                break
            first_bad, rate = rate, math.sqrt(last_good * rate)
            continue
        best = max(best, min(thr, rate * share))
        last_good = rate
        if first_bad:
            break
        rate *= step
    return RampResult(best if best > 0 else rate, last_good, tuple(steps))


def ramp_trace_seed(seed: int, repeat: int) -> int:
    """The seed of ramp ``repeat``'s trace (the real ramp's and the twin's)."""
    return seed + 2 + 1000 * repeat


def ramp_probe_twin(twin: Deployment, workload: Workload, slo_s: float, *,
                    step_s: float = RAMP_S, overhead_s: float = 0.0, seed: int = 0,
                    repeat: int = 0) -> Probe:
    """The twin as the ramp's probe (module rules)."""
    from clipperlab.calibration.runs import retime, ticked

    def probe(rate: float, attempt: int) -> tuple[float, float]:
        tr = ticked(retime(workload, rate, step_s, ramp_trace_seed(seed, repeat)))
        q = Simulation(twin, tr, seed=ramp_trace_seed(seed, repeat) + attempt).run().queries
        if overhead_s:
            q = q.copy()
            q["reply_at"] = q["reply_at"] + overhead_s
            q["latency_s"] = q["latency_s"] + overhead_s
        return attained_share(q, slo_s), float(summarise(q).get("throughput_qps", 0.0))

    return probe


def twin_capacity(twin: Deployment, workload: Workload, slo_s: float, *, est_qps: float,
                  start_qps: float = RAMP_START_QPS, step_s: float = RAMP_S,
                  step: float = RAMP_STEP, overhead_s: float = 0.0,
                  good: float = GOOD_SHARE, seed: int = 0, repeats: int = 1) -> float:
    """The twin's predicted capacity (good q/s) for ``workload`` under ``slo_s``: the
    median over ``repeats`` ramps (module rules) from ``min(start_qps, 0.3 x est_qps)``
    up to ``50 x est_qps``; 0 when the overhead alone is over the SLO."""
    if not (math.isfinite(est_qps) and est_qps > 0):
        raise ValueError(f"est_qps: expected a rate > 0 q/s, got {est_qps!r}")
    if repeats < 1:
        raise ValueError(f"repeats: expected an integer >= 1, got {repeats!r}")
    if slo_s - overhead_s <= 0:
        return 0.0
    caps = [ramp(ramp_probe_twin(twin, workload, slo_s, step_s=step_s, overhead_s=overhead_s,
                                 seed=seed, repeat=k),
                 min(start_qps, 0.3 * est_qps), 50 * est_qps, step=step, good=good
                 ).capacity_qps for k in range(repeats)]
    return float(np.median(caps))
