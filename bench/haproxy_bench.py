"""Throughput through HAProxy with one and two frontends, and failover time (README
"Running on several machines").

Redis, ``--frontends`` ``clipperlab serve`` processes on it (no container manager), one
no-op container process serving every frontend (``--store``), HAProxy in front with
``examples/haproxy.cfg``.  A closed-loop client (uvloop, ``--connections`` keep-alive
connections, raw HTTP/1.1) sends Clipper REST queries for ``--seconds``:

- ``direct``: to the first frontend's query port, no HAProxy (the baseline);
- ``haproxy``: through HAProxy, for 1 and for 2 frontends;
- ``failover``: two frontends under the same load; frontend A is SIGKILLed; reported:
  seconds until HAProxy marks it DOWN, queries that got an error (connection reset or
  5xx) and the span from the kill to the last error, and whether any answer was wrong.

The client shares the machine with everything it measures: say how many cores and how
loaded the machine was (printed).

    python3 bench/haproxy_bench.py --seconds 10 --connections 32
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import orjson

from clipperlab.real.client import AdminClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.*: the repository's

from tests.services import ServeProcess, haproxy, haproxy_up, redis_server, serve_process  # noqa: E402

CONFIG = """
[server]
heartbeat_interval_s = 0.5
containers = "none"
cache = false
store_dir = "{files}"
"""
DEPLOY = """
[[applications]]
name = "app"
slo_ms = 1000
default_output = -1
models = ["m"]

[[models]]
name = "m"
kind = "noop"
replicas = 1
"""


class Counts:
    def __init__(self) -> None:
        self.ok = 0
        self.default = 0
        self.wrong = 0
        self.errors: list[float] = []  # when each error came (time.monotonic())


async def _client(host: str, port: int, until: float, c: Counts) -> None:
    body = orjson.dumps({"input": [1.0]})
    req = (b"POST /app/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    while time.monotonic() < until:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            assert reader is not None
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            data = await reader.readexactly(length)
            if status != 200:
                c.errors.append(time.monotonic())
                continue
            doc = orjson.loads(data)
            if doc["default"]:
                c.default += 1
            elif doc["output"] == 0:  # the no-op model answers 0
                c.ok += 1
            else:
                c.wrong += 1
        except (OSError, asyncio.IncompleteReadError, ValueError):
            c.errors.append(time.monotonic())
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.001)
    if writer is not None:
        writer.close()


def load(address: str, seconds: float, connections: int) -> Counts:
    import uvloop

    host, _, port = address.rpartition(":")
    c = Counts()

    async def main() -> None:
        until = time.monotonic() + seconds
        await asyncio.gather(*[_client(host, int(port), until, c) for _ in range(connections)])

    uvloop.run(main())
    return c


def _frontends(stack: ExitStack, folder: Path, url: str, n: int) -> list[ServeProcess]:
    cfg = CONFIG.format(files=folder / "files")
    out = [stack.enter_context(serve_process(folder / f"fe{i}", cfg + (DEPLOY if i == 0 else ""),
                                             "--store", url, "--log-level", "WARNING"))
           for i in range(n)]
    for f in out:
        AdminClient(f.admin).wait_ready("app", timeout_s=60)
    return out


def _row(name: str, c: Counts, seconds: float) -> str:
    return (f"| {name} | {c.ok / seconds:,.0f} | {c.default} | {len(c.errors)} | {c.wrong} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()),
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0,
                    help="seconds of load per measurement")
    ap.add_argument("--connections", type=int, default=32,
                    help="keep-alive connections of the closed-loop client")
    args = ap.parse_args()
    print(f"# {os.cpu_count()} cores, load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("| setup | answers/s | defaults | errors | wrong |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp) / "redis") as r:
        folder = Path(tmp)
        container = subprocess.Popen(
            [sys.executable, "-m", "clipperlab.real.container", "--model", "noop", "--name",
             "m", "--store", r.url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with ExitStack() as stack:
                fronts = _frontends(stack, folder, r.url, 2)
                c = load(fronts[0].query, args.seconds, args.connections)
                print(_row("one frontend, direct", c, args.seconds))
                for n in (1, 2):
                    with haproxy(folder / f"lb{n}", [f.query for f in fronts[:n]]) as lb:
                        _wait_up(lb.stats_url, n)
                        c = load(lb.url, args.seconds, args.connections)
                        print(_row(f"{n} frontend(s) through HAProxy", c, args.seconds))
                with haproxy(folder / "lbf", [f.query for f in fronts]) as lb:
                    _wait_up(lb.stats_url, 2)
                    _failover(lb.url, lb.stats_url, fronts[0], args)
        finally:
            container.kill()
            container.wait()
    print(f"# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def _wait_up(stats_url: str, n: int) -> None:
    until = time.monotonic() + 30
    while sum(s == "UP" for s in haproxy_up(stats_url).values()) < n:
        assert time.monotonic() < until, haproxy_up(stats_url)
        time.sleep(0.05)


def _failover(url: str, stats_url: str, victim: ServeProcess, args: argparse.Namespace) -> None:
    import threading

    out: list[Counts] = []
    t = threading.Thread(target=lambda: out.append(load(url, args.seconds, args.connections)))
    t.start()
    time.sleep(args.seconds / 3)
    killed_at = time.monotonic()
    victim.proc.kill()
    down_s = float("nan")
    while time.monotonic() < killed_at + args.seconds:
        if haproxy_up(stats_url).get("fe1", "").startswith("DOWN"):
            down_s = time.monotonic() - killed_at
            break
        time.sleep(0.01)
    t.join()
    c = out[0]
    span = max(c.errors) - killed_at if c.errors else 0.0
    print(_row("2 frontends, one SIGKILLed", c, args.seconds))
    print(f"\nfailover: HAProxy marked the killed frontend DOWN after {down_s:.2f} s; "
          f"{len(c.errors)} queries got an error, the last {span:.2f} s after the kill; "
          f"{c.wrong} wrong answers")


if __name__ == "__main__":
    main()
