"""Outside services for tests: a throwaway Redis on loopback.

``redis_server(folder)`` is a context manager that starts ``redis-server`` on a free
loopback port with nothing saved to disk (``--save '' --appendonly no``, its folder the
test's), waits until it answers ``PING`` and yields a ``RedisServer`` (``url`` for the
store setting); it stops the server on exit.  Without the binary (the Debian package
``redis-server``; ``.ci/run`` installs it) the test is skipped, saying so.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

__all__ = ["RedisServer", "free_port", "redis_server", "require_redis"]


class RedisServer(NamedTuple):
    url: str
    port: int
    proc: subprocess.Popen[bytes]


def require_redis() -> str:
    """The ``redis-server`` binary, or skip the test (the reason names the package)."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    try:
        import redis  # noqa: F401
    except ImportError:
        pytest.skip("the redis package is not installed (pip install 'clipperlab[redis]')")
    return exe


def free_port() -> int:
    """A loopback port the kernel had free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def redis_server(folder: Path, tries: int = 5) -> Iterator[RedisServer]:
    """A fresh Redis on 127.0.0.1 (a port taken meanwhile by someone else: another try)."""
    exe = require_redis()
    folder.mkdir(parents=True, exist_ok=True)
    for _ in range(tries):
        port = free_port()
        proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(folder), "--logfile", str(folder / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        until = time.monotonic() + 10.0
        while time.monotonic() < until and proc.poll() is None and not _pong(port):
            time.sleep(0.02)
        if proc.poll() is None and _pong(port):
            break
        proc.kill()
        proc.wait()
    else:
        raise RuntimeError(f"redis-server did not start in {tries} tries; see {folder}")
    try:
        yield RedisServer(f"redis://127.0.0.1:{port}/0", port, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
