"""Containers placed by Ray: one actor per replica, on a node with the resources it asks for.

``[server] containers = "ray"`` (and ``ray_address``: a cluster's ``HOST:PORT``, or empty for
``$RAY_ADDRESS`` or else a Ray instance of this process's own) makes the server's launcher a
``RayLauncher`` instead of the local process manager (``manager.py``: the ``Launcher``
interface both implement).

Rules:
- One actor per wanted replica of a model's active version.  The actor asks Ray for the
  model's ``[models.resources]``: ``num_cpus`` (default 1: a container computes one batch at a
  time on one core), ``num_gpus``, ``memory`` (bytes) and any custom resource (a host label
  such as ``gpu_host = 1``); Ray places it on a node that has them, or keeps it pending until
  one does (meanwhile the model's queries get the explained default).
- The actor runs the container's own loop (``container.run_container``) in its ``serve``
  method, so the container connects to the frontend over the ordinary RPC port, with the
  same handshake (the shared secret travels inside the actor's arguments, over Ray's own
  channels, never on a command line).  Workers import ``clipperlab``: every node of the
  cluster needs it installed.
- Restarts: actors are created with ``max_restarts=-1``, so Ray restarts one whose process
  dies (SIGKILL, OOM, a node lost); the launcher watches each replica's ``serve`` call and
  calls it again when it fails or returns (the frontend went away), after a back-off that
  starts at 0.1 s and doubles up to 5 s (reset once the container served 10 s).  An actor
  killed for good (``ray.kill`` without restart, its node gone) is created anew.  ``kill``
  (a silent container) asks Ray to restart the actor.
- Actors are named ``clipperlab/<scope>/<model>/<version>/<ordinal>`` in the Ray namespace
  ``clipperlab`` and detached (a frontend that dies does not take the containers with it).
  With a shared store (``store = "redis://..."``) the scope is the store: the container
  serves every frontend registered there (``container.py``), and every frontend's launcher
  finds the same actors by name (a second ``serve`` call waits for the first), so
  frontends come and go without restarting containers, and ``stop_all`` leaves the actors
  to the other frontends.  Alone (SQLite), the scope is this frontend's RPC address, and
  ``stop_all`` kills its actors.  ``set_replicas`` down kills the extra actors for good
  (every frontend hears of it through the store and does the same).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clipperlab.engine import ModelSpec, ReplicaId

from .container import ContainerConfig, run_container
from .manager import Launcher

__all__ = ["NAMESPACE", "ContainerActor", "RayLauncher", "RayReplica", "actor_options"]

log = logging.getLogger("clipperlab.ray_launcher")

NAMESPACE = "clipperlab"
_BACKOFF_START_S = 0.1
_BACKOFF_MAX_S = 5.0
_HEALTHY_AFTER_S = 10.0
_RAY_FIELDS = ("num_cpus", "num_gpus", "memory")


class ContainerActor:
    """A model container inside a Ray actor: ``serve`` runs its loop until the frontend
    goes away; ``where`` says which node and process it runs in."""

    def __init__(self, cfg: ContainerConfig) -> None:
        self.cfg = cfg
        # One loop at a time: a second serve call (a frontend re-attaching to the actor
        # before the first noticed its loop ended) waits for the first.
        self._serving = threading.Lock()

    def serve(self) -> int:
        with self._serving:
            return run_container(self.cfg)

    def where(self) -> dict[str, Any]:
        import ray

        return {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}


def actor_options(resources: Mapping[str, float] | None) -> dict[str, Any]:
    """Ray actor options for a model's ``resources`` table (checked by ``config``)."""
    res = dict(resources or {})
    opts: dict[str, Any] = {"num_cpus": res.pop("num_cpus", 1)}
    for k in ("num_gpus", "memory"):
        if k in res:
            opts[k] = res.pop(k)
    if res:
        opts["resources"] = res
    return opts


