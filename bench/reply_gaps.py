"""Reply gaps: where the real server's answers stall near a full core, and who runs then.

    python3 bench/reply_gaps.py [--rates 15000,20000,25000] [--seconds 3]
                                [--batching aimd] [--slo-ms 20] [--parse-turn-ms 2,0.5]
                                [--json out.json]

For each rate it starts the fidelity table's server (``calibration.fidelity``: the no-op
model, one replica, the digits application, ``--batching`` aimd or delayed), warms it up,
and sends ``--seconds`` of open-loop load (``calibration.loadgen``, 8 connections) while a
sampler process reads each process's ``/proc/PID/schedstat`` about every half
millisecond: the time it ran on a core and the time it waited for one.  It prints, per
rate: the share answered within the objective from the send, p50/p99 from the send, the
reply gaps (``calibration.resimulate.reply_gaps``: 3 ms or more without a reply while a
query waited) per second and their share of the run, and each process's share of a core
running and waiting, over the run and over the gaps.  The baseline is the first rate,
in the same run.  (With ``delayed`` batching a batch waits up to 2 ms for company, and
the 1 ms timer makes that 3: gaps of 3 ms come with the setting at any load.)

What it shows on a 2-core VM (see results/bench/reply_gaps.md): the gaps come with
load, and during them the frontend's event loop runs (it is not waiting for a core)
while the container idles: the loop is parsing requests while a batch result waits
(``real.http``'s fair scheduler parses in turns of up to ``parse_turn_ms`` before it polls;
``--parse-turn-ms`` runs each rate under each of several, one after the other).
Numbers depend on the machine and on what else runs on it; the machine's speed while
each rate ran is printed beside it (``quiet.speed_sample`` before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from clipperlab.calibration.fidelity import BATCHINGS, deploy_toml, workload
from clipperlab.calibration.loadgen import run_load
from clipperlab.calibration.quiet import speed_sample
from clipperlab.calibration.resimulate import reply_gap_spans
from clipperlab.calibration.runs import retime
from clipperlab.calibration.server import ServerProcess, child_pids, real_deployment

SAMPLER = r"""
import json, sys, time
import numpy as np
pids = json.loads(sys.argv[1]); end = time.monotonic() + float(sys.argv[2])
files = [open(f"/proc/{p}/schedstat") for p in pids.values()]
rows = []
while True:
    t = time.monotonic()
    row = [t]
    for f in files:
        f.seek(0)
        a = f.read().split()
        row += [int(a[0]), int(a[1])]
    rows.append(row)
    if t > end:
        break
    time.sleep(0.0005)
np.save(sys.argv[3], np.asarray(rows, dtype=np.float64))
"""


def _shares(t: np.ndarray, rows: np.ndarray, k: int, a: float, b: float) -> tuple[float, float]:
    """Process ``k``'s share of a core running and waiting between ``a`` and ``b``."""
    run = np.interp([a, b], t, rows[:, 1 + 2 * k])
    wait = np.interp([a, b], t, rows[:, 2 + 2 * k])
    span = (b - a) * 1e9
    return float((run[1] - run[0]) / span), float((wait[1] - wait[0]) / span)


