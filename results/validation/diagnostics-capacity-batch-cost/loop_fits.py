"""The event loop's CPU fits of runs 33 and 34, per setting: the stored calibration's
(``sim+host``: per query, per batch, per wake-up and the cooling time) beside two-term
fits (per query + per batch) over the same stored runs' CPU, each run's CPU divided by
its mean speed factor (the fast speed's, as the fits take it): over all runs, on their
relative errors (non-negative least squares), and over the warm ones (25% of the
fastest run's rate or more) as ``fit.fit_cpu`` fits (per-query errors).

    python3 results/validation/diagnostics-capacity-batch-cost/loop_fits.py

A second; nothing is simulated.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

from clipperlab.calibration.fit import fit_cpu

ROOT = Path(__file__).resolve().parents[3]
RUNS = ("quiet-2026-12-05-c", "quiet-2026-12-05-d")


def main() -> int:
    for run in RUNS:
        for f in sorted((ROOT / "results" / "validation" / run).glob("*/runs.npz")):
            z = np.load(f)
            meta = json.loads(bytes(z["meta"]).decode())
            pts = []
            for k, m in enumerate(meta["runs"]):
                at = z[f"arrival_at_{k}"]
                if (len(at) < 2 or not np.isfinite(m["speed_factor"]) or m["queries"] <= 0
                        or m["cpu_s"] <= 0):
                    continue
                rate = len(at) / (at[-1] - at[0])
                pts.append((rate, m["queries"], m["batches"], m["cpu_s"] / m["speed_factor"]))
            top = max(p[0] for p in pts)
            m = np.array([p[1:] for p in pts])
            (qa, ba), _ = nnls(m[:, :2] / m[:, 2:3], np.ones(len(m)))
            qw, bw = fit_cpu([p[1:] for p in pts if p[0] >= 0.25 * top])
            c = json.loads((f.parent / "calibration.json").read_text())["sim+host"]
            print(f"{run} {f.parent.name:<15} stored: {c['query_cpu_s'] * 1e6:5.1f} us/query + "
                  f"{c['batch_cpu_s'] * 1e6:5.1f} us/batch + {c['wake_s'] * 1e6:5.1f} "
                  f"us/wake-up (cooling {c['cold_after_s'] * 1e3:g} ms) | two-term, all "
                  f"{len(pts)} runs: {qa * 1e6:5.1f} + {ba * 1e6:5.1f} | warm runs: "
                  f"{qw * 1e6:5.1f} + {bw * 1e6:5.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
