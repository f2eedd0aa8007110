"""Several frontends on one Redis: change notices, and the list of frontends containers follow.

Theory of operation: the store (``real/store_redis.py``) holds the state; this module only
says that it changed.  A frontend that changes something through its admin API (or its
``deploy.toml``) writes the store first, then publishes one notice on the channel
``clipperlab:changes``: ``{"from": frontend id, "op": name, "args": {...}}``, where ``op``
names the server method that made the change (``add_app``, ``add_model``, ``link``,
``unlink``, ``set_version``, ``rollback``, ``set_replicas``, ``update_app``,
``remove_app``) or is ``selection`` (deltas of the selection state, ``real/merge.py``).
Every frontend subscribes in a thread of its own (``clipperlab-sync``), skips its own
notices and hands the others to its event loop (``deliver``), where the server applies each
through the method that made it, without writing it again or publishing it again.

Rules:
- Notices are fire-and-forget (Redis pub/sub keeps nothing): a frontend cut off from Redis
  misses the changes made meanwhile, says so in its log when it gets back, and has them
  after a restart (the store has them).  Within a connection, notices arrive in the order
  they were published, usually within milliseconds.
- A frontend registers the address containers dial (``rpc_advertise``, else its RPC host
  and port) under ``clipperlab:frontend:{id}`` with a TTL of ``frontend_ttl_s``, refreshed
  every third of it, and deletes it when it stops; a frontend that dies leaves the list
  when its TTL runs out.  Containers started with ``--store`` read the list
  (``frontends``) every second and connect to each frontend on it.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from .store_redis import PREFIX, connect

__all__ = ["CHANNEL", "Sync", "frontends"]

log = logging.getLogger("clipperlab.sync")

CHANNEL = PREFIX + "changes"
_FRONTEND = PREFIX + "frontend:"


def frontends(client: Any) -> dict[str, str]:
    """The frontends registered now: id -> the RPC address containers dial (HOST:PORT)."""
    keys = list(client.scan_iter(match=_FRONTEND + "*", count=1000))
    if not keys:
        return {}
    out: dict[str, str] = {}
    for key, value in zip(keys, client.mget(keys), strict=True):
        if value:  # expired between SCAN and MGET
            out[key[len(_FRONTEND):]] = json.loads(value)["rpc"]
    return out


def new_frontend_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class Sync:
    """A frontend's connection to the others: publish, subscribe, register."""

    def __init__(
        self,
        url: str,
        *,
        rpc_address: str,
        ttl_s: float,
        deliver: Callable[[dict[str, Any]], object],
        frontend_id: str | None = None,
    ) -> None:
        self.r = connect(url)
        self.id = frontend_id or new_frontend_id()
        self.rpc_address = rpc_address
        self.ttl_s = ttl_s
        self.deliver = deliver
        self.received = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="clipperlab-sync")
        self._subscribed = threading.Event()

    def start(self) -> None:
        """Subscribe and register (both done when this returns)."""
        self._thread.start()
        if not self._subscribed.wait(10.0):
            raise RuntimeError("could not subscribe to the store's change channel in 10 s")

    def publish(self, op: str, args: dict[str, Any]) -> None:
        """Tell the other frontends about a change already written to the store."""
        msg = json.dumps({"from": self.id, "op": op, "args": args}, default=str)
        self.r.publish(CHANNEL, msg)

    def register(self) -> None:
        doc = json.dumps({"rpc": self.rpc_address, "at": time.time()})
        self.r.set(_FRONTEND + self.id, doc, px=max(1, int(self.ttl_s * 1000)))

    def deregister(self) -> None:
        """Leave the list (containers stop dialing this frontend); notices still flow."""
        self._stop.set()
        self._thread.join(timeout=10.0)
        try:
            self.r.delete(_FRONTEND + self.id)
        except Exception:  # noqa: BLE001 - Redis gone: the TTL takes it off the list
            log.warning("could not remove frontend %s from the store's list", self.id)

    def close(self) -> None:
        if not self._stop.is_set():
            self.deregister()
        self.r.close()

    def _run(self) -> None:
        cut_off = False
        while not self._stop.is_set():
            try:
                pubsub = self.r.pubsub(ignore_subscribe_messages=True)
                try:
                    pubsub.subscribe(CHANNEL)
                    self.register()
                    if cut_off:
                        log.warning("back on the store; changes made by other frontends"
                                    " meanwhile are applied at the next restart")
                        cut_off = False
                    self._subscribed.set()
                    self._listen(pubsub)
                finally:
                    pubsub.close()
            except Exception as e:  # noqa: BLE001 - Redis away: retry, serving goes on
                if not cut_off:
                    log.warning("lost the store's change channel (%s); retrying", e)
                cut_off = True
                self._stop.wait(1.0)

    def _listen(self, pubsub: Any) -> None:
        refresh_s = self.ttl_s / 3
        next_refresh_at = time.monotonic() + refresh_s
        while not self._stop.is_set():
            msg = pubsub.get_message(timeout=min(0.25, refresh_s))
            if msg is not None and msg.get("type") == "message":
                self._notice(msg["data"])
            if time.monotonic() >= next_refresh_at:
                self.register()
                next_refresh_at = time.monotonic() + refresh_s

    def _notice(self, data: str) -> None:
        try:
            doc = json.loads(data)
            if doc["from"] == self.id:
                return
            if not isinstance(doc["op"], str) or not isinstance(doc["args"], dict):
                raise TypeError("op must be a string and args an object")
        except (ValueError, KeyError, TypeError) as e:
            log.warning("ignoring a malformed change notice (%s): %.200s", e, data)
            return
        self.received += 1
        self.deliver(doc)
