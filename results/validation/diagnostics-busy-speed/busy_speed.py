"""Per stored real run: the factor the server's loop ran at (its CPU over the fitted
fast-speed cost of the same queries, batches and wake-ups) against the probe's mean
factor while the run went; the same for each model's containers (their CPU over the
fitted fast-speed cost per batch and per item, ``Calibration.container_cpu``)."""
import sys, math
from pathlib import Path
import numpy as np
from clipperlab.calibration.resimulate import stored_setting
from clipperlab.workloads import Workload
from clipperlab.calibration import validation

def main(folders):
    from clipperlab.calibration.fidelity import workload
    wl = workload()
    for f in folders:
        f = Path(f)
        calib, _, _, runs = stored_setting(f, wl)
        A, B, W = calib.query_cpu_s, calib.batch_cpu_s, calib.wake_s
        cap = calib.capacity_qps
        rows = []
        for r in runs:
            dur = float(r.trace.arrival_at[-1] - r.trace.arrival_at[0]) if len(r.trace.arrival_at) > 1 else math.nan
            rate = r.queries / dur if dur > 0 else math.nan
            sl = dict(r.sleeps).get("frontend", math.nan)
            model = r.queries * A + r.batches * B + (sl * W if math.isfinite(sl) else 0.0)
            implied = r.cpu_s / model if model > 0 else math.nan
            ct = math.nan
            fits = {m: (b, i) for m, b, i in calib.container_cpu}
            num = den = 0.0
            for c in r.containers:
                if c.model in fits and math.isfinite(c.cpu_s):
                    num += c.cpu_s
                    den += c.batches * fits[c.model][0] + c.items * fits[c.model][1]
            if den > 0:
                ct = num / den
            rows.append((rate / cap, r.queries / max(r.batches, 1), implied, r.speed_factor, r.overloaded, ct))
        rows = [x for x in rows if x[0] >= 0.5 and math.isfinite(x[3])]
        if not rows:
            print(f.parent.name, f.name, "no runs"); continue
        a = np.array([[x[0], x[1], x[2], x[3], x[5]] for x in rows])
        c = np.corrcoef(a[:, 2], a[:, 3])[0, 1] if len(a) > 2 else math.nan
        ok = np.isfinite(a[:, 4])
        cc = np.corrcoef(a[ok, 4], a[ok, 3])[0, 1] if ok.sum() > 2 else math.nan
        print(f"{f.parent.name} {f.name}: loop {A*1e6:.1f} us/q + {B*1e6:.0f} us/b + wake {W*1e6:.0f}; "
              f"{len(a)} runs at >= 50% of capacity: implied factor median {np.median(a[:,2]):.2f} "
              f"[{a[:,2].min():.2f}-{a[:,2].max():.2f}], probe's {np.median(a[:,3]):.2f} "
              f"[{a[:,3].min():.2f}-{a[:,3].max():.2f}], correlation {c:+.2f}; containers' factor "
              f"median {np.median(a[ok,4]) if ok.any() else math.nan:.2f} "
              f"[{a[ok,4].min() if ok.any() else math.nan:.2f}-{a[ok,4].max() if ok.any() else math.nan:.2f}], "
              f"correlation with the probe's {cc:+.2f}")
        for x in sorted(rows)[-6:]:
            print(f"    {x[0]:.2f} of capacity, batch {x[1]:.1f}: loop x{x[2]:.2f}, containers x{x[5]:.2f}, probe x{x[3]:.2f}{' (overloaded)' if x[4] else ''}")

main(sys.argv[1:])
