"""The fuzzer's oracle: send a case (``tests.real.strategies``) to a running server and
judge what comes back against the README's promises.

Shared by ``tests/real/test_fuzz.py`` and ``scripts/fuzz.py`` (which puts the repository
root on ``sys.path``).

Promises checked on every case (a broken one is a *violation*, a line of text):
- Every request gets exactly one well-formed HTTP response: fewer answers than the case
  has requests is a violation (a timeout is one too: ``unanswered``), unless the last
  answer is a 4xx/5xx after which the server closed the connection (it refused the rest);
  more answers than requests is one (``1xx`` interim answers aside).
- No 5xx the server caused.  Allowed: ``503`` with an explanation (overload, shutting
  down, a model not ready), ``501`` with a JSON ``error`` for a protocol feature the
  server does not implement (``Upgrade``, ``CONNECT``), and, for queries served by the
  FakeContainer (a model that answers oddly), ``500``/``502`` with a JSON ``error``: that
  is the model's own error, reported.
- Every 4xx/5xx carries a JSON object with a string ``error``; every JSON body is strict
  JSON (no ``NaN``/``Infinity`` literals); a ``HEAD`` answer has no body.
- RPC port: the server answers a stranger with ``REFUSE`` (a JSON ``error``), ``WELCOME``,
  ``HEARTBEAT`` or nothing, and never sends a malformed frame.
When the server runs in its own process (``start_serve``), a case after which it is gone
breaks the promise that matters most (``server died``).
Promises checked between batches of cases (``FuzzEnv.check_health``): a fresh query to
the health application gets a real prediction (``default: false``) and every replica the
deployment started is still connected.  At the end (``FuzzEnv.check_idle``): no replica
stays busy once nothing is in flight (a wedged replica).

``FakeContainer`` is a model replica written against the wire protocol by hand (a raw
socket), answering each batch as its ``mode`` says (``strategies.ODD_KINDS``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools
import numpy as np

from clipperlab.real import protocol as p
from clipperlab.real.client import AdminClient

from .strategies import (
    APP,
    MODEL,
    ODD_APP,
    ODD_MODEL,
    STR_APP,
    STR_MODEL,
    HttpCase,
    OddOutputCase,
    RpcCase,
)

__all__ = ["FakeContainer", "FuzzEnv", "Verdict", "deploy", "judge_http", "rss_bytes",
           "send_http", "send_rpc", "start_serve", "stop_serve"]


@dataclass(slots=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class Verdict:
    """What one case got and which promises it broke."""

    route: str
    statuses: list[int] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    unanswered: bool = False
    label: str = ""  # the status for summaries when it is not an HTTP one (RPC cases)

    @property
    def kinds(self) -> list[str]:
        """The violations' kinds (the text before the first colon)."""
        return [t.split(":", 1)[0] for t in self.violations]

    @property
    def status(self) -> str:
        """A summary key: the final status, ``none`` or ``timeout``."""
        if self.label:
            return self.label
        if self.unanswered:
            return "timeout"
        return str(self.statuses[-1]) if self.statuses else "none"


# --------------------------------------------------------------------------- HTTP


class _Responses:
    """httptools callbacks collecting whole responses."""

    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self.parser: Any = None

    def on_message_begin(self) -> None:
        self._headers, self._body = {}, []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        self.answers.append(Answer(status, self._headers, b"".join(self._body)))


def send_http(
    raw: bytes, host: str, port: int, *, timeout_s: float = 10.0, half_close: bool = False,
    head: bool = False,
) -> tuple[list[Answer], bytes, str]:
    """Send ``raw`` on a fresh connection, read until the server closes it (or
    ``timeout_s``); return the answers, the bytes read and how it ended (``eof``,
    ``reset``, ``timeout`` or ``malformed: ...``)."""
    data = bytearray()
    ended = "eof"
    with socket.create_connection((host, port), timeout=timeout_s) as s:
        until = time.monotonic() + timeout_s
        try:
            s.sendall(raw)
            if half_close:
                s.shutdown(socket.SHUT_WR)
            while True:
                left = until - time.monotonic()
                if left <= 0:
                    ended = "timeout"
                    break
                s.settimeout(left)
                chunk = s.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            ended = "timeout"
        except (ConnectionResetError, BrokenPipeError):
            ended = "reset"
    if head:
        return _parse_head(bytes(data)), bytes(data), ended
    sink = _Responses()
    sink.parser = httptools.HttpResponseParser(sink)
    try:
        sink.parser.feed_data(bytes(data))
    except httptools.HttpParserError as e:
        ended = f"malformed: {e}"
    return sink.answers, bytes(data), ended


