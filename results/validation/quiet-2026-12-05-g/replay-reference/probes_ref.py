"""The replay's reference over a setting, from its saved probes: each core's fast level
and slow cut as fitted on the probes up to each minute; each kept run's factor as it
was kept (runs.npz) against the factor replayed with every probe (what the levels got)."""

import sys
from pathlib import Path

from clipperlab.calibration.fidelity import workload
from clipperlab.calibration.quiet import SpeedMonitor, fit_speed, load_probes, slow_cut
from clipperlab.calibration.resimulate import load_runs

folder = Path(sys.argv[1])
probes, interval, off = load_probes(folder / "speed_probes.npz")
mon = SpeedMonitor.from_probes(probes, Path("/tmp/diag/mon37") / "s.txt", interval)
for c, (t, ns) in probes.items():
    print(f"core {c}: {len(t)} probes over {t[-1] - t[0]:.0f} s")
    for k in range(1200, len(t) + 2400, 2400):
        sub = ns[:k]
        f = fit_speed(t[:k], sub)
        seg = sorted(ns[max(0, k - 2400):k])
        p10, p50, p90 = (seg[len(seg) * q // 10] for q in (1, 5, 9))
        print(f"  up to {t[min(k, len(t)) - 1] - t[0]:5.0f} s: fast {f.fast_ns:6.0f} "
              f"cut {slow_cut(sub):6.0f}   this minute's p10/p50/p90 {p10:6.0f} {p50:6.0f} "
              f"{p90:6.0f}")
runs, *_ = load_runs(folder / "runs.npz", workload())
t0 = probes[min(probes)][0][0]
for r in sorted(runs, key=lambda r: r.started_unix):
    a = r.started_unix - off
    b = a + (r.trace.arrival_at[-1] - r.trace.arrival_at[0])
    print(f"{r.rate:8,.0f} q/s at {a - t0:5.0f} s: kept factor {r.speed_factor:.2f}, "
          f"replayed with every probe {mon.mean_factor(a, b):.2f}")
