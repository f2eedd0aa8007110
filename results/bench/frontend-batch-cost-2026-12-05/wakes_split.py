"""Where the frontend's "per batch" CPU goes: the REST server with the no-op model
(``bench/real_bench.py``'s set-up, cache off, one replica, AIMD) under an open loop at
rates from 2,000 to 64,000 q/s, with per run the frontend's and the container's CPU
(/proc), the engine's queries and batches (/metrics) and each process's voluntary
context switches (/proc/PID/status: how often it slept and was woken).  Prints one line
per run and three least-squares splits of the frontend's CPU: per query + per batch,
and per query + per batch + per wake-up.

    python3 results/bench/frontend-batch-cost-2026-12-05/wakes_split.py

About a minute on 2 cores; run it on a quiet machine (it measures CPU, not time).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "bench"))
import real_bench as rb  # noqa: E402

RATES = (2000, 4000, 8000, 16000, 32000, 48000, 64000, 2000, 8000, 32000)


def wakes(pid: int) -> int:
    """The process's voluntary context switches so far (its sleeps)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches"):
            return int(line.split()[1])
    return 0


def main() -> int:
    ns = argparse.Namespace(set=[], replicas=1, slo_ms=20.0)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        proc, port = rb.start_server(Path(d), ns, cache=False)
        try:
            t = rb.Target("rest", port, "/bench/predict", rb.REST_BODY,
                          rb.DEFAULT_MARKS["rest"], proc.pid)
            kids = rb.child_pids(proc.pid)
            for rate in RATES:
                w0, k0 = wakes(proc.pid), sum(wakes(k) for k in kids)
                r = t.run(["--role", "load", "--rate", str(rate), "--connections", "32",
                           "--duration-s", "3", "--warmup-s", "0.5"])
                w, k = wakes(proc.pid) - w0, sum(wakes(k) for k in kids) - k0
                s = t.samples[-1]
                q, b = s["queries"], s["batches"]
                rows.append((q, b, w, s["frontend_cpu_s"], k, s["container_cpu_s"]))
                print(f"{rate:6d} q/s offered: ok {r['ok_qps']:8.0f}/s, queries/batch "
                      f"{q / b:5.1f}, frontend wake-ups/query {w / q:.2f}, frontend "
                      f"{s['frontend_cpu_s'] / q * 1e6:6.1f} us/query; container wake-ups/batch "
                      f"{k / b:.2f}, {s['container_cpu_s'] / b * 1e6:6.1f} us/batch", flush=True)
        finally:
            rb._stop(proc)
    m = np.array(rows)
    q, b, w, c, kw, kc = (m[:, i] for i in range(6))
    (a2, b2), _ = nnls(np.column_stack([q, b]), c)
    (a3, b3, w3), _ = nnls(np.column_stack([q, b, w]), c)
    print(f"frontend: {a2 * 1e6:.1f} us/query + {b2 * 1e6:.1f} us/batch; with wake-ups: "
          f"{a3 * 1e6:.1f} us/query + {b3 * 1e6:.1f} us/batch + {w3 * 1e6:.1f} us/wake-up")
    (cb,), _ = nnls(b[:, None], kc)
    (cb2, cw2), _ = nnls(np.column_stack([b, kw]), kc)
    print(f"container: {cb * 1e6:.1f} us/batch; with wake-ups: {cb2 * 1e6:.1f} us/batch + "
          f"{cw2 * 1e6:.1f} us/wake-up")
    return 0


if __name__ == "__main__":
    sys.exit(main())
