"""Who starts containers: the ``Launcher`` interface and the local container manager.

The server asks a launcher for replicas and never starts a container itself:
``set_replicas(spec, n)`` (want ``n`` replicas of the model's active version),
``replica_up`` (a replica said hello: retire the previous version's), ``kill`` (a silent
replica: restart it), ``describe``, ``restarts_total`` and ``stop_all``.  ``Launcher``
keeps the bookkeeping both launchers share (which replicas are wanted, which versions are
retiring); a launcher says only how one replica is started and stopped.  Two implement it:
``ContainerManager`` here (local processes, ``[server] containers = "local"``, the
default) and ``RayLauncher`` in ``ray_launcher.py`` (Ray actors placed by resources,
``containers = "ray"``); ``containers = "none"`` starts nothing (containers by hand).

Rules of the local manager:
- For each model the store wants ``n`` replicas of its *active* version: processes
  ``clipperlab container`` with ordinals ``0..n-1`` connecting to this frontend.
- A process that exits while wanted is restarted after a back-off that starts at 0.1 s and
  doubles up to 5 s (reset once the process lived 10 s).  The engine learns that the replica
  is down from its connection (closed, or silent past the heartbeat limit); a silent
  container is killed here so that it restarts.
- When the active version changes, the new version's processes start at once and the old
  version's stop once one new replica has said hello (or at once when none are wanted).
- ``stop_all`` sends SIGTERM, waits up to ``grace_s``, then SIGKILL.
- The shared secret reaches a container through its environment
  (``CLIPPERLAB_RPC_SECRET``), never its command line (which ``ps`` shows to every user);
  with TLS on the RPC port the container is told which CA to trust (``--tls-ca``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from clipperlab.engine import ModelSpec, ReplicaId

__all__ = ["ContainerManager", "Launcher", "Managed"]

log = logging.getLogger("clipperlab.manager")

_BACKOFF_START_S = 0.1
_BACKOFF_MAX_S = 5.0
_HEALTHY_AFTER_S = 10.0


@dataclass(slots=True)
class Managed:
    """One wanted replica and its current process."""

    replica: ReplicaId
    argv: list[str]
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff_s: float = _BACKOFF_START_S
    wanted: bool = True
    last_error: str = ""
    task: asyncio.Task[None] | None = field(default=None, repr=False)


K = TypeVar("K")


class Launcher(ABC, Generic[K]):
    """Keeps the wanted replicas of each model's active version running somewhere.

    ``procs`` maps each wanted replica to what keeps it (``K``: a process, an actor);
    subclasses say how one is started (``_start``) and stopped (``_stop``, which also
    drops it from ``procs``).
    """

    def __init__(self, rpc_host: str = "127.0.0.1", rpc_port: int = 0, *, secret: str = "",
                 tls_ca: str = "", tls_server_name: str = "") -> None:
        self.procs: dict[ReplicaId, K] = {}
        self.restarts_total = 0
        self._retiring: dict[str, list[ReplicaId]] = {}
        # Where containers dial: a wildcard listen address is dialled on loopback.
        self.rpc_host = "127.0.0.1" if rpc_host in ("0.0.0.0", "", "::") else rpc_host
        self.rpc_port = rpc_port
        self.secret = secret
        self.tls_ca = tls_ca
        self.tls_server_name = tls_server_name

    @abstractmethod
    def _start(self, spec: ModelSpec, ordinal: int) -> K:
        """Start keeping replica ``ordinal`` of ``spec`` (without waiting for it)."""

    @abstractmethod
    def _stop(self, rid: ReplicaId) -> None:
        """Stop replica ``rid`` for good and forget it."""

    @abstractmethod
    def kill(self, rid: ReplicaId) -> None:
        """Kill a replica (a silent container); it will be restarted."""

    @abstractmethod
    def describe(self) -> list[dict[str, Any]]:
        """One row per wanted replica, for ``inspect``."""

    @abstractmethod
    async def stop_all(self, grace_s: float = 3.0) -> None:
        """Stop every replica this launcher keeps."""

    def set_replicas(self, spec: ModelSpec, count: int, active_up: bool = False) -> None:
        """Want ``count`` replicas of ``spec`` (the model's active version).
        ``active_up``: a replica of that version is connected already (retire the rest now)."""
        retiring = self._retiring[spec.name] = [
            r for r in self._retiring.get(spec.name, []) if r.version != spec.version
        ]
        for r in self.procs:
            if r.model == spec.name and r.version != spec.version and r not in retiring:
                retiring.append(r)
        if count == 0 or active_up:
            self._retire(spec.name)
        for ordinal in range(count):
            rid = ReplicaId(spec.name, spec.version, ordinal)
            if rid not in self.procs:
                self.procs[rid] = self._start(spec, ordinal)
        for rid in list(self.procs):
            if rid.model == spec.name and rid.version == spec.version and rid.ordinal >= count:
                self._stop(rid)

    def replica_up(self, rid: ReplicaId) -> None:
        """A replica said hello: retire the previous version's replicas."""
        if rid.model in self._retiring and rid in self.procs:
            self._retire(rid.model)

    def _retire(self, model: str) -> None:
        for old in self._retiring.pop(model, []):
            if old in self.procs:
                self._stop(old)


class ContainerManager(Launcher[Managed]):
    """Keeps the wanted container processes running."""

    def __init__(
        self,
        rpc_host: str,
        rpc_port: int,
        *,
        secret: str = "",
        tls_ca: str = "",
        tls_server_name: str = "",
        log_dir: str | None = None,
        python: str = sys.executable,
    ) -> None:
        super().__init__(rpc_host, rpc_port, secret=secret, tls_ca=tls_ca,
                         tls_server_name=tls_server_name)
        self.log_dir = log_dir
        self.python = python

    def argv(self, spec: ModelSpec, ordinal: int) -> list[str]:
        md = spec.metadata
        kind = str(md.get("kind", "noop"))
        path = str(md.get("path", ""))
        model = f"{kind}:{path}" if path else kind
        argv = [
            self.python,
            "-m",
            "clipperlab.real.container",
            "--model",
            model,
            "--name",
            spec.name,
            "--version",
            spec.version,
            "--input-type",
            spec.input_type,
            "--frontend",
            f"{self.rpc_host}:{self.rpc_port}",
            "--ordinal",
            str(ordinal),
        ]
        if self.tls_ca:
            argv += ["--tls-ca", self.tls_ca]
            if self.tls_server_name:
                argv += ["--tls-server-name", self.tls_server_name]
        if md.get("options"):
            import json

            argv += ["--options", json.dumps(md["options"])]
        return argv

    def _start(self, spec: ModelSpec, ordinal: int) -> Managed:
        m = Managed(ReplicaId(spec.name, spec.version, ordinal), self.argv(spec, ordinal))
        m.task = asyncio.get_running_loop().create_task(self._keep(m))
        return m

    def kill(self, rid: ReplicaId) -> None:
        """Kill a replica's process (silent container); it will be restarted."""
        m = self.procs.get(rid)
        if m is not None and m.proc is not None and m.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                m.proc.kill()

    def pid(self, rid: ReplicaId) -> int | None:
        m = self.procs.get(rid)
        return m.proc.pid if m is not None and m.proc is not None else None

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "replica": str(m.replica),
                "pid": m.proc.pid if m.proc is not None else None,
                "running": m.proc is not None and m.proc.returncode is None,
                "restarts": m.restarts,
                "last_error": m.last_error,
            }
            for m in self.procs.values()
        ]

    async def _keep(self, m: Managed) -> None:
        while m.wanted:
            out: Any = asyncio.subprocess.DEVNULL
            log_path = ""
            if self.log_dir:
                os.makedirs(self.log_dir, exist_ok=True)
                name = f"{m.replica.model}-{m.replica.version}-{m.replica.ordinal}.log"
                log_path = os.path.join(self.log_dir, name)
                out = open(log_path, "ab")  # noqa: SIM115
            env = dict(os.environ)
            if self.secret:
                env["CLIPPERLAB_RPC_SECRET"] = self.secret
            try:
                # A session of its own: a Ctrl-C at the terminal reaches the server, which
                # answers what is in flight and then stops the containers itself.
                m.proc = await asyncio.create_subprocess_exec(
                    *m.argv,
                    stdout=out,
                    stderr=out,
                    stdin=asyncio.subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,
                )
            finally:
                if out is not asyncio.subprocess.DEVNULL:
                    out.close()
            m.started_at = time.monotonic()
            log.info("started %s (pid %d)", m.replica, m.proc.pid)
            rc = await m.proc.wait()
            if not m.wanted:
                return
            lived_s = time.monotonic() - m.started_at
            if rc != 0 and log_path:
                m.last_error = _last_line(log_path)
            if lived_s > _HEALTHY_AFTER_S:
                m.backoff_s = _BACKOFF_START_S
            log.warning(
                "container %s exited with %s after %.1f s; restarting in %.1f s%s",
                m.replica,
                rc,
                lived_s,
                m.backoff_s,
                f" (last words: {m.last_error})" if m.last_error else "",
            )
            await asyncio.sleep(m.backoff_s)
            m.backoff_s = min(m.backoff_s * 2, _BACKOFF_MAX_S)
            m.restarts += 1
            self.restarts_total += 1

    def _stop(self, rid: ReplicaId) -> None:
        m = self.procs.pop(rid)
        self._end(m)

    def _end(self, m: Managed) -> None:
        m.wanted = False
        if m.proc is not None and m.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                m.proc.send_signal(signal.SIGTERM)
        if m.task is not None and (m.proc is None or m.proc.returncode is not None):
            m.task.cancel()

    async def stop_all(self, grace_s: float = 3.0) -> None:
        ms = list(self.procs.values())
        self.procs.clear()
        for m in ms:
            self._end(m)
        procs = [m.proc for m in ms if m.proc is not None and m.proc.returncode is None]
        if procs:
            _, pending = await asyncio.wait(
                [asyncio.ensure_future(pr.wait()) for pr in procs], timeout=grace_s
            )
            for pr in procs:
                if pr.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        pr.kill()
            if pending:
                await asyncio.wait(pending, timeout=grace_s)
        for m in ms:
            if m.task is not None:
                m.task.cancel()


def _last_line(path: str, tail_bytes: int = 2000) -> str:
    """The last non-empty line of a container's log (its error message, usually)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - tail_bytes))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [ln for ln in lines if ln]
    return lines[-1][:500] if lines else ""
