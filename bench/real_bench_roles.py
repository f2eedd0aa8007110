"""The processes ``bench/real_bench.py`` starts, each in a session of its own: the echo
servers (the HTTP floor), the round-trip pair (the per-batch floor), the open-loop and
one-at-a-time load generators, and the ``/proc`` readings of a process's CPU.  Each runs
as ``real_bench.py --role NAME``; ``bench/peers_bench.py`` reuses the load generator."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, cast

import numpy as np

BENCH = Path(__file__).resolve().with_name("real_bench.py")  # what runs each role
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")

# ============================================================================ echo servers
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


def run_aiohttp_echo(port_file: str) -> None:
    import uvloop
    from aiohttp import web

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read(), content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", echo)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        Path(port_file).write_text(str(server.sockets[0].getsockname()[1]))  # type: ignore[attr-defined]
        await asyncio.Event().wait()

    uvloop.run(main())


# ============================================================================ round-trip floor
RTT_FRAME = 128  # bytes each way: a batch of a few small rows and its reply


def run_rtt_peer(port: int) -> None:
    """The container's side of a bare round trip: a blocking socket that sends back what
    it receives (``recv_into`` a kept buffer and ``sendall``, as ``real.container`` does)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    into = memoryview(bytearray(1 << 16))
    while n := sock.recv_into(into):
        sock.sendall(into[:n])


def run_rtt(duration_s: float, warmup_s: float) -> dict[str, Any]:
    """The frontend's side: a uvloop protocol that writes a ``RTT_FRAME``-byte frame to a
    peer process over loopback TCP (no delay, as the RPC) and the next one when the answer
    is in, one in flight, as the frontend sends a replica its batches under light load.
    Each side's CPU per round trip, from ``/proc``: what one batch's trip costs the
    frontend and the container on this machine before any of our code runs (both sleep
    and are woken once a trip)."""
    import uvloop

    frame = b"b" * RTT_FRAME

    class Ping(asyncio.Protocol):
        def __init__(self) -> None:
            self.count, self.got = 0, 0

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass
            self.transport.write(frame)

        def data_received(self, data: bytes) -> None:
            self.got += len(data)
            if self.got >= RTT_FRAME:  # the whole answer (TCP may split it)
                self.got -= RTT_FRAME
                self.count += 1
                self.transport.write(frame)

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        peer = subprocess.Popen([sys.executable, str(BENCH), "--role", "rtt-peer", "--port",
                                 str(listener.getsockname()[1])], start_new_session=True)
        try:
            conn, _ = await asyncio.wait_for(loop.sock_accept(listener), 60)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _, ping = await loop.create_connection(Ping, sock=conn)
            await asyncio.sleep(warmup_s)
            n0, me0, it0, t0 = (ping.count, process_cpu_s(os.getpid()),
                                process_cpu_s(peer.pid), time.monotonic())
            await asyncio.sleep(duration_s)
            n1, me1, it1, t1 = (ping.count, process_cpu_s(os.getpid()),
                                process_cpu_s(peer.pid), time.monotonic())
        finally:
            peer.kill()
            peer.wait()
            listener.close()
        if n1 == n0:
            raise RuntimeError("the round-trip peer never answered")
        n = n1 - n0
        return {"round_trips": n1 - n0, "us_per_round_trip": (t1 - t0) / n * 1e6,
                "sender_us": (me1 - me0) / n * 1e6, "receiver_us": (it1 - it0) / n * 1e6}

    return uvloop.run(main())


# ============================================================================ load generator
class LoadConn(asyncio.Protocol):
    def __init__(self, stats: dict[str, Any], default_mark: bytes) -> None:
        import httptools

        self.stats = stats
        self.mark = default_mark
        self.sent_at: deque[float] = deque()
        self.parser = httptools.HttpResponseParser(self)
        self.transport: Any = None
        self.default = False
        self.done: asyncio.Future[None] | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.default = False

    def on_body(self, body: bytes) -> None:
        if self.mark in body:
            self.default = True

    def on_message_complete(self) -> None:
        st = self.stats
        t0 = self.sent_at.popleft()
        now = time.monotonic()
        code = self.parser.get_status_code()
        if st["measure_from"] <= now < st["measure_until"]:
            if code == 200 and not self.default:
                st["ok"] += 1
                st["lat"].append(now - t0)
            elif code == 200:
                st["defaults"] += 1
            else:
                st["errors"] += 1
        st["outstanding"] -= 1
        st["completed"] += 1
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats["lost"] += 1


