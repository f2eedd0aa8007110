#!/usr/bin/env python3
"""Open-loop load on a real server while its parts fail: ``python3 scripts/chaos.py``.

Starts ``clipperlab serve`` (a subprocess, a store in a temporary folder) with one
application on ``--replicas`` replicas of a no-op model that sleeps ``--delay-s`` per
batch, sends Poisson arrivals at ``--rate`` queries/s for ``--duration-s`` seconds
(``clipperlab.workloads``; each query's input is unique, so the cache answers none), and
injects the faults of ``--faults``:

- ``kill``: SIGKILL one container (at 20% of the run); the manager restarts it.
- ``stop``: SIGSTOP another container for ``--stop-s`` seconds, then SIGCONT (a straggler;
  at 45%).
- ``restart``: SIGTERM the frontend and start it again on the same ports and store (at
  70%); it answers what it accepted before it exits.

The load generator is open loop (latency counts from the scheduled send, as in
``clipperlab.calibration.loadgen``, whose request encoding it reuses) and keeps
``--connections`` keep-alive connections, reconnecting when one closes.  Each query ends
as one of:

- ``prediction``: HTTP 200, not a default, within the objective (``--slo-ms``);
- ``default``: HTTP 200 with the application's default and its explanation, in time;
- ``late``: HTTP 200 after the objective;
- ``refused``: the frontend was not there: no connection could be made, the connection
  was reset (the kernel resets a connection whose bytes the process never read), or
  HTTP 503 (overload, shutting down);
- ``other``: any other HTTP status;
- ``lost``: accepted but unanswered: the server closed the connection cleanly after
  reading the request (a FIN, not a reset), or no answer came before the end.  This
  must be 0.

Prints a table of those counts and writes ``--out``: ``queries.csv`` (one row per
query), ``summary.csv`` (the table) and ``faults.csv`` (what was injected, when).  Exit code
1 when any query was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools
import numpy as np

from clipperlab.calibration.loadgen import request_bytes
from clipperlab.real.client import AdminClient
from clipperlab.report.tables import text_table
from clipperlab.workloads import Poisson, SyntheticTensors, Workload

APP = "chaos"
MODEL = "noop"
FAULTS = ("kill", "stop", "restart")
OUTCOMES = ("prediction", "default", "late", "refused", "other", "lost")
FAULT_AT = {"kill": 0.2, "stop": 0.45, "restart": 0.7}  # fraction of the run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--duration-s", type=float, default=20.0, help="seconds of load (20)")
    ap.add_argument("--rate", type=float, default=200.0, help="queries per second (200)")
    ap.add_argument("--seed", type=int, default=0, help="arrivals seed (0)")
    ap.add_argument("--out", default="results/chaos", help="folder for the CSVs")
    ap.add_argument("--faults", default=",".join(FAULTS),
                    help=f"comma-separated, of {', '.join(FAULTS)} (default: all)")
    ap.add_argument("--replicas", type=int, default=2, help="replicas of the model (2)")
    ap.add_argument("--delay-s", type=float, default=0.005, help="the model's delay (0.005)")
    ap.add_argument("--slo-ms", type=float, default=200.0, help="the objective (200 ms)")
    ap.add_argument("--stop-s", type=float, default=1.0, help="how long SIGSTOP lasts (1)")
    ap.add_argument("--connections", type=int, default=8, help="keep-alive connections (8)")
    ap.add_argument("--drain-s", type=float, default=10.0,
                    help="wait this long for answers after the last send (10)")
    ap.add_argument("--store", help="server store folder (default: a temporary one)")
    args = ap.parse_args(argv)
    faults = [f for f in args.faults.split(",") if f]
    bad = [f for f in faults if f not in FAULTS]
    if bad:
        ap.error(f"--faults: {bad} unknown; expected some of {', '.join(FAULTS)}")
    args.fault_list = faults
    if args.duration_s <= 0 or args.rate <= 0 or args.replicas < 1 or args.connections < 1:
        ap.error("--duration-s and --rate must be > 0, --replicas and --connections >= 1")
    if "stop" in faults and args.replicas < 2 or "kill" in faults and args.replicas < 2:
        ap.error("kill and stop need --replicas >= 2 (one keeps serving)")
    return args


# --------------------------------------------------------------------------- the server


class Frontend:
    """``clipperlab serve`` in a subprocess; ``restart`` keeps its ports and store."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.ports: dict[str, int] = {"query": 0, "admin": 0, "rpc": 0}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = store / "server.log"

    def start(self) -> None:
        ports_file = self.store / "ports.json"
        ports_file.unlink(missing_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "clipperlab", "serve",
                 "--query-port", str(self.ports["query"]),
                 "--admin-port", str(self.ports["admin"]),
                 "--rpc-port", str(self.ports["rpc"]), "--store", str(self.store),
                 "--ports-file", str(ports_file), "--log-level", "WARNING"],
                stdout=log, stderr=log, start_new_session=True,
            )
        until = time.monotonic() + 60
        while not ports_file.exists() or not ports_file.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > until:
                self.stop()
                raise SystemExit(f"chaos.py: the server did not start; see {self.log_path}")
            time.sleep(0.02)
        self.ports = json.loads(ports_file.read_text())["ports"]

    def stop(self, timeout_s: float = 30.0) -> None:
        p = self.proc
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def admin(self) -> AdminClient:
        return AdminClient(f"127.0.0.1:{self.ports['admin']}")

    def container_pids(self) -> list[int]:
        """Pids of the model's running containers, by replica."""
        found = self.admin().inspect()["containers"]
        return [c["pid"] for c in sorted(found, key=lambda c: str(c["replica"]))
                if c["running"] and c["pid"]]