@dataclass(slots=True)
class RayReplica:
    """One wanted replica, its actor and the task that keeps its container serving."""

    replica: ReplicaId
    name: str
    cfg: ContainerConfig
    options: dict[str, Any]
    actor: Any = None
    serving_since: float = 0.0
    restarts: int = 0
    backoff_s: float = _BACKOFF_START_S
    wanted: bool = True
    last_error: str = ""
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class RayLauncher(Launcher[RayReplica]):
    """Keeps the wanted containers running as Ray actors placed by resources."""

    def __init__(
        self,
        rpc_host: str,
        rpc_port: int,
        *,
        secret: str = "",
        tls_ca: str = "",
        tls_server_name: str = "",
        address: str = "",
        store: str = "",
    ) -> None:
        import ray

        super().__init__(rpc_host, rpc_port, secret=secret, tls_ca=tls_ca,
                         tls_server_name=tls_server_name)
        self.store = store
        self.scope = store if store else f"{self.rpc_host}:{rpc_port}"
        if not ray.is_initialized():
            kw: dict[str, Any] = {"namespace": NAMESPACE, "include_dashboard": False,
                                  "log_to_driver": False}
            if address:
                kw["address"] = address
            ray.init(**kw)
        self._remote = ray.remote(ContainerActor)

    def container_config(self, spec: ModelSpec, ordinal: int) -> ContainerConfig:
        md = spec.metadata
        return ContainerConfig(
            name=spec.name,
            version=spec.version,
            kind=str(md.get("kind", "noop")),
            path=str(md.get("path", "")),
            options=dict(md["options"]) if md.get("options") else None,
            input_type=spec.input_type,
            host=self.rpc_host,
            port=self.rpc_port,
            secret=self.secret,
            ordinal=ordinal,
            tls_ca=self.tls_ca,
            tls_server_name=self.tls_server_name,
            store=self.store,
        )

    def _start(self, spec: ModelSpec, ordinal: int) -> RayReplica:
        rid = ReplicaId(spec.name, spec.version, ordinal)
        r = RayReplica(
            rid,
            f"clipperlab/{self.scope}/{spec.name}/{spec.version}/{ordinal}",
            self.container_config(spec, ordinal),
            actor_options(spec.metadata.get("resources")),
        )
        r.task = asyncio.get_running_loop().create_task(self._keep(r))
        return r

    def _actor(self, r: RayReplica) -> Any:
        """The replica's actor: the one of that name if it lives, else a new one."""
        return self._remote.options(
            name=r.name,
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            max_restarts=-1,
            max_task_retries=0,
            max_concurrency=4,  # serve blocks; where answers meanwhile
            **r.options,
        ).remote(r.cfg)

    async def _keep(self, r: RayReplica) -> None:
        import ray

        while r.wanted:
            if r.actor is None:
                r.actor = self._actor(r)
            r.serving_since = time.monotonic()
            try:
                await r.actor.serve.remote()
                r.last_error = ""
            except ray.exceptions.ActorDiedError as e:
                if not r.wanted:
                    return
                # Dead for good (killed without restart, or its restarts ran out): anew.
                r.actor = None
                r.last_error = _first_line(e)
            except ray.exceptions.RayError as e:  # its process died (Ray restarts it) or
                r.last_error = _first_line(e)     # the container raised (refused...)
            except asyncio.CancelledError:
                return
            if not r.wanted:
                return
            served_s = time.monotonic() - r.serving_since
            if served_s > _HEALTHY_AFTER_S:
                r.backoff_s = _BACKOFF_START_S
            log.warning("container %s stopped serving after %.1f s%s; again in %.1f s",
                        r.replica, served_s,
                        f" ({r.last_error})" if r.last_error else "", r.backoff_s)
            await asyncio.sleep(r.backoff_s)
            r.backoff_s = min(r.backoff_s * 2, _BACKOFF_MAX_S)
            r.restarts += 1
            self.restarts_total += 1

    def kill(self, rid: ReplicaId) -> None:
        """Kill a replica's actor (a silent container); Ray restarts it."""
        r = self.procs.get(rid)
        if r is not None and r.actor is not None:
            import ray

            with contextlib.suppress(Exception):
                ray.kill(r.actor, no_restart=False)

    def actor(self, rid: ReplicaId) -> Any:
        """The replica's actor handle (None before it is created)."""
        r = self.procs.get(rid)
        return r.actor if r is not None else None

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "replica": str(r.replica),
                "actor": r.name,
                "resources": r.options,
                "running": r.actor is not None,
                "restarts": r.restarts,
                "last_error": r.last_error,
            }
            for r in self.procs.values()
        ]

    def _stop(self, rid: ReplicaId) -> None:
        self._end(self.procs.pop(rid))

    def _end(self, r: RayReplica) -> None:
        import ray

        r.wanted = False
        if r.actor is not None:
            with contextlib.suppress(Exception):
                ray.kill(r.actor, no_restart=True)
        if r.task is not None:
            r.task.cancel()

    async def stop_all(self, grace_s: float = 3.0) -> None:
        rs = list(self.procs.values())
        self.procs.clear()
        for r in rs:
            if self.store:  # the other frontends' containers too: leave them serving
                r.actor = None
            self._end(r)
        tasks = [r.task for r in rs if r.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else type(e).__name__)[:500]
