"""The shared store: the same documents as ``SQLiteStore``, in a Redis several frontends use.

Rules:
- ``store = "redis://host:port/db"`` selects it (``open_store``); the redis-py client is an
  optional extra (``pip install 'clipperlab[redis]'``); without it, or without a Redis that
  answers ``PING`` at start, the server refuses to start and says which.
- Keys, all under ``clipperlab:`` (one deployment per Redis database): hashes ``apps``
  (name -> ``[seq, doc]``), ``models`` (``[name, version]`` -> ``[seq, doc]``), ``links``,
  ``history``, ``replicas``, and one hash ``selection:{app}`` per application (context ->
  state); ``seq`` orders applications and model versions as SQLite's rowids do.
- Each write is one command or one ``MULTI``/``EXEC`` pipeline, so a frontend never reads
  half a change.  Telling the other frontends is not the store's job: ``real/sync.py``
  publishes what the admin API changed, after the write.
- Model files are not in Redis: they live in ``models/`` under the local folder
  ``store_dir`` which, with frontends and containers on several hosts, is a shared folder
  mounted at the same path everywhere (README "Running on several machines").
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from clipperlab.engine import Application, ConfigError, ModelSpec
from clipperlab.engine.core import SelectionChanges

from .store_base import StoreBase, selection_rows

__all__ = ["PREFIX", "RedisStore", "connect"]

PREFIX = "clipperlab:"


def connect(url: str, *, timeout_s: float = 5.0) -> Any:
    """A redis-py client for ``url`` that answered ``PING``; ``ConfigError`` naming the
    URL when the package is missing or the server does not answer."""
    try:
        import redis
    except ImportError:
        raise ConfigError(
            f"store = {url!r} needs the redis package: pip install 'clipperlab[redis]'"
        ) from None
    try:
        client = redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s, health_check_interval=30,
        )
        client.ping()
    except ValueError as e:
        raise ConfigError(f"store = {url!r} is not a Redis URL ({e})") from None
    except redis.RedisError as e:
        raise ConfigError(f"store = {url!r}: Redis does not answer ({e})") from None
    return client


class RedisStore(StoreBase):
    """Redis-backed persistence of the engine's administrative state (shared)."""

    shared = True

    def __init__(self, url: str, directory: str | Path = "clipperlab-store") -> None:
        self.url = url
        self.location = url
        self._local_dirs(directory)
        self.r = connect(url)

    def close(self) -> None:
        self.r.close()

    # -- writes
    def _seq(self) -> int:
        return int(self.r.incr(PREFIX + "seq"))

    def put_app(self, app: Application) -> None:
        self.r.hset(PREFIX + "apps", app.name, json.dumps([self._seq(), app.to_dict()]))

    def delete_app(self, name: str) -> None:
        """In one ``MULTI``/``EXEC``."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hdel(PREFIX + "apps", name)
        pipe.hdel(PREFIX + "links", name)
        pipe.delete(_selection_key(name))
        pipe.execute()

    def put_model(self, spec: ModelSpec) -> None:
        key = json.dumps([spec.name, spec.version])
        self.r.hset(PREFIX + "models", key, json.dumps([self._seq(), spec.to_dict()]))

    def put_links(self, app: str, models: list[str]) -> None:
        self.r.hset(PREFIX + "links", app, json.dumps(models))

    def put_history(self, model: str, versions: list[str]) -> None:
        self.r.hset(PREFIX + "history", model, json.dumps(versions))

    def put_replicas(self, model: str, count: int) -> None:
        self.r.hset(PREFIX + "replicas", model, count)

    def write_selection(self, changes: Mapping[str, SelectionChanges]) -> int:
        """In one ``MULTI``/``EXEC``."""
        rewrite, gone, rows = selection_rows(changes)
        if not (rows or gone or rewrite):
            return 0
        pipe = self.r.pipeline(transaction=True)
        for app in rewrite:
            pipe.delete(_selection_key(app))
        for app, ctx in gone:
            pipe.hdel(_selection_key(app), ctx)
        per_app: dict[str, dict[str, str]] = {}
        for app, ctx, state in rows:
            per_app.setdefault(app, {})[ctx] = state
        for app, mapping in per_app.items():
            pipe.hset(_selection_key(app), mapping=mapping)
        pipe.execute()
        return len(rows)

    # -- reads
    def replicas(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.r.hgetall(PREFIX + "replicas").items()}

    def _ordered(self, key: str) -> list[str]:
        seq_docs = [json.loads(v) for v in self.r.hgetall(PREFIX + key).values()]
        return [json.dumps(doc) for _, doc in sorted(seq_docs, key=lambda sd: int(sd[0]))]

    def _app_docs(self) -> Iterable[str]:
        return self._ordered("apps")

    def _model_docs(self) -> Iterable[str]:
        return self._ordered("models")

    def _histories(self) -> Iterable[tuple[str, str]]:
        return list(self.r.hgetall(PREFIX + "history").items())

    def _links(self) -> Iterable[tuple[str, str]]:
        return list(self.r.hgetall(PREFIX + "links").items())

    def _selection_rows(self) -> Iterable[tuple[str, str, str]]:
        head = _selection_key("")
        for key in self.r.scan_iter(match=head + "*", count=1000):
            app = key[len(head):]
            for ctx, state in self.r.hgetall(key).items():
                yield app, ctx, state


def _selection_key(app: str) -> str:
    return f"{PREFIX}selection:{app}"
