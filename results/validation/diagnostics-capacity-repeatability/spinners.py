"""Do SCHED_IDLE spinners (``spin.py``, one pinned to each core) make the server's
results at a fixed rate repeat?  One no-op AIMD server (the DEPLOY file), 3 s open-loop
runs at each of RATES, with and without the spinners, alternated, ROUNDS times.

    python3 spinners.py DEPLOY RATES ROUNDS    (RATES: comma-separated q/s)

The probe reads this VM's cores fast while they are kept busy
(``../diagnostics-probe-idle/``); a spinner at SCHED_IDLE keeps a core busy and yields
it at once to any other process, so it would hold the cores at their fast speed without
taking CPU from the server.  Output: ``spinners-out.txt``.
"""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from clipperlab.calibration.fidelity import workload
from clipperlab.calibration.loadgen import run_load
from clipperlab.calibration.runs import good_share, retime
from clipperlab.calibration.server import ServerProcess, real_deployment

SPIN = str(Path(__file__).with_name("spin.py"))

if __name__ == "__main__":
    toml, rates, rounds = sys.argv[1], [float(x) for x in sys.argv[2].split(",")], \
        int(sys.argv[3])
    dep = real_deployment(toml)
    wl = workload()
    pool = wl.inputs.load()[0]
    with ServerProcess(dep, cache=wl.cacheable) as srv:
        srv.wait_ready(wl.app)
        run_load(retime(wl, 2000.0, 2.0, 1), pool, srv.url)  # warm-up
        seed = 10
        for rnd in range(rounds):
            for rate in rates:
                for spin in ((False, True) if rnd % 2 == 0 else (True, False)):
                    procs = ([subprocess.Popen([sys.executable, SPIN, str(c)]) for c in (0, 1)]
                             if spin else [])
                    time.sleep(0.2)
                    seed += 1
                    df = run_load(retime(wl, rate, 3.0, seed), pool, srv.url)
                    for p in procs:
                        p.kill()
                        p.wait()
                    good = good_share(df, 0.020)
                    print(f"round {rnd} rate {rate:.0f} spin={int(spin)} good {good:.3f} "
                          f"p50 {np.nanpercentile(df.latency_s, 50) * 1e3:.2f} "
                          f"p99 {np.nanpercentile(df.latency_s, 99) * 1e3:.2f} ms", flush=True)
                    time.sleep(0.5)
