"""The Redis store keeps what the SQLite store keeps: the same tests run against both
backends (``open_store`` with a folder, then with a ``redis://`` URL of a throwaway Redis)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clipperlab.engine import Application, ConfigError, Engine, ModelSpec, PolicyState
from clipperlab.real.store import SQLiteStore, StoreBase, open_store
from tests.fake import FakeDriver
from tests.services import RedisServer, free_port, redis_server

StoreFactory = Callable[[], StoreBase]


@pytest.fixture(scope="module")
def redis_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as srv:
        yield srv


@pytest.fixture(params=["sqlite", "redis"])
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """A function that opens the test's store (the same one each call)."""
    if request.param == "sqlite":
        spec = str(tmp_path / "store")
    else:
        srv: RedisServer = request.getfixturevalue("redis_srv")
        spec = srv.url
        open_store(spec, tmp_path / "files").r.flushdb()  # type: ignore[attr-defined]
    opened: list[StoreBase] = []

    def make() -> StoreBase:
        opened.append(open_store(spec, tmp_path / "files"))
        return opened[-1]

    yield make
    for s in opened:
        s.close()


def _held_rows(store: StoreBase) -> int:
    return sum(1 for _ in store._selection_rows())


def test_round_trip(new_store: StoreFactory) -> None:
    """Everything the store keeps comes back into a fresh engine: applications, model
    versions in order, the active one, links, replicas wanted, selection state."""
    eng = Engine()
    eng.add_application(Application(name="a", policy="exp3", default_output=-1), now=0.0)
    eng.add_application(Application(name="b", slo_s=0.5), now=0.0)
    eng.add_model(ModelSpec(name="m", metadata={"kind": "noop"}), now=0.0)
    eng.add_model(ModelSpec(name="m", version="2"), now=0.0)
    eng.add_model(ModelSpec(name="m", version="10"), now=0.0)
    eng.add_model(ModelSpec(name="n"), now=0.0)
    eng.set_model_version("m", "10", now=0.0)
    eng.set_model_version("m", "2", now=0.0)
    eng.link("a", ["m", "n"], now=0.0)
    eng.load_selection_state("a", ("user", 1), PolicyState(["m", "n"], [0.25, 4.0]), now=0.0)
    eng.load_selection_state("a", None, PolicyState(["m", "n"], [2.0, 1.0]), now=0.0)
    store = new_store()
    reg = eng.registry
    for app in reg.apps.values():
        store.put_app(app)
    for name in ("m", "n"):
        for v in reg.models[name]:
            store.put_model(reg.model(name, v))
    for name, hist in reg.history.items():
        store.put_history(name, hist)
    store.put_links("a", reg.links["a"])
    store.put_replicas("m", 3)
    store.put_replicas("n", 0)
    assert store.save_selection(eng) == 2
    store.close()
    fresh = Engine()
    assert new_store().load_into(fresh, now=0.0) == {"m": 3, "n": 0}
    assert fresh.registry.to_dict() == reg.to_dict()
    assert list(fresh.registry.models["m"]) == ["1", "2", "10"]
    assert fresh.registry.history["m"] == reg.history["m"]
    assert fresh.selection_state("a", ("user", 1)).weights == [0.25, 4.0]
    assert fresh.selection_state("a", None).weights == [2.0, 1.0]


def test_a_replaced_document_is_the_new_one(new_store: StoreFactory) -> None:
    """put_app, put_links and put_replicas replace what was there."""
    store = new_store()
    store.put_app(Application(name="a", slo_s=0.1))
    store.put_app(Application(name="a", slo_s=0.3, default_output=7))
    store.put_model(ModelSpec(name="m"))
    store.put_history("m", ["1"])
    store.put_links("a", ["m"])
    store.put_links("a", [])
    store.put_replicas("m", 2)
    store.put_replicas("m", 5)
    fresh = Engine()
    assert store.load_into(fresh, now=0.0) == {"m": 5}
    assert fresh.registry.apps["a"].slo_s == 0.3 and fresh.registry.apps["a"].default_output == 7
    assert fresh.registry.links["a"] == []


