"""A lean HTTP/1.1 server protocol on asyncio (uvloop), parsing with ``httptools``.

Rules:
- Parsing is ``httptools`` (the llhttp parser); nothing here parses HTTP by hand.
- Keep-alive by default (HTTP/1.1), closed after the response when the client asks
  (``Connection: close`` or HTTP/1.0 without keep-alive).
- Pipelining-safe: every request of a connection gets a sequence number and responses are
  written strictly in that order, whatever order the handlers finish in.
- Bodies are read by ``Content-Length`` (chunked bodies are accepted too, the parser
  de-chunks them); a body over ``max_body_bytes`` gets ``413`` and the connection closes.
- Unparseable requests get ``400`` with a JSON ``error`` and the connection closes.
- A handler gets a ``Request`` and returns the response bytes at once, or ``None`` and
  calls ``request.respond(bytes)`` later (after an engine reply, say).  A response for a
  client that went away is dropped.
- When more than ``max_pipelined`` responses are outstanding on one connection, reading
  pauses until they drain (back-pressure instead of unbounded memory).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import httptools

__all__ = ["HttpProtocol", "Request", "error_response", "json_response", "response"]

log = logging.getLogger("clipperlab.http")

_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    409: b"Conflict",
    413: b"Payload Too Large",
    415: b"Unsupported Media Type",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    503: b"Service Unavailable",
}
_STATUS_LINES = {k: b"HTTP/1.1 %d %s\r\n" % (k, v) for k, v in _REASONS.items()}
JSON_TYPE = b"application/json"
# Reads above this are parsed in slices, one per event-loop iteration (about 100 requests).
_SLICE_BYTES = 4 * 1024
# The scheduler parses for at most this long before letting the event loop poll sockets.
_BUDGET_S = 0.002
# Small reads are parsed at once, up to this many bytes per event-loop iteration.
_INLINE_BYTES = 16 * 1024


def response(
    status: int,
    body: bytes,
    content_type: bytes = JSON_TYPE,
    extra_headers: bytes = b"",
) -> bytes:
    """Response bytes; ``extra_headers`` are complete ``Name: value\\r\\n`` lines."""
    line = _STATUS_LINES.get(status) or b"HTTP/1.1 %d Status\r\n" % status
    return b"%sContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n%s" % (
        line,
        content_type,
        len(body),
        extra_headers,
        body,
    )


def json_response(status: int, obj: Any) -> bytes:
    return response(status, json.dumps(obj, separators=(",", ":")).encode())


def error_response(status: int, message: str) -> bytes:
    return json_response(status, {"error": message})


class Request:
    """One parsed request; ``respond`` answers it (in pipeline order)."""

    __slots__ = ("method", "path", "query", "headers", "body", "conn", "seq", "peer")

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        headers: dict[bytes, bytes],
        body: bytes,
        conn: HttpProtocol,
        seq: int,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.conn = conn
        self.seq = seq
        self.peer = conn.peer

    def respond(self, data: bytes) -> None:
        self.conn.complete(self.seq, data)


Handler = Callable[[Request], "bytes | None"]

# Headers kept from the request (lower-case); the rest are skipped to stay cheap.
_KEEP = frozenset(
    (
        b"content-type",
        b"authorization",
        b"x-clipperlab-token",
        b"inference-header-content-length",
        b"expect",
    )
)


class HttpProtocol(asyncio.Protocol):
    """One HTTP connection."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_body_bytes: int = 16 << 20,
        max_pipelined: int = 4096,
        on_close: Callable[[HttpProtocol], None] | None = None,
    ) -> None:
        self.handler = handler
        self.max_body_bytes = max_body_bytes
        self.max_pipelined = max_pipelined
        self.on_close = on_close
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._body_len = 0
        self._seq = 0  # next request's number
        self._next_write = 0  # next response to write
        self._ready: dict[int, bytes] = {}
        self._close_after: int | None = None
        self._paused = False
        self._failed = False
        self._out: list[bytes] = []
        self._flush_soon = False
        self._backlog: deque[bytes] = deque()
        self._loop = asyncio.get_running_loop()
        self._sched = _scheduler(self._loop)

    # -- asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._seq > self._next_write:
            log.info(
                "client %s went away with %d request(s) unanswered",
                self.peer,
                self._seq - self._next_write,
            )
        self.transport = None
        if self.on_close is not None:
            self.on_close(self)

    def data_received(self, data: bytes) -> None:
        if self._failed:
            return
        sched = self._sched
        if (
            len(data) <= _SLICE_BYTES
            and not self._backlog
            and not sched.queue
            and sched.inline_bytes < _INLINE_BYTES
        ):
            # A small read while nobody waits: parse it now (the common, light-load path).
            sched.note_inline(len(data))
            self._feed(data)
            self._flush()
            return
        # Parsing happens in the fair scheduler below, a slice at a time, so that a deep
        # pipeline on one connection cannot starve the others or the container replies.
        view = memoryview(data)
        for i in range(0, len(data), _SLICE_BYTES):
            self._backlog.append(bytes(view[i : i + _SLICE_BYTES]))
        sched.add(self)
        self._set_reading()

    def _feed_slice(self) -> bool:
        """Parse one slice of the backlog; True when more remains."""
        if self._backlog and not self._failed and self.transport is not None:
            self._feed(self._backlog.popleft())
        if self._backlog and not self._failed and self.transport is not None:
            return True
        self._backlog.clear()
        self._set_reading()
        return False

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(501, "protocol upgrades are not supported")
        except httptools.HttpParserError as e:
            if not self._failed:
                self._fail(400, f"malformed HTTP request: {e}")

    def _set_reading(self) -> None:
        t = self.transport
        if t is None:
            return
        pause = bool(self._backlog) or self._seq - self._next_write > self.max_pipelined
        if pause != self._paused:
            self._paused = pause
            if pause:
                t.pause_reading()
            else:
                t.resume_reading()

    # -- httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []
        self._body_len = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in _KEEP:
            self._headers[name] = value

    def on_headers_complete(self) -> None:
        # curl sends "Expect: 100-continue" with bodies over 1 KiB and waits a second for
        # the interim answer; give it at once (nothing else is outstanding then).
        if (
            self._headers.get(b"expect", b"").lower() == b"100-continue"
            and self._next_write == self._seq
            and self.transport is not None
        ):
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_len += len(body)
        if self._body_len > self.max_body_bytes:
            self._fail(413, f"request body exceeds the limit of {self.max_body_bytes} bytes")
            raise httptools.HttpParserError("body too large")
        self._body.append(body)

    def on_message_complete(self) -> None:
        url = self._url.decode("latin-1")
        path, _, query = url.partition("?")
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        seq = self._seq
        self._seq += 1
        if not self.parser.should_keep_alive():
            self._close_after = seq
        req = Request(
            self.parser.get_method().decode("latin-1"),
            path,
            query,
            self._headers,
            body,
            self,
            seq,
        )
        try:
            data = self.handler(req)
        except Exception as e:  # noqa: BLE001 - a handler bug must not kill the server
            log.exception("handler failed on %s %s", req.method, path)
            data = error_response(500, f"internal error: {type(e).__name__}: {e}")
        if data is not None:
            self.complete(seq, data)
        elif self._seq - self._next_write > self.max_pipelined and not self._paused:
            self._set_reading()

    # -- responses
    def complete(self, seq: int, data: bytes) -> None:
        """Queue the response of request ``seq``; written in order, one write per loop turn."""
        if self.transport is None:
            return  # the client went away
        if seq != self._next_write:
            self._ready[seq] = data
            return
        out = self._out
        out.append(data)
        nxt = seq + 1
        ready = self._ready
        while nxt in ready:
            out.append(ready.pop(nxt))
            nxt += 1
        self._next_write = nxt
        if not self._flush_soon:
            self._flush_soon = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_soon = False
        t = self.transport
        if t is None or not self._out:
            return
        out = self._out
        t.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()
        if self._close_after is not None and self._next_write > self._close_after:
            t.close()
            self.transport = None
        elif self._paused:
            self._set_reading()

    def _fail(self, status: int, message: str) -> None:
        """Answer a request that could not be parsed, after those before it, then close."""
        self._failed = True
        log.warning("HTTP %d from %s: %s", status, self.peer, message)
        seq = self._seq
        self._seq += 1
        self._close_after = seq
        data = error_response(status, message)
        if b"Connection:" not in data:
            data = data.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
        self.complete(seq, data)

    @property
    def idle(self) -> bool:
        return self._next_write == self._seq

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


