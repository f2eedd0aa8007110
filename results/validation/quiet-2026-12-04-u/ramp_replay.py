"""Run 21, offline: the twin's capacity ramps, each step at the speed the probes recorded
during the real ramp's step of the same index (the real ramps' steps in time order, split
into ramps), against the measured ramps.  ``python3 ramp_replay.py FOLDER...`` (a
setting's folder of a stored fidelity run, e.g. ``forest-aimd forest-delayed``), with
``capacity.ramp`` as it is now (a ramp whose first step fails goes down)."""

import sys
from pathlib import Path
from typing import Any

import numpy as np

from clipperlab.calibration.capacity import (
    GOOD_SHARE,
    RAMP_RESOLUTION,
    RAMP_RESTART,
    RAMP_S,
    RAMP_START_QPS,
    RAMP_STEP,
    ramp,
    ramp_start,
    ramp_trace_seed,
)
from clipperlab.calibration.fidelity import workload
from clipperlab.calibration.fit import as_run
from clipperlab.calibration.resimulate import stored_setting
from clipperlab.calibration.runs import retime, ticked
from clipperlab.calibration.server import model_specs
from clipperlab.calibration.twin import capacity_estimate, sim_deployment
from clipperlab.report.latency import summarise
from clipperlab.simulator import Simulation
from clipperlab.simulator.capacity import attained_share

__all__ = ["Simulation", "as_run", "model_specs", "sim_deployment", "split_ramps",
           "stored_setting", "workload"]


def split_ramps(runs: list[Any]) -> list[list[Any]]:
    """The stored runs after the calibration run (``runs[0]``), split into ramps: a new
    ramp starts at a rate at or below the current one's last passing rate, or after a
    ramp whose first step failed (such a ramp ended there)."""
    ramps: list[list[Any]] = []
    cur: list[Any] = []
    last_good = 0.0
    for r in runs[1:]:
        if cur and (not last_good or r.rate <= last_good * 1.0001):
            ramps.append(cur)
            cur, last_good = [], 0.0
        cur.append(r)
        if not r.overloaded:
            last_good = max(last_good, r.rate)
    if cur:
        ramps.append(cur)
    return ramps


def main(folder: str, seed: int = 0) -> None:
    wl = workload()
    calib, profiles, dep, runs = stored_setting(Path(folder), wl)
    app, specs = model_specs(dep, wl.app)
    ramps = split_ramps(runs)
    print(folder, "real ramps:", [[round(r.rate) for r in rr] for rr in ramps])
    est = capacity_estimate(profiles, {s.name: n for s, n, _ in specs},
                            {s.name: s.batching.max_batch_size for s, _, _ in specs})
    first = None
    caps = []
    for k, rr in enumerate(ramps):
        calls = [0]

        def probe(rate: float, attempt: int, k: int = k, rr: list[Any] = rr,
                  calls: list[int] = calls) -> tuple[float, float]:
            i = calls[0]
            calls[0] += 1
            c = as_run(calib, rr[min(i, len(rr) - 1)])
            twin = sim_deployment(dep, wl.app, profiles, calibration=c)
            tr = ticked(retime(wl, rate, RAMP_S, ramp_trace_seed(seed, k)))
            q = Simulation(twin, tr, seed=ramp_trace_seed(seed, k) + attempt).run().queries
            q = q.copy()
            q["reply_at"] += c.overhead_s
            q["latency_s"] += c.overhead_s
            return attained_share(q, app.slo_s), float(summarise(q).get("throughput_qps", 0))

        start0 = min(RAMP_START_QPS, 0.3 * est)
        res = ramp(probe, ramp_start(start0, first, RAMP_RESTART), 50 * est, step=RAMP_STEP,
                   good=GOOD_SHARE, resolution=RAMP_RESOLUTION)
        first = first or res
        caps.append(res.capacity_qps)
        print(f"  ramp {k + 1}: twin steps "
              f"{[(round(a), round(b, 3)) for a, b, _ in res.steps]} -> "
              f"{res.capacity_qps:,.0f}", flush=True)
    print(folder, "twin per ramp (each step at its real step's speed):",
          [round(c) for c in caps], "median", round(float(np.median(caps))))


if __name__ == "__main__":
    for f in sys.argv[1:]:
        main(f)
