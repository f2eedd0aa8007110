"""What every store keeps and how it comes back: ``StoreBase``, the interface both backends
implement (``SQLiteStore`` in ``real/store.py``, ``RedisStore`` in ``real/store_redis.py``),
and the row shapes they share.  The rules are ``real/store.py``'s."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable, Mapping
from pathlib import Path
from typing import Any

from clipperlab.engine import Application, Engine, ModelSpec, PolicyState
from clipperlab.engine.core import SelectionChanges

__all__ = ["StoreBase", "context_from_json", "selection_rows"]


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
    def delete_app(self, name: str) -> None:
        """Delete application ``name``'s rows (the application, its links, its selection
        state) at once; its models' rows stay.  Deleting a name not stored does nothing."""

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
        Returns the replicas wanted per model.  Links and selection rows of an application
        the engine does not hold (neither stored nor already added) are skipped: a save of
        selection state that raced the application's deletion (another frontend's) must
        not stop a restart."""
        for doc in self._app_docs():
            engine.add_application(Application.from_dict(json.loads(doc)), now=now)
        for doc in self._model_docs():
            engine.add_model(ModelSpec.from_dict(json.loads(doc)), now=now)
        for model, versions in self._histories():
            for v in json.loads(versions)[1:]:
                engine.set_model_version(model, v, now=now)
        apps = engine.registry.apps
        for app, models in self._links():
            if app in apps:
                engine.link(app, json.loads(models), now=now)
        for app, ctx, state in self._selection_rows():
            if app not in apps:
                continue
            engine.load_selection_state(
                app, context_from_json(ctx), PolicyState.from_dict(json.loads(state)), now=now
            )
        return self.replicas()
