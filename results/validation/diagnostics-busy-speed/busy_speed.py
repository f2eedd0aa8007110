"""Per stored real run: the factor the server's loop ran at (its CPU over the fitted
fast-speed cost of the same queries, batches and wake-ups) against the probe's mean
factor while the run went; the same for each model's containers (their CPU over the
fitted fast-speed cost per batch and per item, ``Calibration.container_cpu``).

    python3 results/validation/diagnostics-busy-speed/busy_speed.py RUN/SETTING/ ...
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from clipperlab.calibration.fidelity import workload
from clipperlab.calibration.resimulate import stored_setting
from clipperlab.workloads import Workload

MIN_LOAD = 0.5  # runs at this share of the setting's capacity or more


def _rows(folder: Path, wl: Workload
          ) -> tuple[str, list[tuple[float, float, float, float, bool, float]]]:
    calib, _, _, runs = stored_setting(folder, wl)
    a, b, w = calib.query_cpu_s, calib.batch_cpu_s, calib.wake_s
    fits = {m: (pb, pi) for m, pb, pi in calib.container_cpu}
    head = f"loop {a * 1e6:.1f} us/q + {b * 1e6:.0f} us/b + wake {w * 1e6:.0f}"
    rows = []
    for r in runs:
        at = r.trace.arrival_at
        dur = float(at[-1] - at[0]) if len(at) > 1 else math.nan
        rate = r.queries / dur if dur > 0 else math.nan
        if not (rate >= MIN_LOAD * calib.capacity_qps and math.isfinite(r.speed_factor)):
            continue
        sleeps = dict(r.sleeps).get("frontend", math.nan)
        cost = r.queries * a + r.batches * b + (sleeps * w if math.isfinite(sleeps) else 0.0)
        num = den = 0.0
        for c in r.containers:
            if c.model in fits and math.isfinite(c.cpu_s):
                num += c.cpu_s
                den += c.batches * fits[c.model][0] + c.items * fits[c.model][1]
        rows.append((rate / calib.capacity_qps, r.queries / max(r.batches, 1.0),
                     r.cpu_s / cost if cost > 0 else math.nan, r.speed_factor, r.overloaded,
                     num / den if den > 0 else math.nan))
    return head, rows


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    return float(np.corrcoef(x[ok], y[ok])[0, 1]) if ok.sum() > 2 else math.nan


def main(folders: list[str]) -> None:
    wl = workload()
    for name in folders:
        f = Path(name)
        head, rows = _rows(f, wl)
        if not rows:
            print(f.parent.name, f.name, "no runs")
            continue
        m = np.array([[x[0], x[1], x[2], x[3], x[5]] for x in rows])
        loop, probe, ct = m[:, 2], m[:, 3], m[:, 4]
        print(f"{f.parent.name} {f.name}: {head}; {len(m)} runs at >= {MIN_LOAD:.0%} of "
              f"capacity: implied factor median {np.median(loop):.2f} "
              f"[{loop.min():.2f}-{loop.max():.2f}], probe's {np.median(probe):.2f} "
              f"[{probe.min():.2f}-{probe.max():.2f}], correlation {_corr(loop, probe):+.2f}; "
              f"containers' factor median {np.nanmedian(ct):.2f} "
              f"[{np.nanmin(ct):.2f}-{np.nanmax(ct):.2f}], correlation with the probe's "
              f"{_corr(ct, probe):+.2f}")
        for x in sorted(rows)[-6:]:
            print(f"    {x[0]:.2f} of capacity, batch {x[1]:.1f}: loop x{x[2]:.2f}, "
                  f"containers x{x[5]:.2f}, probe x{x[3]:.2f}"
                  + (" (overloaded)" if x[4] else ""))


if __name__ == "__main__":
    main(sys.argv[1:])
