"""The frontend's end of the container RPC (framing in ``clipperlab.real.protocol``).

Rules:
- A container connects and must be welcomed within ``hello_timeout_s`` (5 s), in frames of
  at most ``max_hello_frame_bytes`` (64 KiB) until then; anything else before ``WELCOME``
  (a heartbeat, a batch frame, a second HELLO) breaks the protocol.  A connection that
  stays silent, or sends only heartbeats, is refused when the deadline passes.
- ``HELLO`` is checked field by field (``protocol.parse_hello``: the protocol version
  first); then who may connect: with a shared secret the frontend sends ``CHALLENGE`` (a
  fresh random nonce) and the container must answer ``PROOF`` (``protocol.proof_of``,
  compared with ``hmac.compare_digest``); without one only a loopback peer may connect.
  Then that the model version exists and its input type matches, and that the replica
  ordinal is free.  Any failure answers ``REFUSE`` with the reason and closes; nothing
  else happens.
- On ``WELCOME`` the replica is up (``driver.replica_up``) and frames may be as large as
  ``max_frame_bytes``; when the connection closes, a heartbeat deadline passes, or a frame
  breaks the protocol, it is down (``driver.replica_down``: its batch in flight goes back
  to the queue).  Only that connection is dropped (counted in ``garbage_frames``).
- Batch ids are scoped to the connection: a ``RESULT`` or ``ERROR`` may only answer a
  batch sent on this connection and not answered yet; anything else breaks the protocol.
  A ``RESULT`` whose outputs cannot be decoded, or that a reply could not carry, fails its
  batch (an explained default for its queries, counted in ``bad_results``) and keeps the
  connection.
- A batch whose inputs cannot be encoded, or whose frame would pass the limit, raises from
  ``send_batch``: the driver base fails that batch and frees the replica.
- The HTTP answers a read gives (a RESULT's replies) are written when that read is
  handled, one write per HTTP connection (``http.hold_writes``/``release_writes``).
- Heartbeats both ways every ``heartbeat_interval_s`` once welcomed; ``missed_heartbeats``
  intervals of silence from a container mark it dead.
- TLS (``ssl_context``, from ``rpc_tls_cert``/``rpc_tls_key``) protects connections from
  containers on other hosts; the secret's proof is needed with or without it.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import secrets
import ssl
import time
from collections.abc import Callable
from typing import Any, Final

import numpy as np

from clipperlab.engine import EngineError, ReplicaId

from . import protocol as p
from .driver import EngineDriver
from .http import hold_writes, release_writes

__all__ = ["ContainerConnection", "RpcServer"]

log: Final = logging.getLogger("clipperlab.rpc")

_DTYPES: Final[dict[str, np.dtype[Any]]] = {
    "doubles": np.dtype("<f8"),
    "floats": np.dtype("<f4"),
    "integers": np.dtype("<i8"),
}


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"


def server_ssl_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A TLS context for the RPC listener (TLS 1.2 or later)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


class RpcServer:
    """State shared by container connections: the driver, the secret, live replicas."""

    def __init__(
        self,
        driver: EngineDriver,
        *,
        secret: str = "",
        heartbeat_interval_s: float = 0.5,
        missed_heartbeats: int = 4,
        hello_timeout_s: float = 5.0,
        max_hello_frame_bytes: int = p.MAX_HELLO_FRAME_BYTES,
        max_frame_bytes: int = p.MAX_FRAME_BYTES,
        ssl_context: ssl.SSLContext | None = None,
        on_up: Callable[[ReplicaId], None] | None = None,
        on_down: Callable[[ReplicaId], None] | None = None,
    ) -> None:
        self.driver = driver
        self.secret = secret
        self.heartbeat_interval_s = heartbeat_interval_s
        self.missed_heartbeats = missed_heartbeats
        self.hello_timeout_s = hello_timeout_s
        self.max_hello_frame_bytes = max_hello_frame_bytes
        self.max_frame_bytes = max_frame_bytes
        self.ssl_context = ssl_context
        self.on_up = on_up
        self.on_down = on_down
        self.conns: dict[ReplicaId, ContainerConnection] = {}
        self.all_conns: set[ContainerConnection] = set()
        self.garbage_frames = 0
        self.refused = 0
        self.bad_results = 0
        self._next_ordinal = 100
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, driver: EngineDriver, cfg: Any, **kw: Any) -> RpcServer:
        """From a ``ServerConfig`` (the secret read from its file or the environment)."""
        ctx = None
        if cfg.rpc_tls_cert:
            ctx = server_ssl_context(cfg.rpc_tls_cert, cfg.rpc_tls_key)
        return cls(
            driver,
            secret=cfg.resolved_rpc_secret(),
            heartbeat_interval_s=cfg.heartbeat_interval_s,
            missed_heartbeats=cfg.missed_heartbeats,
            hello_timeout_s=cfg.rpc_hello_timeout_s,
            max_hello_frame_bytes=cfg.rpc_max_hello_frame_bytes,
            max_frame_bytes=cfg.rpc_max_frame_bytes,
            ssl_context=ctx,
            **kw,
        )

    def listen_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``loop.create_server`` (TLS when configured)."""
        if self.ssl_context is None:
            return {}
        return {"ssl": self.ssl_context, "ssl_handshake_timeout": self.hello_timeout_s}

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
                if not c.welcomed:
                    continue  # the HELLO deadline covers these
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
        self.decoder = p.FrameDecoder(server.max_hello_frame_bytes)
        self.transport: asyncio.Transport | None = None
        self.replica: ReplicaId | None = None
        self.peer = ""
        self.last_seen_at = time.monotonic()
        self.hello: p.Hello | None = None
        self.hello_payload = b""
        self.nonce = b""
        self.welcomed = False
        self.dtype: np.dtype[Any] | None = None
        self.sent: set[int] = set()  # batch ids sent on this connection, not answered yet
        self._deadline: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        self.server.all_conns.add(self)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a connection driven by hand, without a loop (unit tests)
            return
        self._loop = loop
        self._deadline = loop.call_later(self.server.hello_timeout_s, self._too_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._cancel_deadline()
        self.server.all_conns.discard(self)
        self._down()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_late(self) -> None:
        self._deadline = None
        if not self.welcomed:
            self._refuse(
                f"no HELLO{' and PROOF' if self.server.secret else ''} within"
                f" {self.server.hello_timeout_s:g} s (rpc_hello_timeout_s)"
            )

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
        self._cancel_deadline()
        if self.transport is not None:
            self.transport.abort()
            self.transport = None
        self.server.all_conns.discard(self)
        self._down()

    def data_received(self, data: bytes) -> None:
        self.last_seen_at = time.monotonic()
        loop = self._loop
        if loop is not None:  # the replies this read gives are written when it is handled
            hold_writes(loop)
        try:
            for kind, payload in self.decoder.feed(data):
                if self.transport is None:
                    return  # refused or dropped by an earlier frame of this read
                self._frame(kind, payload)
        except p.ProtocolError as e:
            self.server.garbage_frames += 1
            log.warning("dropping container connection from %s: %s", self.peer, e)
            self.drop()
        except Exception:  # noqa: BLE001 - a bug on our side must not drop a healthy container
            log.exception("handling a frame from container %s failed", self.replica or self.peer)
        finally:
            if loop is not None:
                release_writes(loop)

    def _frame(self, kind: int, payload: bytes) -> None:
        if self.welcomed:
            if kind == p.RESULT:
                self._result(payload)
            elif kind == p.HEARTBEAT:
                pass
            elif kind == p.ERROR:
                self._error(payload)
            else:
                raise p.ProtocolError(f"unexpected frame type {kind} from a welcomed container")
        elif kind == p.HELLO and not self.hello_payload:
            self._hello(payload)
        elif kind == p.PROOF and self.nonce:
            self._proof(payload)
        else:
            raise p.ProtocolError(f"unexpected frame type {kind} before WELCOME")

    def _answered(self, payload: bytes, what: str) -> int:
        """The batch id a RESULT/ERROR answers: one sent on this connection, not answered."""
        bid = p.batch_id_of(payload)
        if bid not in self.sent:
            raise p.ProtocolError(f"{what} for batch {bid}, which was not sent on this connection")
        self.sent.discard(bid)
        return bid

    def _result(self, payload: bytes) -> None:
        rid = self.replica
        assert rid is not None
        bid = self._answered(payload, "RESULT")
        try:
            outputs = p.decode_list(payload, 8)
        except p.ProtocolError as e:
            self.server.bad_results += 1
            log.warning("replica %s answered batch %d with bad outputs: %s", rid, bid, e)
            self.server.driver.batch_failed(rid, bid, f"the model's outputs were refused: {e}")
            return
        self.server.driver.batch_done(rid, bid, outputs)

    def _error(self, payload: bytes) -> None:
        rid = self.replica
        assert rid is not None
        bid = self._answered(payload, "ERROR")
        _, msg = p.decode_error(payload)
        log.warning("replica %s failed batch %d: %s", rid, bid, msg[:500])
        self.server.driver.batch_failed(rid, bid, msg[:2000])

    def _refuse(self, message: str) -> None:
        self.server.refused += 1
        self._cancel_deadline()
        log.warning("refusing container from %s: %s", self.peer, message)
        if self.transport is not None:
            self.transport.write(p.encode_json(p.REFUSE, {"error": message}))
            self.transport.close()
            self.transport = None
        self.server.all_conns.discard(self)

    def _hello(self, payload: bytes) -> None:
        self.hello_payload = payload
        try:
            self.hello = p.parse_hello(payload)
        except p.HelloError as e:
            return self._refuse(str(e))
        srv = self.server
        if srv.secret:
            self.nonce = secrets.token_bytes(32)
            assert self.transport is not None
            self.transport.write(p.encode_json(p.CHALLENGE, {"nonce": self.nonce.hex()}))
            return None
        if not is_loopback(self.peer):
            return self._refuse(
                f"container connections from {self.peer} need a shared secret"
                " (only loopback may connect without one)"
            )
        return self._admit()

    def _proof(self, payload: bytes) -> None:
        nonce, self.nonce = self.nonce, b""  # one proof per challenge
        try:
            obj = p.decode_json(payload)
        except p.ProtocolError as e:
            return self._refuse(f"PROOF: {e}")
        proof = obj.get("proof")
        if set(obj) != {"proof"} or not isinstance(proof, str) or len(proof) != 64:
            return self._refuse("PROOF must be {\"proof\": 64 hex digits} and nothing else")
        expected = p.proof_of(self.server.secret, nonce, self.hello_payload)
        if not hmac.compare_digest(proof.encode(), expected.encode()):
            return self._refuse("wrong shared secret: the PROOF does not match the CHALLENGE")
        return self._admit()

    def _admit(self) -> None:
        h = self.hello
        srv = self.server
        assert h is not None and self.transport is not None
        try:
            spec = srv.driver.engine.registry.model(h.model, h.version)
        except EngineError as e:
            return self._refuse(str(e))
        itype = spec.input_type if h.input_type is None else h.input_type
        if itype != spec.input_type:
            return self._refuse(
                f"container input type {itype!r} does not match model {h.model}:{h.version}"
                f" ({spec.input_type!r})"
            )
        ordinal = srv.assign_ordinal() if h.ordinal is None else h.ordinal
        rid = ReplicaId(h.model, h.version, ordinal)
        if rid in srv.conns:
            return self._refuse(f"replica {rid} is already connected")
        self.dtype = _DTYPES.get(itype)
        self.transport.write(
            p.encode_json(
                p.WELCOME,
                {
                    "replica": str(rid),
                    "ordinal": rid.ordinal,
                    "heartbeat_interval_s": srv.heartbeat_interval_s,
                    "max_frame_bytes": srv.max_frame_bytes,
                },
            )
        )
        self._cancel_deadline()
        self.welcomed = True
        self.decoder.max_frame_bytes = srv.max_frame_bytes
        self.replica = rid
        srv.conns[rid] = self
        log.info("replica %s is up (from %s)", rid, self.peer)
        srv.driver.replica_up(rid, self)
        if srv.on_up is not None:
            srv.on_up(rid)
        return None

    # -- ReplicaLink
    def send_batch(self, batch_id: int, inputs: tuple[Any, ...]) -> None:
        """Write one BATCH frame; raises (the driver then fails the batch) when its inputs
        cannot be encoded or the frame would pass ``max_frame_bytes``."""
        t = self.transport
        if t is None:
            return  # connection_lost will re-queue the batch via replica_down
        frame = p.encode_rows(p.BATCH, batch_id, inputs) if self.dtype is not None else None
        if frame is None:
            frame = p.encode_batch(p.BATCH, batch_id, self._values(inputs))
        if len(frame) - 4 > self.server.max_frame_bytes:
            raise ValueError(
                f"a batch of {len(inputs)} inputs is {len(frame) - 4} bytes, over the frame"
                f" limit rpc_max_frame_bytes = {self.server.max_frame_bytes}"
            )
        self.sent.add(batch_id)
        t.write(frame)

    def _values(self, inputs: tuple[Any, ...]) -> Any:
        """One array for a batch of equal-shaped numeric inputs, else the list of inputs."""
        if self.dtype is not None:
            try:
                # np.array of equal-shaped arrays: 4 us for 8 rows, np.stack 16 us
                a = np.array(inputs) if len(inputs) > 1 else np.asarray(inputs[0])[None]
                if a.dtype.kind in "biuf":
                    return a
            except (ValueError, IndexError):
                pass  # ragged, or one dimension too many for one array: as a list
        return list(inputs)