def one_rate(rate: float, turn_ms: float, a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    dep_f = tmp / "deploy.toml"
    dep_f.write_text(deploy_toml("noop", "", BATCHINGS[a.batching]))
    srv = ServerProcess(real_deployment(dep_f), cache=False,
                        settings={"parse_turn_ms": turn_ms})
    try:
        srv.wait_ready("digits")
        assert srv.proc.pid is not None
        pids = {"frontend": srv.proc.pid, "generator": os.getpid()}
        for i, c in enumerate(child_pids(srv.proc.pid)):
            pids[f"container{i}"] = c
        wl = workload()
        pool = np.asarray(wl.inputs.load()[0])
        run_load(retime(wl, rate / 2, 1.0, 99), pool, srv.url, connections=8)  # warm up
        before = speed_sample(1.0)
        out = tmp / f"sched-{rate:.0f}.npy"
        sampler = subprocess.Popen([sys.executable, "-c", SAMPLER, json.dumps(pids),
                                    str(a.seconds + 3.0), str(out)])
        time.sleep(0.2)
        tab = run_load(retime(wl, rate, a.seconds, 7), pool, srv.url, connections=8,
                       drain_s=2.0)
        sampler.wait()
        after = speed_sample(1.0)
    finally:
        srv.proc.terminate()
        srv.proc.join(10)
    rows = np.load(out)
    t0 = float(tab.attrs["started_at"])
    t = rows[:, 0] - t0
    send = tab["sent_at"].to_numpy()
    lat = tab["reply_at"].to_numpy() - send
    lat = np.where(np.isfinite(lat), lat, np.inf)
    span = float(send[-1] - send[0])
    gaps_at = [(float(s), float(b)) for s, b in reply_gap_spans(send, lat)]
    res: dict[str, Any] = {
        "rate_qps": rate, "parse_turn_ms": turn_ms,
        "within_slo": float(np.mean(lat <= a.slo_ms / 1e3)),
        "p50_ms": float(np.percentile(lat, 50) * 1e3),
        "p99_ms": float(np.percentile(lat, 99) * 1e3),
        "gaps_per_s": len(gaps_at) / span,
        "gap_share": float(sum(b - s for s, b in gaps_at) / span),
        "speed": " / ".join(sp.describe().split(" (")[0] if sp is not None else "-"
                            for sp in (before, after)),
    }
    for k, name in enumerate(pids):
        run, wait = _shares(t, rows, k, float(send[0]), float(send[-1]))
        res[f"{name}_run"], res[f"{name}_wait"] = run, wait
        if gaps_at:
            tot = sum(b - s for s, b in gaps_at)
            rw = [_shares(t, rows, k, s, b) for s, b in gaps_at]
            res[f"{name}_run_in_gaps"] = sum(r * (b - s) for (r, _), (s, b)
                                             in zip(rw, gaps_at, strict=True)) / tot
            res[f"{name}_wait_in_gaps"] = sum(w * (b - s) for (_, w), (s, b)
                                              in zip(rw, gaps_at, strict=True)) / tot
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default="15000,20000,25000",
                   help="offered rates in queries/s, comma-separated (default %(default)s)")
    p.add_argument("--seconds", type=float, default=3.0,
                   help="seconds of load per rate (default %(default)s)")
    p.add_argument("--batching", choices=sorted(BATCHINGS), default="aimd",
                   help="the fidelity table's batching setting (default %(default)s)")
    p.add_argument("--slo-ms", type=float, default=20.0,
                   help="the objective for the within-SLO share, ms (default %(default)s)")
    p.add_argument("--parse-turn-ms", default="2,0.5",
                   help="the server's parse_turn_ms values, comma-separated; each rate runs"
                        " under each, in turn (default %(default)s)")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    a = p.parse_args(argv)
    try:
        rates = [float(x) for x in a.rates.split(",")]
        turns = [float(x) for x in a.parse_turn_ms.split(",")]
        if not rates or min(rates) <= 0 or a.seconds <= 0 or not all(0 < t <= 1000
                                                                      for t in turns):
            raise ValueError
    except ValueError:
        print(f"error: --rates {a.rates!r} / --seconds {a.seconds} / --parse-turn-ms "
              f"{a.parse_turn_ms!r}: expected rates > 0 q/s, seconds > 0 and turns in "
              "(0, 1000] ms", file=sys.stderr)
        return 2
    print(f"# python3 bench/reply_gaps.py --rates {a.rates} --seconds {a.seconds:g} "
          f"--batching {a.batching} --parse-turn-ms {a.parse_turn_ms}; "
          f"load average {os.getloadavg()[0]:.2f} before")
    rows = []
    with tempfile.TemporaryDirectory(prefix="clipperlab-gaps-") as d:
        for rate in rates:
            for turn in turns:
                rows.append(one_rate(rate, turn, a, Path(d)))
                print(f"  {rate:,.0f} q/s, turn {turn:g} ms done", file=sys.stderr, flush=True)
    names = [k[:-4] for k in rows[0] if k.endswith("_run") and not k.endswith("in_gaps")]
    print(f"{'q/s':>7} {'turn ms':>7} {'in SLO':>7} {'p50/p99 ms':>13} {'gaps/s':>7} "
          f"{'gap time':>8}  "
          + "  ".join(f"{n + ' run/wait (in gaps)':>32}" for n in names) + "  speed before / after")
    for r in rows:
        cells = []
        for n in names:
            g = (f"({r[n + '_run_in_gaps']:.2f}/{r[n + '_wait_in_gaps']:.2f})"
                 if n + "_run_in_gaps" in r else "(-)")
            cells.append(f"{r[n + '_run']:.2f}/{r[n + '_wait']:.2f} {g:>13}".rjust(32))
        print(f"{r['rate_qps']:>7,.0f} {r['parse_turn_ms']:>7g} {r['within_slo']:>7.3f} "
              f"{r['p50_ms']:>6.2f}/{r['p99_ms']:<6.1f} {r['gaps_per_s']:>7.1f} "
              f"{r['gap_share']:>8.0%}  " + "  ".join(cells) + f"  {r['speed']}")
    print("(run/wait: the process's share of a core running and waiting for one, over the "
          "run and over the reply gaps; a gap: 3 ms or more without a reply while a query "
          "waited; turn: the server's parse_turn_ms; baseline: the first rate and turn)")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
