"""The frontend's own CPU per query, without sockets: HTTP in, JSON, engine, RPC frames, reply.

    python3 bench/frontend_bench.py [--queries 60000] [--concurrency 32]
                                    [--api echo,rest,oip,hit,oiphit] [--compiled]

Everything of one real-mode frontend runs in this process on a uvloop loop: the HTTP
protocol (``HttpProtocol``) with fake transports, Clipper's REST or the OIP handler, the
engine and its driver, and a container connection (``ContainerConnection``) whose
transport answers each BATCH frame with a RESULT frame on the next loop turn (the no-op
model's outputs, encoded by the real protocol code).  Each round feeds one request on each
of ``--concurrency`` connections and lets the loop run until they are answered, so
batches form as they do under that many concurrent clients.  CPU time (``process_time``)
over the measured rounds gives microseconds per query; the same run with one request per
round gives a batch-of-one figure, and a least-squares split of the two gives per query
and per batch.  The garbage collector is tuned as ``clipperlab serve`` tunes it
(``gctune``) once the warm-up is done: untuned, its passes over the engine's heap added
about 13 us to a cache hit (32 against 18) and made OIP look 1.5x REST (1.1x tuned).  No
syscalls are made, so the figures are the Python work that ``bench/real_bench.py``'s /proc
numbers contain beside the kernel's.  ``--compiled`` runs the same again in a process whose
real path is compiled with mypyc (``_build/mypyc_real.py``), rows marked ``+mypyc``.
``echo`` runs the same HTTP protocol with ``bench/real_bench_roles.py``'s echo handler instead of
the frontend: the HTTP layer's own share, as the live bench's echo floor (2026-12-06,
11:0x UTC on a slow stretch of the VM: echo 7.7-8.6 us a query, REST 28.4-34.2, a hit
14.8-18.2; beyond the echo a hit 0.34-0.38x a miss, as live).
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REST = b'{"input":[0.25,0.5,0.75,1.0]}'
OIP = b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP64","data":[0.25,0.5,0.75,1.0]}]}'


class _Sink(asyncio.Transport):
    """A transport that keeps nothing: counts answered responses, in ``answered[0]``
    (shared by every connection's sink, so waiting for a round reads one number)."""

    def __init__(self, answered: list[int]) -> None:
        super().__init__()
        self.answered = answered

    def write(self, data: Any) -> None:
        self.answered[0] += data.count(b"HTTP/1.1 ")

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


_FRAME = struct.Struct("<IBQ")  # length, type, batch id


class _Container(asyncio.Transport):
    """The container's end: each BATCH frame is answered with RESULT on the next turn.

    It reads only what it needs (the batch id and the row count; ``real_bench`` measures
    the container's decoding) and answers with RESULT frames made once per batch size,
    so that its own work, which this process's CPU time includes, stays small."""

    def __init__(self, conn: Any, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.conn = conn
        self.loop = loop
        self.batches = 0
        self._results: dict[int, bytes] = {}  # rows -> RESULT frame less its head

    def write(self, data: Any) -> None:
        from clipperlab.real import protocol as p

        pos = 0
        while pos < len(data):
            length, kind, bid = _FRAME.unpack_from(data, pos)
            assert kind == p.BATCH and data[pos + 13] == p.K_ARRAY
            shape_at = pos + 13 + 3 + data[pos + 14]  # value kind, dtype length, dtype, ndim
            (rows,) = struct.unpack_from("<Q", data, shape_at)
            tail = self._results.get(rows)
            if tail is None:
                frame = p.encode_batch(p.RESULT, 0, np.zeros(rows, dtype=np.int64))
                tail = self._results[rows] = frame[_FRAME.size:]
            self.batches += 1
            out = _FRAME.pack(9 + len(tail), p.RESULT, bid) + tail
            self.loop.call_soon(self.conn.data_received, out)
            pos += 4 + length

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 2) if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


async def _run(api: str, queries: int, concurrency: int) -> dict[str, float]:
    from clipperlab.engine import Application, Engine, ModelSpec, ReplicaId
    from clipperlab.engine.registry import BatchingConfig
    from clipperlab.real.config import ServerConfig
    from clipperlab.real.driver import EngineDriver
    from clipperlab.real.frontend import QueryFrontend
    from clipperlab.real.http import HttpProtocol
    from clipperlab.real.rpc import ContainerConnection, RpcServer

    loop = asyncio.get_running_loop()
    engine = Engine(seed=0, remember_queries=20_000)  # as ServerConfig
    driver = EngineDriver(engine, loop)
    now = time.monotonic()
    # the batching ``clipperlab serve`` gives a model its table leaves unsaid (max_queue,
    # admission_control, drop_hopeless, aimd_step_from: real/config.py's ServerConfig)
    engine.add_model(ModelSpec(name="noop", version="1", input_type="doubles",
                               batching=BatchingConfig(policy="aimd", max_queue=10_000,
                                                       **ServerConfig().model_defaults)),
                     now=now)
    engine.add_application(Application(name="bench", slo_s=0.02, default_output=-1,
                               input_type="doubles"), now=now)
    engine.link("bench", ["noop"], now=now)
    rpc = RpcServer(driver)
    conn = ContainerConnection(rpc)
    container = _Container(conn, loop)
    conn.connection_made(container)
    conn._cancel_deadline()  # welcomed by hand: no HELLO deadline
    conn.welcomed = True
    rid = ReplicaId("noop", "1", 0)
    conn.replica = rid
    conn.dtype = np.dtype(np.float64)
    conn.decoder.max_frame_bytes = 1 << 28
    driver.replica_up(rid, conn)
    frontend: Any = QueryFrontend(driver, cache=api in ("hit", "oiphit"))
    if api == "echo":  # the HTTP layer alone: real_bench's echo server's handler
        from clipperlab.real.http import Request, response

        def echo(req: Request) -> bytes:
            return response(200, req.body)

        frontend = echo
    path, body = (("/v2/models/bench/infer", OIP) if api in ("oip", "oiphit")
                  else ("/bench/predict", REST))
    request = (b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body))
    protos = []
    answered = [0]
    for _ in range(concurrency):
        proto = HttpProtocol(frontend)
        proto.connection_made(_Sink(answered))
        protos.append(proto)

    async def rounds(n: int) -> None:
        for _ in range(n):
            want = answered[0] + concurrency
            for proto in protos:
                proto.data_received(request)
            while answered[0] < want:
                await asyncio.sleep(0)

    await rounds(max(200 // concurrency, 20))  # warm up: AIMD finds its batch size
    from clipperlab.real.gctune import tune_gc

    tune_gc()  # as ``clipperlab serve`` does at start
    b0 = container.batches
    q0 = answered[0]
    t0 = time.process_time()
    await rounds(queries // concurrency)
    cpu = time.process_time() - t0
    q = answered[0] - q0
    b = container.batches - b0
    defaults = engine.metrics.counter_total("clipperlab_defaults_total") if hasattr(
        engine.metrics, "counter_total") else float("nan")
    return {"queries": q, "batches": b, "cpu_s": cpu, "us_per_query": cpu / q * 1e6,
            "queries_per_batch": q / max(b, 1), "defaults": defaults}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--queries", type=int, default=60_000, help="measured queries per run")
    ap.add_argument("--concurrency", type=int, default=32, help="requests in flight per round")
    ap.add_argument("--api", default="echo,rest,oip,hit",
                    help="comma-separated: echo (the HTTP layer alone, as real_bench's echo "
                    "server), rest, oip, hit (REST cache hits), oiphit")
    ap.add_argument("--compiled", action="store_true",
                    help="then the same with the real path compiled with mypyc (built once "
                    "per source digest under build/mypyc/, about a minute)")
    ap.add_argument("--tag", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    import uvloop

    from clipperlab.real import compiled_modules

    if a.tag and not compiled_modules():
        print("frontend_bench: the compiled tree did not load", file=sys.stderr)
        return 1
    if not a.tag:
        print(f"{'api':<12} {'conc.':>5} {'q/batch':>8} {'us/query':>9} {'split: us/q':>12} "
              f"{'us/batch':>9}", flush=True)
    for api in a.api.split(","):
        one = uvloop.run(_run(api, max(a.queries // 4, 2000), 1))
        many = uvloop.run(_run(api, a.queries, a.concurrency))
        # cpu = x * queries + y * batches over the two runs
        m = np.array([[one["queries"], one["batches"]], [many["queries"], many["batches"]]])
        x, y = np.linalg.lstsq(m, np.array([one["cpu_s"], many["cpu_s"]]), rcond=None)[0]
        for conc, r in ((1, one), (a.concurrency, many)):
            print(f"{api + a.tag:<12} {conc:>5} {r['queries_per_batch']:>8.1f} "
                  f"{r['us_per_query']:>9.1f} {x * 1e6 if conc > 1 else float('nan'):>12.1f} "
                  f"{y * 1e6 if conc > 1 else float('nan'):>9.1f}", flush=True)
    if a.compiled:
        import subprocess

        from _build import mypyc_real

        try:
            tree = mypyc_real.build_tree()
        except RuntimeError as e:
            print(f"frontend_bench: {e}", file=sys.stderr)
            return 1
        return subprocess.run([sys.executable, __file__, "--api", a.api, "--queries",
                               str(a.queries), "--concurrency", str(a.concurrency),
                               "--tag", "+mypyc"], env=mypyc_real.env_with(tree)).returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
