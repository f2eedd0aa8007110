"""The store: what survives a frontend restart: one SQLite file, or a shared Redis.

``open_store(spec, directory)`` picks the backend: ``redis://host:port/db`` is a
``RedisStore`` (``real/store_redis.py``, for several frontends on one store), anything else
a folder holding a ``SQLiteStore`` (the default, embedded, one frontend).  Both implement
``StoreBase`` (``real/store_base.py``): the same writes, the same documents, and one
``load_into``.

Rules:
- Tables hold JSON documents made by the engine's own ``to_dict`` methods: applications,
  model versions (with their metadata: kind, path of the stored model file), links (in
  order), the version history of each model (the last entry is the active version),
  replicas wanted per model, and selection state per (application, context).
- Writes happen on every administrative change, and write only what changed: one upsert
  per application, model version, link list, history or replica count touched, so the
  400th ``add_app`` costs what the first did.  Deleting an application (``delete_app``)
  deletes its row, its links and its selection state in one transaction; models stay.
- Selection state is saved periodically and on shutdown by the server: the engine hands
  over what changed since the last save (``Engine.take_selection_changes``: states
  observed, users evicted, or every held state of an application after a relink) and
  ``write_selection`` upserts and deletes just that, in one transaction.  The rows kept
  are the states the engine holds, bounded like them (``max_user_states`` per
  application).  ``write_selection`` may run in another thread (the server's saver): it
  uses a connection of its own.
- Contexts are stored as JSON; lists come back as tuples so they stay hashable.
- Model files live in ``models/`` under the store's folder (with Redis, the ``store_dir``
  setting: a folder every host mounts at the same path; see README "Running on several
  machines").
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

from clipperlab.engine import Application, ModelSpec
from clipperlab.engine.core import SelectionChanges

from .store_base import StoreBase, context_from_json, selection_rows

__all__ = [
    "SQLiteStore", "Store", "StoreBase", "context_from_json", "open_store", "selection_rows",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS apps (name TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (
    name TEXT NOT NULL, version TEXT NOT NULL, doc TEXT NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS links (app TEXT PRIMARY KEY, models TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS history (model TEXT PRIMARY KEY, versions TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS replicas (model TEXT PRIMARY KEY, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS selection (
    app TEXT NOT NULL, context TEXT NOT NULL, state TEXT NOT NULL, PRIMARY KEY (app, context));
"""


def open_store(spec: str, directory: str | Path = "clipperlab-store") -> StoreBase:
    """``redis://host:port/db`` (or ``rediss://``, ``unix://``): a ``RedisStore`` with its
    local files in ``directory``; anything else: a ``SQLiteStore`` in the folder ``spec``."""
    if spec.startswith(("redis://", "rediss://", "unix://")):
        from .store_redis import RedisStore

        return RedisStore(spec, directory)
    return SQLiteStore(spec)


class SQLiteStore(StoreBase):
    """SQLite-backed persistence of the engine's administrative state."""

    def __init__(self, directory: str | Path) -> None:
        self._local_dirs(directory)
        self.path = self.dir / "clipperlab.db"
        self.location = str(self.path)
        self.db = self._connect()
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(_SCHEMA)
        self._local = threading.local()  # the selection writer's connection, per thread
        self._writers: list[sqlite3.Connection] = []

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                             timeout=30.0)
        db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never corrupt
        return db

    def close(self) -> None:
        for db in self._writers:
            db.close()
        self._writers.clear()
        self.db.close()

    # -- writes
    def put_app(self, app: Application) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO apps VALUES (?, ?)", (app.name, json.dumps(app.to_dict()))
        )

    def delete_app(self, name: str) -> None:
        """In one transaction."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM apps WHERE name = ?", (name,))
            self.db.execute("DELETE FROM links WHERE app = ?", (name,))
            self.db.execute("DELETE FROM selection WHERE app = ?", (name,))

    def put_model(self, spec: ModelSpec) -> None:
        (seq,) = self.db.execute("SELECT COUNT(*) FROM models").fetchone()
        self.db.execute(
            "INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?)",
            (spec.name, spec.version, json.dumps(spec.to_dict()), seq),
        )

    def put_links(self, app: str, models: list[str]) -> None:
        self.db.execute("INSERT OR REPLACE INTO links VALUES (?, ?)", (app, json.dumps(models)))

    def put_history(self, model: str, versions: list[str]) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO history VALUES (?, ?)", (model, json.dumps(versions))
        )

    def put_replicas(self, model: str, count: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO replicas VALUES (?, ?)", (model, count))

    def write_selection(self, changes: Mapping[str, SelectionChanges]) -> int:
        """In one transaction, on a connection of the calling thread's own."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._connect()
            self._writers.append(db)
        rewrite, gone, rows = selection_rows(changes)
        if not (rows or gone or rewrite):
            return 0
        with db:
            db.execute("BEGIN")
            db.executemany("DELETE FROM selection WHERE app = ?", [(a,) for a in rewrite])
            db.executemany("DELETE FROM selection WHERE app = ? AND context = ?", gone)
            db.executemany("INSERT OR REPLACE INTO selection VALUES (?, ?, ?)", rows)
        return len(rows)

    # -- reads
    def replicas(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT model, count FROM replicas").fetchall())

    def _app_docs(self) -> Iterable[str]:
        return (doc for (doc,) in self.db.execute("SELECT doc FROM apps ORDER BY rowid"))

    def _model_docs(self) -> Iterable[str]:
        return (doc for (doc,) in self.db.execute("SELECT doc FROM models ORDER BY seq"))

    def _histories(self) -> Iterable[tuple[str, str]]:
        return self.db.execute("SELECT model, versions FROM history").fetchall()

    def _links(self) -> Iterable[tuple[str, str]]:
        return self.db.execute("SELECT app, models FROM links").fetchall()

    def _selection_rows(self) -> Iterable[tuple[str, str, str]]:
        return self.db.execute("SELECT app, context, state FROM selection").fetchall()


Store = SQLiteStore  # the name before there were two backends
