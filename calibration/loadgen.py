"""An open-loop load generator: a ``workloads`` trace against a running server.

Theory of operation: the trace (``Workload.generate(seed)``) says when each query is due
(``arrival_at``, seconds from the start) and which input it carries.  One uvloop task wakes
at most every millisecond (uvloop's timer resolution) and writes every query that is due on
one of ``connections`` keep-alive HTTP/1.1 connections (the one with the fewest answers
outstanding; requests are pipelined); responses are parsed with httptools as they come.
Each query's latency is counted from the time the schedule says it should have been
sent, not from when it was written, so a generator that falls behind cannot hide the
server's queueing (no coordinated omission).  ``sent_at`` is kept too: ``lag`` says how far
behind the generator was.

Rules:
- APIs: ``clipper`` (``POST /{app}/predict``, JSON ``{"input": [...]}``) or ``oip`` (``POST
  /v2/models/{app}/infer``, one row in the binary tensor extension, so big tensors are not
  JSON-encoded).  Bodies are encoded once per distinct input before the run.
- Outcomes per query: HTTP status (0: no answer before the end), ``default`` (the server
  answered its default), ``refused`` (HTTP 503, overload).  The raw table has the columns
  of the simulator's per-query table that ``clipperlab.report.latency.summarise`` reads
  (``arrival_at``, ``reply_at``, ``latency_s``, ``default``, ``refused``), so both modes
  are summarised by the same code; it also reads the generator's own ``status`` and
  ``lag_s`` (errors, lag).  The generator returns the raw table only, never a summary.
  Non-200/503 answers and no answer count as unanswered (``reply_at`` NaN).
- After the last query is sent, answers are awaited up to ``drain_s`` seconds.
- The table's ``attrs["started_at"]`` is ``time.monotonic()`` at the schedule's zero, so a
  run lines up with what other processes recorded meanwhile (the speed probe's trace).
- The cyclic garbage collector is paused during the run (reference counting frees the
  per-query objects): a full pass over the calling process's heap would be a stall of
  the generator, counted as the server's latency.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from clipperlab.report.latency import pct
from clipperlab.report.tables import text_table
from clipperlab.workloads import Trace, Workload

from .errors import LoadError

__all__ = [
    "APIS",
    "LoadError",
    "Target",
    "format_summary",
    "load_workload_spec",
    "plot_latency",
    "request_bytes",
    "run_load",
    "run_workload",
]

APIS = ("clipper", "oip")
_OIP_DT = {"f8": "FP64", "f4": "FP32", "i8": "INT64", "i4": "INT32", "u1": "UINT8"}




@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Target:
        """``http://HOST:PORT``, ``HOST:PORT`` or ``PORT``."""
        text = url if "://" in url else f"http://{url if ':' in url else '127.0.0.1:' + url}"
        u = urlparse(text)
        if u.scheme != "http" or not u.hostname or u.port is None:
            raise LoadError(f"--target {url!r}: expected http://HOST:PORT")
        if u.path not in ("", "/"):
            raise LoadError(f"--target {url!r}: give the server, not a path (got {u.path!r})")
        return cls(u.hostname, u.port)


def request_bytes(api: str, app: str, x: np.ndarray, host: str = "127.0.0.1") -> bytes:
    """One HTTP/1.1 request carrying input ``x`` for ``app``."""
    extra = b""
    if api == "clipper":
        path = f"/{app}/predict"
        body = json.dumps({"input": np.asarray(x).tolist()}, separators=(",", ":")).encode()
        ctype = b"application/json"
    elif api == "oip":
        path = f"/v2/models/{app}/infer"
        a = np.ascontiguousarray(x)
        dt = _OIP_DT.get(a.dtype.str[1:])
        if dt is None:
            raise LoadError(f"input dtype {a.dtype} has no OIP datatype; use one of {_OIP_DT}")
        raw = a.tobytes()
        head = json.dumps(
            {"inputs": [{"name": "input", "shape": [1, *a.shape], "datatype": dt,
                         "parameters": {"binary_data_size": len(raw)}}]},
            separators=(",", ":"),
        ).encode()
        body = head + raw
        ctype = b"application/octet-stream"
        extra = b"Inference-Header-Content-Length: %d\r\n" % len(head)
    else:
        raise LoadError(f"--api {api!r}: expected one of {APIS}")
    return (
        b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: %s\r\n%sContent-Length: %d\r\n\r\n%s"
        % (path.encode(), host.encode(), ctype, extra, len(body), body)
    )


