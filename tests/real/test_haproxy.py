"""HAProxy in front of two frontends, with ``examples/haproxy.cfg`` as documented: readiness
tells the truth (no replica connected: 503), queries are spread over the frontends, a
frontend that is not ready gets none, and a killed frontend is taken out while the other
keeps answering (its clients see a connection error or 5xx, never a wrong answer)."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from clipperlab.real.client import AdminClient
from tests.servers import start_server
from tests.services import haproxy, haproxy_up, require_haproxy, serve_process

# the model answers each query's one number (numpy.ravel over the batch): a wrong answer,
# one query's output given to another, cannot hide
CONFIG = """
[server]
heartbeat_interval_s = 0.2

[[applications]]
name = "app"
slo_ms = 2000
default_output = -1.0
models = ["m"]

[[models]]
name = "m"
kind = "python"
path = "numpy:ravel"
replicas = {replicas}
"""


def _until(cond: Callable[[], Any], timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        v = cond()
        if v:
            return v
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _ready(address: str) -> int:
    c = http.client.HTTPConnection(address, timeout=10)
    try:
        c.request("GET", "/v2/health/ready")
        return c.getresponse().status
    finally:
        c.close()


def _predict(c: http.client.HTTPConnection, x: float) -> tuple[int, dict[str, Any]]:
    c.request("POST", "/app/predict", orjson.dumps({"input": [x]}),
              {"Content-Type": "application/json"})
    r = c.getresponse()
    body = r.read()
    return r.status, (orjson.loads(body) if r.status == 200 else {})


def _served(admin: str) -> float:
    return float(AdminClient(admin).metrics().get("clipperlab_queries_total{app=app}", 0.0))


def test_ready_only_with_a_replica(tmp_path: Path) -> None:
    """``/v2/health/ready`` is 503 while an application's models have no replica
    connected (the frontend could answer only defaults), 200 once one is up."""
    st = start_server(tmp_path)
    try:
        q, a = f"127.0.0.1:{st.ports['query']}", AdminClient(f"127.0.0.1:{st.ports['admin']}")
        assert _ready(q) == 200  # nothing deployed: nothing to wait for
        a.add_app("app", slo_ms=1000, default_output=-1)
        a.add_model("m", kind="noop", replicas=0, app="app")
        assert _ready(q) == 503
        a.set_replicas("m", 1)
        a.wait_ready("app")
        assert _ready(q) == 200
    finally:
        st.stop()


def test_spread_then_a_killed_frontend_is_taken_out(tmp_path: Path) -> None:
    """Two frontends behind HAProxy both get queries and every answer is right; after
    SIGKILL of one, HAProxy marks it down and every later query is answered by the other;
    meanwhile a query sees a right answer or an error, never a wrong answer."""
    require_haproxy()
    with serve_process(tmp_path / "a", CONFIG.format(replicas=1)) as fa, \
            serve_process(tmp_path / "b", CONFIG.format(replicas=1)) as fb:
        for f in (fa, fb):
            AdminClient(f.admin).wait_ready("app")
        with haproxy(tmp_path / "lb", [fa.query, fb.query]) as lb:
            _until(lambda: set(haproxy_up(lb.stats_url).values()) == {"UP"})
            before = [_served(f.admin) for f in (fa, fb)]
            c = http.client.HTTPConnection(lb.url, timeout=30)
            for i in range(60):
                # a fresh connection now and then: HAProxy balances per request anyway
                status, body = _predict(c, float(i))
                assert status == 200 and body["output"] == i and body["default"] is False
            c.close()
            after = [_served(f.admin) for f in (fa, fb)]
            assert all(n1 > n0 for n0, n1 in zip(before, after, strict=True))

            wrong: list[Any] = []
            errors: list[Any] = []
            stop = threading.Event()

            def client(k: int) -> None:
                i = 0
                conn = http.client.HTTPConnection(lb.url, timeout=30)
                while not stop.is_set():
                    x = float(1000 * k + i)
                    try:
                        status, body = _predict(conn, x)
                    except (OSError, http.client.HTTPException) as e:
                        errors.append(e)
                        conn.close()
                        conn = http.client.HTTPConnection(lb.url, timeout=30)
                        continue
                    if status != 200:
                        errors.append(status)
                    elif body["output"] != x or body["default"] is not False:
                        wrong.append(body)
                    i += 1
                conn.close()

            threads = [threading.Thread(target=client, args=(k,)) for k in range(3)]
            for t in threads:
                t.start()
            time.sleep(0.5)
            fa.proc.kill()
            fa.proc.wait()
            _until(lambda: haproxy_up(lb.stats_url)["fe1"].startswith("DOWN"))
            stop.set()
            for t in threads:
                t.join(timeout=30)
            assert wrong == []
            assert all(isinstance(e, (OSError, http.client.HTTPException, int)) for e in errors)
            assert all(e in (502, 503) for e in errors if isinstance(e, int))
            # taken out: every query now reaches the living frontend
            c = http.client.HTTPConnection(lb.url, timeout=30)
            n0 = _served(fb.admin)
            for i in range(30):
                status, body = _predict(c, float(i))
                assert status == 200 and body["output"] == i
            c.close()
            assert _served(fb.admin) >= n0 + 30


def test_a_frontend_without_replicas_gets_no_queries(tmp_path: Path) -> None:
    """A frontend whose model has no replica is not ready: HAProxy keeps it out and every
    query gets a real prediction from the other frontend."""
    require_haproxy()
    with serve_process(tmp_path / "a", CONFIG.format(replicas=1)) as fa, \
            serve_process(tmp_path / "b", CONFIG.format(replicas=0)) as fb:
        AdminClient(fa.admin).wait_ready("app")
        with haproxy(tmp_path / "lb", [fa.query, fb.query]) as lb:
            _until(lambda: haproxy_up(lb.stats_url) == {"fe1": "UP", "fe2": "DOWN"})
            c = http.client.HTTPConnection(lb.url, timeout=30)
            for i in range(40):
                status, body = _predict(c, float(i))
                assert status == 200 and body["default"] is False and body["output"] == i
            c.close()
            # given a replica, it is taken in
            AdminClient(fb.admin).set_replicas("m", 1)
            _until(lambda: haproxy_up(lb.stats_url) == {"fe1": "UP", "fe2": "UP"})
