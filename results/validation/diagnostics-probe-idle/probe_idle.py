"""Does what else runs on the cores change the speed probe's reading?

The speed probe (``quiet.speed_probe_ns``: a fixed loop of Python work timed in its
thread's CPU time, every 25 ms) pinned to core 0, 8 s under each condition in turn:
nothing else running ("idle"), a busy loop pinned to core 1 ("other core busy"), a busy
loop pinned to core 0 beside the probe ("own core busy": the probe is time-sliced with
it, which its CPU-time timing does not count), and both.  Repeated ``N`` times (argv[1],
default 4); one line per condition and repeat: the probe's median and 10th/90th
percentiles (ns a probe iteration) and ``quiet.fit_speed``'s two speeds.

    python results/validation/diagnostics-probe-idle/probe_idle.py 4 > out.txt
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np

from clipperlab.calibration.quiet import fit_speed, speed_probes

BURN = {"idle": (), "other core busy": (1,), "own core busy": (0,), "both busy": (0, 1)}


def sample(seconds: float, cpu: int = 0) -> tuple[list[float], list[float]]:
    """Probes on core ``cpu`` every 25 ms for ``seconds``: (times, ns a probe iteration)."""
    os.sched_setaffinity(0, {cpu})
    return speed_probes(seconds, 0.025)


def burn(cpu: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["taskset", "-c", str(cpu), sys.executable, "-c",
                             "while True: pass"])


def main() -> None:
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    print(f"load average {os.getloadavg()[0]:.2f} before; {os.cpu_count()} CPUs", flush=True)
    for rep in range(reps):
        for what, cores in BURN.items():
            procs = [burn(c) for c in cores]
            time.sleep(0.3)
            t, ns = sample(8.0)
            for p in procs:
                p.kill()
                p.wait()
            a = np.asarray(ns)
            fit = fit_speed(t, ns)
            print(f"{rep} {what:16s} median {np.median(a):6.0f} p10 "
                  f"{np.percentile(a, 10):6.0f} p90 {np.percentile(a, 90):6.0f}  "
                  f"{fit.describe() if fit else ''}", flush=True)


if __name__ == "__main__":
    main()