class _Conn(asyncio.Protocol):
    """One keep-alive connection; answers come back in request order."""

    def __init__(self, state: _State) -> None:
        import httptools

        self.state = state
        self.pending: deque[int] = deque()
        self.parser = httptools.HttpResponseParser(self)
        self.transport: Any = None
        self.body: list[bytes] = []
        self.closed = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception:  # noqa: BLE001 - a garbled answer ends this connection only
            self.transport.close()

    def on_message_begin(self) -> None:
        self.body = []

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        now = time.monotonic()
        st = self.state
        if not self.pending:
            return
        i = self.pending.popleft()
        st.done_at[i] = now
        st.status[i] = self.parser.get_status_code()
        body = b"".join(self.body)
        st.default[i] = _is_default(body, st.api)
        st.outstanding -= 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.state.outstanding -= len(self.pending)
        self.pending.clear()


def _is_default(body: bytes, api: str) -> bool:
    if api == "clipper":
        return b'"default":true' in body
    try:
        doc = json.loads(body)
        for o in doc.get("outputs", []):
            if o.get("name") == "default":
                return bool(o.get("data", [False])[0])
    except (ValueError, AttributeError, IndexError, TypeError):
        pass
    return False


class _State:
    def __init__(self, n: int, api: str) -> None:
        self.api = api
        self.sent_at = np.full(n, np.nan)
        self.done_at = np.full(n, np.nan)
        self.status = np.zeros(n, dtype=np.int64)
        self.default = np.zeros(n, dtype=bool)
        self.outstanding = 0


def run_load(
    trace: Trace,
    pool: np.ndarray,
    target: str,
    *,
    api: str = "clipper",
    connections: int = 8,
    drain_s: float = 5.0,
    app: str | None = None,
) -> pd.DataFrame:
    """Send ``trace`` to ``target`` open loop; return one row per query (see the rules).

    ``pool`` is the input source's pool (``workload.inputs.load()[0]``); query ``i`` sends
    ``pool[trace.input_index[i]]``."""
    if api not in APIS:
        raise LoadError(f"--api {api!r}: expected one of {APIS}")
    if connections < 1:
        raise LoadError(f"connections must be >= 1, got {connections}")
    tgt = Target.parse(target)
    name = app or trace.app
    n = len(trace)
    bodies: dict[int, bytes] = {}
    for k in np.unique(trace.input_index):
        bodies[int(k)] = request_bytes(api, name, pool[int(k)], tgt.host)
    import uvloop

    st = _State(n, api)

    async def main() -> float:
        loop = asyncio.get_running_loop()
        conns: list[_Conn] = []
        for _ in range(connections):
            try:
                _, c = await asyncio.wait_for(
                    loop.create_connection(lambda: _Conn(st), tgt.host, tgt.port), 10.0
                )
            except (OSError, TimeoutError) as e:
                for c in conns:
                    c.transport.close()
                raise LoadError(f"cannot connect to {tgt.host}:{tgt.port}: {e}") from None
            conns.append(c)
        arrival = trace.arrival_at
        idx = trace.input_index
        start = time.monotonic()
        i = 0
        while i < n:
            now = time.monotonic() - start
            j = int(np.searchsorted(arrival, now, side="right"))
            if j > i:
                writes: dict[int, list[bytes]] = {}
                for k in range(i, j):
                    c = min(conns, key=lambda c: len(c.pending) if not c.closed else 1 << 30)
                    if c.closed:
                        break
                    c.pending.append(k)
                    st.sent_at[k] = now
                    st.outstanding += 1
                    writes.setdefault(id(c), []).append(bodies[int(idx[k])])
                for c in conns:
                    w = writes.get(id(c))
                    if w:
                        c.transport.write(b"".join(w))
                i = j
                if all(c.closed for c in conns):
                    break
            if i < n:
                wait = float(arrival[i]) - (time.monotonic() - start)
                await asyncio.sleep(min(max(wait, 0.0), 0.05) if wait > 0.001 else 0.001)
        until = time.monotonic() + drain_s
        while st.outstanding > 0 and time.monotonic() < until:
            await asyncio.sleep(0.005)
        for c in conns:
            c.transport.close()
        return start

    # the collector stays off while the load runs: a full pass over this process's heap
    # (pandas, SciPy, scikit-learn, earlier runs' tables: 60-110 ms here) would stall the
    # sends and the reading of replies, and the stall would count as the server's latency
    was = gc.isenabled()
    gc.disable()
    try:
        start = uvloop.run(main())
    finally:
        if was:
            gc.enable()
    reply_at = st.done_at - start
    answered = (st.status == 200) | (st.status == 503)
    reply_at[~answered] = np.nan
    arrival = np.asarray(trace.arrival_at, dtype=np.float64)
    out = pd.DataFrame(
        {
            "query_id": np.arange(n, dtype=np.int64) + trace.query_offset,
            "app": name,
            "arrival_at": arrival,
            "sent_at": st.sent_at,
            "reply_at": reply_at,
            "latency_s": reply_at - arrival,
            "lag_s": st.sent_at - arrival,
            "status": st.status,
            "default": st.default & (st.status == 200),
            "refused": st.status == 503,
            "input_index": np.asarray(trace.input_index, dtype=np.int64),
        }
    )
    out.attrs["started_at"] = start  # time.monotonic() at the schedule's zero
    return out