# --------------------------------------------------------------------------- the load


@dataclass
class Tally:
    n: int
    sent_at: np.ndarray[Any, Any] = field(init=False)
    reply_at: np.ndarray[Any, Any] = field(init=False)
    status: np.ndarray[Any, Any] = field(init=False)
    default: np.ndarray[Any, Any] = field(init=False)
    outcome: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.sent_at = np.full(self.n, np.nan)
        self.reply_at = np.full(self.n, np.nan)
        self.status = np.zeros(self.n, dtype=np.int64)
        self.default = np.zeros(self.n, dtype=bool)
        self.outcome = [""] * self.n


class Conn(asyncio.Protocol):
    """One keep-alive connection; answers come back in request order."""

    def __init__(self, tally: Tally, start: float) -> None:
        self.tally = tally
        self.start = start
        self.pending: deque[int] = deque()
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.body: list[bytes] = []
        self.open = False
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.open = True

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.abort()

    def on_message_begin(self) -> None:
        self.body = []

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if not self.pending:
            return
        i = self.pending.popleft()
        t = self.tally
        t.reply_at[i] = time.monotonic() - self.start
        t.status[i] = self.parser.get_status_code()
        t.default[i] = b'"default":true' in b"".join(self.body)

    def connection_lost(self, exc: Exception | None) -> None:
        # a reset: the server never read these bytes; a clean close: it read and dropped them
        how = "refused" if exc is not None else "lost"
        for i in self.pending:
            self.tally.outcome[i] = how
        self.pending.clear()
        self.open = False
        if not self.closed.done():
            self.closed.set_result(None)


