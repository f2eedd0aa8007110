"""The simulated twin of a real deployment.

Rules:
- The twin is built from the server's own objects (``server.model_specs``: the same
  ``Application`` and ``ModelSpec``, so batching settings are identical), the measured
  latency profiles and the same replica counts; one host with a CPU per replica behind a
  zero-latency link (the RPC is already inside the profiles).
- Calibrated (``fit.Calibration``): the frontend is one event loop (``FrontendCPU``) with
  the fitted costs, half of each on the way in (query, batch send), half on the way out
  (reply, batch result); the containers pay the fitted wake-up.
- With ``Calibration.host_cpus`` > 0 the twin has the host CPU model
  (``simulator.HostCPU``): the loop, every container and the load generator are
  processes sharing that many cores by processor sharing; a container's batch needs its
  fitted CPU per batch and per item (``Calibration.container_cpu``; a model without a fit
  needs its whole profile draw), the rest of the draw is off the CPU; the generator
  spends its fitted CPU per query before each query reaches the loop.  Without it
  nothing shares a CPU.
- Calibrated, the twin's profiles lose their spikes (``despiked``): a profile's draw later
  than its batch size's median by more than the pause margin (``fit.late_margin``'s rule:
  ``max(1 ms, 4 x IQR)``) is the machine pausing the profiler, not the model, and is cut to
  that bound; the calibrated twin has the machine's pauses already (the loop's, fitted
  from the server's own late queries), so keeping them would count every pause twice.
  (One stray sample in a profile's 100 per batch size is a 1% chance per batch: the
  forest's 58 ms at batch size 8, a 1% chance of a 58 ms batch, failed the twin's ramp
  at 2,000 q/s where the server held to 7,000.)
- ``scale`` multiplies every latency of the profiles (the in-situ diagnostic).
- ``capacity_estimate``: what the profiles alone allow, the first guess of a ramp.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from clipperlab.calibration.fit import Calibration
from clipperlab.calibration.quiet import HostSpeed, for_cores
from clipperlab.calibration.server import RealDeployment, model_specs
from clipperlab.simulator import (
    AppDeployment,
    ConstantOutputs,
    Deployment,
    FrontendCPU,
    Host,
    HostCPU,
    LatencyProfile,
    Link,
    ModelDeployment,
)

__all__ = ["at_speed", "at_trace", "base_factor", "capacity_estimate", "despiked", "divided_factor",
           "frontend_cpu", "mean_factor",
           "scaled", "sim_deployment", "speed_fields"]


def speed_fields(speed: HostSpeed | None) -> dict[str, Any]:
    """A calibration's two-speed fields (``slow_*``) from a probe's fit: its speeds when it
    found two, one speed otherwise (None, factor 1, no slow share or period)."""
    two = (speed is not None and speed.slow_factor > 1.0 and 0.0 < speed.slow_share < 1.0
           and math.isfinite(speed.slow_dwell_s) and speed.slow_dwell_s > 0)
    if not two or speed is None:
        return {"slow_factor": 1.0, "slow_share": 0.0, "slow_dwell_s": 0.1,
                "slow_dwells_s": (), "fast_dwells_s": ()}
    measured = bool(speed.slow_dwells_s) and bool(speed.fast_dwells_s)
    return {"slow_factor": speed.slow_factor, "slow_share": speed.slow_share,
            "slow_dwell_s": speed.slow_dwell_s,
            "slow_dwells_s": speed.slow_dwells_s if measured else (),
            "fast_dwells_s": speed.fast_dwells_s if measured else ()}


def _host_speed(c: Calibration) -> HostCPU:
    """The twin's ``HostCPU`` speed fields for ``c`` (cores and demands left out)."""
    return HostCPU(slow_factor=c.slow_factor, slow_share=c.slow_share,
                   slow_dwell_s=c.slow_dwell_s, slow_dwells_s=c.slow_dwells_s,
                   fast_dwells_s=c.fast_dwells_s, reference_factor=c.reference_factor or None,
                   speed_trace=c.speed_trace, core_speeds=c.core_speeds,
                   stalls_s=c.stalls_s, stalls_span_s=c.stalls_span_s)


def mean_factor(c: Calibration) -> float:
    """The time-averaged speed factor ``c``'s CPU demands were fitted at (1: one speed):
    its ``reference_factor`` when set, else what its two speeds give
    (``HostCPU.reference``)."""
    return _host_speed(c).reference if c.slow_factor > 1.0 or c.reference_factor > 0 else 1.0