def test_a_deleted_application_does_not_come_back(new_store: StoreFactory) -> None:
    """delete_app deletes the application, its links and its selection state; its model
    and the other application stay, and a restart does not bring it back.  A selection
    row written after the deletion (a save that raced it) is skipped on load."""
    store = new_store()
    store.put_app(Application(name="a", policy="exp3"))
    store.put_app(Application(name="b"))
    store.put_model(ModelSpec(name="m"))
    store.put_history("m", ["1"])
    store.put_links("a", ["m"])
    store.put_links("b", ["m"])
    eng = Engine()
    store.load_into(eng, now=0.0)
    eng.load_selection_state("a", "u", PolicyState(["m"], [3.0]), now=0.0)
    eng.load_selection_state("b", "u", PolicyState(["m"], [2.0]), now=0.0)
    assert store.save_selection(eng) == 2
    eng.load_selection_state("a", "v", PolicyState(["m"], [4.0]), now=0.0)
    late = eng.take_selection_changes()
    store.delete_app("a")
    store.delete_app("never-stored")
    assert {app for app, _, _ in store._selection_rows()} == {"b"}
    store.close()
    fresh = Engine()
    new_store().load_into(fresh, now=0.0)
    assert list(fresh.registry.apps) == ["b"] and "a" not in fresh.registry.links
    assert fresh.registry.links["b"] == ["m"] and list(fresh.registry.models) == ["m"]
    new_store().write_selection(late)  # a's state written after its deletion
    again = Engine()
    new_store().load_into(again, now=0.0)
    assert list(again.registry.apps) == ["b"]
    assert again.selection_state("b", "u").weights == [2.0]


def _learning(cap: int) -> FakeDriver:
    eng = Engine(max_user_states=cap)
    eng.add_application(Application(name="a", policy="exp3", slo_s=1.0), now=0.0)
    eng.add_model(ModelSpec(name="m"), now=0.0)
    eng.add_model(ModelSpec(name="n"), now=0.0)
    eng.link("a", ["m", "n"], now=0.0)
    d = FakeDriver(eng)
    d.up("m"), d.up("n")
    return d


def _teach(d: FakeDriver, qid: int, user: Any) -> None:
    d.query(qid, "a", qid, context=user)
    for sb in list(d.open.values()):
        d.complete(sb.batch_id, lambda x: 0)
    d.feedback_(qid, "a", 1, query_id=qid)


def test_selection_state_is_bounded_and_only_changes_are_written(
    new_store: StoreFactory,
) -> None:
    """300 users against a cap of 20: the store holds the 20 the engine holds; a save
    after one more feedback writes one state; a fresh engine gets the same 20 back."""
    d = _learning(20)
    store = new_store()
    for i in range(300):
        _teach(d, i, f"u{i}")
        if i % 50 == 0:
            store.save_selection(d.eng)
    store.save_selection(d.eng)
    assert _held_rows(store) == 20
    _teach(d, 5_000, "u299")
    assert store.save_selection(d.eng) == 1
    assert store.save_selection(d.eng) == 0
    fresh = _learning(20).eng
    new_store().load_into(fresh, now=0.0)
    held = {c: s.to_dict() for c, s in d.eng.selection_states("a").items()}
    back = {c: s.to_dict() for c, s in fresh.selection_states("a").items()}
    assert back == held


def test_a_relink_rewrites_the_applications_states(new_store: StoreFactory) -> None:
    """After a relink every stored state of the application is replaced by the engine's."""
    d = _learning(50)
    store = new_store()
    for i in range(5):
        _teach(d, i, f"u{i}")
    store.save_selection(d.eng)
    d.eng.add_model(ModelSpec(name="o"), now=0.0)
    d.eng.link("a", ["o"], now=0.0)
    store.save_selection(d.eng)
    states = [s for _, _, s in store._selection_rows()]
    assert states and all('"o"' in s for s in states)


def test_open_store_picks_the_backend_by_the_setting(tmp_path: Path) -> None:
    """A folder is SQLite (the default); a redis:// URL that nothing answers is refused
    with an error naming the URL."""
    assert isinstance(open_store(str(tmp_path / "s")), SQLiteStore)
    pytest.importorskip("redis")
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(ConfigError, match="Redis does not answer") as e:
        open_store(url, tmp_path / "files")
    assert url in str(e.value)
