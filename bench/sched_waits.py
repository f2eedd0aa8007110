"""Waits for a core: how long the real server's processes wait runnable under load, per
wait, beside the host CPU model's twin replaying the same kind of step.

    python3 bench/sched_waits.py --setting results/validation/quiet-2026-12-02-o/forest-aimd
                                 --rate 22600 [--seconds 3] [--no-real] [--csv out.csv]

The twin: the stored calibration run of ``--setting`` (a fidelity run's setting folder:
``calibration.json``, ``runs.npz``, ``profiles/``, ``deploy.toml``) nearest ``--rate``,
replayed by the prediction's twin at the speed the probes recorded while it went, every
wait of every process recorded (the host CPU model's time slices,
``simulator._cpu.SlicedHostCpuState``).  The server (unless ``--no-real``; it needs
``perf`` and the right to run ``perf sched record -a``): the setting's model (the
fidelity table's: ``noop``, ``logreg`` or ``forest``) served as the fidelity run serves
it, warmed up, then ``--seconds`` of open-loop load at ``--rate`` under ``perf sched
record``; every stretch a process spent runnable without a core (from a wake-up, or
from being preempted, to running again: ``perf sched timehist --state``) is a wait.

Printed per side and process (the server's loop ``frontend``, its container
``container:<model>``, the load generator ``loadgen``): waits a second, their mean, p50,
p90, p99 and longest, and the share of the step's time spent waiting (the total the
kernel's schedstat ``run_delay`` gives, which every run since 2026-12-02 stores and
``--steps`` sets beside the twin's).  The baseline is the twin, in the same run.  The
server's step is a new one, so the machine's speed may differ from the stored run's; the
shares and the shapes compare, microseconds only at like speeds.

What it showed on this 2-core VM (2026-12-02, the forest with AIMD at 22,000 q/s): the
container waited 6.6% of the time (152 times a second, 0.31 ms each), and the long waits
(1-2.7 ms) came while the other core idled: each core has its own run queue.  The twin,
with one FIFO queue for all cores, had the container wait 0.7% of the time; with
per-core queues, EEVDF's pick and wake-up preemption (this model), 8%.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def twin_waits(setting: Path, rate: float) -> tuple[dict[str, list[float]], float, float]:
    """Every wait of every process (name -> seconds) when the prediction's twin replays
    the stored run of ``setting`` nearest ``rate``; the run's span and rate."""
    from clipperlab.calibration import resimulate as r
    from clipperlab.calibration.fidelity import workload
    from clipperlab.calibration.fit import as_run
    from clipperlab.calibration.twin import sim_deployment
    from clipperlab.simulator import Simulation

    wl = workload()
    calib, profiles, dep, runs = r.stored_setting(setting, wl)
    run = min(runs, key=lambda x: abs(x.rate - rate))
    sim = Simulation(sim_deployment(dep, wl.app, profiles, calibration=as_run(calib, run)),
                     run.trace, seed=0, record_cpu_waits=True)
    sim.run()
    span = float(run.trace.arrival_at[-1] - run.trace.arrival_at[0])
    named: dict[str, list[float]] = defaultdict(list)
    for k, v in sim.cpu_wait_log.items():
        named[r.process_waits({k: 0.0}).popitem()[0]] += v
    return named, span, run.rate