class _Scheduler:
    """Round-robin parsing across connections within a time budget per loop iteration.

    Why: uvloop hands every readable socket its data in one iteration; parsing thousands of
    pipelined requests there would delay the container replies (read in the same
    iteration's I/O phase) past the queries' deadlines.  Connections with a backlog queue
    here; each turn parses one slice of the next connection until ``_BUDGET_S`` is spent.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: deque[HttpProtocol] = deque()
        self.members: set[HttpProtocol] = set()
        self.scheduled = False
        self.inline_bytes = 0
        self._reset_scheduled = False

    def note_inline(self, n: int) -> None:
        self.inline_bytes += n
        if not self._reset_scheduled:
            self._reset_scheduled = True
            self.loop.call_soon(self._reset)

    def _reset(self) -> None:
        self._reset_scheduled = False
        self.inline_bytes = 0

    def add(self, proto: HttpProtocol) -> None:
        if proto not in self.members:
            self.members.add(proto)
            self.queue.append(proto)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.run)

    def run(self) -> None:
        self.scheduled = False
        q = self.queue
        end_at = time.perf_counter() + _BUDGET_S
        while q:
            proto = q.popleft()
            if proto._feed_slice():
                q.append(proto)
            else:
                self.members.discard(proto)
            proto._flush()
            if time.perf_counter() >= end_at:
                break
        if q and not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.run)


_schedulers: dict[asyncio.AbstractEventLoop, _Scheduler] = {}


def _scheduler(loop: asyncio.AbstractEventLoop) -> _Scheduler:
    s = _schedulers.get(loop)
    if s is None:
        if len(_schedulers) > 16:  # loops of finished tests
            for lp in [lp for lp in _schedulers if lp.is_closed()]:
                del _schedulers[lp]
        s = _schedulers[loop] = _Scheduler(loop)
    return s
