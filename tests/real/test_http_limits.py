"""The HTTP layer's limits (issue 11, defects 6 and 10): every one answers once with a JSON
``error`` naming its setting, closes, is counted in ``clipperlab_real_http_refused_total``,
and leaves the server serving everyone else.  One server with small limits (no model
containers: every request here is refused or answered before a query is made)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from types import SimpleNamespace
from typing import Any

import pytest

from clipperlab.real.client import AdminClient
from clipperlab.real.config import ConfigError, load_config
from tests.real.rawhttp import answers, exchange, request
from tests.servers import start_server

HEADER_TIMEOUT_S = 0.5
BODY_TIMEOUT_S = 0.5
IDLE_TIMEOUT_S = 0.5
MAX_CONNECTIONS = 6


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Any:
    st = start_server(
        tmp_path_factory.mktemp("store"),
        max_batch_items=10,
        max_nesting=8,
        max_url_bytes=1024,
        max_header_bytes=16 * 1024,
        max_body_bytes=64 * 1024,
        header_timeout_s=HEADER_TIMEOUT_S,
        body_timeout_s=BODY_TIMEOUT_S,
        idle_timeout_s=IDLE_TIMEOUT_S,
        max_connections=MAX_CONNECTIONS,
    )
    admin = AdminClient(f"127.0.0.1:{st.ports['admin']}")
    admin.add_app("app", slo_ms=100, default_output=-1)
    admin.close()
    yield SimpleNamespace(st=st, q=st.ports["query"])
    st.stop()


def one(port: int, data: bytes) -> tuple[int, dict[str, Any], bool]:
    raw, closed = exchange(port, data)
    got = answers(raw)
    assert len(got) == 1, raw[:500]
    return got[0].status, json.loads(got[0].body), closed


def refused(srv: Any) -> dict[str, float]:
    """``clipperlab_real_http_refused_total`` by reason, from /metrics."""
    raw, _ = exchange(srv.q, request("GET", "/metrics"))
    out = {}
    for line in answers(raw)[0].body.decode().splitlines():
        if line.startswith("clipperlab_real_http_refused_total{"):
            reason = line.split('reason="')[1].split('"')[0]
            out[reason] = float(line.rsplit(" ", 1)[1])
    return out


def healthy(srv: Any) -> bool:
    raw, _ = exchange(srv.q, request("GET", "/healthz"))
    return answers(raw)[0].status == 200


def test_batch_over_max_batch_items_is_413(srv: Any) -> None:
    """An ``input_batch`` over ``max_batch_items`` is refused before any query is made."""
    body = json.dumps({"input_batch": [[1.0]] * 11}).encode()
    status, doc, _ = one(srv.q, request("POST", "/app/predict", body))
    assert status == 413
    assert "max_batch_items = 10" in doc["error"] and "11 items" in doc["error"]
    assert refused(srv).get("batch_too_large", 0) >= 1


def test_oip_rows_over_max_batch_items_is_413(srv: Any) -> None:
    body = json.dumps({"inputs": [{"name": "input", "shape": [11, 1], "datatype": "FP64",
                                   "data": [1.0] * 11}]}).encode()
    status, doc, _ = one(srv.q, request("POST", "/v2/models/app/infer", body))
    assert status == 413 and "max_batch_items" in doc["error"]


def test_nesting_over_max_nesting_is_400(srv: Any) -> None:
    body = b'{"input": ' + b"[" * 9 + b"1.0" + b"]" * 9 + b"}"
    status, doc, _ = one(srv.q, request("POST", "/app/predict", body))
    assert status == 400 and "max_nesting = 8" in doc["error"]
    assert refused(srv).get("nesting_too_deep", 0) >= 1


def test_long_url_is_414_and_closes(srv: Any) -> None:
    status, doc, closed = one(srv.q, request("GET", "/" + "a" * 2000, close=False))
    assert status == 414 and "max_url_bytes = 1024" in doc["error"] and closed
    assert refused(srv).get("url_too_long", 0) >= 1
    assert healthy(srv)


def test_big_headers_are_431_and_close(srv: Any) -> None:
    """A head over ``max_header_bytes`` is refused without reading the rest of it (the
    client is still sending 1 MiB when the answer comes)."""
    big = "X-Filler: " + "b" * (1 << 20) + "\r\n"
    status, doc, closed = one(srv.q, request("GET", "/healthz", headers=big, close=False))
    assert status == 431 and "max_header_bytes = 16384" in doc["error"] and closed
    many = "".join(f"X-H{i}: {'c' * 100}\r\n" for i in range(400))
    status, _, _ = one(srv.q, request("GET", "/healthz", headers=many, close=False))
    assert status == 431
    assert refused(srv).get("headers_too_large", 0) >= 2
    assert healthy(srv)


def test_slow_headers_get_408_then_close(srv: Any) -> None:
    """A request whose headers do not all arrive within ``header_timeout_s`` is answered
    408 and closed, however slowly it keeps trickling.  (The server closes with the
    client's latest bytes unread, so its kernel resets the connection and a send can fail
    before the client has read the 408: the answer is still in the client's receive
    queue, so the client stops sending and reads it.)"""
    with socket.create_connection(("127.0.0.1", srv.q), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        deadline = time.monotonic() + 10 * HEADER_TIMEOUT_S + 5
        raw = b""
        sending = True
        while time.monotonic() < deadline:
            if sending:
                try:
                    s.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    sending = False
            s.settimeout(0.05)
            try:
                chunk = s.recv(4096)
            except TimeoutError:
                continue
            except OSError:  # reset, with nothing more to read
                break
            if not chunk:
                break
            raw += chunk
    got = answers(raw)
    assert [a.status for a in got] == [408]
    assert "header_timeout_s" in json.loads(got[0].body)["error"]
    assert refused(srv).get("header_timeout", 0) >= 1


def test_announced_body_over_the_limit_is_413_before_it_is_sent(srv: Any) -> None:
    """A ``Content-Length`` over ``max_body_bytes`` is answered at once (the client has
    sent no body and keeps the connection open)."""
    with socket.create_connection(("127.0.0.1", srv.q), timeout=10) as s:
        s.sendall(b"POST /app/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n")
        raw = b""
        while chunk := s.recv(4096):
            raw += chunk
    got = answers(raw)
    assert [a.status for a in got] == [413]
    assert "10000000000" in json.loads(got[0].body)["error"]


def test_stalled_body_gets_408(srv: Any) -> None:
    """A body that stops arriving for ``body_timeout_s`` (a chunk announced, never sent)
    is answered 408 and the connection closed."""
    with socket.create_connection(("127.0.0.1", srv.q), timeout=10 * BODY_TIMEOUT_S + 5) as s:
        s.sendall(b"POST /app/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                  b"\r\nffffffffffffffff\r\n")
        raw = b""
        while chunk := s.recv(4096):
            raw += chunk
    got = answers(raw)
    assert [a.status for a in got] == [408]
    assert "body_timeout_s" in json.loads(got[0].body)["error"]
    assert refused(srv).get("body_timeout", 0) >= 1


def test_idle_keep_alive_connection_is_closed(srv: Any) -> None:
    """A keep-alive connection idle for ``idle_timeout_s`` is closed, without an answer."""
    with socket.create_connection(("127.0.0.1", srv.q), timeout=10 * IDLE_TIMEOUT_S + 5) as s:
        s.sendall(request("GET", "/healthz", close=False))
        first = s.recv(4096)
        assert first.startswith(b"HTTP/1.1 200")
        assert s.recv(4096) == b""  # closed by the server, nothing more said
    assert refused(srv).get("idle_timeout", 0) >= 1


def test_idle_connections_make_room_at_max_connections(srv: Any) -> None:
    """With ``max_connections`` sockets open and silent, a new client is still served: the
    connection idle the longest is closed to make room."""
    socks = [socket.create_connection(("127.0.0.1", srv.q)) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.05)
        assert healthy(srv)
        assert refused(srv).get("idle_evicted", 0) >= 1
    finally:
        for s in socks:
            s.close()


def test_busy_connections_at_max_connections_get_503(srv: Any) -> None:
    """When every connection is busy (a request under way), a new one is answered 503
    naming ``max_connections`` and closed; the server serves again once they finish."""
    socks = []
    try:
        for _ in range(MAX_CONNECTIONS):
            s = socket.create_connection(("127.0.0.1", srv.q))
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # headers not finished
            socks.append(s)
        time.sleep(0.05)
        raw, closed = exchange(srv.q, request("GET", "/healthz"))
        got = answers(raw)
        assert got[0].status == 503 and closed
        assert "max_connections = 6" in json.loads(got[0].body)["error"]
    finally:
        for s in socks:
            s.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if healthy(srv):
                break
        except (AssertionError, OSError):
            pass
        time.sleep(0.05)
    assert healthy(srv)
    assert refused(srv).get("too_many_connections", 0) >= 1


def test_upgrade_and_connect_get_one_answer_then_close(srv: Any) -> None:
    """``Upgrade: websocket`` is answered as a plain request, ``CONNECT`` with 501: one
    answer each, then the connection closes (no second 501)."""
    up = request("GET", "/healthz", headers="Connection: Upgrade\r\nUpgrade: websocket\r\n",
                 close=False)
    raw, closed = exchange(srv.q, up + b"\x81\x05hello")
    assert [a.status for a in answers(raw)] == [200] and closed
    connect = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
    raw, closed = exchange(srv.q, connect + b"\x16\x03\x01")
    got = answers(raw)
    assert [a.status for a in got] == [501] and closed
    assert "CONNECT" in json.loads(got[0].body)["error"]


def test_head_gets_headers_only(srv: Any) -> None:
    """HEAD gets GET's status and headers (Content-Length included) and no body; a route
    without GET answers HEAD with 405."""
    raw, _ = exchange(srv.q, request("HEAD", "/healthz"))
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 15" in head and rest == b""
    raw, _ = exchange(srv.q, request("HEAD", "/app/predict"))
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405") and rest == b""


def test_a_handler_that_raises_is_a_counted_500() -> None:
    """A handler exception is answered 500 with a JSON error, counted, and the connection
    serves the next request."""
    from clipperlab.real.http import Connections, HttpProtocol, Request, json_response

    def handler(req: Request) -> bytes:
        if req.path == "/boom":
            raise RuntimeError("kaput")
        return json_response(200, {"ok": True})

    async def main() -> tuple[bytes, Connections]:
        conns = Connections()
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(lambda: HttpProtocol(handler, connections=conns),
                                       "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request("GET", "/boom", close=False) + request("GET", "/fine"))
        raw = await reader.read()
        writer.close()
        srv.close()
        return raw, conns

    raw, conns = asyncio.run(main())
    got = answers(raw)
    assert [a.status for a in got] == [500, 200]
    assert "kaput" in json.loads(got[0].body)["error"]
    assert conns.refused["handler_error"] == 1


@pytest.mark.parametrize(
    ("setting", "value"),
    [("max_batch_items", 0), ("max_nesting", 1), ("max_url_bytes", 10),
     ("max_header_bytes", 100), ("header_timeout_s", 0), ("idle_timeout_s", -1),
     ("body_timeout_s", "soon"),
     ("max_connections", 0), ("max_connections", "many"),
     ("parse_turn_ms", 0), ("parse_turn_ms", 5000), ("parse_turn_ms", True),
     ("parse_inline_bytes_per_ms", -1), ("parse_inline_bytes_per_ms", 1.5)],
)
def test_limits_are_checked_settings(setting: str, value: Any) -> None:
    """Each limit is a ``[server]`` setting; a nonsense value is a ConfigError naming it."""
    with pytest.raises(ConfigError, match=f"server.{setting}"):
        load_config(None, **{setting: value})


def test_limits_have_defaults() -> None:
    cfg = load_config(None)
    assert cfg.max_batch_items == 1000 and cfg.max_nesting == 32
    assert cfg.max_url_bytes == 8 << 10 and cfg.max_header_bytes == 64 << 10
    assert cfg.header_timeout_s == 10.0 and cfg.idle_timeout_s == 60.0
    assert cfg.body_timeout_s == 30.0
    assert cfg.max_connections == 900
    assert cfg.parse_turn_ms == 0.5 and cfg.parse_inline_bytes_per_ms == 16 << 10