def real_waits(setting: Path, rate: float, seconds: float
               ) -> tuple[dict[str, list[float]], float]:
    """Every wait of the server's, its container's and the generator's threads under
    ``seconds`` of load at ``rate`` (``perf sched``); the span recorded."""
    from clipperlab.calibration.fidelity import workload
    from clipperlab.calibration.loadgen import run_load
    from clipperlab.calibration.runs import retime
    from clipperlab.calibration.server import ServerProcess, real_deployment
    from clipperlab.calibration.torch_models import save_sklearn

    if shutil.which("perf") is None:
        raise SystemExit("sched_waits: perf is not installed (or use --no-real)")
    tmp = Path(tempfile.mkdtemp(prefix="sched-waits-"))
    toml = (setting / "deploy.toml").read_text()
    for name in re.findall(r'path\s*=\s*"([^"]+)"', toml):
        save_sklearn(Path(name).stem, tmp)
    (tmp / "deploy.toml").write_text(toml)
    wl = workload()
    pool = np.asarray(wl.inputs.load()[0])
    with ServerProcess(real_deployment(tmp / "deploy.toml"), cache=False) as srv:
        srv.wait_ready(wl.app)
        run_load(retime(wl, rate / 2, 2.0, 1), pool, srv.url, connections=8)
        pids = {**srv.pids(), "loadgen": os.getpid()}
        data = tmp / "sched.data"
        rec = subprocess.Popen(["perf", "sched", "record", "-q", "-o", str(data), "-a", "--",
                                "sleep", str(seconds)], stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        run_load(retime(wl, rate, seconds + 1.0, 2), pool, srv.url, connections=8)
        if rec.wait() != 0:
            raise SystemExit("sched_waits: perf sched record failed (permissions? "
                             "try as root, or --no-real)")
    text = subprocess.run(["perf", "sched", "timehist", "-i", str(data), "--state"],
                          capture_output=True, text=True, check=True).stdout
    shutil.rmtree(tmp, ignore_errors=True)
    return parse_timehist(text, pids)


def parse_timehist(text: str, pids: dict[str, int]) -> tuple[dict[str, list[float]], float]:
    """From ``perf sched timehist --state``: per process (its threads together), every
    stretch runnable without a core, from a wake-up (the row's scheduling delay) or from
    being preempted (state R) to running again (the next row's wait); the span."""
    proc_of = {pid: name for name, pid in pids.items()}
    last_state: dict[str, str] = {}
    waits: dict[str, list[float]] = defaultdict(list)
    t0 = t1 = None
    for line in text.splitlines():
        p = line.split()
        if len(p) < 7:
            continue
        try:
            t = float(p[0])
            wait_ms, delay_ms, state = float(p[3]), float(p[4]), p[6]
        except ValueError:
            continue
        t0 = t if t0 is None else t0
        t1 = t
        m = re.search(r"\[(\d+)(?:/(\d+))?\]$", p[2])
        if not m:
            continue
        pid = int(m.group(2) or m.group(1))
        name = proc_of.get(pid)
        if name is None:
            continue
        task = p[2]
        if last_state.get(task) == "R":
            waits[name].append(wait_ms / 1e3)  # preempted: runnable all along
        elif delay_ms > 0:
            waits[name].append(delay_ms / 1e3)  # woken: waited for a core
        last_state[task] = state
    return waits, (t1 - t0) if t0 is not None and t1 is not None else 0.0


def table(side: str, waits: dict[str, list[float]], span: float) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    for name in sorted(waits):
        w = np.asarray(waits[name]) * 1e3
        if not w.size:
            continue
        rows.append({"side": side, "process": name, "waits_per_s": w.size / span,
                     "mean_ms": w.mean(), "p50_ms": np.percentile(w, 50),
                     "p90_ms": np.percentile(w, 90), "p99_ms": np.percentile(w, 99),
                     "max_ms": w.max(), "share_of_time": w.sum() / 1e3 / span})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--setting", type=Path, required=True,
                    help="a fidelity run's setting folder (calibration.json, runs.npz, ...)")
    ap.add_argument("--rate", type=float, required=True, help="queries per second")
    ap.add_argument("--seconds", type=float, default=3.0,
                    help="seconds of the server's step recorded")
    ap.add_argument("--no-real", action="store_true", help="the twin alone")
    ap.add_argument("--csv", type=Path, default=None, help="write the table here")
    a = ap.parse_args(argv)
    if not (a.setting / "runs.npz").exists():
        print(f"sched_waits: {a.setting} has no runs.npz (a fidelity run's setting folder)",
              file=sys.stderr)
        return 2
    tw, span, got = twin_waits(a.setting, a.rate)
    parts = [table(f"twin ({got:,.0f} q/s, stored)", tw, span)]
    if not a.no_real:
        rw, rspan = real_waits(a.setting, a.rate, a.seconds)
        parts.append(table(f"server ({a.rate:,.0f} q/s, now)", rw, rspan))
    out = pd.concat(parts, ignore_index=True)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(out.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if a.csv is not None:
        out.to_csv(a.csv, index=False, float_format="%.6g")
    return 0


if __name__ == "__main__":
    sys.exit(main())
