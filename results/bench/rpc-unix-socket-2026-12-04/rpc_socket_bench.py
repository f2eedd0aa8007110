"""The container RPC over loopback TCP against a Unix socket (``rpc_unix_socket``).

Two clipperlab servers, each with one managed no-op container and the cache off, run side
by side: one with the default loopback TCP (the baseline), one with ``rpc_unix_socket =
"auto"``.  The bench alternates between them, round after round (the order flipped each
round), so that the machine's drift over minutes falls on both alike, and in each turn
measures, from another process (``real_bench``'s load generator):

- **c=1**: one request at a time for ``--duration-s``: every query is a batch of one, so
  the frontend's and the container's CPU per query (``/proc``) is a query's cost plus a
  batch's, and the p50 latency is one round trip through the RPC;
- **open loop** at ``--rate`` q/s over ``--connections`` connections: the frontend's and
  the container's CPU per batch and per query, a least-squares split over both kinds of
  run (the batches grow with the load, so the two kinds separate the terms).

It prints, per measure, the median over the rounds for each transport, the Unix socket's
ratio to TCP, and in how many rounds (pairs measured next to each other) the Unix socket
was the lower.  The machine's load and the speed of its cores (``quiet.SpeedMonitor``)
are printed with it: on a VM whose cores switch speed, only pairs compare.

    python3 bench/rpc_socket_bench.py [--rounds 6] [--duration-s 4] [--rate 4000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_bench as rb  # noqa: E402  (the load generator, process CPU, server start)

KINDS = ("tcp", "unix")
SETTINGS = {"tcp": [], "unix": ['rpc_unix_socket = "auto"']}


def _server_args(a: argparse.Namespace, kind: str) -> argparse.Namespace:
    return argparse.Namespace(set=SETTINGS[kind], replicas=1, slo_ms=a.slo_ms)


def one_turn(t: rb.Target, a: argparse.Namespace) -> dict[str, float]:
    """A c=1 run and an open-loop run on ``t``; their CPU samples stay in ``t.samples``."""
    common = ["--duration-s", str(a.duration_s), "--warmup-s", str(a.warmup_s)]
    c1 = t.run(["--role", "closed", *common])
    s1 = t.samples[-1]
    t.run(["--role", "load", "--rate", str(a.rate), "--connections", str(a.connections),
           *common])
    s2 = t.samples[-1]
    q1 = max(s1["queries"], 1.0)
    q2, b2 = max(s2["queries"], 1.0), max(s2["batches"], 1.0)
    return {"c1_p50_ms": float(c1["p50_ms"]),
            "c1_frontend_us": s1["frontend_cpu_s"] / q1 * 1e6,
            "c1_container_us": s1["container_cpu_s"] / q1 * 1e6,
            "open_frontend_us_per_query": s2["frontend_cpu_s"] / q2 * 1e6,
            "open_container_us_per_batch": s2["container_cpu_s"] / b2 * 1e6,
            "open_queries_per_batch": q2 / b2}


MEASURES = (
    ("c1_p50_ms", "c=1 p50 (ms)"),
    ("c1_frontend_us", "c=1 frontend CPU per query (us)"),
    ("c1_container_us", "c=1 container CPU per query = per batch (us)"),
    ("open_frontend_us_per_query", "open loop: frontend CPU per query (us)"),
    ("open_container_us_per_batch", "open loop: container CPU per batch (us)"),
    ("frontend_us_per_batch", "frontend CPU per batch, split over all runs (us)"),
    ("frontend_us_per_query", "frontend CPU per query, split over all runs (us)"),
    ("container_us_per_batch", "container CPU per batch, split over all runs (us)"),
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6, help="turns per transport")
    ap.add_argument("--duration-s", type=float, default=4.0, help="measured seconds per run")
    ap.add_argument("--warmup-s", type=float, default=0.5, help="unmeasured seconds first")
    ap.add_argument("--rate", type=float, default=4000.0, help="open-loop offered load (q/s)")
    ap.add_argument("--connections", type=int, default=32, help="open-loop connections")
    ap.add_argument("--slo-ms", type=float, default=20.0, help="the application's objective")
    ap.add_argument("--json", help="also write the results here (JSON)")
    a = ap.parse_args()
    if a.rounds < 1 or a.duration_s <= 0 or a.rate <= 0 or a.connections < 1:
        ap.error("--rounds, --duration-s, --rate and --connections must be positive")
    busy = rb.background_busy_share()
    load = Path("/proc/loadavg").read_text().split()[0]
    print(f"before the run the machine's CPUs were {busy:.0%} busy with other jobs (load"
          f" average {load})", flush=True)
    from clipperlab.calibration.quiet import SpeedMonitor

    turns: dict[str, list[dict[str, float]]] = {k: [] for k in KINDS}
    targets: dict[str, rb.Target] = {}
    procs = []
    with tempfile.TemporaryDirectory() as d, SpeedMonitor(Path(d) / "speed.txt") as mon:
        try:
            for kind in KINDS:
                tmp = Path(d) / kind
                tmp.mkdir()
                proc, port = rb.start_server(tmp, _server_args(a, kind), cache=False)
                procs.append(proc)
                targets[kind] = rb.Target(kind, port, "/bench/predict", rb.REST_BODY,
                                          rb.DEFAULT_MARKS["rest"], proc.pid)
            t0 = time.monotonic()
            for r in range(a.rounds):
                for kind in (KINDS if r % 2 == 0 else KINDS[::-1]):
                    got = one_turn(targets[kind], a)
                    turns[kind].append(got)
                    print(f"  round {r + 1}/{a.rounds} {kind:<4}: c=1 p50"
                          f" {got['c1_p50_ms']:.3f} ms, frontend {got['c1_frontend_us']:.1f}"
                          f" us/q at c=1, {got['open_frontend_us_per_query']:.1f} us/q at"
                          f" {a.rate:,.0f} q/s (batch {got['open_queries_per_batch']:.1f})",
                          flush=True)
            speed = mon.fit(t0)
        finally:
            for p in procs:
                rb._stop(p)
    splits = {k: targets[k].cpu_split() for k in KINDS}
    rows = []
    for key, label in MEASURES:
        if key in turns["tcp"][0]:
            tcp = [x[key] for x in turns["tcp"]]
            unix = [x[key] for x in turns["unix"]]
            lower = sum(u < t for u, t in zip(unix, tcp, strict=True))
            rows.append((label, statistics.median(tcp), statistics.median(unix),
                         f"{lower}/{len(tcp)}"))
        else:
            t_, u_ = splits["tcp"].get(key, np.nan), splits["unix"].get(key, np.nan)
            rows.append((label, t_, u_, "-"))
    print(f"\n{'measure':<50} {'TCP':>9} {'Unix':>9} {'Unix/TCP':>9}  Unix lower")
    for label, t_, u_, lower in rows:
        ratio = u_ / t_ if t_ else float("nan")
        print(f"{label:<50} {t_:>9.3f} {u_:>9.3f} {ratio:>9.2f}  {lower}")
    print(f"(medians over {a.rounds} rounds, the two transports alternated; 'Unix lower': in"
          " how many rounds the Unix socket's figure was below TCP's in the same round;"
          " splits: a non-negative least-squares fit over each transport's runs)")
    if speed is not None:
        print(f"the machine's speed during the run: slow {speed.slow_share:.0%} of the time"
              f" by x{speed.slow_factor:.2f} (fast {speed.fast_ns:.0f} ns a probe iteration);"
              f" load average before {load}")
    if a.json:
        Path(a.json).write_text(json.dumps(
            {"turns": turns, "splits": splits, "loadavg": load, "background_busy": busy,
             "args": vars(a), "speed": None if speed is None else {
                 "fast_ns": speed.fast_ns, "slow_factor": speed.slow_factor,
                 "slow_share": speed.slow_share}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
