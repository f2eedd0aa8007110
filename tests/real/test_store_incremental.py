"""The store writes what changed (issue 11, defects 5 and 10): an administrative call writes
its own rows whatever the registry's size; selection state saved is bounded like the
engine's (evicted users deleted) and only changed states are written; the server saves in
a thread of its own, one save at a time, while its event loop goes on."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

from clipperlab.engine import Application, Engine, ModelSpec
from clipperlab.real.store import Store
from tests.fake import FakeDriver
from tests.servers import start_server

_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


def _writes(statements: list[str]) -> list[str]:
    return [s for s in statements if s.lstrip().upper().startswith(_WRITES)]


def test_add_app_writes_the_same_rows_at_the_hundredth_as_at_the_first(tmp_path: Path) -> None:
    """One application, one link list: the same statements whatever came before."""
    st = start_server(tmp_path / "store", manage_containers=False)
    try:
        seen: list[str] = []
        st.server.store.db.set_trace_callback(seen.append)
        per_call = []
        for i in range(100):
            seen.clear()
            st.call(st.server.add_app, {"name": f"app{i}", "slo_ms": 20, "default_output": 0})
            per_call.append(_writes(seen))
        assert len(per_call[0]) == len(per_call[-1]) <= 2
        seen.clear()
        st.call(st.server.add_model, {"name": "m", "kind": "noop", "replicas": 0})
        first = len(_writes(seen))
        for i in range(2, 30):
            seen.clear()
            st.call(st.server.add_model, {"name": "m", "version": str(i), "kind": "noop"})
            assert len(_writes(seen)) == first
        seen.clear()
        st.call(st.server.link, "app7", ["m"])
        assert len(_writes(seen)) == 1
    finally:
        st.stop()
    back = Store(tmp_path / "store")
    fresh = Engine()
    back.load_into(fresh, now=0.0)
    assert len(fresh.registry.apps) == 100 and fresh.registry.links["app7"] == ["m"]
    assert sorted(fresh.registry.models["m"], key=int) == [str(i) for i in range(1, 30)]


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


def _rows(path: Path) -> int:
    db = sqlite3.connect(path / "clipperlab.db")
    try:
        (n,) = db.execute("SELECT COUNT(*) FROM selection").fetchone()
        return int(n)
    finally:
        db.close()


def test_saved_selection_state_is_bounded_and_only_changes_are_written(tmp_path: Path) -> None:
    """2,000 users against a cap of 50: the store holds the 50 the engine holds; a save
    after one more feedback writes one row; a restart brings those 50 back."""
    d = _learning(50)
    store = Store(tmp_path)
    for i in range(1_000):
        _teach(d, i, f"u{i}")
    store.save_selection(d.eng)
    for i in range(1_000, 2_000):
        _teach(d, i, f"u{i}")
        if i % 250 == 0:
            store.save_selection(d.eng)
    store.save_selection(d.eng)
    assert _rows(tmp_path) == 50
    _teach(d, 5_000, "u1999")
    assert store.save_selection(d.eng) == 1
    assert store.save_selection(d.eng) == 0
    store.close()
    fresh = _learning(50).eng
    Store(tmp_path).load_into(fresh, now=0.0)
    held = {c: s.to_dict() for c, s in d.eng.selection_states("a").items()}
    back = {c: s.to_dict() for c, s in fresh.selection_states("a").items()}
    assert back == held


def test_a_store_larger_than_the_cap_is_trimmed_when_loaded(tmp_path: Path) -> None:
    d = _learning(100)
    for i in range(100):
        _teach(d, i, f"u{i}")
    Store(tmp_path).save_selection(d.eng)
    small = _learning(10).eng
    store = Store(tmp_path)
    store.load_into(small, now=0.0)
    store.save_selection(small)
    assert _rows(tmp_path) == 10


def test_saves_run_in_the_saver_thread_one_at_a_time(tmp_path: Path) -> None:
    """While a save is writing, the event loop answers; a second save waits for the first."""
    st = start_server(tmp_path / "store", manage_containers=False)
    try:
        srv = st.server
        st.call(srv.add_app, {"name": "a", "slo_ms": 20, "default_output": 0, "policy": "exp3"})
        store = srv.store
        real_write = store.write_selection
        release = threading.Event()
        started = threading.Event()
        active, most, threads = [0], [0], []
        lock = threading.Lock()

        def slow_write(changes: Any) -> int:
            with lock:
                active[0] += 1
                most[0] = max(most[0], active[0])
                threads.append(threading.current_thread().name)
            started.set()
            release.wait(30)
            try:
                return real_write(changes)
            finally:
                with lock:
                    active[0] -= 1

        store.write_selection = slow_write  # type: ignore[method-assign]

        def touch(user: str) -> None:
            srv.engine.selection_state("a", user)
            srv.engine.load_selection_state(
                "a", user, srv.engine.selection_state("a", user), now=0.0
            )

        st.call(touch, "u1")
        first = asyncio.run_coroutine_threadsafe(srv.save_state(), st.loop)
        assert started.wait(30)
        assert st.call(lambda: "the loop answers") == "the loop answers"
        st.call(touch, "u2")
        second = asyncio.run_coroutine_threadsafe(srv.save_state(), st.loop)
        assert st.call(lambda: "still") == "still"
        release.set()
        assert first.result(30) == 1 and second.result(30) == 1
        assert most[0] == 1
        assert threads and all(t.startswith("clipperlab-save") for t in threads)
    finally:
        st.stop()
    assert _rows(tmp_path / "store") == 2
