"""Capacity as a prediction: the real ramp's procedure, run on the real server and on the twin.

The measured capacity is what a load ramp finds, and the prediction is the same ramp run
on the calibrated twin: one procedure (``ramp``), two probes, so both sides measure the
same quantity with the same resolution.  Rules of ``ramp``:

- The offered rate starts at ``start_qps`` and grows x``step`` per step (``step_s`` seconds
  of the workload's trace re-timed to that rate, seeded per ramp ``repeat``).  A step
  passes when at least ``good`` (0.95) of its queries got a prediction (not a default,
  not refused) within the SLO of their *scheduled* time, as the client saw it.
- A failing step is run a second time before it counts, once any step has passed (a
  pause of the machine can fail one step).  After the first confirmed failure the ramp
  bisects (geometric means) between the last good and the first bad rate until they are
  within ``resolution`` (x1.05, from run 42 on: the answer's grid 5% wide, half the
  capacity goal's 10%; x1.1 until then, whose grid was as wide as the goal, and before it
  the growth steps' x1.4 left 18-40% between what two ramps could report).
- A ramp whose first step fails goes down (x1/``step``^2, at most ``DOWN_STEPS`` = 4
  times, unconfirmed: nothing has passed yet) until a step passes, and bisects up from
  there to the lowest failing rate.  (Until 2026-12-04 it stopped and reported its start
  rate as its capacity: run 21's forest with AIMD had three of its four ramps fail their
  first step, at 1,981 q/s while the machine was slow, and "measured" 1,981 three
  times.)  When nothing passes, the capacity is the lowest rate tried: an upper bound.
- The capacity is the best good throughput of the passing steps: ``min(throughput, rate x
  good share)``, up to ``resolution`` below the rate at which the objective stops holding
  (``clipperlab.simulator.capacity``'s bisection to 2% answers a higher number: the
  prediction runs this ramp, as the measurement does).
- Repeated ramps (``repeats``; the measured capacity and the prediction are both the
  median) start the second and later ramps at ``restart`` (0.5) of the first one's
  capacity (``ramp_start``): the steps far below capacity are known by then, and the time
  goes to the steps that decide.  The real ramp's first run from ``start_qps`` also feeds
  the CPU fits at every load.

``twin_capacity``: the ramp on the twin (``ramp_probe_twin``: the twin replays the step's
trace as the generator sends it, at its millisecond ticks (``runs.ticked``), the
generator's CPU included when the twin has the host CPU model, latency from the
scheduled arrival plus the calibration's constant overhead outside the loop; a
confirming re-run draws with the next seed, each ramp its own); the prediction is the
median over ``repeats`` ramps, as the measured capacity is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from clipperlab.report.latency import summarise
from clipperlab.simulator import Deployment
from clipperlab.simulator.capacity import attained_share
from clipperlab.simulator.parallel import pmap
from clipperlab.workloads import Workload

__all__ = ["DOWN_STEPS", "GOOD_SHARE", "RAMPS", "RAMP_RESOLUTION", "RAMP_RESTART", "RAMP_S",
           "RAMP_START_QPS", "RAMP_STEP", "RampResult", "ramp", "ramp_probe_twin",
           "ramp_start", "ramp_trace_seed", "twin_capacities", "twin_capacity"]

GOOD_SHARE = 0.95
RAMP_S = 2.0  # seconds per step
RAMP_STEP = 1.4  # rate growth per step
RAMP_START_QPS = 100.0
RAMP_RESOLUTION = 1.05  # bisect until first bad / last good <= this
RAMP_RESTART = 0.5  # later ramps start at this share of the first ramp's capacity
DOWN_STEPS = 4  # a ramp whose start fails goes down x1/step^2 at most this many times
RAMPS = 3  # ramps per measurement (median)

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
         good: float = GOOD_SHARE, resolution: float = RAMP_RESOLUTION) -> RampResult:
    """The ramp of the module's rules over ``probe``."""
    if not (math.isfinite(start_qps) and start_qps > 0):
        raise ValueError(f"start_qps: expected a rate > 0 q/s, got {start_qps!r}")
    if not step > 1:
        raise ValueError(f"step: expected a growth factor > 1, got {step!r}")
    if not (math.isfinite(resolution) and resolution > 1):
        raise ValueError(f"resolution: expected a ratio > 1, got {resolution!r}")
    rate, best = float(start_qps), 0.0
    last_good = first_bad = 0.0
    downs = 0
    steps: list[tuple[float, float, float]] = []
    while rate < max_qps:
        share, thr = probe(rate, 0)
        if share < good and last_good:
            share, thr = probe(rate, 1)  # confirm: one bad step can be noise
        steps.append((rate, share, thr))
        if share < good:
            if not last_good:
                # nothing has passed yet: go down (x1/step^2) until a rate passes, then
                # bisect up from it; a ramp whose start fails measures no capacity
                first_bad = rate
                if downs < DOWN_STEPS:
                    downs += 1
                    rate /= step * step
                    continue
                break  # nothing passed: the lowest rate tried, an upper bound
            first_bad = rate
        else:
            best = max(best, min(thr, rate * share))
            last_good = rate
            if not first_bad:
                rate *= step
                continue
        if first_bad <= last_good * resolution:
            break
        rate = math.sqrt(last_good * first_bad)
    return RampResult(best if best > 0 else rate, last_good, tuple(steps))


