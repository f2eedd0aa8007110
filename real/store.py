"""The store: what survives a frontend restart: one SQLite file, or a shared Redis.

``open_store(spec, directory)`` picks the backend: ``redis://host:port/db`` is a
``RedisStore`` (``real/store_redis.py``, for several frontends on one store), anything else
a folder holding a ``SQLiteStore`` (the default, embedded, one frontend).  Both implement
``StoreBase``: the same writes, the same documents, and one ``load_into``.

Rules:
- Tables hold JSON documents made by the engine's own ``to_dict`` methods: applications,
  model versions (with their metadata: kind, path of the stored model file), links (in
  order), the version history of each model (the last entry is the active version),
  replicas wanted per model, and selection state per (application, context).
- Writes happen on every administrative change, and write only what changed: one upsert
  per application, model version, link list, history or replica count touched, so the
  400th ``add_app`` costs what the first did.
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
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable, Mapping
from pathlib import Path
from typing import Any

from clipperlab.engine import Application, Engine, ModelSpec, PolicyState
from clipperlab.engine.core import SelectionChanges

__all__ = ["SQLiteStore", "Store", "StoreBase", "context_from_json", "open_store", "selection_rows"]

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


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x


def context_from_json(text: str) -> Hashable:
    """A context stored as JSON, its lists made tuples again (hashable)."""
    ctx: Hashable = _tuples(json.loads(text))
    return ctx


def selection_rows(
    changes: Mapping[str, SelectionChanges],
) -> tuple[list[str], list[tuple[str, str]], list[tuple[str, str, str]]]:
    """Applications to rewrite, (app, context) evicted, (app, context, state) to upsert:
    contexts and states as JSON text."""
    rewrite: list[str] = []
    gone: list[tuple[str, str]] = []
    rows: list[tuple[str, str, str]] = []
    for app, ch in changes.items():
        if ch.rewrite:
            rewrite.append(app)
        gone.extend((app, json.dumps(ctx)) for ctx in ch.removed)
        rows.extend((app, json.dumps(ctx), json.dumps(doc)) for ctx, doc in ch.changed.items())
    return rewrite, gone, rows


class StoreBase(ABC):
    """What a store keeps and how it comes back.  A backend writes documents and reads
    them back in order; ``load_into`` and ``save_selection`` are shared."""

    dir: Path  # local folder: model files (``models/``) and container logs
    models_dir: Path
    location: str  # what ``inspect`` and ``serve`` print: a file or a URL
    shared = False  # several frontends may use it at once (and then tell each other)

    def _local_dirs(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.models_dir = self.dir / "models"
        self.models_dir.mkdir(parents=True, exist_ok=True)

    @abstractmethod
    def close(self) -> None: ...

    # -- writes
    @abstractmethod
    def put_app(self, app: Application) -> None: ...

    @abstractmethod
    def put_model(self, spec: ModelSpec) -> None: ...

    @abstractmethod
    def put_links(self, app: str, models: list[str]) -> None: ...

    @abstractmethod
    def put_history(self, model: str, versions: list[str]) -> None: ...

    @abstractmethod
    def put_replicas(self, model: str, count: int) -> None: ...

    @abstractmethod
    def write_selection(self, changes: Mapping[str, SelectionChanges]) -> int:
        """Upsert the changed states, delete the evicted ones (every row of an application
        to rewrite), at once; returns the number of states written.  May run in another
        thread than the other calls."""

    def save_selection(self, engine: Engine) -> int:
        """Save what changed in ``engine``'s selection state, here and now (the server
        takes the changes on its loop and writes them in its saver thread instead)."""
        return self.write_selection(engine.take_selection_changes())

    # -- reads (documents as JSON text, in the order they must be applied)
    @abstractmethod
    def replicas(self) -> dict[str, int]: ...

    @abstractmethod
    def _app_docs(self) -> Iterable[str]: ...

    @abstractmethod
    def _model_docs(self) -> Iterable[str]: ...

    @abstractmethod
    def _histories(self) -> Iterable[tuple[str, str]]: ...

    @abstractmethod
    def _links(self) -> Iterable[tuple[str, str]]: ...

    @abstractmethod
    def _selection_rows(self) -> Iterable[tuple[str, str, str]]: ...

    def load_into(self, engine: Engine, *, now: float) -> dict[str, int]:
        """Rebuild ``engine``'s applications, models, versions, links and selection state.
        Returns the replicas wanted per model."""
        for doc in self._app_docs():
            engine.add_application(Application.from_dict(json.loads(doc)), now=now)
        for doc in self._model_docs():
            engine.add_model(ModelSpec.from_dict(json.loads(doc)), now=now)
        for model, versions in self._histories():
            for v in json.loads(versions)[1:]:
                engine.set_model_version(model, v, now=now)
        for app, models in self._links():
            engine.link(app, json.loads(models), now=now)
        for app, ctx, state in self._selection_rows():
            engine.load_selection_state(
                app, context_from_json(ctx), PolicyState.from_dict(json.loads(state)), now=now
            )
        return self.replicas()


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