def _parse_head(data: bytes) -> list[Answer]:
    """Answers to one HEAD request: the status line and headers, and whatever follows."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        try:
            status = int(parts[1])
        except (IndexError, ValueError):
            status = -1
        hdrs = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        if status >= 200 or status < 0:
            out.append(Answer(status, hdrs, rest if sep else b""))
            break
        data = rest  # a 1xx: the real answer follows
    return out


def _strict_json(body: bytes) -> Any:
    def no(c: str) -> Any:
        raise ValueError(f"non-JSON literal {c}")

    return json.loads(body, parse_constant=no)


def judge_http(case: HttpCase, answers: list[Answer], ended: str, *,
               model_errors: bool = False) -> Verdict:
    """The promises of the module docstring for one HTTP case."""
    v = Verdict(case.route)
    finals = [a for a in answers if a.status >= 200 or a.status < 0]
    v.statuses = [a.status for a in finals]
    if ended.startswith("malformed"):
        v.violations.append(f"malformed HTTP: the answer does not parse ({ended})")
    if len(finals) > case.max_answers:
        v.violations.append(
            f"extra answers: {len(finals)} answers ({v.statuses}) to {case.max_answers}"
            " request(s)")
    if len(finals) < case.min_answers:
        refused = bool(finals) and finals[-1].status >= 400 and ended != "timeout"
        if ended == "timeout":
            v.unanswered = True
            v.violations.append(f"unanswered: {case.min_answers - len(finals)} request(s)"
                                " got no answer before the timeout")
        elif not refused:
            v.violations.append(f"unanswered: the connection ended ({ended}) after"
                                f" {len(finals)} of {case.min_answers} answers")
            v.unanswered = True
    for a in finals:
        v.violations += _judge_answer(a, case.head, model_errors)
    return v


def _judge_answer(a: Answer, head: bool, model_errors: bool) -> list[str]:
    out = []
    ctype = a.headers.get("content-type", "")
    if head:
        if a.body:
            out.append(f"HEAD body: answer {a.status} carries {len(a.body)} bytes")
        return out
    doc: Any = None
    if "json" in ctype:
        try:
            doc = _strict_json(a.body)
        except (ValueError, UnicodeDecodeError) as e:
            out.append(f"not strict JSON: HTTP {a.status} body ({e}): {a.body[:120]!r}")
    if a.status >= 400:
        explained = isinstance(doc, dict) and isinstance(doc.get("error"), str) and bool(
            doc["error"])
        if not explained and not (a.status == 503 and isinstance(doc, dict)
                                  and doc.get("ready") is False):
            out.append(f"no JSON error: HTTP {a.status}: {a.body[:120]!r}")
        allowed = a.status in (501, 503) or (model_errors and a.status in (500, 502))
        if a.status >= 500 and not allowed:
            out.append(f"server-caused 5xx: HTTP {a.status}: {a.body[:200]!r}")
    return out


# --------------------------------------------------------------------------- RPC


def send_rpc(case: RpcCase, host: str, port: int, *, timeout_s: float = 5.0) -> Verdict:
    """Send the frames, close our side, read what the server says until it closes."""
    v = Verdict(case.route)
    data = bytearray()
    with socket.create_connection((host, port), timeout=timeout_s) as s:
        try:
            s.sendall(case.raw)
            s.shutdown(socket.SHUT_WR)
            while True:
                chunk = s.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            v.statuses.append(-1)  # still open after our end: not a promise broken
        except (ConnectionResetError, BrokenPipeError):
            pass
    try:
        frames = p.FrameDecoder().feed(bytes(data))
    except p.ProtocolError as e:
        v.violations.append(f"rpc: the server sent a malformed frame: {e}")
        return v
    for kind, payload in frames:
        v.statuses.append(kind)
        if kind == p.REFUSE:
            try:
                err = p.decode_json(payload).get("error")
            except p.ProtocolError as e:
                err = None
                v.violations.append(f"rpc: REFUSE payload is not a JSON object: {e}")
            if not isinstance(err, str) or not err:
                v.violations.append(f"rpc: REFUSE without an 'error': {payload[:120]!r}")
        elif kind not in (p.WELCOME, p.HEARTBEAT, p.BATCH):
            v.violations.append(f"rpc: the server sent frame type {kind} to a container")
    kinds = set(v.statuses)
    v.label = ("rpc:refuse" if p.REFUSE in kinds else "rpc:welcome" if p.WELCOME in kinds
               else "rpc:open" if -1 in kinds else "rpc:closed")
    return v


# --------------------------------------------------------------------------- fake container


def _values(kind: int, body: bytes) -> bytes:
    return bytes((kind,)) + body


def _array(a: np.ndarray[Any, Any]) -> bytes:
    dt: bytes = a.dtype.str.encode()
    head: bytes = bytes((p.K_ARRAY, len(dt))) + dt + bytes((a.ndim,))
    data: bytes = a.tobytes()
    return head + struct.pack(f"<{a.ndim}Q", *a.shape) + data


def _json_values(values: list[Any]) -> bytes:
    return _values(p.K_JSON, json.dumps(values).encode())


def odd_reply(mode: str, bid: int, n: int) -> bytes:
    """The frame(s) a replica answering as ``mode`` sends for batch ``bid`` of ``n``."""
    u64 = struct.pack("<Q", bid)
    values: bytes
    if mode == "ok":
        values = _array(np.zeros(n))
    elif mode == "big_int":
        values = _json_values([2**70] * n)
    elif mode == "complex":
        values = _array(np.full(n, 1 + 2j))
    elif mode == "nan":
        values = _array(np.full(n, np.nan))
    elif mode == "inf":
        values = _json_values([float("inf")] * n)
    elif mode == "strings":
        values = p._encode_str(["\u00e9\x00\ud7ff"] * n)
    elif mode == "short":
        values = _array(np.zeros(max(n - 1, 0)))
    elif mode == "long":
        values = _array(np.zeros(n + 1))
    elif mode == "mixed":
        values = _json_values([[1, 2] if j % 2 == 0 else 3 for j in range(n)] + (
            [3] if n == 1 else []))
    elif mode == "bytes":
        parts = [bytes((p.K_BYTES,)), struct.pack("<I", n)]
        for _ in range(n):
            parts += [struct.pack("<I", 3), b"\xff\x00\x80"]
        values = b"".join(parts)
    elif mode == "nested":
        values = _json_values([{"a": [1, {"b": None}], "c": "d"}] * n)
    elif mode == "datetime":
        values = _array(np.array(["2026-01-01"] * n, dtype="datetime64[s]"))
    elif mode == "dicts":
        values = _json_values([{"x": float("nan")}] * n)
    elif mode == "error":
        return p.encode_error(bid, "the model failed on purpose (fuzzing)")
    elif mode == "bad_values":
        values = b"\x09garbage"
    elif mode == "unknown_batch":
        forged = p.encode_frame(p.RESULT, struct.pack("<Q", bid + 1_000_003)
                                + _array(np.full(n, 999.0)))
        return forged + p.encode_frame(p.RESULT, u64 + _array(np.zeros(n)))
    elif mode == "empty":
        values = _json_values([])
    else:
        raise ValueError(f"unknown odd output mode {mode!r}")
    return p.encode_frame(p.RESULT, u64 + values)


class FakeContainer:
    """A replica of ``ODD_MODEL`` on a raw socket; reconnects when dropped."""

    def __init__(self, host: str, port: int, hello: Callable[..., bytes]) -> None:
        self.host, self.port = host, port
        self.hello = hello
        self.mode = "ok"
        self.batches = 0
        self.connects = 0
        self.welcomed = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="fake-container")

    def start(self) -> FakeContainer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, p.ProtocolError):
                self._session()
            self._stop.wait(0.05)

    def _session(self) -> None:
        with socket.create_connection((self.host, self.port), timeout=5) as s:
            s.sendall(self.hello(ODD_MODEL, "1", ordinal=0))
            self.connects += 1
            dec = p.FrameDecoder()
            s.settimeout(0.1)
            last_beat = time.monotonic()
            while not self._stop.is_set():
                if time.monotonic() - last_beat > 0.1:
                    s.sendall(p.encode_frame(p.HEARTBEAT))
                    last_beat = time.monotonic()
                try:
                    data = s.recv(1 << 20)
                except TimeoutError:
                    continue
                if not data:
                    return
                for kind, payload in dec.feed(data):
                    if kind == p.WELCOME:
                        self.welcomed.set()
                    elif kind == p.REFUSE:
                        return
                    elif kind == p.BATCH:
                        bid, inputs = p.decode_batch(payload)
                        self.batches += 1
                        s.sendall(odd_reply(self.mode, bid, len(inputs)))


# --------------------------------------------------------------------------- the deployment


def deploy(admin: AdminClient, *, timeout_s: float = 60.0) -> None:
    """The fuzzed deployment: ``APP`` (doubles) and ``STR_APP`` (strings) on no-op models
    with one replica each; ``ODD_APP`` on ``ODD_MODEL`` with no replica the server starts
    (the FakeContainer connects as one).  Objectives are generous: the health check asks
    for a real prediction on a machine other work shares."""
    admin.add_app(APP, slo_ms=5000, default_output=-1)
    admin.add_model(MODEL, kind="noop", replicas=1, app=APP)
    admin.add_app(STR_APP, slo_ms=5000, default_output="none", input_type="strings")
    admin.add_model(STR_MODEL, kind="noop", replicas=1, input_type="strings", app=STR_APP)
    admin.add_app(ODD_APP, slo_ms=500, default_output=-1)
    admin.add_model(ODD_MODEL, kind="noop", replicas=0, app=ODD_APP)
    admin.wait_ready(APP, timeout_s=timeout_s)
    admin.wait_ready(STR_APP, timeout_s=timeout_s)


def rss_bytes(pid: int | None = None) -> int:
    """Resident memory of a process (this one by default), from /proc."""
    with open(f"/proc/{pid or os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc status")


def start_serve(store: Path, log_path: Path) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    """``clipperlab serve`` on ephemeral ports; returns the process and its ports."""
    ports_file = store / "ports.json"
    ports_file.unlink(missing_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 - the server writes it until it stops
    proc = subprocess.Popen(
        [sys.executable, "-m", "clipperlab", "serve", "--query-port", "0", "--admin-port", "0",
         "--rpc-port", "0", "--store", str(store), "--ports-file", str(ports_file),
         "--log-level", "WARNING"],
        stdout=log, stderr=log, start_new_session=True,
    )
    log.close()
    until = time.monotonic() + 60
    while not ports_file.exists() or not ports_file.read_text().strip():
        if proc.poll() is not None:
            raise SystemExit(f"oracle: the server exited with {proc.returncode}; see {log_path}")
        if time.monotonic() > until:
            proc.kill()
            raise SystemExit(f"oracle: the server did not start in 60 s; see {log_path}")
        time.sleep(0.05)
    ports: dict[str, int] = json.loads(ports_file.read_text())["ports"]
    return proc, ports


def stop_serve(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class FuzzEnv:
    """Sends cases to a server deployed by ``deploy`` and keeps the tallies."""

    def __init__(self, ports: dict[str, int], *, host: str = "127.0.0.1",
                 hello: Callable[..., bytes], rss_pid: int | None = None,
                 proc: subprocess.Popen[bytes] | None = None,
                 health_every: int = 200, timeout_s: float = 10.0) -> None:
        self.host = host
        self.ports = ports
        self.admin = AdminClient(f"{host}:{ports['admin']}")
        self.fake = FakeContainer(host, ports["rpc"], hello).start()
        self.rss_pid = rss_pid
        self.proc = proc
        self.health_every = health_every
        self.timeout_s = timeout_s
        self.cases = 0
        self.health_checks = 0
        self.rss_start = self.rss_peak = rss_bytes(rss_pid)
        self._fresh = 0
        if not self.fake.welcomed.wait(timeout_s):
            raise RuntimeError("the fake container was not welcomed")

    def close(self) -> None:
        self.fake.stop()
        self.admin.close()

    def port_of(self, case: HttpCase | RpcCase | OddOutputCase) -> int:
        if isinstance(case, RpcCase):
            return self.ports["rpc"]
        http = case.http if isinstance(case, OddOutputCase) else case
        return self.ports[http.port]

    def run(self, case: HttpCase | RpcCase | OddOutputCase) -> Verdict:
        """Send one case, judge it; every ``health_every`` cases, check health too."""
        if isinstance(case, RpcCase):
            v = send_rpc(case, self.host, self.ports["rpc"], timeout_s=min(self.timeout_s, 3))
        else:
            odd = isinstance(case, OddOutputCase)
            http = case.http if isinstance(case, OddOutputCase) else case
            if odd:
                self.fake.mode = http.odd
            answers, _, ended = send_http(http.raw, self.host, self.ports[http.port],
                                          timeout_s=self.timeout_s,
                                          half_close=http.half_close, head=http.head)
            if odd:
                self.fake.mode = "ok"
            v = judge_http(http, answers, ended, model_errors=odd)
        self.cases += 1
        if self.proc is not None and self.proc.poll() is not None:
            v.violations.append(f"server died: exit status {self.proc.returncode}")
        elif self.cases % self.health_every == 0:
            v.violations += self.check_health()
        return v

    def check_health(self) -> list[str]:
        """A fresh query gets a real prediction; every started replica is connected."""
        self.health_checks += 1
        self.rss_peak = max(self.rss_peak, rss_bytes(self.rss_pid))
        out = []
        self._fresh += 1
        for app, x in ((APP, [float(self._fresh), -0.5]), (STR_APP, f"health {self._fresh}")):
            raw = _request(f"/{app}/predict", {"input": x})
            answers, _, ended = send_http(raw, self.host, self.ports["query"],
                                          timeout_s=self.timeout_s)
            if len(answers) != 1 or answers[0].status != 200:
                out.append(f"health: {app} answered {[a.status for a in answers]} ({ended}) "
                           f"{answers[0].body[:200]!r}" if answers else
                           f"health: {app} did not answer ({ended})")
                continue
            doc = json.loads(answers[0].body)
            if doc.get("default") is not False:
                out.append(f"health: {app} answered a default, not a prediction: {doc}")
        try:
            up = self.admin.inspect()["replicas_connected"]
        except Exception as e:  # noqa: BLE001 - reported as a violation
            return [*out, f"health: admin inspect failed: {e}"]
        for model in (MODEL, STR_MODEL):
            if not any(r.startswith(f"{model}:1#") for r in up):
                out.append(f"health: no replica of {model!r} connected (up: {up})")
        return out

    def check_idle(self, wait_s: float = 10.0) -> list[str]:
        """Once nothing is in flight, no replica may stay busy (wedged)."""
        until = time.monotonic() + wait_s
        busy: list[str] = []
        while True:
            models = self.admin.inspect()["models"]
            busy = [f"{rid} (queued {ver['queued']})" for m in models.values()
                    for ver in m["versions"].values()
                    for rid, r in ver["replicas"].items() if r.get("busy")]
            if not busy or time.monotonic() > until:
                break
            time.sleep(0.1)
        return [f"wedged: replica {b} is still busy with nothing in flight" for b in busy]


def _request(path: str, obj: Any) -> bytes:
    from .strategies import http_request

    return http_request("POST", path, json.dumps(obj).encode())
