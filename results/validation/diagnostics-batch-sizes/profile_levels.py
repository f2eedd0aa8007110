"""The fast level each stored setting's profiles were read against, and copies that say so.

    python3 results/validation/diagnostics-batch-sizes/profile_levels.py RUN OUT

For each setting of the fidelity run RUN (``speed_probes.npz``, ``runs.npz``,
``calibration.json``, ``profiles/``): the reference fast level the profiler's factors
were relative to, which runs before this commit did not store (``SpeedMonitor.replay``
fits each core's fast level over its probes so far; the profiles are taken first, so
"so far" is the probes before the setting's first calibration run started), beside the
calibration's fast level (``Calibration.fast_ns``).  Each setting is copied to OUT with
its profiles tagged ``speed_fast_ns`` (what ``profiler.measure`` now records) and a
``fidelity.csv`` of its rows, ready for ``--resimulate --no-refit``.
"""

from __future__ import annotations

import csv
import json
import shutil
import statistics
import sys
from pathlib import Path

from clipperlab.calibration.fidelity import workload
from clipperlab.calibration.quiet import fit_speed, load_probes
from clipperlab.calibration.resimulate import stored_setting


def profile_fast_ns(folder: Path) -> float:
    probes, _, offset = load_probes(folder / "speed_probes.npz")
    _, _, _, runs = stored_setting(folder, workload())
    first = min(r.started_unix for r in runs if r.started_unix > 0) - offset
    fast = []
    for t, ns in probes.values():
        k = sum(1 for v in t if v < first)
        f = fit_speed(t[:k], ns[:k])
        if f is None:
            return float("nan")
        fast.append(f.fast_ns)
    return statistics.fmean(fast)


def main(run: Path, out: Path) -> int:
    with open(run / "fidelity.csv", newline="") as f:
        rows = list(csv.reader(f))
    for folder in sorted(p for p in run.iterdir() if (p / "speed_probes.npz").exists()):
        model, batching = folder.name.split("-", 1)
        ref = profile_fast_ns(folder)
        calib = json.loads((folder / "calibration.json").read_text())["sim+host"]["fast_ns"]
        print(f"{folder.name}: profiles read against {ref:,.0f} ns a probe iteration, the "
              f"calibration at {calib:,.0f} (x{calib / ref:.2f})")
        dst = out / folder.name
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(folder, dst / folder.name)
        for p in (dst / folder.name / "profiles").glob("*.json"):
            d = json.loads(p.read_text())
            d["tags"]["speed_fast_ns"] = f"{ref:.1f}"
            p.write_text(json.dumps(d))
        with open(dst / "fidelity.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(rows[0])
            w.writerows(r for r in rows[1:] if r[0] == model and r[1] == batching)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
