"""The frontend's end of the container RPC (framing in ``clipperlab.real.protocol``).

Rules:
- A container connects, sends ``HELLO``; the frontend checks, in order: the protocol
  version, who may connect (the shared secret when one is configured, else a loopback
  peer), that the model version exists and its input type matches, and that the replica
  ordinal is free.  Any failure answers ``REFUSE`` with the reason and closes.
- On ``WELCOME`` the replica is up (``driver.replica_up``); when the connection closes,
  a heartbeat deadline passes, or a frame breaks the protocol, it is down
  (``driver.replica_down``: its batch in flight goes back to the queue).  Only that
  connection is dropped.
- Heartbeats both ways every ``heartbeat_interval_s``; ``missed_heartbeats`` intervals of
  silence from a container mark it dead.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from clipperlab.engine import INPUT_TYPES, EngineError, ReplicaId

from . import protocol as p
from .driver import EngineDriver

__all__ = ["ContainerConnection", "RpcServer"]

log = logging.getLogger("clipperlab.rpc")


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"


class RpcServer:
    """State shared by container connections: the driver, the secret, live replicas."""

    def __init__(
        self,
        driver: EngineDriver,
        *,
        secret: str = "",
        heartbeat_interval_s: float = 0.5,
        missed_heartbeats: int = 4,
        on_up: Callable[[ReplicaId], None] | None = None,
        on_down: Callable[[ReplicaId], None] | None = None,
    ) -> None:
        self.driver = driver
        self.secret = secret
        self.heartbeat_interval_s = heartbeat_interval_s
        self.missed_heartbeats = missed_heartbeats
        self.on_up = on_up
        self.on_down = on_down
        self.conns: dict[ReplicaId, ContainerConnection] = {}
        self.all_conns: set[ContainerConnection] = set()
        self.garbage_frames = 0
        self._next_ordinal = 100
        self._task: asyncio.Task[None] | None = None

    def protocol(self) -> ContainerConnection:
        return ContainerConnection(self)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._heartbeats())

    async def _heartbeats(self) -> None:
        beat = p.encode_frame(p.HEARTBEAT)
        while True:
            await asyncio.sleep(self.heartbeat_interval_s)
            limit_at = time.monotonic() - self.heartbeat_interval_s * self.missed_heartbeats
            for c in list(self.all_conns):
                if c.last_seen_at < limit_at:
                    log.warning(
                        "container %s missed %d heartbeats; dropping it",
                        c.replica or c.peer,
                        self.missed_heartbeats,
                    )
                    c.drop()
                elif c.transport is not None:
                    c.transport.write(beat)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for c in list(self.all_conns):
            c.drop()

    def assign_ordinal(self) -> int:
        o = self._next_ordinal
        self._next_ordinal += 1
        return o


class ContainerConnection(asyncio.Protocol):
    """One container's connection."""

    def __init__(self, server: RpcServer) -> None:
        self.server = server
        self.decoder = p.FrameDecoder()
        self.transport: asyncio.Transport | None = None
        self.replica: ReplicaId | None = None
        self.peer = ""
        self.last_seen_at = time.monotonic()
        self.hello: dict[str, Any] = {}
        self.dtype: np.dtype[Any] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        self.server.all_conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.server.all_conns.discard(self)
        self._down()

    def _down(self) -> None:
        rid = self.replica
        if rid is None:
            return
        self.replica = None
        if self.server.conns.get(rid) is self:
            del self.server.conns[rid]
            log.info("replica %s is down", rid)
            self.server.driver.replica_down(rid)
            if self.server.on_down is not None:
                self.server.on_down(rid)

    def drop(self) -> None:
        if self.transport is not None:
            self.transport.abort()
            self.transport = None
        self.server.all_conns.discard(self)
        self._down()

    def data_received(self, data: bytes) -> None:
        self.last_seen_at = time.monotonic()
        try:
            frames = self.decoder.feed(data)
            for kind, payload in frames:
                self._frame(kind, payload)
        except p.ProtocolError as e:
            self.server.garbage_frames += 1
            log.warning("dropping container connection from %s: %s", self.peer, e)
            self.drop()

    def _frame(self, kind: int, payload: bytes) -> None:
        rid = self.replica
        if kind == p.RESULT and rid is not None:
            bid, values = p.decode_batch(payload)
            outputs = values.tolist() if isinstance(values, np.ndarray) else values
            self.server.driver.batch_done(rid, bid, outputs)
        elif kind == p.HEARTBEAT:
            pass
        elif kind == p.ERROR and rid is not None:
            bid, msg = p.decode_error(payload)
            log.warning("replica %s failed batch %d: %s", rid, bid, msg)
            self.server.driver.batch_failed(rid, bid, msg)
        elif kind == p.HELLO and rid is None and not self.hello:
            self._hello(p.decode_json(payload))
        else:
            raise p.ProtocolError(f"unexpected frame type {kind} in this state")

    def _refuse(self, message: str) -> None:
        log.warning("refusing container from %s: %s", self.peer, message)
        if self.transport is not None:
            self.transport.write(p.encode_json(p.REFUSE, {"error": message}))
            self.transport.close()
            self.transport = None

    def _hello(self, h: dict[str, Any]) -> None:
        self.hello = h
        srv = self.server
        if h.get("protocol") != p.PROTOCOL_VERSION:
            return self._refuse(
                f"protocol version {h.get('protocol')!r} is not supported;"
                f" this frontend speaks {p.PROTOCOL_VERSION}"
            )
        if srv.secret:
            if not hmac.compare_digest(str(h.get("secret") or ""), srv.secret):
                return self._refuse("wrong or missing shared secret")
        elif not is_loopback(self.peer):
            return self._refuse(
                f"container connections from {self.peer} need a shared secret"
                " (only loopback may connect without one)"
            )
        name, version = str(h.get("model", "")), str(h.get("version", ""))
        engine = srv.driver.engine
        try:
            spec = engine.registry.model(name, version)
        except EngineError as e:
            return self._refuse(str(e))
        itype = h.get("input_type", spec.input_type)
        if itype != spec.input_type or itype not in INPUT_TYPES:
            return self._refuse(
                f"container input type {itype!r} does not match model {name}:{version}"
                f" ({spec.input_type!r})"
            )
        ordinal = h.get("ordinal")
        if ordinal is None:
            ordinal = srv.assign_ordinal()
        rid = ReplicaId(name, version, int(ordinal))
        if rid in srv.conns:
            return self._refuse(f"replica {rid} is already connected")
        self.dtype = {  # type: ignore[assignment]
            "doubles": np.dtype("<f8"),
            "floats": np.dtype("<f4"),
            "integers": np.dtype("<i8"),
        }.get(itype)
        assert self.transport is not None
        self.transport.write(
            p.encode_json(
                p.WELCOME,
                {
                    "replica": str(rid),
                    "ordinal": rid.ordinal,
                    "heartbeat_interval_s": srv.heartbeat_interval_s,
                },
            )
        )
        self.replica = rid
        srv.conns[rid] = self
        log.info("replica %s is up (from %s)", rid, self.peer)
        srv.driver.replica_up(rid, self)
        if srv.on_up is not None:
            srv.on_up(rid)
        return None

    # -- ReplicaLink
    def send_batch(self, batch_id: int, inputs: tuple[Any, ...]) -> None:
        t = self.transport
        if t is None:
            return  # connection_lost will re-queue the batch via replica_down
        if self.dtype is not None:
            try:
                values: Any = np.stack(inputs) if len(inputs) > 1 else np.asarray(inputs[0])[None]
            except ValueError:
                values = list(inputs)
        else:
            values = list(inputs)
        t.write(p.encode_batch(p.BATCH, batch_id, values))
