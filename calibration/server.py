"""The real side of a validation: the deployment it serves and the server in its own process.

Rules:
- ``real_deployment`` reads a ``deploy.toml`` with ``clipperlab.real.config`` (its
  ``[[models]]`` and ``[[applications]]``); model files are resolved against the file's
  directory; errors are ``ValidationError`` naming the file.
- ``model_specs`` turns one application and its linked models into engine objects with
  ``clipperlab.real.server``'s own parsers, so the twin's batching settings are the
  server's.
- ``ServerProcess`` starts the server in a spawned process on ephemeral ports (its store in
  a temporary directory), reads its CPU time from ``/proc`` and stops it on exit
  (SIGTERM, then SIGKILL).  ``idle_cpu_rate`` is its CPU per second with no queries.
  The server process looks every ``PARENT_CHECK_S`` whether the process that started it
  is still there and stops itself (containers and all) when it is not.
- ``ServerProcess.container_cpu_s``: the CPU seconds of its containers so far, per model,
  summed over the replicas: the server's child processes in ``/proc`` whose command line
  names the model (``--name``); a container that restarted starts from zero again.
  ``idle_container_cpu_rate`` is their CPU per second with no queries (heartbeats).
- ``ServerProcess.wait_s``: the seconds the server and its containers have waited
  runnable for a core so far (``/proc/<pid>/task/*/schedstat``'s ``run_delay``, what the
  host CPU model's time slices give as ``Simulation.cpu_wait_s``).
- ``ServerProcess.sleeps``: how often the server's event loop (its main thread) and its
  containers have gone to sleep so far (``/proc/<pid>/status``'s
  ``voluntary_ctxt_switches``): each is a wake-up later, what ``fit.fit_frontend_on_host``
  fits the loop's wake-up cost on when every run has it.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing as mp
import os
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipperlab.engine import Application, ModelSpec

from .errors import ValidationError

__all__ = [
    "RealDeployment",
    "ServerProcess",
    "ValidationError",
    "autogroup",
    "child_pids",
    "container_name",
    "idle_container_cpu_rate",
    "idle_cpu_rate",
    "model_specs",
    "real_deployment",
    "server_settings",
]




def _server_model_defaults() -> dict[str, Any]:
    """The server's default settings for models that leave them unsaid."""
    from clipperlab.real.config import ServerConfig

    return ServerConfig().model_defaults


def _server_parse_turn_s() -> float:
    """The server's default parse turn (s)."""
    from clipperlab.real.config import ServerConfig

    return ServerConfig().parse_turn_ms / 1000.0


@dataclass(frozen=True)
class RealDeployment:
    path: Path
    apps: list[dict[str, Any]]
    models: list[dict[str, Any]]  # model paths made absolute
    max_queue: int
    # the server's settings, which a model's batching table may override
    # (``admission_control``, ``drop_hopeless``, ``aimd_step_from``; the server's defaults
    # unless its [server] table says otherwise): the twin deploys each model as the
    # server does
    model_defaults: Mapping[str, Any] = field(default_factory=_server_model_defaults)
    # how long the server's fair scheduler parses before it polls (``server.parse_turn_ms``,
    # in seconds): the twin with the host CPU model parses in such turns
    parse_turn_s: float = field(default_factory=_server_parse_turn_s)


def real_deployment(
    path: str | Path, batching: Mapping[str, Any] | None = None
) -> RealDeployment:
    """Read ``deploy.toml`` (``ValidationError`` naming the file on error); model files are
    resolved against the file's directory; ``batching`` replaces every model's batching."""
    from clipperlab.real.config import ConfigError, load_config

    p = Path(path)
    try:
        cfg = load_config(p)
    except ConfigError as e:
        raise ValidationError(str(e)) from None
    if not cfg.applications or not cfg.models:
        raise ValidationError(f"{p}: needs at least one [[applications]] and one [[models]]")
    models = []
    for m in cfg.models:
        d = dict(m)
        mp_ = str(d.get("path", "") or "")
        if mp_ and not Path(mp_).is_absolute() and d.get("kind") in ("sklearn", "torch"):
            d["path"] = str((p.resolve().parent / mp_).resolve())
            if not Path(d["path"]).exists():
                raise ValidationError(f"{p}: model {d['name']!r}: file {mp_!r} does not exist")
        if batching is not None:
            d["batching"] = dict(batching)
        models.append(d)
    return RealDeployment(p, [dict(a) for a in cfg.applications], models, cfg.max_queue,
                          cfg.model_defaults, cfg.parse_turn_ms / 1000.0)


