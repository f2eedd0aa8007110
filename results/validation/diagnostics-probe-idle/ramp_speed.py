"""The slow share of each capacity ramp's decisive steps against the whole ramp, offline.

A live fidelity run gives the twin's ramp ``k`` the speed the probes saw over the whole of
the real ramp ``k`` (``validation._validate``: ``mon.fit`` over the ramp's span).  The
probe reads a core slow mostly while the core is otherwise idle (``probe_idle.py``
here), so a ramp's low-rate steps, which leave the cores idle, could weigh in its slow
share while the steps that decide the capacity keep the cores busy.  This script takes
stored settings (``runs.npz`` and ``fidelity.csv``), splits each setting's kept runs
into its ramps (``split_ramps``: the ramps after the first restart at half the first
one's capacity; a setting whose runs do not split into as many ramps as it measured is
skipped), and gives per ramp the slow share and
mean slow factor from the runs' own replayed speed traces (``CpuRun.speed_trace``,
every core pooled):

- ``whole``: over every step of the ramp (the control: close to the stored
  ``speed_ramps_slow_share``, fitted on the raw probes over the ramp's span);
- ``decisive``: over the steps at ``--top`` (0.8) x the ramp's measured capacity or more.

Prints one line per ramp and writes ``ramp_speed.csv`` beside this script (``--out``).

    python results/validation/diagnostics-probe-idle/ramp_speed.py \\
        results/validation/quiet-2026-12-05-h results/validation/quiet-2026-12-05-i ...
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd

from clipperlab.calibration.fidelity import workload
from clipperlab.calibration.fit import CpuRun
from clipperlab.calibration.resimulate import stored_setting


def split_ramps(runs: list[CpuRun], n: int) -> list[list[CpuRun]] | None:
    """The kept runs (in the order kept) as ``n`` ramps; None when they do not split so.
    The second ramp starts where the rate first falls below 0.75x the run before (the
    first ramp's top against half its capacity); every later one at that same start
    rate (``capacity.ramp_start``), so a run at it after a run at another rate starts
    a ramp (a confirming re-run repeats its rate and does not)."""
    ramps: list[list[CpuRun]] = []
    start = math.nan
    for r in runs:
        prev = ramps[-1][-1].rate if ramps else math.nan
        if not ramps:
            new = True
        elif math.isnan(start):
            new = r.rate < 0.75 * prev
            start = r.rate if new else start
        else:
            new = abs(r.rate / start - 1) < 0.005 and abs(prev / start - 1) >= 0.005
        if new:
            ramps.append([])
        ramps[-1].append(r)
    return ramps if len(ramps) == n else None


def trace_speed(runs: list[CpuRun]) -> tuple[float, float]:
    """``(slow share, mean slow factor)`` over the runs' replayed speed traces, every
    core pooled (a row's factor is 1 when fast)."""
    slow_t = total_t = slow_ft = 0.0
    for r in runs:
        rec = r.speed_trace
        if not rec:
            continue
        at = np.asarray(r.trace.arrival_at, dtype=np.float64)
        span = float(at[-1] - at[0]) if at.size > 1 else 0.0
        ends = [row[0] for row in rec[1:]] + [max(span, rec[-1][0])]
        for row, end in zip(rec, ends, strict=True):
            d = end - row[0]
            for f in row[1:]:
                total_t += d
                if f > 1.0:
                    slow_t += d
                    slow_ft += d * f
    if total_t <= 0:
        return math.nan, math.nan
    return slow_t / total_t, (slow_ft / slow_t if slow_t > 0 else 1.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="fidelity run folders (with fidelity.csv)")
    ap.add_argument("--top", type=float, default=0.8,
                    help="decisive steps: at this share of the ramp's capacity or more")
    ap.add_argument("--out", default=str(Path(__file__).with_name("ramp_speed.csv")))
    a = ap.parse_args()
    wl = workload()
    rows = []
    for run in map(Path, a.runs):
        table = pd.read_csv(run / "fidelity.csv")
        for (model, batching), g in table.groupby(["model", "batching"], sort=False):
            folder = run / f"{model}-{batching}"
            if not (folder / "runs.npz").exists():
                continue
            row0 = g.iloc[0].to_dict()
            _, _, _, runs = stored_setting(folder, wl)
            caps = [float(x) for x in str(row0["ramp_capacities_qps"]).split(";")]
            stored = [float(x) for x in str(row0.get("speed_ramps_slow_share", "")).split(";")
                      if x not in ("", "nan")]
            ramps = split_ramps(runs, len(caps))
            if ramps is None:
                print(f"{folder}: skipped (its kept runs do not split into {len(caps)} ramps)")
                continue
            for k, (rs, cap) in enumerate(zip(ramps, caps, strict=True)):
                top = [r for r in rs if r.rate >= a.top * cap]
                (ws, wf), (ds, df) = trace_speed(rs), trace_speed(top)
                rows.append({"setting": f"{run.name}/{folder.name}", "ramp": k + 1,
                             "measured_qps": cap, "steps": len(rs), "decisive_steps": len(top),
                             "stored_slow_share": stored[k] if k < len(stored) else math.nan,
                             "whole_slow_share": ws, "whole_slow_factor": wf,
                             "decisive_slow_share": ds, "decisive_slow_factor": df})
                print(" ".join(f"{v:.3g}" if isinstance(v, float) else str(v)
                               for v in rows[-1].values()), flush=True)
    pd.DataFrame(rows).to_csv(a.out, index=False, float_format="%.6g")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

