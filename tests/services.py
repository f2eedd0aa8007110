"""Outside services for tests: a throwaway Redis and HAProxy on loopback.

``redis_server(folder)`` is a context manager that starts ``redis-server`` on a free
loopback port with nothing saved to disk (``--save '' --appendonly no``, its folder the
test's), waits until it answers ``PING`` and yields a ``RedisServer`` (``url`` for the
store setting); it stops the server on exit.  Without the binary (the Debian package
``redis-server``; ``.ci/run`` installs it) the test is skipped, saying so.

``haproxy(folder, servers)`` runs HAProxy with ``examples/haproxy.cfg`` (its ports moved
to free loopback ones, one ``server`` line per frontend) and yields a ``Haproxy``
(``url`` for queries, ``stats_url``; ``haproxy_up`` reads which frontends it sees up);
skipped without the binary (the Debian package ``haproxy``).

``serve_process(folder, config)`` runs ``clipperlab serve`` in a process of its own (one
a test can SIGKILL) and yields its ports.
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

__all__ = ["HAPROXY_CFG", "Haproxy", "RedisServer", "ServeProcess", "free_port", "haproxy",
           "haproxy_config", "haproxy_up", "redis_server", "require_haproxy", "require_redis",
           "serve_process"]


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


# --------------------------------------------------------------------------- HAProxy

HAPROXY_CFG = Path(__file__).resolve().parents[1] / "examples" / "haproxy.cfg"


class Haproxy(NamedTuple):
    """A running HAProxy: queries to ``url``, its view of the servers at ``stats_url``."""

    url: str
    port: int
    stats_url: str
    proc: subprocess.Popen[bytes]
    config: Path


def require_haproxy() -> str:
    """The ``haproxy`` binary, or skip the test (the reason names the package)."""
    exe = shutil.which("haproxy")
    if exe is None:
        pytest.skip("haproxy is not installed (apt-get install -y haproxy)")
    return exe


def haproxy_config(servers: list[str], port: int, stats_port: int,
                   template: Path = HAPROXY_CFG) -> str:
    """``examples/haproxy.cfg`` with its query and stats ports on loopback and one
    ``server`` line per ``HOST:PORT`` in ``servers`` (everything else as documented)."""
    out: list[str] = []
    section = ""
    for line in template.read_text().splitlines():
        word = line.split()[0] if line.strip() else ""
        if line[:1] not in (" ", "\t", "#", ""):
            section = line.strip()
        if section == "frontend queries" and word == "bind":
            line = f"    bind 127.0.0.1:{port}"
        elif section == "frontend stats" and word == "bind":
            line = f"    bind 127.0.0.1:{stats_port}"
        elif section == "backend frontends" and word == "server":
            continue
        out.append(line)
        if section == "backend frontends" and word == "default-server":
            out += [f"    server fe{i + 1} {s}" for i, s in enumerate(servers)]
    return "\n".join(out) + "\n"


def haproxy_up(stats_url: str) -> dict[str, str]:
    """Each server's status as HAProxy sees it (``UP``, ``DOWN``, ``UP 1/2``...)."""
    import urllib.request

    with urllib.request.urlopen(stats_url + ";csv", timeout=5) as r:
        rows = r.read().decode().splitlines()
    head = rows[0].lstrip("# ").split(",")
    out: dict[str, str] = {}
    for row in rows[1:]:
        f = dict(zip(head, row.split(","), strict=False))
        if f.get("pxname") == "frontends" and f.get("svname") not in ("FRONTEND", "BACKEND"):
            out[f["svname"]] = f["status"]
    return out


@contextlib.contextmanager
def haproxy(folder: Path, servers: list[str], tries: int = 5) -> Iterator[Haproxy]:
    """HAProxy on loopback in front of ``servers`` (``HOST:PORT`` of query ports), with
    the documented configuration; stopped on exit."""
    exe = require_haproxy()
    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / "haproxy.cfg"
    for _ in range(tries):
        port, stats_port = free_port(), free_port()
        cfg.write_text(haproxy_config(servers, port, stats_port))
        check = subprocess.run([exe, "-c", "-q", "-f", str(cfg)], capture_output=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy -c refused {cfg}: {check.stderr.decode()[-2000:]}")
        log = open(folder / "haproxy.log", "ab")  # noqa: SIM115 - closed below
        proc = subprocess.Popen([exe, "-db", "-f", str(cfg)], stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL)
        log.close()
        stats_url = f"http://127.0.0.1:{stats_port}/stats"
        until = time.monotonic() + 10.0
        while time.monotonic() < until and proc.poll() is None:
            try:
                haproxy_up(stats_url)
                break
            except OSError:
                time.sleep(0.02)
        if proc.poll() is None:
            break
        proc.wait()
    else:
        raise RuntimeError(f"haproxy did not start in {tries} tries; see {folder}")
    try:
        yield Haproxy(f"127.0.0.1:{port}", port, stats_url, proc, cfg)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- frontends

class ServeProcess(NamedTuple):
    """A ``clipperlab serve`` process: its ``ports`` (query, admin, rpc) and ``proc``."""

    ports: dict[str, int]
    proc: subprocess.Popen[bytes]

    @property
    def query(self) -> str:
        return f"127.0.0.1:{self.ports['query']}"

    @property
    def admin(self) -> str:
        return f"127.0.0.1:{self.ports['admin']}"


@contextlib.contextmanager
def serve_process(folder: Path, config: str, *args: str) -> Iterator[ServeProcess]:
    """``clipperlab serve`` in its own process (so that a test may SIGKILL it), with
    ``config`` as its deploy.toml, every port ephemeral and its store in ``folder``
    unless ``args`` say otherwise; its log is ``folder/serve.log``.  Killed on exit."""
    import json
    import sys

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "deploy.toml").write_text(config)
    pf = folder / "ports.json"
    argv = [sys.executable, "-m", "clipperlab", "serve", "--config", str(folder / "deploy.toml"),
            "--query-port", "0", "--admin-port", "0", "--rpc-port", "0",
            "--ports-file", str(pf)]
    if "--store" not in args:
        argv += ["--store", str(folder / "store")]
    with open(folder / "serve.log", "ab") as log:
        proc = subprocess.Popen([*argv, *args], stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL, cwd=folder)
    try:
        until = time.monotonic() + 60.0
        while not (pf.exists() and pf.read_text()):
            if proc.poll() is not None or time.monotonic() > until:
                tail = (folder / "serve.log").read_text()[-2000:]
                raise RuntimeError(f"clipperlab serve did not start: {tail}")
            time.sleep(0.05)
        yield ServeProcess(json.loads(pf.read_text())["ports"], proc)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
