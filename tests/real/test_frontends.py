"""Several frontends on one Redis store: a change made through one reaches the others, one
container process serves every frontend registered in the store (and outlives any of them),
and selection state is merged across frontends (or kept apart, ``partition``)."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clipperlab.engine import Application, Engine, ModelSpec
from clipperlab.real.client import AdminClient, QueryClient
from clipperlab.real.merge import SelectionMerger, add_delta, state_delta
from clipperlab.real.server import ServerThread
from tests.fake import FakeDriver
from tests.servers import start_server
from tests.services import RedisServer, redis_server

WAIT_S = 30.0  # generous: the promise is "within a second", the machine is shared


def eventually(check: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    until = time.monotonic() + timeout_s
    while True:
        try:
            out = check()
            if out:
                return out
        except AssertionError:
            if time.monotonic() > until:
                raise
        if time.monotonic() > until:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.02)


@pytest.fixture
def redis_srv(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path / "redis") as srv:
        yield srv


def frontend(redis: RedisServer, tmp_path: Path, **kw: Any) -> ServerThread:
    return start_server(redis.url, store_dir=str(tmp_path / "files"), manage_containers=False,
                        **kw)


def container(
    redis: RedisServer, name: str, output: int, tmp_path: Path
) -> subprocess.Popen[bytes]:
    log = open(tmp_path / f"container-{name}.log", "wb")  # noqa: SIM115 - the process owns it
    return subprocess.Popen(
        [sys.executable, "-m", "clipperlab.real.container", "--model", "noop", "--name", name,
         "--options", f'{{"output": {output}}}', "--store", redis.url],
        stdout=log, stderr=subprocess.STDOUT,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def admin(st: ServerThread) -> AdminClient:
    return AdminClient(f"127.0.0.1:{st.ports['admin']}")


def query(st: ServerThread) -> QueryClient:
    return QueryClient(f"127.0.0.1:{st.ports['query']}")


def test_a_change_through_one_frontend_reaches_the_other(
    redis_srv: RedisServer, tmp_path: Path
) -> None:
    """Applications, models, versions, links, replicas, updates and deletions made through
    A's admin API appear in B's engine, without B writing them again; a third frontend
    started later loads them from the store."""
    a, b = frontend(redis_srv, tmp_path), frontend(redis_srv, tmp_path)
    try:
        ca = admin(a)
        ca.add_model("m", "1", replicas=0)
        ca.add_model("m", "2", replicas=0)
        ca.add_model("n", replicas=0)
        ca.add_app("app", slo_ms=50, default_output=-1, policy="exp3", models=["m"])
        ca.link("app", ["n"])
        ca.set_version("m", "1")
        ca.rollback("m", "2")
        ca.set_replicas("n", 3)
        ca.set_policy("app", "epsilon_greedy", {"epsilon": 0.2})

        def same() -> bool:
            ra, rb = a.server.engine.registry.to_dict(), b.server.engine.registry.to_dict()
            return ra == rb and b.server.replicas_wanted == a.server.replicas_wanted

        eventually(same, "B's registry equal to A's")
        reg = b.server.engine.registry
        assert reg.links["app"] == ["m", "n"] and reg.history["m"][-1] == "2"
        assert reg.apps["app"].policy == "epsilon_greedy"
        assert b.server.replicas_wanted == {"m": 0, "n": 3}
        assert a.server.sync is not None and b.server.sync is not None
        assert b.server.sync.received >= 9 and a.server.sync.received == 0
        ca.add_app("tmp", models=["m"])
        eventually(lambda: "tmp" in reg.apps, "B has A's new application")
        ca.delete_app("tmp")
        eventually(lambda: "tmp" not in reg.apps, "B deletes what A deleted")
        assert "tmp" not in reg.links and reg.apps_of_model("m") == ["app"]
        c = frontend(redis_srv, tmp_path)
        try:
            assert c.server.engine.registry.to_dict() == a.server.engine.registry.to_dict()
        finally:
            c.stop()
    finally:
        a.stop()
        b.stop()


def test_a_refused_change_is_logged_not_applied(
    redis_srv: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A notice the receiving engine refuses (a link to a model it does not know) is logged
    and the frontend goes on."""
    a, b = frontend(redis_srv, tmp_path), frontend(redis_srv, tmp_path)
    try:
        assert a.server.sync is not None
        a.server.sync.publish("link", {"app": "nope", "models": ["x"]})
        eventually(lambda: "not applied" in caplog.text, "a warning")
        assert admin(b).ping()
    finally:
        a.stop()
        b.stop()


def test_one_container_serves_every_frontend_and_outlives_one(
    redis_srv: RedisServer, tmp_path: Path
) -> None:
    """A container started with --store answers queries of both frontends; when A stops, B
    still gets predictions from the same process, and a frontend started afterwards is
    served too, without restarting the container."""
    a, b = frontend(redis_srv, tmp_path), frontend(redis_srv, tmp_path)
    running = [a, b]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        admin(a).add_model("m", replicas=0)
        admin(a).add_app("app", slo_ms=2000, default_output=-1, models=["m"])
        eventually(lambda: "app" in b.server.engine.registry.apps, "the app on B")
        procs.append(container(redis_srv, "m", 7, tmp_path))
        for st in (a, b):
            admin(st).wait_ready(model="m", timeout_s=WAIT_S)
            out = query(st).predict("app", [1.0, 2.0])
            assert out["output"] == 7 and not out["default"]
        running.remove(a)
        a.stop()
        out = query(b).predict("app", [3.0])
        assert out["output"] == 7 and not out["default"]
        c = frontend(redis_srv, tmp_path)
        try:
            admin(c).wait_ready(model="m", timeout_s=WAIT_S)
            out = query(c).predict("app", [4.0])
            assert out["output"] == 7 and not out["default"]
        finally:
            c.stop()
        out = query(b).predict("app", [5.0])
        assert out["output"] == 7 and not out["default"]
        assert procs[0].poll() is None
    finally:
        for p in procs:
            stop(p)
        for st in running:
            st.stop()


