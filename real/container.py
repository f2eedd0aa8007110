"""A model container: connects to a frontend, says hello, computes batches.

Rules:
- One process per replica, one batch at a time (the paper's containers); the model runs on
  the main thread and a heartbeat thread keeps the connection alive during long batches.
- The container connects to the frontend (not the other way round), so it can run on
  another host: ``--frontend HOST:PORT``; a shared secret is sent when given.
- A model that raises answers ``ERROR`` for that batch and keeps serving; outputs that do
  not match the batch length are reported the same way.
- When the frontend goes away the container exits, unless ``reconnect_s`` > 0: then it
  retries for that long (a frontend restart).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import protocol as p
from .models import load_model

__all__ = ["ContainerConfig", "ContainerRefused", "run_container"]

log = logging.getLogger("clipperlab.container")


class ContainerRefused(Exception):
    """The frontend refused the handshake (the message says why)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerConfig:
    name: str
    version: str = "1"
    kind: str = "noop"
    path: str = ""
    options: dict[str, Any] | None = None
    input_type: str = "doubles"
    host: str = "127.0.0.1"
    port: int = 7000
    secret: str = ""
    ordinal: int | None = None
    reconnect_s: float = 0.0


def run_container(cfg: ContainerConfig) -> int:
    """Serve until the frontend goes away (and does not come back within reconnect_s)."""
    predict = load_model(cfg.kind, cfg.path, cfg.options)
    give_up_at = None
    while True:
        try:
            sock = socket.create_connection((cfg.host, cfg.port), timeout=5.0)
        except OSError as e:
            if give_up_at is None:
                give_up_at = time.monotonic() + cfg.reconnect_s
            if time.monotonic() >= give_up_at:
                log.error("cannot reach frontend %s:%d: %s", cfg.host, cfg.port, e)
                return 1
            time.sleep(0.2)
            continue
        give_up_at = None
        try:
            _serve(sock, cfg, predict)
        except ContainerRefused:
            raise
        except (OSError, p.ProtocolError) as e:
            log.warning("connection to frontend lost: %s", e)
        finally:
            sock.close()
        if cfg.reconnect_s <= 0:
            return 0
        give_up_at = time.monotonic() + cfg.reconnect_s


def _recv_frames(sock: socket.socket, dec: p.FrameDecoder) -> list[tuple[int, bytes]]:
    data = sock.recv(1 << 20)
    if not data:
        raise OSError("frontend closed the connection")
    return dec.feed(data)


def _serve(sock: socket.socket, cfg: ContainerConfig, predict: Any) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    hello = {
        "protocol": p.PROTOCOL_VERSION,
        "model": cfg.name,
        "version": cfg.version,
        "input_type": cfg.input_type,
        "secret": cfg.secret,
        "ordinal": cfg.ordinal,
    }
    sock.sendall(p.encode_json(p.HELLO, hello))
    dec = p.FrameDecoder()
    frames: list[tuple[int, bytes]] = []
    while not frames:
        frames = _recv_frames(sock, dec)
    kind, payload = frames.pop(0)
    if kind == p.REFUSE:
        raise ContainerRefused(p.decode_json(payload).get("error", "refused"))
    if kind != p.WELCOME:
        raise p.ProtocolError(f"expected WELCOME, got frame type {kind}")
    welcome = p.decode_json(payload)
    interval_s = float(welcome.get("heartbeat_interval_s", 0.5))
    log.info("connected as replica %s", welcome.get("replica"))
    sock.settimeout(None)
    lock = threading.Lock()
    stop = threading.Event()

    def beat() -> None:
        frame = p.encode_frame(p.HEARTBEAT)
        while not stop.wait(interval_s):
            try:
                with lock:
                    sock.sendall(frame)
            except OSError:
                return

    threading.Thread(target=beat, daemon=True, name="heartbeat").start()
    try:
        while True:
            for kind, payload in frames:
                if kind == p.BATCH:
                    reply = _compute(payload, predict)
                    with lock:
                        sock.sendall(reply)
                elif kind != p.HEARTBEAT:
                    raise p.ProtocolError(f"unexpected frame type {kind} from the frontend")
            frames = _recv_frames(sock, dec)
    finally:
        stop.set()


def _compute(payload: bytes, predict: Any) -> bytes:
    bid, inputs = p.decode_batch(payload)
    try:
        outputs = predict(inputs)
        n = len(outputs)
        if n != len(inputs):
            return p.encode_error(bid, f"model returned {n} outputs for {len(inputs)} inputs")
        if not isinstance(outputs, np.ndarray):
            outputs = list(outputs)
        return p.encode_batch(p.RESULT, bid, outputs)
    except Exception as e:  # noqa: BLE001 - a failing model answers ERROR and keeps serving
        log.exception("model failed on batch %d", bid)
        return p.encode_error(bid, f"{type(e).__name__}: {e}")
