"""The real server's capacity ramp, run RAMPS times back to back on one server, for each
of SETTINGS: how far one sitting's ramps, minutes apart, spread with nothing changed.

    python3 ramps_now.py [--settings noop-aimd,noop-delayed,forest-delayed] [--ramps 6]

Each setting is the fidelity table's (``calibration.fidelity``: the model, its batching,
the digits workload, a 20 ms SLO; the forest trained on the digits here, as the fidelity
run does).  Each ramp is ``calibration.capacity.ramp`` with the live run's defaults (2 s
steps x1.4 from 100 q/s, a failing step confirmed, bisection to x1.05; the ramps after
the first start at half its capacity) over real open-loop runs (``loadgen.run_load``);
no twin, no probes, no fits.  Writes ``ramps-now.csv`` (one row per ramp) beside this
file and prints each ramp as it ends.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from clipperlab.calibration.capacity import (
    RAMP_RESOLUTION,
    RAMP_S,
    RAMP_START_QPS,
    RAMP_STEP,
    ramp,
    ramp_start,
    ramp_trace_seed,
)
from clipperlab.calibration.fidelity import SLO_MS, deploy_toml, said_batching, workload
from clipperlab.calibration.loadgen import run_load
from clipperlab.calibration.runs import good_share, retime
from clipperlab.calibration.server import ServerProcess, real_deployment
from clipperlab.calibration.torch_models import save_sklearn
from clipperlab.report.latency import summarise

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--settings", default="noop-aimd,noop-delayed,forest-delayed",
                    help="MODEL-BATCHING, comma-separated")
    ap.add_argument("--ramps", type=int, default=6, help="ramps per setting")
    a = ap.parse_args()
    wl = workload()
    pool = wl.inputs.load()[0]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for setting in a.settings.split(","):
            model, bname = setting.split("-")
            path = "" if model == "noop" else str(save_sklearn(model, d))
            dep_file = Path(d) / f"{setting}.toml"
            dep_file.write_text(deploy_toml(model, path, said_batching(bname)))
            with ServerProcess(real_deployment(dep_file), cache=wl.cacheable) as srv:
                srv.wait_ready(wl.app)
                run_load(retime(wl, 2000.0, 2.0, 1), pool, srv.url)  # warm-up

                def probe(rate: float, attempt: int, k: int = 0) -> tuple[float, float]:
                    # as validation.ramp_to_capacity's probe: ramp k's trace, the same
                    # for a confirming re-run; the share as the live ramp counts it
                    q = run_load(retime(wl, rate, RAMP_S, ramp_trace_seed(0, k)), pool,
                                 srv.url)
                    return (good_share(q, SLO_MS / 1e3),
                            float(summarise(q).get("throughput_qps", 0.0)))

                first = None
                for k in range(a.ramps):
                    la = os.getloadavg()[0]
                    t0 = time.time()
                    res = ramp(lambda r, at, k=k: probe(r, at, k),
                               ramp_start(RAMP_START_QPS, first), 1e6, step=RAMP_STEP,
                               resolution=RAMP_RESOLUTION)
                    first = first or res
                    rows.append({"setting": setting, "ramp": k + 1,
                                 "started_utc": time.strftime("%H:%M:%S", time.gmtime(t0)),
                                 "capacity_qps": res.capacity_qps,
                                 "steps": len(res.steps), "load_avg_before": la})
                    print(f"{setting} ramp {k + 1}: {res.capacity_qps:,.0f} q/s "
                          f"({len(res.steps)} steps, load average {la:.2f})", flush=True)
    out = pd.DataFrame(rows)
    out.to_csv(HERE / "ramps-now.csv", index=False, float_format="%.1f")
    for setting, g in out.groupby("setting", sort=False):
        c = g["capacity_qps"].to_numpy()
        near = np.mean(abs(c / np.median(c) - 1) <= 0.1)
        print(f"{setting}: median {np.median(c):,.0f} q/s, largest / smallest "
              f"{c.max() / c.min():.2f}, within 10% of the median {near:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
