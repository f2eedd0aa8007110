"""Raw HTTP for tests that send what no client library would: bytes in, answers out.

``exchange(port, data)`` writes ``data`` to a fresh loopback connection and reads until the
server closes it (or ``timeout_s`` passes); ``answers(raw)`` splits what came back into
``(status, headers, body)`` records, reading each body by its ``Content-Length``.
"""

from __future__ import annotations

import contextlib
import socket
from typing import NamedTuple

__all__ = ["Answer", "answers", "exchange", "request"]


class Answer(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes


def request(method: str, path: str, body: bytes = b"", headers: str = "",
            close: bool = True) -> bytes:
    """One HTTP/1.1 request; ``headers`` are complete ``Name: value\\r\\n`` lines."""
    last = "Connection: close\r\n" if close else ""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}"
    return f"{head}Content-Length: {len(body)}\r\n{last}\r\n".encode("latin-1") + body


def exchange(port: int, data: bytes, timeout_s: float = 10.0) -> tuple[bytes, bool]:
    """Send ``data``; return what came back and whether the server closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        with contextlib.suppress(OSError):  # the server may answer and close early
            s.sendall(data)
        out = b""
        try:
            while True:
                chunk = s.recv(1 << 16)
                if not chunk:
                    return out, True
                out += chunk
        except TimeoutError:
            return out, False
        except ConnectionResetError:
            return out, True


def answers(raw: bytes) -> list[Answer]:
    out = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        if not sep:
            raise AssertionError(f"an incomplete answer: {raw[:200]!r}")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        n = int(headers.get("content-length", "0"))
        out.append(Answer(status, headers, rest[:n]))
        raw = rest[n:]
    return out