async def keep_connection(conns: list[Conn | None], k: int, tally: Tally, start: float,
                          until: list[float], port: int) -> None:
    """Slot ``k`` of the pool: connect, wait for the close, reconnect (until the end)."""
    loop = asyncio.get_running_loop()
    while time.monotonic() < until[0]:
        try:
            _, c = await loop.create_connection(lambda: Conn(tally, start), "127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        conns[k] = c
        await c.closed
        conns[k] = None
        await asyncio.sleep(0.02)


async def run_load(args: argparse.Namespace, port: int, arrival_at: np.ndarray[Any, Any],
                   bodies: list[bytes], faults: list[tuple[float, str]],
                   inject: Any) -> Tally:
    """Send ``bodies[q]`` at ``arrival_at[q]`` on the pool; inject ``faults`` (at seconds
    from the start) with ``inject`` in a thread; return what each query got."""
    n = len(arrival_at)
    tally = Tally(n)
    start = time.monotonic()
    until = [start + args.duration_s + args.drain_s + 5]
    conns: list[Conn | None] = [None] * args.connections
    keepers = [asyncio.create_task(keep_connection(conns, k, tally, start, until, port))
               for k in range(args.connections)]
    loop = asyncio.get_running_loop()

    def fire(fault: str) -> None:
        loop.run_in_executor(None, inject, fault)

    fault_tasks = [loop.call_later(at, fire, f) for at, f in faults]
    await asyncio.sleep(0.2)  # let the pool connect
    start_at = time.monotonic()
    offset = start_at - start
    i = 0
    while i < n:
        now = time.monotonic() - start_at
        j = int(np.searchsorted(arrival_at, now, side="right"))
        for q in range(i, j):
            live = [c for c in conns if c is not None and c.open]
            tally.sent_at[q] = now
            if not live:
                tally.outcome[q] = "refused"  # no connection to the frontend
                continue
            c = min(live, key=lambda c: len(c.pending))
            c.pending.append(q)
            assert c.transport is not None
            c.transport.write(bodies[q])
        i = max(i, j)
        if i < n:
            await asyncio.sleep(min(max(float(arrival_at[i]) - now, 0.001), 0.05))
    drain_until = time.monotonic() + args.drain_s
    while time.monotonic() < drain_until and any(c is not None and c.pending for c in conns):
        await asyncio.sleep(0.01)
    until[0] = 0.0
    for slot in conns:
        if slot is not None and slot.transport is not None:
            slot.transport.close()
    for t in keepers:
        t.cancel()
    for h in fault_tasks:
        h.cancel()
    tally.reply_at -= offset  # times from the first scheduled send
    return tally


def classify(tally: Tally, arrival_at: np.ndarray[Any, Any], slo_s: float) -> None:
    for q in range(tally.n):
        if tally.outcome[q]:
            continue
        st = int(tally.status[q])
        if st == 0:
            tally.outcome[q] = "lost"  # written, never answered
        elif st == 503:
            tally.outcome[q] = "refused"
        elif st != 200:
            tally.outcome[q] = "other"
        elif tally.reply_at[q] - arrival_at[q] > slo_s:
            tally.outcome[q] = "late"
        else:
            tally.outcome[q] = "default" if tally.default[q] else "prediction"


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = None if args.store else tempfile.TemporaryDirectory(prefix="clipperlab-chaos-")
    store = Path(args.store or (tmp.name if tmp else "."))
    store.mkdir(parents=True, exist_ok=True)
    fe = Frontend(store)
    fe.start()
    injected: list[dict[str, Any]] = []
    t0 = [0.0]
    stopped: list[int] = []
    try:
        admin = fe.admin()
        admin.add_app(APP, slo_ms=args.slo_ms, default_output=-1)
        admin.add_model(MODEL, kind="noop", replicas=args.replicas,
                        options={"delay_s": args.delay_s}, app=APP)
        admin.wait_ready(APP, replicas=args.replicas)
        w = Workload(Poisson(args.rate), duration_s=args.duration_s,
                     inputs=SyntheticTensors(shape=(4,), pool=256), app=APP)
        trace = w.generate(args.seed)
        pool, _ = w.inputs.load()
        arrival_at = np.asarray(trace.arrival_at, dtype=np.float64)
        bodies = [request_bytes("clipper", APP, np.concatenate(([float(q)], pool[int(k)])))
                  for q, k in enumerate(trace.input_index)]

        def inject(fault: str) -> None:
            at = time.monotonic() - t0[0]
            detail = ""
            try:
                if fault == "restart":
                    fe.stop()
                    down_at = time.monotonic() - t0[0]
                    fe.start()
                    detail = f"down at {down_at:.2f} s, up at {time.monotonic() - t0[0]:.2f} s"
                else:
                    pids = fe.container_pids()
                    pid = pids[0] if fault == "kill" else pids[-1]
                    if fault == "kill":
                        os.kill(pid, signal.SIGKILL)
                        detail = f"SIGKILL pid {pid}"
                    else:
                        os.kill(pid, signal.SIGSTOP)
                        stopped.append(pid)
                        time.sleep(args.stop_s)
                        os.kill(pid, signal.SIGCONT)
                        stopped.remove(pid)
                        detail = f"SIGSTOP pid {pid} for {args.stop_s} s"
            except Exception as e:  # noqa: BLE001 - a fault that could not be injected
                detail = f"failed: {type(e).__name__}: {e}"
            injected.append({"fault": fault, "at_s": round(at, 3), "detail": detail})
            print(f"[{at:6.2f} s] {fault}: {detail}", flush=True)

        faults = [(FAULT_AT[f] * args.duration_s + 0.2, f) for f in args.fault_list]

        async def go() -> Tally:
            t0[0] = time.monotonic() + 0.2
            return await run_load(args, fe.ports["query"], arrival_at, bodies, faults, inject)

        import uvloop

        tally = uvloop.run(go())
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        fe.stop()
        if tmp is not None:
            tmp.cleanup()
    classify(tally, arrival_at, args.slo_ms / 1e3)
    counts = {o: tally.outcome.count(o) for o in OUTCOMES}
    summary = {"sent": tally.n, **counts, "rate_qps": args.rate,
               "duration_s": args.duration_s, "seed": args.seed,
               "faults": "+".join(args.fault_list) or "none"}
    _write_csv(out / "summary.csv", [summary])
    _write_csv(out / "faults.csv", injected or [{"fault": "", "at_s": "", "detail": ""}])
    _write_csv(out / "queries.csv", [
        {"query": q, "arrival_at": round(float(arrival_at[q]), 6),
         "sent_at": round(float(tally.sent_at[q]), 6),
         "reply_at": round(float(tally.reply_at[q]), 6), "status": int(tally.status[q]),
         "default": bool(tally.default[q]), "outcome": tally.outcome[q]}
        for q in range(tally.n)])
    print(text_table([{"sent": tally.n, "prediction": counts["prediction"],
                       "default (explained)": counts["default"], "late": counts["late"],
                       "refused": counts["refused"], "other status": counts["other"],
                       "accepted but unanswered": counts["lost"]}]))
    print(f"(CSV in {out}/)")
    return 1 if counts["lost"] else 0


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)


if __name__ == "__main__":
    sys.exit(main())