def base_factor(c: Calibration, speed: HostSpeed | None) -> float:
    """How much slower a stretch's fast periods ran than ``c``'s runs' did: the stretch's
    probe fast level over ``c``'s (``Calibration.fast_ns``); 1 when either is unknown.
    ``quiet.fit_speed`` reads each stretch against its own fast level, so a stretch the
    whole machine ran slower through (this VM's slow state lasting minutes: a ramp at
    2,200 ns a probe iteration after a calibration at 1,700) shows one speed; this is
    what it misses."""
    return 1.0 if speed is None else _level_ratio(speed.fast_ns, c.fast_ns)


def _level_ratio(num_ns: float, den_ns: float) -> float:
    """One probe fast level over another; 1 when either is unknown (0, NaN)."""
    ok = all(math.isfinite(v) and v > 0 for v in (num_ns, den_ns))
    return num_ns / den_ns if ok else 1.0


def at_speed(c: Calibration, speed: HostSpeed | None) -> Calibration:
    """``c`` run at another stretch's speeds (a level's or a ramp's, as the probe saw
    them): its host switches as those say, and its demands, fitted at ``c``'s own mean
    factor, are scaled to them (``HostCPU.reference_factor``), and by the stretch's
    fast level over ``c``'s (``base_factor``: the reference divided by it).  ``c`` as
    it is without the host CPU model."""
    if c.host_cpus <= 0:
        return c
    return dataclasses.replace(c, reference_factor=mean_factor(c) / base_factor(c, speed),
                               **speed_fields(speed))


def at_trace(c: Calibration, trace: tuple[tuple[float, ...], ...]) -> Calibration:
    """``c`` run with the speed a probe recorded while one real run went
    (``quiet.SpeedMonitor.replay``: ``(s from the run's start, factor of each core)``
    rows), replayed as it was (``HostCPU.speed_trace``; ``quiet.for_cores``), its
    demands, fitted at ``c``'s own mean factor, scaled to it; ``c`` as it is without the
    host CPU model or without a trace."""
    if c.host_cpus <= 0 or not trace:
        return c
    return dataclasses.replace(c, reference_factor=mean_factor(c),
                               speed_trace=for_cores(trace, c.host_cpus))


def sim_deployment(
    dep: RealDeployment,
    app_name: str,
    profiles: Mapping[str, LatencyProfile],
    *,
    calibration: Calibration | None = None,
    scale: float = 1.0,
) -> Deployment:
    """The simulated twin of ``dep``'s application ``app_name`` (calibrated when given)."""
    app, models = model_specs(dep, app_name)
    wake, cold = ((calibration.replica_wake_s, calibration.replica_cold_after_s)
                  if calibration is not None else (0.0, 1e-3))
    hcpu = None
    cpu: dict[str, tuple[float, float]] = {}
    if calibration is not None and calibration.host_cpus > 0:
        hcpu = dataclasses.replace(
            _host_speed(calibration), cpus=calibration.host_cpus,
            loadgen_cpu_per_query_s=calibration.loadgen_cpu_per_query_s,
            loadgen_wake_s=calibration.loadgen_wake_s,
            loadgen_replies=calibration.loadgen_replies,
            loadgen_reply_share=calibration.loadgen_reply_share,
            loadgen_idle_gap_s=calibration.loadgen_idle_gap_s, slice_s=calibration.slice_s,
            tick_s=calibration.tick_s, newidle=calibration.newidle)
        cpu = {m: (b, i) for m, b, i in calibration.container_cpu}
    mds = [
        ModelDeployment(spec=spec, profile=scaled(
                            despiked(profiles[spec.name]) if calibration is not None
                            else profiles[spec.name],
                            scale * (profile_base_factor(profiles[spec.name], calibration)
                                     if hcpu is not None and calibration is not None
                                     else divided_factor(profiles[spec.name]))), replicas=n,
                        outputs=ConstantOutputs(0), wake_s=wake, cold_after_s=cold,
                        cpu_per_batch_s=cpu[spec.name][0] if spec.name in cpu else None,
                        cpu_per_item_s=cpu[spec.name][1] if spec.name in cpu else None)
        for spec, n, _ in models
    ]
    cpus = sum(n for _, n, _ in models) or 1
    host = Host("local", cpus=cpus, link=Link(bandwidth_bps=1e15, latency_s=0.0))
    fcpu = None
    if calibration is not None and (calibration.query_cpu_s > 0 or
                                    calibration.batch_cpu_s > 0):
        # the server's fair scheduler parses in turns: the twin too, where it has the
        # host CPU model (without it batch results and timers always go first)
        fcpu = frontend_cpu(calibration, dep.parse_turn_s if hcpu is not None else 0.0)
    return Deployment(
        apps=(AppDeployment(app, tuple(s.name for s, _, _ in models)),),
        models=tuple(mds),
        hosts=(host,),
        frontend_cpu=fcpu,
        host_cpu=hcpu,
    )


