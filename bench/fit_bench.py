"""The fidelity fits' twin replays on one process and on several, on a stored setting.

A fidelity setting's fits replay every kept run in the twin many times: the loop's
cooling-time grid (``fit.COLD_AFTER_GRID_S``, nine points) once without the host CPU
model and once with it (``fit_frontend_rows``, ``fit_frontend_on_host``), and the
containers' wake-up once per run (``fit_container_wake``).  With the no-op model near
50,000 q/s that was most of a setting's 45 minutes on one core (run 38).  This bench
takes a stored setting (``runs.npz``, ``calibration.json``, ``deploy.toml`` and the
profiles that a fidelity run leaves in each setting's folder), keeps ``--runs`` of its
kept runs spread evenly over their rates (the fits' own mix, smaller), and times each
fit with ``jobs=1`` (the baseline, in the same run) and ``jobs=--jobs``; every fit must
give the same numbers both ways, or the bench fails.

    python bench/fit_bench.py [--setting results/validation/quiet-2026-12-05-h/noop-aimd]
                              [--runs 12] [--jobs 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clipperlab.calibration.fidelity import workload
from clipperlab.calibration.fit import (
    Calibration,
    fit_container_wake,
    fit_frontend_on_host,
    fit_frontend_rows,
)
from clipperlab.calibration.resimulate import _deployment, calibration_from_json, load_runs
from clipperlab.calibration.twin import sim_deployment
from clipperlab.simulator import Deployment, load_profile
from clipperlab.simulator.parallel import cpu_count

DEFAULT = "results/validation/quiet-2026-12-05-h/noop-aimd"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--setting", default=DEFAULT,
                    help="a fidelity run's setting folder (runs.npz, calibration.json, ...)")
    ap.add_argument("--runs", type=int, default=12,
                    help="kept runs to fit on, spread over their rates (0: all; runs)")
    ap.add_argument("--jobs", type=int, default=0, help="processes against 1 (0: one per CPU)")
    a = ap.parse_args(argv)
    folder = Path(a.setting)
    if not (folder / "runs.npz").exists():
        print(f"error: {folder}/runs.npz does not exist: --setting takes a fidelity "
              "setting's folder", file=sys.stderr)
        return 2
    if a.runs < 0 or a.jobs < 0:
        print("error: --runs and --jobs take integers >= 0", file=sys.stderr)
        return 2
    wl = workload()
    runs, _, _, _ = load_runs(folder / "runs.npz", wl)
    runs = sorted(runs, key=lambda r: r.rate)
    if a.runs and a.runs < len(runs):  # spread over the rates, as the fits' mix is
        runs = [runs[round(k * (len(runs) - 1) / (a.runs - 1))] for k in range(a.runs)] \
            if a.runs > 1 else runs[-1:]
    profiles = {p.stem: load_profile(p) for p in sorted((folder / "profiles").glob("*.json"))}
    stored = calibration_from_json((folder / "calibration.json").read_text())
    host = next(c for m, c in stored.items() if m == "sim+host")
    with tempfile.TemporaryDirectory() as d:
        dep = _deployment(folder / "deploy.toml", Path(d))

    def twin(c: Calibration) -> Deployment:
        return sim_deployment(dep, wl.app, profiles, calibration=c)

    jobs = a.jobs or cpu_count()
    plain = dataclasses.replace(host, host_cpus=0)
    fits: list[tuple[str, Callable[[int], Any]]] = [
        ("fit_frontend_rows (9 cooling times, no host model)",
         lambda j: fit_frontend_rows(runs, twin, plain, jobs=j)),
        ("fit_frontend_on_host (its wake-ups counted, 9 cooling times)",
         lambda j: fit_frontend_on_host(runs, twin, host, jobs=j)),
        ("fit_container_wake (one replay a run)",
         lambda j: fit_container_wake(runs, twin, host, jobs=j)),
    ]
    print(f"{folder}: {len(runs)} kept runs "
          f"({min(r.rate for r in runs):,.0f}-{max(r.rate for r in runs):,.0f} q/s); "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} before")
    print(f"| fit | 1 process (s) | {jobs} processes (s) | speed-up |")
    print("|---|---|---|---|")
    for name, fit in fits:
        t0 = time.perf_counter()
        one = fit(1)
        t1 = time.perf_counter()
        many = fit(jobs)
        t2 = time.perf_counter()
        if many != one:
            print(f"error: {name}: {jobs} processes gave other numbers than one",
                  file=sys.stderr)
            return 1
        print(f"| {name} | {t1 - t0:.1f} | {t2 - t1:.1f} | {(t1 - t0) / (t2 - t1):.2f}x |")
    print(f"load average {os.getloadavg()[0]:.2f} after")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
