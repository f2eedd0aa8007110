"""The twin's capacity ramps of one setting of a stored fidelity run, again, offline:
its stored calibration (``sim+host``), or that calibration with the loop's costs set by
hand, and ``--draws`` runs of each ramp (the twin's own randomness, the same traces).

    python3 results/validation/diagnostics-capacity-batch-cost/twin_capacity.py \
        quiet-2026-12-05-d logreg-aimd [--draws 3] [--loop US_QUERY,US_BATCH[,US_WAKE]]
        [--dwells]

Prints the measured capacity, the one the live run predicted, and this prediction (the
median over the ramps of each ramp's median over its draws), each ramp's draws.
``--dwells``: each ramp's slow and fast periods drawn from the calibration's measured
periods (the fast ones stretched to the ramp's slow share) instead of exponential ones
with the calibration's mean slow period (what ``resimulate._ramp_speeds`` gives).
About 2 minutes a draw of the four ramps on one core.  Nothing real is measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import clipperlab.calibration.capacity as capm
import clipperlab.calibration.resimulate as rs
from clipperlab.calibration.fidelity import workload
from clipperlab.calibration.server import model_specs
from clipperlab.calibration.twin import at_speed, capacity_estimate, sim_deployment
from clipperlab.simulator import load_profile

ROOT = Path(__file__).resolve().parents[3]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="a folder of results/validation/")
    ap.add_argument("setting", help="MODEL-BATCHING, e.g. logreg-aimd")
    ap.add_argument("--draws", type=int, default=1, help="twin runs of each ramp")
    ap.add_argument("--loop", default="", help="the loop's costs in us: per query, per "
                    "batch[, per wake-up] (default: the stored calibration's)")
    ap.add_argument("--dwells", action="store_true", help="measured periods (see above)")
    a = ap.parse_args()
    folder = ROOT / "results" / "validation" / a.run / a.setting
    model, batching = a.setting.split("-", 1)
    table = pd.read_csv(folder.parent / "fidelity.csv")
    row0 = table[(table.model == model) & (table.batching == batching)].iloc[0].to_dict()
    wl = workload()
    profiles = {p.stem: load_profile(p) for p in sorted((folder / "profiles").glob("*.json"))}
    calib = rs.calibration_from_json((folder / "calibration.json").read_text())["sim+host"]
    if a.loop:
        v = [float(x) * 1e-6 for x in a.loop.split(",")]
        calib = dataclasses.replace(calib, query_cpu_s=v[0], batch_cpu_s=v[1],
                                    **({"wake_s": v[2]} if len(v) > 2 else {}))
    with tempfile.TemporaryDirectory() as d:
        dep = rs._deployment(folder / "deploy.toml", Path(d))
    _, specs = model_specs(dep, wl.app)
    speeds = rs._ramp_speeds(row0, calib)
    if a.dwells and calib.slow_dwells_s and calib.fast_dwells_s:
        ms, mf = float(np.mean(calib.slow_dwells_s)), float(np.mean(calib.fast_dwells_s))
        speeds = [None if sp is None else dataclasses.replace(
            sp, slow_dwells_s=tuple(calib.slow_dwells_s),
            fast_dwells_s=tuple(x * ms * (1 - sp.slow_share) / (sp.slow_share * mf)
                                for x in calib.fast_dwells_s)) for sp in speeds]
    n = int(row0.get("ramps", 4))
    twins = ([sim_deployment(dep, wl.app, profiles,
                             calibration=at_speed(calib, s) if s is not None else calib)
              for s in speeds] if len(speeds) == n
             else [sim_deployment(dep, wl.app, profiles, calibration=calib)] * n)
    measured = float(row0["capacity_qps"])
    est = capacity_estimate(profiles, {s.name: k for s, k, _ in specs},
                            {s.name: s.batching.max_batch_size for s, _, _ in specs})
    if not (math.isfinite(est) and est > 0):
        est = 4 * measured
    resolution = rs._num(row0, "ramp_resolution", rs.LEGACY_RESOLUTION)
    restart = rs._num(row0, "ramp_restart", 0.0)
    start0 = min(capm.RAMP_START_QPS, 0.3 * est)
    t0 = time.time()
    caps = np.zeros((n, a.draws))
    first = None
    for k, twin in enumerate(twins):
        for d in range(a.draws):
            probe = capm.ramp_probe_twin(twin, wl, 0.020, step_s=capm.RAMP_S,
                                         overhead_s=calib.overhead_s, seed=100_003 * d,
                                         repeat=k)
            r = capm.ramp(probe, capm.ramp_start(start0, first, restart), 50 * est,
                          step=capm.RAMP_STEP, resolution=resolution)
            if d == 0:
                first = first or r
            caps[k, d] = r.capacity_qps
    pred = float(np.median(np.median(caps, axis=1)))
    live = float(row0["sim_capacity_qps"])
    print(f"{a.run} {a.setting}: loop {calib.query_cpu_s * 1e6:.1f} us/query + "
          f"{calib.batch_cpu_s * 1e6:.1f} us/batch + {calib.wake_s * 1e6:.1f} us/wake-up "
          f"(cooling {calib.cold_after_s * 1e3:g} ms); measured {measured:,.0f} q/s, the "
          f"live run's prediction {live:,.0f} ({live / measured - 1:+.0%}), this one "
          f"{pred:,.0f} ({pred / measured - 1:+.0%}); each ramp's draws (k q/s) "
          f"{np.round(caps / 1e3, 1).tolist()}; {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
