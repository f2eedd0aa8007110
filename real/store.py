"""The store: what survives a frontend restart, in one SQLite file.

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
- Model files live beside the database in ``models/``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

from clipperlab.engine import Application, Engine, ModelSpec, PolicyState
from clipperlab.engine.core import SelectionChanges

__all__ = ["Store"]

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


class Store:
    """SQLite-backed persistence of the engine's administrative state."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.models_dir = self.dir / "models"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "clipperlab.db"
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

    def save_selection(self, engine: Engine) -> int:
        """Save what changed in ``engine``'s selection state, here and now (the server
        takes the changes on its loop and writes them in its saver thread instead)."""
        return self.write_selection(engine.take_selection_changes())

    def write_selection(self, changes: Mapping[str, SelectionChanges]) -> int:
        """Upsert the changed states, delete the evicted ones (every row of an application
        to rewrite), in one transaction; returns the number of states written."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._connect()
            self._writers.append(db)
        rows: list[tuple[str, str, str]] = []
        gone: list[tuple[str, str]] = []
        rewrite: list[tuple[str]] = []
        for app, ch in changes.items():
            if ch.rewrite:
                rewrite.append((app,))
            gone.extend((app, json.dumps(ctx)) for ctx in ch.removed)
            rows.extend(
                (app, json.dumps(ctx), json.dumps(doc)) for ctx, doc in ch.changed.items()
            )
        if not (rows or gone or rewrite):
            return 0
        with db:
            db.execute("BEGIN")
            db.executemany("DELETE FROM selection WHERE app = ?", rewrite)
            db.executemany("DELETE FROM selection WHERE app = ? AND context = ?", gone)
            db.executemany("INSERT OR REPLACE INTO selection VALUES (?, ?, ?)", rows)
        return len(rows)

    # -- reads
    def replicas(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT model, count FROM replicas").fetchall())

    def load_into(self, engine: Engine, *, now: float) -> dict[str, int]:
        """Rebuild ``engine``'s applications, models, versions, links and selection state.
        Returns the replicas wanted per model."""
        for (doc,) in self.db.execute("SELECT doc FROM apps ORDER BY rowid"):
            engine.add_application(Application.from_dict(json.loads(doc)), now=now)
        for (doc,) in self.db.execute("SELECT doc FROM models ORDER BY seq"):
            engine.add_model(ModelSpec.from_dict(json.loads(doc)), now=now)
        for model, versions in self.db.execute("SELECT model, versions FROM history"):
            for v in json.loads(versions)[1:]:
                engine.set_model_version(model, v, now=now)
        for app, models in self.db.execute("SELECT app, models FROM links"):
            engine.link(app, json.loads(models), now=now)
        for app, ctx, state in self.db.execute("SELECT app, context, state FROM selection"):
            context: Hashable = _tuples(json.loads(ctx))
            engine.load_selection_state(
                app, context, PolicyState.from_dict(json.loads(state)), now=now
            )
        return self.replicas()
