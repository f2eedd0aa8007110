"""Real-mode benchmark: the whole path against a bare echo server on the same HTTP library.

    python3 bench/real_bench.py [--duration-s 5] [--connections 32] [--json results.json]

What it runs, each in its own process:
1. a bare echo server: ``clipperlab.real.http.HttpProtocol`` (httptools on uvloop) answering every
   request with its body, no JSON, no engine;
2. ``clipperlab serve`` with one application ``bench`` (SLO 20 ms) and one no-op container
   with AIMD batching; the prediction cache is off (the paper salted its inputs so the cache
   never hit), so every query takes HTTP -> JSON -> engine -> RPC -> container -> reply;
3. an open-loop load generator (uvloop, ``--connections`` keep-alive connections, requests
   pipelined, responses parsed with httptools).  Each request's latency is counted from the
   time the schedule says it should have been sent, so a lagging generator cannot hide
   queueing (no coordinated omission).

For each server the offered load ramps up (x1.3 from 4,000/s) until fewer than 95% of the
offered queries get a successful reply (HTTP 200, and for clipperlab not a default) inside
the measurement window; *saturation throughput* is the best successful rate seen.  Then the
load is set to half of that and p50/p99 latency are measured.  The table ends with the ratio
clipperlab / echo.  The issue's goal on the 2-core dev machine: >= 10,000 queries/s end to
end and >= 0.4x the echo server.  Timings vary with the machine's other load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLI = [sys.executable, "-c", "import sys; from clipperlab.cli import main; sys.exit(main())"]
BODY = b'{"input":[0.25,0.5,0.75,1.0]}'


# ============================================================================ echo server
def run_echo(port_file: str) -> None:
    import uvloop

    from clipperlab.real.http import HttpProtocol, Request, response

    def handler(req: Request) -> bytes:
        return response(200, req.body)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(lambda: HttpProtocol(handler), "127.0.0.1", 0, backlog=1024)
        Path(port_file).write_text(str(srv.sockets[0].getsockname()[1]))
        await asyncio.Event().wait()

    uvloop.run(main())


# ============================================================================ load generator
class _Conn(asyncio.Protocol):
    def __init__(self, stats: dict[str, Any]) -> None:
        import httptools

        self.stats = stats
        self.sent_at: deque[float] = deque()
        self.parser = httptools.HttpResponseParser(self)
        self.transport: Any = None
        self.default = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.default = False

    def on_body(self, body: bytes) -> None:
        if b'"default":true' in body:
            self.default = True

    def on_message_complete(self) -> None:
        st = self.stats
        t0 = self.sent_at.popleft()
        now = time.monotonic()
        code = self.parser.get_status_code()
        if now >= st["measure_from"] and now < st["measure_until"]:
            if code == 200 and not self.default:
                st["ok"] += 1
                st["lat"].append(now - t0)
            elif code == 200:
                st["defaults"] += 1
            else:
                st["errors"] += 1
        st["outstanding"] -= 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats["lost"] += 1


def run_load(
    port: int, path: str, rate: float, duration_s: float, warmup_s: float, conns: int
) -> dict[str, Any]:
    import uvloop

    request = (
        b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(BODY), BODY)
    )
    max_outstanding = 50_000

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        stats: dict[str, Any] = {
            "ok": 0,
            "defaults": 0,
            "errors": 0,
            "lost": 0,
            "skipped": 0,
            "outstanding": 0,
            "lat": [],
            "measure_from": 0.0,
            "measure_until": 0.0,
        }
        cs: list[_Conn] = []
        for _ in range(conns):
            _, c = await loop.create_connection(lambda: _Conn(stats), "127.0.0.1", port)
            cs.append(c)
        start = time.monotonic()
        stats["measure_from"] = start + warmup_s
        stats["measure_until"] = start + warmup_s + duration_s
        end = stats["measure_until"]
        sent = 0
        i = 0
        while True:
            now = time.monotonic()
            if now >= end:
                break
            due = int((now - start) * rate)
            n = due - sent
            if n > 0:
                per: dict[int, int] = {}
                for k in range(n):
                    intended = start + (sent + k) / rate
                    if stats["outstanding"] >= max_outstanding:
                        stats["skipped"] += 1
                        continue
                    c = cs[i % conns]
                    i += 1
                    c.sent_at.append(intended)
                    stats["outstanding"] += 1
                    per[id(c)] = per.get(id(c), 0) + 1
                for c in cs:
                    m = per.get(id(c))
                    if m:
                        c.transport.write(request * m)
                sent = due
            await asyncio.sleep(0.001)  # uvloop timers have 1 ms resolution; 0.5 ms would spin
        # Let the last responses arrive (they fall outside the window and are not counted).
        until = time.monotonic() + 2.0
        while stats["outstanding"] and time.monotonic() < until:
            await asyncio.sleep(0.01)
        for c in cs:
            c.transport.close()
        lat = np.array(stats["lat"]) * 1e3
        return {
            "offered_qps": rate,
            "ok_qps": stats["ok"] / duration_s,
            "defaults_qps": stats["defaults"] / duration_s,
            "errors": stats["errors"],
            "skipped": stats["skipped"],
            "p50_ms": float(np.percentile(lat, 50)) if lat.size else float("nan"),
            "p99_ms": float(np.percentile(lat, 99)) if lat.size else float("nan"),
        }

    return uvloop.run(main())


def load_subprocess(port: int, path: str, rate: float, a: argparse.Namespace) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--role",
            "load",
            "--port",
            str(port),
            "--path",
            path,
            "--rate",
            str(rate),
            "--duration-s",
            str(a.duration_s),
            "--warmup-s",
            str(a.warmup_s),
            "--connections",
            str(a.connections),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# ============================================================================ orchestration
def _wait_file(p: Path, proc: subprocess.Popen[Any], timeout_s: float = 60.0) -> str:
    until = time.monotonic() + timeout_s
    while time.monotonic() < until:
        if p.exists() and p.read_text().strip():
            return p.read_text()
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        time.sleep(0.05)
    raise TimeoutError(f"{p} never appeared")


def measure(port: int, path: str, a: argparse.Namespace) -> dict[str, Any]:
    """Ramp the offered load by ``--step`` until fewer than ``--good-share`` of the offered
    queries get a successful reply within the window; the saturation throughput is the
    best successful rate seen.  Then measure latency at half of it."""
    steps = []
    rate = a.start_rate
    best: dict[str, Any] | None = None
    while rate <= a.max_rate:
        r = load_subprocess(port, path, rate, a)
        steps.append(r)
        print(
            f"  offered {rate:>9,.0f}/s -> ok {r['ok_qps']:>9,.0f}/s"
            f" (defaults {r['defaults_qps']:,.0f}/s, errors {r['errors']})",
            flush=True,
        )
        if best is None or r["ok_qps"] > best["ok_qps"]:
            best = r
        if r["ok_qps"] < a.good_share * rate:
            break
        rate *= a.step
    assert best is not None
    half = load_subprocess(port, path, max(best["ok_qps"] / 2, 100.0), a)
    return {"saturation": best, "half": half, "ramp": steps}


def bench_echo(a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    pf = tmp / "echo.port"
    proc = subprocess.Popen([sys.executable, __file__, "--role", "echo", "--port-file", str(pf)])
    try:
        port = int(_wait_file(pf, proc))
        return measure(port, "/echo", a)
    finally:
        proc.terminate()
        proc.wait()


def bench_clipperlab(a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    cfg = tmp / "bench.toml"
    cfg.write_text(
        f"""