def divided_factor(profile: LatencyProfile) -> float:
    """The mean speed factor a profile's samples were divided by (``profiler.measure``
    with the probes: the fast speed's latencies), 1 for one taken as it was: a twin
    without the host CPU model, which has no speeds to add, runs it scaled back by it."""
    try:
        f = float(profile.tags.get("speed_factor_divided", "1"))
    except ValueError:
        return 1.0
    return f if math.isfinite(f) and f >= 1.0 else 1.0


def profile_base_factor(profile: LatencyProfile, c: Calibration) -> float:
    """What a profile taken at the fast speed is scaled by to be ``c``'s fast speed's:
    ``c``'s probe fast level over the one the profile's samples were divided against
    (its tag ``speed_fast_ns``, ``profiler.measure``); 1 when either is unknown.  The
    machine's fast level itself moves (this VM: 1,050 to 2,700 ns a probe iteration,
    for minutes), so a profile taken in a slower state than its calibration's runs
    would be read as slower all through (``base_factor`` does the same for levels and
    ramps)."""
    try:
        p = float(profile.tags.get("speed_fast_ns", "nan"))
    except ValueError:
        return 1.0
    return _level_ratio(c.fast_ns, p)


def scaled(profile: LatencyProfile, factor: float) -> LatencyProfile:
    """``profile`` with every latency (and its fitted line) multiplied by ``factor``."""
    if factor == 1.0 or not math.isfinite(factor) or factor <= 0:
        return profile
    fit = profile.fit or (0.0, 0.0)
    return dataclasses.replace(
        profile,
        latency_s=tuple(tuple(v * factor for v in row) for row in profile.latency_s),
        fit=(fit[0] * factor, fit[1] * factor),
        tags={**profile.tags, "scaled": f"x{factor:.3f} (in-situ slowdown)"},
    )


def despiked(profile: LatencyProfile, min_margin_s: float = 1e-3) -> LatencyProfile:
    """``profile`` with every batch size's latencies cut at its median plus the pause
    margin, ``max(min_margin_s, 4 x IQR)`` (the module's rules); the profile itself when
    nothing is cut."""
    levels = np.asarray(profile.levels, dtype=np.float64)
    rows = []
    cut = 0
    for row in profile.latency_s:
        v = np.asarray(row, dtype=np.float64)
        q1, med, q3 = np.interp([0.25, 0.5, 0.75], levels, v)
        bound = med + max(min_margin_s, 4.0 * (q3 - q1))
        cut += int((v > bound).sum())
        rows.append(tuple(float(x) for x in np.minimum(v, bound)))
    if not cut:
        return profile
    return dataclasses.replace(profile, latency_s=tuple(rows),
                               tags={**profile.tags, "despiked": f"{cut} levels cut at the "
                                     "median + the pause margin"})


def frontend_cpu(calib: Calibration, parse_turn_s: float = 0.0) -> FrontendCPU:
    """The twin's event loop from the fitted CPU costs: half of each on the way in (query,
    batch send), half on the way out (reply, batch result); ``parse_turn_s``: the server's
    parse turn (``FrontendCPU.parse_turn_s``; with the host CPU model only)."""
    return FrontendCPU(query_s=calib.query_cpu_s / 2, reply_s=calib.query_cpu_s / 2,
                       batch_send_s=calib.batch_cpu_s / 2, batch_done_s=calib.batch_cpu_s / 2,
                       wake_s=calib.wake_s, cold_after_s=calib.cold_after_s,
                       pause_rate_hz=calib.pause_rate_hz if calib.pauses_s else 0.0,
                       pause_rate_busy_hz=calib.pause_rate_busy_hz if calib.pauses_s else 0.0,
                       pauses_s=calib.pauses_s, timer_resolution_s=calib.timer_resolution_s,
                       parse_turn_s=parse_turn_s)


def capacity_estimate(profiles: Mapping[str, LatencyProfile], replicas: Mapping[str, int],
                      max_batch: Mapping[str, int]) -> float:
    """What the profiles alone allow: the slowest model's best items/s over its measured
    batch sizes (up to its max batch size), times its replicas."""
    caps = []
    for name, prof in profiles.items():
        best = max(
            b / prof.mean_s(b) for b in prof.batch_sizes if b <= max_batch.get(name, 1 << 16)
        ) if prof.batch_sizes else 1.0
        caps.append(best * max(replicas.get(name, 1), 1))
    return min(caps)
