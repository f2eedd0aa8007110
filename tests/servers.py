"""Real servers for tests: loopback, ephemeral ports, a store in the test's folder.

``start_server(store, **settings)`` starts a ``ServerThread`` (stop it with ``.stop()``);
``hello(model, **fields)`` is a container's HELLO frame, for tests that play a container
by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clipperlab.real import protocol as p
from clipperlab.real.config import load_config
from clipperlab.real.server import ServerThread

__all__ = ["hello", "start_server"]


def start_server(store: Path | str, **settings: Any) -> ServerThread:
    """A server on 127.0.0.1 with every port picked by the kernel; heartbeats every 0.2 s
    unless ``settings`` say otherwise."""
    kw: dict[str, Any] = {"heartbeat_interval_s": 0.2, **settings}
    cfg = load_config(None, query_port=0, admin_port=0, rpc_port=0, store=str(store), **kw)
    return ServerThread(cfg).start()


def hello(model: str = "m", version: str = "1", **fields: Any) -> bytes:
    """A container's HELLO frame at the current protocol version."""
    return p.encode_json(p.HELLO, {"protocol": p.PROTOCOL_VERSION, "model": model,
                                   "version": version, **fields})