def _teach_over_http(st: ServerThread, n: int) -> None:
    q = query(st)
    for i in range(n):
        q.update("app", 1, input=[float(i)])


def _p_good(st: ServerThread) -> float:
    return float(st.server.engine.probabilities("app")["good"])


@pytest.mark.parametrize("sync", ["merge", "partition"])
def test_selection_state_merged_or_kept_apart(
    redis_srv: RedisServer, tmp_path: Path, sync: str
) -> None:
    """Feedback sent to A only: merging, B's Exp3 moves toward the model that is right as
    A's does; partitioned, B's state stays where it started."""
    kw = {"selection_sync": sync, "selection_merge_every_s": 0.2}
    a, b = frontend(redis_srv, tmp_path, **kw), frontend(redis_srv, tmp_path, **kw)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ca = admin(a)
        ca.add_model("good", replicas=0)
        ca.add_model("bad", replicas=0)
        ca.add_app("app", slo_ms=2000, default_output=-1, policy="exp3",
                   policy_params={"eta": 0.5}, models=["good", "bad"])
        eventually(lambda: "app" in b.server.engine.registry.apps, "the app on B")
        procs += [container(redis_srv, "good", 1, tmp_path),
                  container(redis_srv, "bad", 0, tmp_path)]
        ca.wait_ready(app="app", timeout_s=WAIT_S)
        _teach_over_http(a, 40)
        eventually(lambda: _p_good(a) > 0.9, "A learns")
        if sync == "merge":
            eventually(lambda: _p_good(b) > 0.9, "B learns from A's feedback")
            assert b.server.merger is not None and b.server.merger.applied > 0
        else:
            time.sleep(1.0)  # several merge periods: nothing may arrive
            assert _p_good(b) == pytest.approx(0.5)
            assert b.server.merger is None
    finally:
        for p in procs:
            stop(p)
        a.stop()
        b.stop()


# -- the merge itself, on engines driven by hand


def _learner() -> FakeDriver:
    eng = Engine(seed=1)
    eng.add_application(Application(name="a", policy="epsilon_greedy", slo_s=1.0), now=0.0)
    eng.add_model(ModelSpec(name="m"), now=0.0)
    eng.add_model(ModelSpec(name="n"), now=0.0)
    eng.link("a", ["m", "n"], now=0.0)
    d = FakeDriver(eng)
    d.up("m"), d.up("n")
    return d


def _teach(d: FakeDriver, qid: int, label: int, user: Any = None) -> None:
    d.query(qid, "a", qid, context=user)
    for sb in list(d.open.values()):
        out = 1 if sb.replica.model == "m" else 0
        d.complete(sb.batch_id, lambda x, out=out: out)
    d.feedback_(qid, "a", label, query_id=qid)


def test_merged_statistics_add_up_exactly() -> None:
    """Two frontends learn from disjoint feedback and exchange deltas every 10 items: each
    ends with the counts and loss sums of all the feedback, as one engine would have."""
    x, y = _learner(), _learner()
    mx, my = SelectionMerger(), SelectionMerger()
    for i in range(100):
        _teach(x, i, 1, user="u")
        _teach(y, 1000 + i, 0, user="u")
        if i % 10 == 9:
            dx = mx.local_deltas(x.eng, x.eng.take_selection_changes())
            dy = my.local_deltas(y.eng, y.eng.take_selection_changes())
            my.apply(y.eng, dx, now=0.0)
            mx.apply(x.eng, dy, now=0.0)
    sx, sy = x.eng.selection_state("a", "u"), y.eng.selection_state("a", "u")
    assert sx.rounds == sy.rounds == 200
    assert sx.counts == sy.counts and sum(sx.counts) >= 200
    assert sx.loss_sums == pytest.approx(sy.loss_sums)
    # a merge after nothing changed publishes nothing (no echo of what was applied)
    assert mx.local_deltas(x.eng, x.eng.take_selection_changes()) == []


def test_log_weight_deltas_add() -> None:
    """Two frontends' weight changes multiply into the state: what one learned is not lost
    when the other's delta is added, and models that differ drop the delta."""
    base = {"models": ["m", "n"], "weights": [1.0, 1.0], "counts": [0, 0],
            "loss_sums": [0.0, 0.0], "rounds": 0}
    x = {**base, "weights": [1.0, math.exp(-2.0)], "counts": [0, 3], "rounds": 3}
    y = {**base, "weights": [1.0, math.exp(-1.0)], "counts": [0, 1], "rounds": 1}
    dy = state_delta(base, y)
    assert dy is not None
    merged = add_delta(x, dy)
    assert merged is not None
    assert math.log(merged["weights"][1] / merged["weights"][0]) == pytest.approx(-3.0)
    assert merged["counts"] == [0, 4] and merged["rounds"] == 4
    assert state_delta(base, base) is None
    assert add_delta({**x, "models": ["m", "o"]}, dy) is None
