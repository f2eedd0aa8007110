"""The real-mode server: frontend, admin API, container RPC, store and containers.

Theory of operation: one ``Engine`` lives on the uvloop event loop, fed by an
``EngineDriver``.  Three listeners share it: the query frontend (HTTP), the admin API
(HTTP) and the container RPC (framed TCP).  Administrative changes go through ``Server``
methods, which apply them to the engine, write them to the store and tell the container
manager how many processes each model wants.  ``stop`` stops accepting, answers what is in
flight, saves selection state, then stops the containers.

Saving: each administrative change writes its own rows (``Store.put_*``), never the whole
registry.  Selection state is saved every ``save_state_every_s`` and at ``stop``: what
changed is taken on the loop (``Engine.take_selection_changes``, O(changed states)) and
written by one saver thread, so the loop never waits for SQLite and two saves never run
at once; a failed save is logged and its applications are rewritten by the next one.

Several frontends (``store = "redis://..."``): the store is shared, each frontend keeps
its own engine.  ``real/sync.py`` registers this frontend's RPC address for containers to
find and carries change notices: each administrative method writes the store, then
publishes what it did (``_changed``); a notice from another frontend is applied on the
loop by ``apply_change`` through the same method, which then neither writes nor publishes.
Selection state is merged every ``selection_merge_every_s`` (``real/merge.py``) unless
``selection_sync = "partition"``.

Overload: models take the server's ``admission_control`` and ``drop_hopeless`` (both on
by default) unless their ``[models.batching]`` table says otherwise, so a query that
cannot be answered within its objective gets the explained default at once
(``shed_predicted_late``) instead of waiting in a queue that only serves late queries.
They take its ``aimd_step_from`` ("filled" by default: AIMD holds its cap over a batch
the queue did not fill) the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from clipperlab.engine import Application, Engine, EngineError, ModelSpec, ReplicaId
from clipperlab.engine.schema import application_changes

from . import build_description
from .admin import AdminApi
from .config import ServerConfig, app_from_dict, model_from_dict, with_server_defaults
from .driver import EngineDriver
from .frontend import QueryFrontend
from .gctune import tune_gc, tune_malloc
from .http import Connections, HttpLimits, HttpProtocol, fd_headroom, set_parsing
from .manager import ContainerManager, Launcher
from .merge import SelectionMerger
from .metrics import metrics_text
from .rpc import RpcServer
from .store import open_store
from .sync import Sync

__all__ = ["Server", "ServerThread", "tune_gc", "tune_malloc"]

log = logging.getLogger("clipperlab.server")


class Server:
    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.engine = Engine(
            seed=cfg.seed,
            cache_capacity_bytes=cfg.cache_capacity_bytes,
            decision_log=cfg.decision_log,
            remember_queries=cfg.remember_queries,
            remember_bytes=cfg.remember_bytes,
            max_user_states=cfg.max_user_states,
        )
        self.store = open_store(cfg.store, cfg.store_dir)
        self.sync: Sync | None = None  # several frontends on a shared store
        self.merger: SelectionMerger | None = None
        self._replaying = False  # applying another frontend's change: no write, no notice
        self.ports: dict[str, int] = {}
        self.replicas_wanted: dict[str, int] = {}
        self._servers: list[asyncio.AbstractServer] = []
        self._conns: set[HttpProtocol] = set()
        self._save_task: asyncio.Task[None] | None = None
        self._saver = ThreadPoolExecutor(1, thread_name_prefix="clipperlab-save")
        self._save_lock = asyncio.Lock()
        self.manager: Launcher[Any] | None = None
        self._grpc: Any = None  # grpc.aio.Server of real/oip_grpc.py, when grpc is on

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> dict[str, int]:
        loop = asyncio.get_running_loop()
        cfg = self.cfg
        self.loop = loop
        self.driver = EngineDriver(self.engine, loop)
        self.rpc = RpcServer.from_config(
            self.driver, cfg, on_up=self._on_up, on_down=self._on_down
        )
        self.replicas_wanted = self.driver.admin(
            lambda now: self.store.load_into(self.engine, now=now)
        )
        self.http_conns = Connections(cfg.max_connections)
        fd_headroom(cfg.max_connections)
        set_parsing(loop, turn_s=cfg.parse_turn_ms / 1000.0,
                    inline_bytes_per_ms=cfg.parse_inline_bytes_per_ms)
        text = metrics_text(self.engine, self._gauges, refused=self.http_conns.refused,
                            counters=self._counters)
        self.frontend = QueryFrontend(
            self.driver, cache=cfg.cache, metrics_text=text, max_batch_items=cfg.max_batch_items,
            max_nesting=cfg.max_nesting, refused=self.http_conns.refused,
        )
        self.admin = AdminApi(self, metrics_text=text)
        rpc_srv = await loop.create_server(
            self.rpc.protocol, cfg.rpc_host, cfg.rpc_port, **self.rpc.listen_kwargs()
        )
        self.rpc.start()
        self.ports["rpc"] = rpc_srv.sockets[0].getsockname()[1]
        q_srv = await loop.create_server(
            lambda: self._http(self.frontend, cfg.max_body_bytes),
            cfg.host,
            cfg.query_port,
            backlog=1024,
        )
        a_srv = await loop.create_server(
            lambda: self._http(self.admin, cfg.admin_max_body_bytes),
            cfg.admin_host,
            cfg.admin_port,
        )
        self.ports["query"] = q_srv.sockets[0].getsockname()[1]
        self.ports["admin"] = a_srv.sockets[0].getsockname()[1]
        if cfg.grpc:
            from .oip_grpc import start_grpc

            self._grpc, self.ports["grpc"] = await start_grpc(
                self.frontend, cfg.host, cfg.grpc_port or 0, cfg.max_body_bytes
            )
        self._servers = [q_srv, a_srv, rpc_srv]
        if self.store.shared:
            self._start_sync(loop)
        self.manager = self._launcher()
        self._deploy_config()
        for name, n in self.replicas_wanted.items():
            self._apply_replicas(name, n)
        self._save_task = loop.create_task(self._save_periodically())
        log.info("serving: %s (%s)", self.ports, build_description(names=True))
        return dict(self.ports)

    def _start_sync(self, loop: asyncio.AbstractEventLoop) -> None:
        """Subscribe to the other frontends' changes and register the RPC address."""
        cfg = self.cfg
        address = cfg.rpc_advertise
        if not address:
            host = cfg.rpc_host
            if host in ("0.0.0.0", "::", ""):
                host = socket.getfqdn()  # listening everywhere: the name others know us by
            address = f"{host}:{self.ports['rpc']}"
        self.sync = Sync(cfg.store, rpc_address=address, ttl_s=cfg.frontend_ttl_s,
                         deliver=lambda msg: loop.call_soon_threadsafe(self.apply_change, msg))
        if cfg.selection_sync == "merge":
            self.merger = SelectionMerger()
        self.sync.start()
        log.info("frontend %s on the shared store %s; containers dial %s",
                 self.sync.id, cfg.store, address)

    def _launcher(self) -> Launcher[Any] | None:
        """Who starts containers: ``[server] containers`` (local processes, Ray actors,
        or nobody; ``manage_containers = false`` is nobody too)."""
        cfg = self.cfg
        if not cfg.manage_containers or cfg.containers == "none":
            return None
        tls = {"secret": self.rpc.secret, "tls_ca": cfg.rpc_tls_ca or cfg.rpc_tls_cert,
               "tls_server_name": cfg.rpc_tls_server_name}
        if cfg.containers == "ray":
            from .ray_launcher import RayLauncher

            return RayLauncher(cfg.rpc_host, self.ports["rpc"], address=cfg.ray_address,
                               store=cfg.store if self.store.shared else "", **tls)
        return ContainerManager(cfg.rpc_host, self.ports["rpc"], **tls,
                                log_dir=cfg.container_log_dir or str(self.store.dir / "logs"))

    def _http(self, handler: Any, max_body: int) -> HttpProtocol:
        c = self.cfg
        limits = HttpLimits(max_body_bytes=max_body, max_url_bytes=c.max_url_bytes,
                            max_header_bytes=c.max_header_bytes,
                            header_timeout_s=c.header_timeout_s, body_timeout_s=c.body_timeout_s,
                            idle_timeout_s=c.idle_timeout_s)
        proto = HttpProtocol(handler, limits=limits, connections=self.http_conns,
                             on_close=self._conns.discard)
        self._conns.add(proto)
        return proto

    def _deploy_config(self) -> None:
        cfg = self.cfg
        for m in cfg.models:
            d = dict(m)
            spec, n = self._model_from_dict(d)
            versions = self.engine.registry.models.get(spec.name, {})
            if spec.version not in versions:
                self.add_model(d)
        for a in cfg.applications:
            d = dict(a)
            if d["name"] not in self.engine.registry.apps:
                self.add_app(d)

    async def _save_periodically(self) -> None:
        every_s = self.cfg.save_state_every_s
        if self.merger is not None:
            every_s = min(every_s, self.cfg.selection_merge_every_s)
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.save_state()
            except Exception:  # noqa: BLE001 - a failed save is logged, serving goes on
                log.exception("saving selection state failed")

    async def save_state(self) -> int:
        """Save the selection state that changed: taken on the loop, written by the saver
        thread; one save at a time.  Returns the number of states written.  Merging, the
        changes' deltas are taken on the loop too and published by the saver after the
        write."""
        async with self._save_lock:
            changes = self.engine.take_selection_changes()
            if not changes:
                return 0
            deltas: list[dict[str, Any]] = []
            if self.merger is not None:
                deltas = self.merger.local_deltas(self.engine, changes)

            def write() -> int:
                n = self.store.write_selection(changes)
                if deltas and self.sync is not None:
                    self.sync.publish("selection", {"deltas": deltas})
                return n

            try:
                n: int = await asyncio.get_running_loop().run_in_executor(self._saver, write)
            except BaseException:
                self.engine.selection_unsaved(changes)
                raise
            return n

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting, answer what is in flight, save state, stop containers."""
        self.frontend.accepting = False
        if self.sync is not None:
            self.sync.deregister()  # containers stop dialing this frontend
        for s in self._servers[:2]:
            s.close()
        until = time.monotonic() + grace_s
        while self.driver.pending and time.monotonic() < until:
            await asyncio.sleep(0.01)
        # Let the last responses reach the sockets.
        await asyncio.sleep(0.01)
        if self._grpc is not None:
            await self._grpc.stop(0.5)
        if self._save_task is not None:
            self._save_task.cancel()
        try:
            await self.save_state()
        finally:
            self._saver.shutdown(wait=True)
            if self.manager is not None:
                await self.manager.stop_all()
            self.rpc.close()
            self._servers[2].close()
            for c in list(self._conns):
                c.close()
            if self.sync is not None:
                self.sync.close()
            self.store.close()
        log.info("stopped")

    # ------------------------------------------------------------------ replicas
    def _on_up(self, rid: ReplicaId) -> None:
        if self.manager is not None:
            self.manager.replica_up(rid)

    def _on_down(self, rid: ReplicaId) -> None:
        if self.manager is not None:
            self.manager.kill(rid)  # a silent container is killed so that it restarts

    def _apply_replicas(self, name: str, count: int) -> None:
        if self.manager is not None:
            spec = self.engine.registry.model(name)
            up = any(r.model == name and r.version == spec.version for r in self.driver.links)
            self.manager.set_replicas(spec, count, active_up=up)

    def _gauges(self) -> dict[str, tuple[str, float]]:
        return {
            "clipperlab_real_replicas_connected": (
                "Container replicas connected",
                float(len(self.driver.links)),
            ),
        }

    def _counters(self) -> dict[str, tuple[str, float]]:
        """Events counted since start (Prometheus counters: ``rate()`` works on them)."""
        return {
            "clipperlab_real_container_restarts_total": (
                "Container processes restarted by the manager",
                float(self.manager.restarts_total if self.manager else 0),
            ),
            "clipperlab_real_http_errors_total": (
                "HTTP 4xx/5xx answers on the query port",
                float(self.frontend.errors),
            ),
            "clipperlab_real_rpc_garbage_frames_total": (
                "RPC connections dropped for bad frames",
                float(self.rpc.garbage_frames),
            ),
            "clipperlab_real_rpc_refused_total": (
                "RPC connections refused (bad or late HELLO, wrong secret, unknown model)",
                float(self.rpc.refused),
            ),
            "clipperlab_real_rpc_bad_results_total": (
                "RPC results whose outputs were refused (their batch failed)",
                float(self.rpc.bad_results),
            ),
        }

    # ------------------------------------------------------------------ administration
    def _model_from_dict(self, d: Mapping[str, Any]) -> tuple[ModelSpec, int]:
        """A model of the admin API or deploy.toml, with the server's defaults (overload,
        AIMD's rule) for what its batching table leaves unsaid."""
        spec, n = model_from_dict(d, self.cfg.max_queue)
        return with_server_defaults(spec, d.get("batching") or {}, self.cfg.model_defaults), n

    def _changed(self, op: str, args: dict[str, Any], *writes: Callable[[], None]) -> None:
        """An administrative change made here: write it to the store, then tell the other
        frontends (``op`` and ``args`` call the same method there).  A change that came
        from another frontend (``apply_change``) is in the store already: neither."""
        if self._replaying:
            return
        for w in writes:
            w()
        if self.sync is not None:
            self.sync.publish(op, args)

    def apply_change(self, msg: Mapping[str, Any]) -> None:
        """Apply another frontend's change notice (on the loop): the same method the admin
        API calls, or the selection deltas; one this engine refuses is logged."""
        op, a = msg["op"], msg["args"]
        self._replaying = True
        try:
            if op == "add_app":
                self.add_app(a["app"])
            elif op == "add_model":
                self.add_model(a["model"])
            elif op == "link":
                self.link(a["app"], a["models"])
            elif op == "unlink":
                self.unlink(a["app"], a["models"])
            elif op == "set_version":
                self.set_version(a["name"], a["version"])
            elif op == "rollback":
                self.rollback(a["name"], a["version"])
            elif op == "set_replicas":
                self.set_replicas(a["name"], a["count"])
            elif op == "update_app":
                self.update_app(a["name"], a["changes"])
            elif op == "remove_app":
                self.remove_app(a["name"])
            elif op == "selection":
                if self.merger is not None:
                    merger, deltas = self.merger, a["deltas"]
                    self.driver.admin(lambda now: merger.apply(self.engine, deltas, now=now))
            else:
                raise TypeError(f"unknown change {op!r}")
        except (EngineError, ValueError, KeyError, TypeError) as e:
            log.warning("change %s from frontend %s not applied: %s", op, msg.get("from"), e)
        finally:
            self._replaying = False

    def add_app(self, d: Mapping[str, Any]) -> Application:
        app = app_from_dict(d)
        self.driver.admin(lambda now: self.engine.add_application(app, now=now))
        models = d.get("models") or d.get("candidate_model_names")
        if models:
            self.driver.admin(lambda now: self.engine.link(app.name, list(models), now=now))
        self._changed("add_app", {"app": dict(d)}, lambda: self.store.put_app(app),
                      lambda: self.store.put_links(app.name, self.engine.registry.links[app.name]))
        return app

    def add_model(self, d: Mapping[str, Any]) -> ModelSpec:
        spec, n = self._model_from_dict(d)
        self.driver.admin(lambda now: self.engine.add_model(spec, now=now))
        if d.get("activate", True):
            self.driver.admin(
                lambda now: self.engine.set_model_version(spec.name, spec.version, now=now)
            )
        if "replicas" in d or spec.name not in self.replicas_wanted:
            self.replicas_wanted[spec.name] = n
        self._changed(
            "add_model", {"model": dict(d)}, lambda: self.store.put_model(spec),
            lambda: self.store.put_history(spec.name, self.engine.registry.history[spec.name]),
            lambda: self.store.put_replicas(spec.name, self.replicas_wanted[spec.name]),
        )
        self._apply_replicas(spec.name, self.replicas_wanted[spec.name])
        return spec

    def link(self, app: str, models: list[str]) -> list[str]:
        out: list[str] = self.driver.admin(lambda now: self.engine.link(app, models, now=now))
        self._changed("link", {"app": app, "models": list(models)},
                      lambda: self.store.put_links(app, out))
        return out

    def unlink(self, app: str, models: list[str]) -> list[str]:
        out: list[str] = self.driver.admin(lambda now: self.engine.unlink(app, models, now=now))
        self._changed("unlink", {"app": app, "models": list(models)},
                      lambda: self.store.put_links(app, out))
        return out

    def set_version(self, name: str, version: str) -> None:
        self.driver.admin(lambda now: self.engine.set_model_version(name, version, now=now))
        self._changed("set_version", {"name": name, "version": version},
                      lambda: self.store.put_history(name, self.engine.registry.history[name]))
        self._apply_replicas(name, self.replicas_wanted.get(name, 1))

    def rollback(self, name: str, version: str | None = None) -> str:
        v: str = self.driver.admin(lambda now: self.engine.rollback(name, version, now=now))
        self._changed("rollback", {"name": name, "version": v},
                      lambda: self.store.put_history(name, self.engine.registry.history[name]))
        self._apply_replicas(name, self.replicas_wanted.get(name, 1))
        return v

    def set_replicas(self, name: str, count: int) -> None:
        self.engine.registry.model(name)
        if count < 0:
            raise ValueError(f"replicas must be >= 0, got {count}")
        self.replicas_wanted[name] = count
        self._changed("set_replicas", {"name": name, "count": count},
                      lambda: self.store.put_replicas(name, count))
        self._apply_replicas(name, count)

    def update_app(self, name: str, changes: dict[str, Any]) -> Application:
        asked = dict(changes)
        changes = application_changes(changes, f"update_app {name!r}")
        app: Application = self.driver.admin(
            lambda now: self.engine.update_application(name, now=now, **changes)
        )
        self._changed("update_app", {"name": name, "changes": asked},
                      lambda: self.store.put_app(app))
        return app

    def remove_app(self, name: str) -> None:
        """Remove an application (its queries already admitted are still answered; see
        ``Engine.remove_application``).  The store's rows are deleted by the saver thread,
        after any save in flight, so that save cannot write the state back."""
        self.driver.admin(lambda now: self.engine.remove_application(name, now=now))
        self._changed("remove_app", {"name": name},
                      lambda: self._saver.submit(self.store.delete_app, name).result())

    def inspect(self) -> dict[str, Any]:
        eng = self.engine
        reg = eng.registry.to_dict()
        return {
            "registry": reg,
            "replicas_wanted": dict(self.replicas_wanted),
            "replicas_connected": sorted(str(r) for r in self.driver.links),
            "containers": self.manager.describe() if self.manager else [],
            "models": {n: eng.describe_model(n) for n in eng.registry.models},
            "selection": {a: {"probabilities": eng.probabilities(a)} for a in eng.registry.apps},
            "ports": dict(self.ports),
            "store": self.store.location,
            "frontend": self.sync.id if self.sync is not None else None,
        }


class ServerThread:
    """A server on its own uvloop event loop in a background thread (tests, notebooks)."""

    def __init__(self, cfg: ServerConfig) -> None:
        import uvloop

        self.cfg = cfg
        self.loop = uvloop.new_event_loop()
        self.server = Server(cfg)
        self.ports: dict[str, int] = {}
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> ServerThread:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop)
        self.ports = fut.result(timeout=30)
        return self

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` on the server's loop and return its result."""

        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=30)

    def stop(self, grace_s: float = 5.0) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.server.stop(grace_s), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
