"""A stored setting's prediction calibration (``calibration.json``) on a fresh trace at
one rate: at its own two speeds, at one speed replayed flat, and at a flat x1.2."""

import sys
from pathlib import Path

from clipperlab.calibration.fidelity import workload
from clipperlab.calibration.resimulate import stored_setting, ticked
from clipperlab.calibration.runs import retime, sim_run
from clipperlab.calibration.twin import at_trace, sim_deployment

folder = Path(sys.argv[1])
rate = float(sys.argv[2])
secs = float(sys.argv[3])
calib, profiles, dep, runs = stored_setting(folder, workload())
print("calib reference", calib.reference_factor, "fast_ns", calib.fast_ns, "slow",
      calib.slow_factor, calib.slow_share, "trace", len(calib.speed_trace))
tr = ticked(retime(workload(), rate, secs, 3))
KEYS = ("throughput_qps", "p50_ms", "p99_ms", "mean_batch_size")
for name, c in (("two_speeds", calib), ("flat_trace", at_trace(calib, ((0.0, 1.0, 1.0),))),
                ("trace_1.2", at_trace(calib, ((0.0, 1.2, 1.2),)))):
    s = sim_run(sim_deployment(dep, "digits", profiles, calibration=c), tr, 0, c)
    print(name, {k: round(v, 3) for k, v in s.items() if k in KEYS}, flush=True)