def model_specs(
    dep: RealDeployment, app_name: str
) -> tuple[Application, list[tuple[ModelSpec, int, dict[str, Any]]]]:
    """The application ``app_name`` and, per model linked to it, its spec (with the
    server's settings where its batching leaves them unsaid, as the server
    deploys it), its replica count and its ``[[models]]`` entry."""
    from clipperlab.real.config import app_from_dict, model_from_dict, with_server_defaults

    apps = {a["name"]: a for a in dep.apps}
    if app_name not in apps:
        raise ValidationError(
            f"{dep.path}: the workload's app {app_name!r} is not deployed; deployed: {list(apps)}"
        )
    try:
        app = app_from_dict(apps[app_name])
        linked = list(apps[app_name].get("models") or [])
        out = []
        for d in dep.models:
            if d["name"] in linked:
                spec, n = model_from_dict(d, dep.max_queue)
                spec = with_server_defaults(spec, d.get("batching") or {}, dep.model_defaults)
                out.append((spec, n, d))
    except (ValueError, KeyError) as e:
        raise ValidationError(f"{dep.path}: {e}") from None
    if not out:
        raise ValidationError(f"{dep.path}: application {app_name!r} links no deployed model")
    return app, out


PARENT_CHECK_S = 1.0  # how often the server process looks whether its parent is alive


def _serve_main(models: list[dict[str, Any]], apps: list[dict[str, Any]],
                settings: Mapping[str, Any], ports_file: str,
                parent: int | None = None) -> None:
    """Entry point of the server process (spawned).  It stops as on SIGTERM (containers
    and all) when its parent ``parent`` is gone: a validation killed with SIGKILL leaves
    no server behind restarting containers.

    It starts a session of its own, as a service and each container (``start_new_session``)
    do: where the kernel groups processes by session (``CONFIG_SCHED_AUTOGROUP``,
    ``/proc/sys/kernel/sched_autogroup_enabled``), a session is one scheduling group, and
    the groups share a core by weight before the processes in them do.  In the
    validation's session the server's loop shared one process's weight with the load
    generator (the container had a whole one); in its own it competes as one process, as
    the twin's host CPU model has every process do (``session_groups`` says how a run's
    processes were grouped)."""
    import asyncio
    import logging
    import signal

    import uvloop

    with contextlib.suppress(OSError):  # already a session leader: nothing to split
        os.setsid()

    from clipperlab.real.config import ServerConfig
    from clipperlab.real.server import Server, tune_gc, tune_malloc

    logging.basicConfig(level=logging.WARNING)
    cfg = ServerConfig(**settings)  # checked by ServerProcess
    cfg.models = models
    cfg.applications = apps

    async def main() -> None:
        server = Server(cfg)
        ports = await server.start()
        tune_gc()
        tune_malloc(cfg.malloc_keep_mb)
        Path(ports_file).write_text(json.dumps(ports))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)

        def orphaned() -> None:
            if os.getppid() != parent:
                stop.set()
            else:
                loop.call_later(PARENT_CHECK_S, orphaned)

        if parent is not None:
            orphaned()
        await stop.wait()
        await server.stop(grace_s=2.0)

    uvloop.run(main())


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from ``/proc``; one that is gone, or not
    ours to read, left out)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d))
        except (OSError, IndexError, ValueError):
            continue
    return out