def run_workload(
    workload: Workload, target: str, *, seed: int = 0, **kw: Any
) -> tuple[Trace, pd.DataFrame]:
    """``workload.generate(seed)`` sent with ``run_load``."""
    trace = workload.generate(seed)
    pool, _ = workload.inputs.load()
    return trace, run_load(trace, np.asarray(pool), target, **kw)


def load_workload_spec(path: str) -> Workload:
    """A workload from a TOML/JSON file: a ``[workload]`` table (as in a ``clipperlab
    simulate`` config, so one file can serve both) or the workload keys at the top level.
    A trace's ``csv_path`` is relative to the file.  Errors: ``LoadError`` naming the file."""
    from clipperlab.engine import ConfigError
    from clipperlab.engine.schema import parse_document
    from clipperlab.workloads import WorkloadError

    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise LoadError(f"workload spec {path!r}: cannot read it ({e.strerror})") from None
    try:
        data = parse_document(text, f"workload spec {path!r}")
    except ConfigError as e:
        raise LoadError(str(e)) from None
    w = data.get("workload", data)
    if not isinstance(w, dict):
        raise LoadError(f"{path}: workload must be a table")
    arr = w.get("arrivals")
    if isinstance(arr, dict) and arr.get("kind") == "trace" and isinstance(
        arr.get("csv_path"), str
    ) and not Path(arr["csv_path"]).is_absolute():
        w = {**w, "arrivals": {**arr, "csv_path": str(p.resolve().parent / arr["csv_path"])}}
    try:
        return Workload.from_dict(w, "workload")
    except WorkloadError as e:
        raise LoadError(f"{path}: {e}") from None


def plot_latency(tables: dict[str, pd.DataFrame], out_png: str, title: str = "") -> None:
    """Histogram of answered queries' latency (ms, log-spaced bins), one per table, with
    p50 and p99 marked."""
    from clipperlab.report.plots import grid, save, style_axis

    fig, (ax,) = grid(1, width_in=7.0, height_in=4.0)
    lats = {k: t["latency_s"].to_numpy()[np.isfinite(t["latency_s"].to_numpy())] * 1e3
            for k, t in tables.items()}
    allv = np.concatenate([v for v in lats.values() if v.size] or [np.array([1.0])])
    lo, hi = max(float(allv.min()), 1e-3), max(float(allv.max()), 1e-2)
    bins = np.geomspace(lo, hi * 1.01, 60).tolist()
    for (k, v), color in zip(lats.items(), ("C0", "C1", "C2", "C3"), strict=False):
        if not v.size:
            continue
        ax.hist(v, bins=bins, alpha=0.5, label=f"{k} (n={v.size})", color=color)
        for q, ls in ((50, "--"), (99, ":")):
            ax.axvline(pct(v, q), color=color, ls=ls, lw=1)
    ax.set_xscale("log")
    style_axis(ax, title=title or "latency",
               xlabel="latency from scheduled send (ms); dashed p50, dotted p99",
               ylabel="queries")
    save(fig, Path(out_png), legend_axes=[ax])


def format_summary(rows: dict[str, dict[str, float]]) -> str:
    """A plain-text table: one row per run (name -> summary dict)."""
    cols = ("run", "queries", "offered_qps", "throughput_qps", "mean_ms", "p50_ms", "p90_ms",
            "p99_ms", "default_rate", "refused_rate", "unanswered")
    return text_table([{"run": name, **s} for name, s in rows.items()], cols)
