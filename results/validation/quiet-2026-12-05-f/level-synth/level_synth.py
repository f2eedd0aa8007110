import sys, dataclasses
from pathlib import Path
import numpy as np
from clipperlab.calibration.resimulate import stored_setting, ticked
from clipperlab.calibration.runs import retime, sim_run
from clipperlab.calibration.twin import sim_deployment, at_trace
from clipperlab.calibration.fidelity import workload

folder = Path(sys.argv[1]); rate = float(sys.argv[2]); secs = float(sys.argv[3])
calib, profiles, dep, runs = stored_setting(folder, workload())
print("calib reference", calib.reference_factor, "fast_ns", calib.fast_ns, "slow", calib.slow_factor, calib.slow_share, "trace", len(calib.speed_trace))
tr = ticked(retime(workload(), rate, secs, 3))
for name, c in (("two_speeds", calib), ("flat_trace", at_trace(calib, ((0.0, 1.0, 1.0),))),
                ("trace_1.2", at_trace(calib, ((0.0, 1.2, 1.2),)))):
    s = sim_run(sim_deployment(dep, "digits", profiles, calibration=c), tr, 0, c)
    print(name, {k: round(v, 3) for k, v in s.items() if k in ("throughput_qps", "p50_ms", "p99_ms", "mean_batch_size")}, flush=True)
