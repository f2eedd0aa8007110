#!/usr/bin/env python3
"""Fuzz a real server from outside and print what broke: ``python3 scripts/fuzz.py``.

Starts ``clipperlab serve`` in a subprocess (its own process, so its RSS is its own; ports
picked by the kernel, a store in a temporary folder), deploys the fuzzing deployment
(``tests.real.oracle.deploy``: no-op models and a fake container that answers oddly),
sends ``--cases`` cases drawn by hypothesis from ``tests.real.strategies.all_cases``
(``--seed`` makes the run reproducible), judges every answer with ``tests.real.oracle``
(the promises are listed there), checks health every ``--health-every`` cases, and stops
the server.  Prints a table of cases by route and status, then the violations: server-caused
5xx, unanswered requests, wedged replicas, failed health checks and the others, and the
server's RSS at start, peak and end.  Exit code 1 on any violation (or RSS growth above
``--rss-limit-mb``), with the first failing case of each route and kind of violation as
a shell line that sends the same bytes (to a server deployed the same way).

``tests/`` is not an installed package: this script puts the repository root on
``sys.path`` and imports ``tests.real.strategies`` and ``tests.real.oracle`` as the tests do.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from tqdm import tqdm  # noqa: E402

from clipperlab.real.client import AdminClient  # noqa: E402
from clipperlab.report.tables import text_table  # noqa: E402
from tests.real import strategies as s  # noqa: E402
from tests.real.oracle import FuzzEnv, Verdict, deploy, rss_bytes, start_serve, stop_serve  # noqa: E402,E501
from tests.servers import hello  # noqa: E402

Case = s.HttpCase | s.RpcCase | s.OddOutputCase


class ServerDied(Exception):
    """The server process exited while being fuzzed (itself a violation)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=30_000, help="cases to send (default 30000)")
    ap.add_argument("--seed", type=int, default=0, help="hypothesis seed (default 0)")
    ap.add_argument("--health-every", type=int, default=200,
                    help="a health check every N cases (default 200)")
    ap.add_argument("--timeout-s", type=float, default=10.0,
                    help="seconds a request may wait for its answer (default 10)")
    ap.add_argument("--rss-limit-mb", type=float, default=256.0,
                    help="allowed growth of the server's RSS (default 256 MiB)")
    ap.add_argument("--show", type=int, default=20,
                    help="failing cases to print, the first of each route and kind (default 20)")
    ap.add_argument("--store", help="server store folder (default: a temporary one)")
    ap.add_argument("--server-log", help="write the server's log here (default: in the store)")
    args = ap.parse_args(argv)
    if args.cases < 1 or args.health_every < 1 or args.timeout_s <= 0:
        ap.error("--cases and --health-every must be >= 1 and --timeout-s > 0")
    return args


def fuzz(env: FuzzEnv, proc: subprocess.Popen[bytes], args: argparse.Namespace
         ) -> tuple[Counter[tuple[str, str]], list[tuple[Case, Verdict]]]:
    """Send the cases; return (route, status) counts and the failing cases."""
    counts: Counter[tuple[str, str]] = Counter()
    failing: list[tuple[Case, Verdict]] = []
    bar = tqdm(total=args.cases, unit="case", smoothing=0.05)

    @seed(args.seed)
    @settings(max_examples=args.cases, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=s.all_cases())
    def one(case: Case) -> None:
        if proc.poll() is not None:
            raise ServerDied(f"the server exited with {proc.returncode}")
        v = env.run(case)
        counts[(case.route, v.status)] += 1
        if v.violations:
            failing.append((case, v))
            bar.set_postfix(violations=len(failing))
        bar.update(1)

    try:
        one()
    finally:
        bar.close()
    return counts, failing