[server]
query_port = 0
admin_port = 0
rpc_port = 0
store = "{tmp / "store"}"
cache = false

[[models]]
name = "noop"
kind = "noop"
replicas = {a.replicas}
batching = {{ policy = "aimd" }}

[[applications]]
name = "bench"
slo_ms = {a.slo_ms}
default_output = -1
models = ["noop"]
"""
    )
    pf = tmp / "serve.ports"
    proc = subprocess.Popen(
        [
            *CLI,
            "serve",
            "--config",
            str(cfg),
            "--ports-file",
            str(pf),
            "--log-level",
            "WARNING",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    try:
        port = int(json.loads(_wait_file(pf, proc))["ports"]["query"])
        import http.client

        until = time.monotonic() + 60
        while time.monotonic() < until:
            c = http.client.HTTPConnection("127.0.0.1", port)
            c.request("GET", "/v2/models/bench/ready")
            if c.getresponse().status == 200:
                break
            time.sleep(0.1)
        return measure(port, "/bench/predict", a)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


_CPU_AT_START: list[int] = []


def _cpu_stat() -> list[int]:
    with open("/proc/stat") as f:
        return [int(v) for v in f.readline().split()[1:]]


def _cpu_busy_share() -> float:
    """Share of all CPUs' time that was not idle since ``_CPU_AT_START`` was taken."""
    now = _cpu_stat()
    d = [b - a for a, b in zip(_CPU_AT_START, now, strict=True)]
    idle = d[3] + d[4]
    return 1.0 - idle / max(sum(d[:8]), 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--role", choices=("main", "echo", "load"), default="main")
    ap.add_argument("--port", type=int)
    ap.add_argument("--port-file")
    ap.add_argument("--path", default="/echo")
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--duration-s", type=float, default=5.0)
    ap.add_argument("--warmup-s", type=float, default=1.0)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--replicas", type=int, default=1, help="no-op replicas (default 1)")
    ap.add_argument("--slo-ms", type=float, default=20.0, help="the application's SLO")
    ap.add_argument("--start-rate", type=float, default=4000.0, help="first offered load")
    ap.add_argument("--step", type=float, default=1.3, help="ramp factor between runs")
    ap.add_argument("--max-rate", type=float, default=200_000.0, help="stop the ramp here")
    ap.add_argument(
        "--good-share",
        type=float,
        default=0.95,
        help="a run passes when this share of the offered load succeeds",
    )
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--only", choices=("echo", "clipperlab"), help="run one server only")
    a = ap.parse_args()
    if a.role == "echo":
        run_echo(a.port_file)
        return 0
    if a.role == "load":
        r = run_load(a.port, a.path, a.rate, a.duration_s, a.warmup_s, a.connections)
        print(json.dumps(r))
        return 0
    results: dict[str, Any] = {"cpus": os.cpu_count()}
    # Other jobs on the machine skew every figure: measure how busy it is before we start.
    _CPU_AT_START[:] = _cpu_stat()
    time.sleep(2.0)
    background = _cpu_busy_share()
    results["background_cpu_busy_share"] = background
    print(f"before the run the machine's CPUs were {background:.0%} busy with other jobs")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if a.only in (None, "echo"):
            results["echo"] = bench_echo(a, tmp)
        if a.only in (None, "clipperlab"):
            results["clipperlab"] = bench_clipperlab(a, tmp)
    print(
        f"{'server':<12} {'saturation q/s':>15} {'(answered)':>11} {'half-load q/s':>14}"
        f" {'p50 ms':>8} {'p99 ms':>8}"
    )
    for name in ("echo", "clipperlab"):
        if name in results:
            s, h = results[name]["saturation"], results[name]["half"]
            answered = s["ok_qps"] + s["defaults_qps"]
            print(
                f"{name:<12} {s['ok_qps']:>15,.0f} {answered:>11,.0f} {h['ok_qps']:>14,.0f} "
                f"{h['p50_ms']:>8.2f} {h['p99_ms']:>8.2f}"
            )
    print(
        "(saturation: successful replies/s, defaults excluded; answered: HTTP 200 incl."
        f" defaults; other jobs kept {background:.0%} of the CPUs busy before the run)"
    )
    if "echo" in results and "clipperlab" in results:
        ratio = (
            results["clipperlab"]["saturation"]["ok_qps"] / results["echo"]["saturation"]["ok_qps"]
        )
        results["ratio"] = ratio
        print(f"ratio clipperlab / echo (saturation): {ratio:.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