def server_settings(dep: RealDeployment, settings: Mapping[str, Any] | None, tmp: str,
                    cache: bool) -> dict[str, Any]:
    """The ``[server]`` settings of the server a validation starts: ``dep``'s model
    defaults (its file's ``[server]`` table's, which the twin deploys its models with:
    ``model_specs``), then ``settings``, then the validation's ports, store and cache.
    ``settings`` may not set the model defaults: the twin would not see them."""
    from clipperlab.real.config import MODEL_DEFAULT_KEYS

    clash = sorted(set(settings or {}) & set(MODEL_DEFAULT_KEYS))
    if clash:
        raise ValidationError(f"{', '.join(clash)}: set in the deployment's [server] table, "
                              "which the simulated twin reads too")
    return {**dict(dep.model_defaults), **dict(settings or {}), "query_port": 0, "admin_port": 0,
            "rpc_port": 0, "store": os.path.join(tmp, "store"), "cache": cache}


class ServerProcess:
    """The real server in its own process, for one validation."""

    def __init__(self, dep: RealDeployment, cache: bool,
                 settings: Mapping[str, Any] | None = None) -> None:
        """``settings``: ``[server]`` settings (``ServerConfig`` fields) for the server
        process (``server_settings``); its ports, store and cache are the validation's."""
        from clipperlab.real.config import ConfigError, ServerConfig

        self.tmp = tempfile.TemporaryDirectory(prefix="clipperlab-validate-")
        ports_file = os.path.join(self.tmp.name, "ports.json")
        try:
            cfg = server_settings(dep, settings, self.tmp.name, cache)
            ServerConfig(**cfg).check()
        except (TypeError, ConfigError, ValidationError) as e:
            self.tmp.cleanup()
            raise ValidationError(f"server settings: {e}") from None
        ctx = mp.get_context("spawn")
        self.proc = ctx.Process(
            target=_serve_main,
            args=(dep.models, dep.apps, cfg, ports_file, os.getpid()),
            daemon=True,
        )
        self.proc.start()
        until = time.monotonic() + 60
        while not (os.path.exists(ports_file) and os.path.getsize(ports_file)):
            if not self.proc.is_alive():
                raise ValidationError(f"the server exited with {self.proc.exitcode} at start")
            if time.monotonic() > until:
                raise ValidationError("the server did not start within 60 s")
            time.sleep(0.05)
        time.sleep(0.05)
        self.ports = json.loads(Path(ports_file).read_text())
        self.url = f"http://127.0.0.1:{self.ports['query']}"

    def wait_ready(self, app: str, timeout_s: float = 120.0) -> None:
        until = time.monotonic() + timeout_s
        while time.monotonic() < until:
            with contextlib.suppress(OSError), urllib.request.urlopen(
                f"{self.url}/v2/models/{app}/ready", timeout=2
            ):
                return
            time.sleep(0.1)
        raise ValidationError(f"application {app!r} was not ready within {timeout_s:.0f} s")

    def cpu_s(self) -> float:
        """User + system CPU seconds of the server process so far (not its containers)."""
        return _proc_cpu_s(self.proc.pid) if self.proc.pid is not None else math.nan

    def container_cpu_s(self) -> dict[str, float]:
        """CPU seconds of the server's containers so far, per model (module rules)."""
        return self._per_container(_proc_cpu_s)

    def wait_s(self) -> dict[str, float]:
        """Seconds the server (``frontend``) and its containers (``container:<model>``)
        have waited runnable for a core so far (``proc_wait_s``; none where it cannot
        be read)."""
        return self._each(proc_wait_s)

    def sleeps(self) -> dict[str, float]:
        """How often the server's loop (``frontend``) and its containers
        (``container:<model>``, summed over the replicas) have gone to sleep so far
        (``proc_sleeps``; none where it cannot be read)."""
        return self._each(proc_sleeps)

    def session_groups(self) -> dict[str, str]:
        """The scheduling group of the server (``frontend``), each container
        (``container:<model>``) and this process, the load generator (``loadgen``):
        ``/proc/PID/autogroup``'s name, or ``"off"`` where the kernel does not group by
        session (none where it cannot be read)."""
        out = {}
        for who, pid in {"loadgen": os.getpid(), **self.pids()}.items():
            g = autogroup(pid)
            if g is not None:
                out[who] = g
        return out

    def pids(self) -> dict[str, int]:
        """The server's process (``frontend``) and the first container of each model
        (``container:<model>``), by the names the runs keep their waits under."""
        out = {} if self.proc.pid is None else {"frontend": self.proc.pid}
        for name, d in self._containers():
            out.setdefault(f"container:{name}", d)
        return out

    def _containers(self) -> list[tuple[str, int]]:
        """(model, pid) of each container process of the server."""
        kids = child_pids(self.proc.pid) if self.proc.pid is not None else []
        return [(name, d) for d in kids if (name := container_name(d)) is not None]

    def _each(self, read: Callable[[int], float]) -> dict[str, float]:
        """``read`` of the server (``frontend``) and of its containers
        (``container:<model>``, ``_per_container``), each only where it could be read."""
        out = {f"container:{m}": v for m, v in self._per_container(read).items()}
        v = read(self.proc.pid) if self.proc.pid is not None else math.nan
        if math.isfinite(v):
            out["frontend"] = v
        return out

    def _per_container(self, read: Callable[[int], float]) -> dict[str, float]:
        """``read`` of each container process, summed per model (module rules)."""
        out: dict[str, float] = {}
        for name, d in self._containers():
            v = read(d)
            if math.isfinite(v):
                out[name] = out.get(name, 0.0) + v
        return out

    def stop(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(15)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.tmp.cleanup()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def container_name(pid: int) -> str | None:
    """The model a container process serves (its ``--name``); None for another process,
    or one gone or not ours to read."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
    except OSError:
        return None
    return argv[argv.index("--name") + 1] if "--name" in argv[:-1] else None


def autogroup(pid: int) -> str | None:
    """Process ``pid``'s scheduling group by session (``autogroup-N`` from
    ``/proc/PID/autogroup``), ``"off"`` when the kernel does not group by session, None
    when it cannot be read."""
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled") as f:
            if f.read().strip() == "0":
                return "off"
        with open(f"/proc/{pid}/autogroup") as f:
            return f.read().split()[0].lstrip("/")
    except (OSError, IndexError):
        return None


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (NaN when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return math.nan


def proc_wait_s(pid: int) -> float:
    """Seconds the threads of process ``pid`` have waited runnable for a core so far (the
    kernel's schedstat ``run_delay``, summed over the threads alive now; NaN when it
    cannot be read: a kernel without schedstats, a process gone)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return math.nan
    total, seen = 0, False
    for t in tids:
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                total += int(f.read().split()[1])
            seen = True
        except (OSError, IndexError, ValueError):
            continue  # a thread gone meanwhile
    return total / 1e9 if seen else math.nan


def proc_sleeps(pid: int) -> float:
    """How often process ``pid``'s main thread has gone to sleep so far: its voluntary
    context switches (``/proc/<pid>/status``; a single-threaded event loop sleeps in
    ``epoll_wait`` when it has nothing to do, and each sleep ends in a wake-up); NaN when
    it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches:"):
                    return float(line.split()[1])
    except (OSError, IndexError, ValueError):
        pass
    return math.nan


def idle_container_cpu_rate(srv: ServerProcess, seconds: float = 1.0) -> dict[str, float]:
    """The containers' CPU seconds per second with no queries, per model."""
    c0, t0 = srv.container_cpu_s(), time.monotonic()
    time.sleep(seconds)
    c1, dt = srv.container_cpu_s(), time.monotonic() - t0
    return {m: max(c1[m] - c0.get(m, 0.0), 0.0) / dt for m in c1}


def idle_cpu_rate(srv: ServerProcess, seconds: float = 1.0) -> float:
    """The server's CPU seconds per second with no queries."""
    c0, t0 = srv.cpu_s(), time.monotonic()
    time.sleep(seconds)
    return max(srv.cpu_s() - c0, 0.0) / (time.monotonic() - t0)