def route_table(counts: Counter[tuple[str, str]]) -> str:
    routes = sorted({r for r, _ in counts})
    statuses = sorted({st for _, st in counts}, key=lambda x: (not x.isdigit(), x))
    rows: list[dict[str, Any]] = []
    for r in routes:
        row: dict[str, Any] = {"route": r, "cases": sum(n for (rr, _), n in counts.items()
                                                         if rr == r)}
        row.update({st: counts.get((r, st), 0) for st in statuses})
        rows.append(row)
    rows.append({"route": "all", "cases": sum(counts.values()),
                 **{st: sum(n for (_, s2), n in counts.items() if s2 == st)
                    for st in statuses}})
    return text_table(rows, ["route", "cases", *statuses])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = None
    if args.store:
        store = Path(args.store)
        store.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="clipperlab-fuzz-")
        store = Path(tmp.name)
    log_path = Path(args.server_log) if args.server_log else store / "server.log"
    proc, ports = start_serve(store, log_path)
    died = ""
    try:
        admin = AdminClient(f"127.0.0.1:{ports['admin']}")
        deploy(admin)
        env = FuzzEnv(ports, hello=hello, rss_pid=proc.pid, health_every=args.health_every,
                      timeout_s=args.timeout_s)
        counts: Counter[tuple[str, str]] = Counter()
        failing: list[tuple[Case, Verdict]] = []
        try:
            counts, failing = fuzz(env, proc, args)
        except ServerDied as e:
            died = str(e)
        end_checks = [] if died else env.check_health() + env.check_idle()
        rss_end = rss_bytes(proc.pid) if proc.poll() is None else 0
        env.rss_peak = max(env.rss_peak, rss_end)
        env.close()
    finally:
        stop_serve(proc)
        if tmp is not None and not args.server_log:
            log_copy = Path(tempfile.gettempdir()) / "clipperlab-fuzz-server.log"
            log_copy.write_bytes(log_path.read_bytes() if log_path.exists() else b"")
            log_path = log_copy
            tmp.cleanup()
    kinds: Counter[str] = Counter(k for _, v in failing for k in v.kinds)
    kinds.update(t.split(":", 1)[0] for t in end_checks)
    growth = env.rss_peak - env.rss_start
    print()
    print(route_table(counts))
    print()
    mb = 1 << 20
    summary = [
        {"check": "cases sent", "value": sum(counts.values())},
        {"check": "failing cases", "value": len(failing)},
        {"check": "server-caused 5xx", "value": kinds.get("server-caused 5xx", 0)},
        {"check": "unanswered", "value": kinds.get("unanswered", 0)},
        {"check": "wedged replicas", "value": kinds.get("wedged", 0)},
        {"check": "failed health checks", "value": kinds.get("health", 0)},
        *({"check": f"other: {k}", "value": n} for k, n in sorted(kinds.items())
          if k not in ("server-caused 5xx", "unanswered", "wedged", "health")),
        {"check": "health checks", "value": env.health_checks},
        {"check": "server RSS start MiB", "value": round(env.rss_start / mb, 1)},
        {"check": "server RSS peak MiB", "value": round(env.rss_peak / mb, 1)},
        {"check": "server RSS end MiB", "value": round(rss_end / mb, 1)},
        {"check": "server died", "value": died or "no"},
    ]
    print(text_table(summary, ["check", "value"]))
    bad = bool(failing or end_checks or died) or growth > args.rss_limit_mb * mb
    if growth > args.rss_limit_mb * mb:
        print(f"\nthe server's RSS grew by {growth / mb:.0f} MiB (limit {args.rss_limit_mb})")
    for t in end_checks:
        print(f"\nat the end: {t}")
    shown: set[tuple[str, str]] = set()
    for case, v in failing:
        key = (case.route, v.kinds[0])
        if key in shown or len(shown) >= args.show:
            continue  # the first case of each (route, kind of violation)
        shown.add(key)
        port = ports["rpc"] if isinstance(case, s.RpcCase) else ports[
            (case.http if isinstance(case, s.OddOutputCase) else case).port]
        print(f"\n{case.route}: {'; '.join(v.violations)}")
        print(case.reproduce("127.0.0.1", port))
    if failing:
        print(f"\n(the server's log: {log_path}; ports were {ports})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
