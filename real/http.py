"""A lean HTTP/1.1 server protocol on asyncio (uvloop), parsing with ``httptools``.

Rules:
- Parsing is ``httptools`` (the llhttp parser); nothing here parses HTTP by hand.
- Keep-alive by default (HTTP/1.1), closed after the response when the client asks
  (``Connection: close`` or HTTP/1.0 without keep-alive).
- Pipelining-safe: every request of a connection gets a sequence number and responses are
  written strictly in that order, whatever order the handlers finish in.
- One write per connection per loop turn, the turn's writes together: answers given
  while a read is parsed (cache hits) go out after the turn's reads, every connection's
  by one loop callback (written one by one, each woke a client that had gone back to
  sleep, at the server's expense: ``data_received``); answers given while
  ``hold_writes``/``release_writes`` bracket other work (a container's read: a batch's
  replies) go out at ``release_writes``, without a callback or a loop turn (the RPC
  brackets each read); answers given otherwise go out on the next turn, a callback each
  (one callback flushing every connection answered in a turn measured slower than
  uvloop's own handles there: 5.3 against 4.8 us a request).
- Bodies are read by ``Content-Length`` (chunked bodies are accepted too, the parser
  de-chunks them); a body over ``max_body_bytes`` gets ``413`` and the connection closes.
- Limits (``HttpLimits``), each answered once with a JSON ``error`` naming the setting,
  then the connection closes: a URL over ``max_url_bytes`` gets ``414``; a head (request
  line and headers) over ``max_url_bytes + max_header_bytes`` gets ``431`` (counted per
  parsed slice, so at most one 4 KiB slice is read past it); a request whose headers have
  not all arrived ``header_timeout_s`` after its first byte gets ``408`` (time while the
  server holds the connection's bytes, reading paused or a backlog unparsed, not
  counted: it restarts the clock), and so does one
  whose body stalls (no byte) for ``body_timeout_s``.  A ``Content-Length`` over
  ``max_body_bytes`` gets ``413`` at once, before any body is read.  A keep-alive
  connection idle for ``idle_timeout_s`` is closed without an answer.
- ``Connections`` holds every connection of a server: at most ``max_connections`` are
  open; a new one beyond that closes the connection idle the longest, or, when none is
  idle, is answered ``503`` and closed.  Each refusal is counted by reason
  (``Connections.refused``, exported as ``clipperlab_real_http_refused_total``).
- Unparseable requests get ``400`` with a JSON ``error`` and the connection closes.
- ``CONNECT`` gets ``501``; a request asking for ``Upgrade`` is answered as if it had not
  (RFC 9110 lets a server ignore it), and either way the connection closes after that one
  answer (what follows on the socket is not HTTP/1.1).
- ``HEAD`` gets the headers the same ``GET`` would get, without the body.
- The path a handler sees is percent-decoded (UTF-8), so ``/my%2Dapp`` is ``/my-app``.
- A handler that raises gets its request answered ``500`` with a JSON ``error``; it is
  logged and counted (reason ``handler_error``), and the connection keeps serving.
- A handler gets a ``Request`` and returns the response bytes at once, or ``None`` and
  calls ``request.respond(bytes)`` later (after an engine reply, say).  A response for a
  client that went away is dropped.
- When more than ``max_pipelined`` responses are outstanding on one connection, reading
  pauses until they drain (back-pressure instead of unbounded memory).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import resource
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote

import httptools
import numpy as np
import orjson

__all__ = [
    "Connections",
    "HttpLimits",
    "HttpProtocol",
    "Request",
    "dumps",
    "error_response",
    "fd_headroom",
    "hold_writes",
    "json_response",
    "release_writes",
    "response",
]

log: Final = logging.getLogger("clipperlab.http")

_REASONS: Final = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    409: b"Conflict",
    413: b"Payload Too Large",
    414: b"URI Too Long",
    415: b"Unsupported Media Type",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    503: b"Service Unavailable",
}
_STATUS_LINES: Final = {k: b"HTTP/1.1 %d %s\r\n" % (k, v) for k, v in _REASONS.items()}
JSON_TYPE: Final = b"application/json"
# Reads above this are parsed in slices, one per event-loop iteration (about 100 requests).
_SLICE_BYTES: Final = 4 * 1024
# The scheduler parses for at most this long before letting the event loop poll sockets
# (server.parse_turn_ms; ``set_parsing``).  Short, because a container's batch result
# waits for the poll: with 2 ms turns the no-op model at 20,000-30,000 q/s had a median of
# 48 reply gaps (3 ms or more without a reply while a query waited) a second, with 0.5 ms
# 1.1 (bench/reply_gaps.py --parse-turn-ms 2,0.5; results/bench/reply_gaps.md).
PARSE_TURN_S: Final = 0.0005
# Small reads are parsed at once, up to this many bytes per millisecond (then they queue;
# server.parse_inline_bytes_per_ms).
_INLINE_BYTES: Final = 16 * 1024
_monotonic = time.monotonic


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


def _default(x: Any) -> Any:
    """What orjson does not encode itself: arrays it cannot take (object dtype, not
    contiguous), bytes (base64), sets."""
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, bytes):
        return base64.b64encode(x).decode()
    if isinstance(x, set | frozenset):
        return list(x)
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


_OPTS: Final = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def dumps(obj: Any) -> bytes:
    """Compact JSON.  NaN and +-Infinity (not JSON) are written ``null``; integers beyond
    64 bits raise ``TypeError``."""
    return orjson.dumps(obj, default=_default, option=_OPTS)


def json_response(status: int, obj: Any) -> bytes:
    return response(status, dumps(obj))


def error_response(status: int, message: str) -> bytes:
    return json_response(status, {"error": message})


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpLimits:
    """What one connection may send (see the module's rules for the answers)."""

    max_body_bytes: int = 16 << 20
    max_url_bytes: int = 8 << 10
    max_header_bytes: int = 64 << 10
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    idle_timeout_s: float = 60.0


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
_KEEP: Final = frozenset(
    (
        b"content-type",
        b"authorization",
        b"x-clipperlab-token",
        b"inference-header-content-length",
        b"expect",
        b"host",
        b"origin",
        b"sec-fetch-site",
        b"content-length",
    )
)

# Headers as clients commonly spell them -> the kept name, or b"" (skipped): most
# headers need no lower() (on_header: 0.16 us against 0.27 us a header).
_KEEP_SPELLED: Final[dict[bytes, bytes]] = {
    **{k: k for k in _KEEP},
    **{k.title(): k for k in _KEEP},
    **{k: b"" for k in (b"User-Agent", b"Accept", b"Connection", b"Accept-Encoding",
                        b"user-agent", b"accept", b"connection", b"accept-encoding")},
}


# Request targets seen lately -> (path, query): most requests name one of a few paths
_TARGETS: Final[dict[bytes, tuple[str, str]]] = {}
_METHODS: Final = {m.encode(): m for m in ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS")}


def _target(url: bytes) -> tuple[str, str]:
    """The percent-decoded path and the query of a request target (kept: 0.5 us a request)."""
    path, _, query = url.decode("latin-1").partition("?")
    if "%" in path:
        path = unquote(path, errors="replace")
    if len(url) <= 256:
        if len(_TARGETS) >= 1024:
            _TARGETS.clear()
        _TARGETS[url] = (path, query)
    return path, query


class HttpProtocol(asyncio.Protocol):
    """One HTTP connection."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_body_bytes: int | None = None,
        limits: HttpLimits | None = None,
        connections: Connections | None = None,
        max_pipelined: int = 4096,
        on_close: Callable[[HttpProtocol], None] | None = None,
    ) -> None:
        self.handler = handler
        limits = limits or HttpLimits()
        if max_body_bytes is not None:
            limits = HttpLimits(
                max_body_bytes=max_body_bytes,
                max_url_bytes=limits.max_url_bytes,
                max_header_bytes=limits.max_header_bytes,
                header_timeout_s=limits.header_timeout_s,
                body_timeout_s=limits.body_timeout_s,
                idle_timeout_s=limits.idle_timeout_s,
            )
        self.limits = limits
        self.max_body_bytes = limits.max_body_bytes
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
        self._conns = connections if connections is not None else Connections()
        # Head accounting: bytes fed since the current request began (0: between requests,
        # -1: headers complete), and when it began (the connections' coarse clock).
        self._head_bytes = 0
        self._in_message = False
        self._head_at = 0.0
        self._active_at = 0.0
        self._head_seqs: set[int] = set()

    # -- asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._active_at = self._conns.now
        self._conns.admit(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._seq > self._next_write:
            log.info(
                "client %s went away with %d request(s) unanswered",
                self.peer,
                self._seq - self._next_write,
            )
        self.transport = None
        self._conns.remove(self)
        if self.on_close is not None:
            self.on_close(self)

    def data_received(self, data: bytes) -> None:
        if self._failed:
            return
        self._active_at = self._conns.now
        sched = self._sched
        if (
            len(data) <= _SLICE_BYTES
            and not self._backlog
            and not sched.queue
            and sched.take_inline(len(data))
        ):
            # A small read while nobody waits: parse it now (the common, light-load path);
            # answers made meanwhile (cache hits) go out in the write below, not a turn later.
            flush_soon, self._flush_soon = self._flush_soon, True
            self._feed(data)
            self._flush_soon = flush_soon
            if self._out and not flush_soon:
                # Answered while parsed (cache hits): written with every connection
                # answered in this loop turn, by one callback after the turn's reads.  One
                # write at a time, each reader (the clients) got its answer, went back to
                # sleep and had to be woken again by the next, and waking a sleeping
                # process is the writer's CPU: cache hits at 44,000 q/s, 32 connections,
                # five pairs side by side, 10.7 -> 9.5 us a query of the server's CPU, the
                # clients' sleeps 0.12 -> 0.04 a request; no change at 4,000 or 13,000 q/s.
                self._flush_soon = True
                held = sched.held
                if held is None:
                    sched.held = [self]
                    self._loop.call_soon(sched.release)
                else:
                    held.append(self)
            return
        # Parsing happens in the fair scheduler below, a slice at a time, so that a deep
        # pipeline on one connection cannot starve the others or the container replies.
        backlog = self._backlog
        if len(data) <= _SLICE_BYTES and not backlog:
            # One slice, nothing before it: the scheduler parses it on the next loop turn,
            # before the next poll unless its budget runs out; reading pauses only when a
            # read finds a backlog (so at most one more read waits), not for every read
            # (a pause and a resume per request at saturation; 32 connections, one
            # request each per turn: 11.3-11.9 against 8.3-8.8 us a request, measured)
            backlog.append(data)
            sched.add(self)
            return
        view = memoryview(data)
        for i in range(0, len(data), _SLICE_BYTES):
            backlog.append(bytes(view[i : i + _SLICE_BYTES]))
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
            # CONNECT or Upgrade: that request was answered (on_message_complete); what
            # follows is not HTTP/1.1, so read no more and close after the answers.
            self._failed = True
            self._close_after = self._seq - 1
            self._backlog.clear()
            self._close_if_done()
            return
        except httptools.HttpParserError as e:
            if not self._failed:
                self._fail(400, f"malformed HTTP request: {e}", "malformed")
            return
        if self._in_message and self._head_bytes >= 0:
            # Still inside a request's head after this slice (slices are <= 4 KiB).
            self._head_bytes += len(data)
            if self._head_bytes - len(self._url) > self.limits.max_header_bytes:
                self._fail(
                    431,
                    f"request headers exceed max_header_bytes = {self.limits.max_header_bytes}",
                    "headers_too_large",
                )

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
        self._in_message = True
        self._head_bytes = 0
        self._head_at = self._conns.now

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.limits.max_url_bytes:
            self._fail(
                414, f"URL exceeds max_url_bytes = {self.limits.max_url_bytes}", "url_too_long"
            )
            raise httptools.HttpParserError("URL too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        key = _KEEP_SPELLED.get(name)
        if key is None:
            key = name.lower()
            if key not in _KEEP:
                return
        elif not key:
            return
        self._headers[key] = value

    def on_headers_complete(self) -> None:
        self._head_bytes = -1
        length = self._headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            self._fail(
                413,
                f"Content-Length {int(length)} exceeds the limit of {self.max_body_bytes} bytes",
                "body_too_large",
            )
            raise httptools.HttpParserError("body too large")
        # curl sends "Expect: 100-continue" with bodies over 1 KiB and waits a second for
        # the interim answer; give it at once (nothing else is outstanding then).
        expect = self._headers.get(b"expect")
        if (
            expect is not None
            and expect.lower() == b"100-continue"
            and self._next_write == self._seq
            and self.transport is not None
        ):
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_len += len(body)
        if self._body_len > self.max_body_bytes:
            self._fail(
                413,
                f"request body exceeds the limit of {self.max_body_bytes} bytes",
                "body_too_large",
            )
            raise httptools.HttpParserError("body too large")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        target = _TARGETS.get(self._url)
        if target is None:
            target = _target(self._url)
        path, query = target
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        seq = self._seq
        self._seq += 1
        if not self.parser.should_keep_alive():
            self._close_after = seq
        raw = self.parser.get_method()
        method = _METHODS.get(raw) or raw.decode("latin-1")
        if method == "HEAD":
            self._head_seqs.add(seq)
        elif method == "CONNECT":
            self._conns.refused["upgrade"] += 1
            self.complete(seq, error_response(501, "CONNECT is not supported"))
            return
        req = Request(method, path, query, self._headers, body, self, seq)
        try:
            data = self.handler(req)
        except Exception as e:  # noqa: BLE001 - a handler bug must not kill the server
            log.exception("handler failed on %s %s", req.method, path)
            self._conns.refused["handler_error"] += 1
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
        if self._head_seqs and seq in self._head_seqs:
            self._head_seqs.discard(seq)
            data = data[: data.find(b"\r\n\r\n") + 4]
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
            held = self._sched.held
            if held is not None:
                held.append(self)  # written at release_writes, in this loop turn
            else:
                self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_soon = False
        t = self.transport
        if t is None or not self._out:
            return
        out = self._out
        t.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()
        self._active_at = self._conns.now
        if self._close_after is not None and self._next_write > self._close_after:
            t.close()
            self.transport = None
        elif self._paused:
            self._set_reading()

    def _close_if_done(self) -> None:
        if (
            self.transport is not None
            and not self._out
            and self._close_after is not None
            and self._next_write > self._close_after
        ):
            self.transport.close()
            self.transport = None

    def _fail(self, status: int, message: str, reason: str) -> None:
        """Answer a request that could not be parsed, after those before it, then close."""
        self._failed = True
        self._in_message = False
        self._conns.refused[reason] += 1
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

    @property
    def quiet(self) -> bool:
        """Nothing to answer, nothing answered still to write and no request begun:
        closing it loses nothing."""
        return (self._next_write == self._seq and not self._out and not self._in_message
                and not self._backlog)

    def check_timers(self, now: float) -> None:
        """Called by ``Connections`` about four times per timeout: enforce the timeouts."""
        if self.transport is None or self._failed:
            return
        lim = self.limits
        # Stamps are the coarse clock, up to one tick early: wait one tick more.
        now -= self._conns.tick_s
        if self._in_message and self._head_bytes >= 0:
            if self._paused or self._backlog:
                # The rest of the head waits on the server (reading paused, or bytes read
                # but not yet parsed: an overload), not on the client: its clock stands
                # still and restarts from here
                self._head_at = max(self._head_at, now)
            elif now - self._head_at > lim.header_timeout_s:
                self._fail(
                    408,
                    f"request headers did not arrive within header_timeout_s ="
                    f" {lim.header_timeout_s}",
                    "header_timeout",
                )
        elif self._in_message and not self._paused:
            if now - self._active_at > lim.body_timeout_s:
                self._fail(
                    408,
                    f"the request body stalled for body_timeout_s = {lim.body_timeout_s}",
                    "body_timeout",
                )
        elif self.quiet and now - self._active_at > lim.idle_timeout_s:
            self._conns.refused["idle_timeout"] += 1
            self.close()

    def refuse(self, status: int, message: str) -> None:
        """Answer a connection that may not be served (before any request) and close it."""
        t = self.transport
        if t is not None:
            data = error_response(status, message)
            t.write(data.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
            t.close()
            self.transport = None
            self._failed = True

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


class Connections:
    """The HTTP connections of a server: a cap, the timeouts' clock and refusal counts.

    At most ``max_connections`` are open at once.  One sweep, about four times per the
    shortest timeout (at most once a second), advances the coarse clock ``now`` that the
    connections stamp their activity with (no clock read per request) and lets each one
    check its header and idle timeouts.
    """

    def __init__(self, max_connections: int = 900, *, tick_s: float = 1.0) -> None:
        self.max_connections = max_connections
        self.tick_s = tick_s
        self.members: dict[HttpProtocol, None] = {}
        self.refused: Counter[str] = Counter()
        self.now = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None

    def admit(self, proto: HttpProtocol) -> None:
        if len(self.members) >= self.max_connections:
            quiet = [p for p in self.members if p.quiet]
            if quiet:
                oldest = min(quiet, key=lambda p: p._active_at)
                self.refused["idle_evicted"] += 1
                oldest.close()
                self.members.pop(oldest, None)
            else:
                self.refused["too_many_connections"] += 1
                proto.refuse(
                    503,
                    f"the server has max_connections = {self.max_connections} open; retry later",
                )
                return
        self.members[proto] = None
        lim = proto.limits
        tick = min(lim.header_timeout_s, lim.body_timeout_s, lim.idle_timeout_s) / 4
        if tick < self.tick_s:
            self.tick_s = max(tick, 0.01)
        if self._timer is None:
            self._arm(proto._loop)

    def remove(self, proto: HttpProtocol) -> None:
        self.members.pop(proto, None)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = loop.call_later(self.tick_s, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        self.now = time.monotonic()
        for p in list(self.members):
            p.check_timers(self.now)
        if self.members and not loop.is_closed():
            self._arm(loop)


def fd_headroom(max_connections: int, reserve: int = 256) -> None:
    """Raise the soft open-file limit to ``max_connections + reserve`` when the hard limit
    allows, so the connection cap is what refuses clients, not ``accept()`` failing."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + reserve
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if new > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < want:
            log.warning(
                "the open-file limit (%d) is below max_connections + %d = %d: raise it"
                " (ulimit -n) or lower max_connections",
                new,
                reserve,
                want,
            )


class _Scheduler:
    """Round-robin parsing across connections within a time budget per loop iteration.

    Why: uvloop hands every readable socket its data in one iteration; parsing thousands of
    pipelined requests there would delay the container replies (read in the same
    iteration's I/O phase) past the queries' deadlines.  Connections with a backlog queue
    here; each turn parses one slice of the next connection until ``turn_s`` is spent.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: deque[HttpProtocol] = deque()
        self.members: set[HttpProtocol] = set()
        self.scheduled = False
        self.inline_bytes = 0  # parsed inline since the millisecond ``inline_ms`` began
        self.inline_ms = 0
        self.turn_s = PARSE_TURN_S
        self.inline_limit = _INLINE_BYTES
        # Connections answered while writes are held (``hold_writes``), flushed at release.
        self.held: list[HttpProtocol] | None = None

    def take_inline(self, n: int) -> bool:
        """Whether a read of ``n`` bytes may be parsed at once: at most ``inline_limit`` bytes
        begin being parsed inline per millisecond.  A clock read, not a loop callback per
        iteration to reset the count: the callback cost every wake-up a second, empty
        iteration of the loop (cache hits at 13K q/s, old and new server side by side:
        34.2 against 36.7 us a query, median of 5 pairs, each pair lower)."""
        ms = int(_monotonic() * 1000.0)
        if ms != self.inline_ms:
            self.inline_ms = ms
            self.inline_bytes = 0
        elif self.inline_bytes >= self.inline_limit:
            return False
        self.inline_bytes += n
        return True

    def release(self) -> None:
        """``release_writes``: write what the connections answered while writes were held
        (also the callback that writes the answers given while reads were parsed)."""
        held, self.held = self.held, None
        if held is not None:
            for proto in held:
                proto._flush()

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
        end_at = time.perf_counter() + self.turn_s
        while q:
            proto = q.popleft()
            # answers made while the slice is parsed (cache hits) go out in the _flush
            # below, as in data_received's inline path, not through a loop callback each
            flush_soon, proto._flush_soon = proto._flush_soon, True
            more = proto._feed_slice()
            proto._flush_soon = flush_soon
            if more:
                q.append(proto)
            else:
                self.members.discard(proto)
            proto._flush()
            if time.perf_counter() >= end_at:
                break
        if q and not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.run)


_schedulers: Final[dict[asyncio.AbstractEventLoop, _Scheduler]] = {}


def _scheduler(loop: asyncio.AbstractEventLoop) -> _Scheduler:
    s = _schedulers.get(loop)
    if s is None:
        if len(_schedulers) > 16:  # loops of finished tests
            for lp in [lp for lp in _schedulers if lp.is_closed()]:
                del _schedulers[lp]
        s = _schedulers[loop] = _Scheduler(loop)
    return s


def set_parsing(
    loop: asyncio.AbstractEventLoop,
    *,
    turn_s: float | int = PARSE_TURN_S,  # (a union: compiled, a bool still reaches the check)
    inline_bytes_per_ms: int = _INLINE_BYTES,
) -> None:
    """The fair scheduler's settings for every connection on ``loop``: how long one turn
    parses before the loop polls again, and how many bytes of small reads a millisecond
    are parsed at once (``ValueError`` outside (0, 1] s and [0, 2**30] bytes)."""
    if isinstance(turn_s, bool) or not isinstance(turn_s, int | float) or not 0 < turn_s <= 1:
        raise ValueError(f"the parse turn must be in (0, 1] s; got {turn_s!r}")
    n = inline_bytes_per_ms
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 1 << 30:
        raise ValueError(f"the inline parse budget must be an integer in [0, 2**30] bytes a"
                         f" millisecond; got {n!r}")
    s = _scheduler(loop)
    s.turn_s = float(turn_s)
    s.inline_limit = n


def hold_writes(loop: asyncio.AbstractEventLoop) -> None:
    """Until ``release_writes(loop)``, answers completed on this loop's connections wait
    for it instead of a loop callback each (see the module's rules)."""
    s = _schedulers.get(loop) or _scheduler(loop)
    if s.held is None:
        s.held = []


def release_writes(loop: asyncio.AbstractEventLoop) -> None:
    """Write what the connections answered since ``hold_writes(loop)``: one write each."""
    s = _schedulers.get(loop)
    if s is not None:
        s.release()