def request_bytes(path: str, body: bytes) -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body)
    )


def new_stats() -> dict[str, Any]:
    return {"ok": 0, "defaults": 0, "errors": 0, "lost": 0, "skipped": 0, "outstanding": 0,
            "completed": 0, "lat": [], "measure_from": 0.0, "measure_until": 0.0}


def summarize(stats: dict[str, Any], rate: float, duration_s: float) -> dict[str, Any]:
    lat = np.array(stats["lat"]) * 1e3
    return {
        "offered_qps": rate,
        "ok_qps": stats["ok"] / duration_s,
        "defaults_qps": stats["defaults"] / duration_s,
        "errors": stats["errors"],
        "skipped": stats["skipped"],
        "completed": stats["completed"],
        "p50_ms": float(np.percentile(lat, 50)) if lat.size else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if lat.size else float("nan"),
    }


def run_load(port: int, path: str, body: bytes, mark: bytes, rate: float, duration_s: float,
             warmup_s: float, conns: int) -> dict[str, Any]:
    """Open loop at ``rate`` queries/s over ``conns`` connections."""
    import uvloop

    request = request_bytes(path, body)
    max_outstanding = 50_000

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        stats = new_stats()
        cs: list[LoadConn] = []
        for _ in range(conns):
            _, c = await loop.create_connection(lambda: LoadConn(stats, mark), "127.0.0.1", port)
            cs.append(c)
        start = time.monotonic()
        stats["measure_from"] = start + warmup_s
        stats["measure_until"] = end = start + warmup_s + duration_s
        sent = 0
        i = 0
        while (now := time.monotonic()) < end:
            due = int((now - start) * rate)
            per: dict[int, int] = {}
            for k in range(due - sent):
                if stats["outstanding"] >= max_outstanding:
                    stats["skipped"] += 1
                    continue
                c = cs[i % conns]
                i += 1
                c.sent_at.append(start + (sent + k) / rate)
                stats["outstanding"] += 1
                per[id(c)] = per.get(id(c), 0) + 1
            for c in cs:
                if m := per.get(id(c)):
                    c.transport.write(request * m)
            sent = max(sent, due)
            await asyncio.sleep(0.001)  # uvloop timers have 1 ms resolution; 0.5 ms would spin
        # Let the last responses arrive (they fall outside the window and are not counted).
        until = time.monotonic() + 2.0
        while stats["outstanding"] and time.monotonic() < until:
            await asyncio.sleep(0.01)
        for c in cs:
            c.transport.close()
        return summarize(stats, rate, duration_s)

    return uvloop.run(main())


def run_closed(port: int, path: str, body: bytes, mark: bytes, duration_s: float,
               warmup_s: float) -> dict[str, Any]:
    """One connection, one request at a time (concurrency 1)."""
    import uvloop

    request = request_bytes(path, body)

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        stats = new_stats()
        _, c = await loop.create_connection(lambda: LoadConn(stats, mark), "127.0.0.1", port)
        start = time.monotonic()
        stats["measure_from"] = start + warmup_s
        stats["measure_until"] = end = start + warmup_s + duration_s
        while time.monotonic() < end:
            c.done = loop.create_future()
            c.sent_at.append(time.monotonic())
            stats["outstanding"] += 1
            c.transport.write(request)
            await c.done
        c.transport.close()
        return summarize(stats, stats["ok"] / duration_s, duration_s)

    return uvloop.run(main())


# ============================================================================ /proc
def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) * TICK_S


def child_pids(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out
