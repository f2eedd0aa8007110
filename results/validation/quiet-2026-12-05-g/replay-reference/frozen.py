"""Each kept run's factor as kept, replayed against a reference frozen at the last kept
run (``SpeedMonitor.freeze``), and replayed against every probe (what the levels got)."""

import sys
from pathlib import Path

from clipperlab.calibration.fidelity import workload
from clipperlab.calibration.quiet import SpeedMonitor, load_probes
from clipperlab.calibration.resimulate import load_runs

folder = Path(sys.argv[1])
probes, interval, off = load_probes(folder / "speed_probes.npz")
runs, *_ = load_runs(folder / "runs.npz", workload())
runs = sorted(runs, key=lambda r: r.started_unix)
end = runs[-1].started_unix - off + 5.0
cut = {}
for c, (t, ns) in probes.items():
    n = sum(1 for a in t if a <= end)
    cut[c] = (t[:n], ns[:n])
live = SpeedMonitor.from_probes(cut, Path("/tmp/diag/fz") / "s.txt", interval)
live.freeze()
for c, (t, ns) in probes.items():  # the rest of the probes arrive after the freeze
    live._file(c).write_text("".join(f"{a:.6f} {b:.1f}\n" for a, b in zip(t, ns, strict=True)))
every = SpeedMonitor.from_probes(probes, Path("/tmp/diag/ev") / "s.txt", interval)
refs = {c: tuple(round(x) for x in v) for c, v in live._frozen.items()}
print("core references frozen (cut, fast):", refs)
for r in runs[::4]:
    a = r.started_unix - off
    b = a + (r.trace.arrival_at[-1] - r.trace.arrival_at[0])
    print(f"{r.rate:8,.0f} q/s: kept {r.speed_factor:.2f}  frozen {live.mean_factor(a, b):.2f}"
          f"  every probe {every.mean_factor(a, b):.2f}")