def ramp_start(start_qps: float, first: RampResult | None,
               restart: float = RAMP_RESTART) -> float:
    """Where a ramp starts: ``start_qps`` for the first (``first`` is None) or when the
    first found nothing; later ones at ``restart`` x the first's capacity when that is
    higher (``restart`` 0: every ramp from ``start_qps``)."""
    if first is None or not first.last_good_qps or restart <= 0:
        return start_qps
    return max(start_qps, restart * first.capacity_qps)


def ramp_trace_seed(seed: int, repeat: int) -> int:
    """The seed of ramp ``repeat``'s trace (the real ramp's and the twin's)."""
    return seed + 2 + 1000 * repeat


def ramp_probe_twin(twin: Deployment, workload: Workload, slo_s: float, *,
                    step_s: float = RAMP_S, overhead_s: float = 0.0, seed: int = 0,
                    repeat: int = 0) -> Probe:
    """The twin as the ramp's probe (module rules)."""
    from clipperlab.calibration.runs import retime, ticked, twin_run

    def probe(rate: float, attempt: int) -> tuple[float, float]:
        tr = ticked(retime(workload, rate, step_s, ramp_trace_seed(seed, repeat)))
        q, _ = twin_run(twin, tr, ramp_trace_seed(seed, repeat) + attempt)
        if overhead_s:
            q = q.copy()
            q["reply_at"] = q["reply_at"] + overhead_s
            q["latency_s"] = q["latency_s"] + overhead_s
        return attained_share(q, slo_s), float(summarise(q).get("throughput_qps", 0.0))

    return probe


def twin_capacity(twin: Deployment, workload: Workload, slo_s: float, *, est_qps: float,
                  start_qps: float = RAMP_START_QPS, step_s: float = RAMP_S,
                  step: float = RAMP_STEP, overhead_s: float = 0.0,
                  good: float = GOOD_SHARE, seed: int = 0, repeats: int = 1,
                  resolution: float = RAMP_RESOLUTION, restart: float = RAMP_RESTART,
                  jobs: int = 1) -> float:
    """The twin's predicted capacity (good q/s) for ``workload`` under ``slo_s``: the
    median over ``repeats`` ramps (module rules) from ``min(start_qps, 0.3 x est_qps)``
    (later ramps: ``ramp_start``) up to ``50 x est_qps``; 0 when the overhead alone is
    over the SLO."""
    if repeats < 1:
        raise ValueError(f"repeats: expected an integer >= 1, got {repeats!r}")
    return float(np.median(twin_capacities(
        [twin] * repeats, workload, slo_s, est_qps=est_qps, start_qps=start_qps,
        step_s=step_s, step=step, overhead_s=overhead_s, good=good, seed=seed,
        resolution=resolution, restart=restart, jobs=jobs)))


def twin_capacities(twins: Sequence[Deployment], workload: Workload, slo_s: float, *,
                    est_qps: float, start_qps: float = RAMP_START_QPS,
                    step_s: float = RAMP_S, step: float = RAMP_STEP,
                    overhead_s: float = 0.0, good: float = GOOD_SHARE, seed: int = 0,
                    resolution: float = RAMP_RESOLUTION,
                    restart: float = RAMP_RESTART, jobs: int = 1) -> list[float]:
    """``twin_capacity``'s ramps, ramp ``k`` on ``twins[k]`` (a twin per ramp: each at
    the machine's speed while the real ramp ``k`` went), each one's capacity.  The first
    ramp runs alone (the later ones start from its capacity, ``ramp_start``), the later
    ones on ``jobs`` processes (``simulator.parallel.pmap``; 0: one per CPU): each
    ramp's draws are seeded by its number, so the capacities do not depend on ``jobs``."""
    if not (math.isfinite(est_qps) and est_qps > 0):
        raise ValueError(f"est_qps: expected a rate > 0 q/s, got {est_qps!r}")
    if not twins:
        raise ValueError("twins: expected one twin per ramp, got none")
    if slo_s - overhead_s <= 0:
        return [0.0] * len(twins)
    start0 = min(start_qps, 0.3 * est_qps)
    setup = _TwinRamp(workload, slo_s, step_s, overhead_s, seed, 50 * est_qps, step, good,
                      resolution)
    first = _twin_ramp((setup, twins[0], 0, start0))
    rest = pmap(_twin_ramp, [(setup, twin, k, ramp_start(start0, first, restart))
                             for k, twin in enumerate(twins) if k > 0], jobs,
                desc="twin ramps")
    return [first.capacity_qps, *(r.capacity_qps for r in rest)]


class _TwinRamp(NamedTuple):
    """What every ramp of ``twin_capacities`` shares."""

    workload: Workload
    slo_s: float
    step_s: float
    overhead_s: float
    seed: int
    top_qps: float
    step: float
    good: float
    resolution: float


def _twin_ramp(item: tuple[_TwinRamp, Deployment, int, float]) -> RampResult:
    """Ramp ``k`` of ``twin_capacities`` on ``twin`` from ``start`` q/s."""
    s, twin, k, start = item
    return ramp(ramp_probe_twin(twin, s.workload, s.slo_s, step_s=s.step_s,
                                overhead_s=s.overhead_s, seed=s.seed, repeat=k),
                start, s.top_qps, step=s.step, good=s.good, resolution=s.resolution)
