"""Issue 16's "Done when", on one machine: Redis, two frontends (``clipperlab serve``
processes on one Redis store, containers placed by Ray), HAProxy in front, and a two-node
Ray cluster simulated here (``ray.cluster_utils.Cluster``: a head labelled ``head_host``,
a node labelled ``gpu_host``).  Load goes through HAProxy the whole time, and:

- every query is answered, by a prediction or an explained default, never a wrong one;
- the containers sit where their resources say and serve both frontends;
- an application added through frontend A is served by frontend B (eventually: the
  promise is within a second, the machine is shared, the wait generous);
- a container actor killed is restarted by Ray and serves both frontends again;
- frontend A killed (SIGKILL) is taken out by HAProxy and B keeps answering: A's clients
  see a connection error or a 5xx, never a wrong answer.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import pytest

from clipperlab.real.client import AdminClient, QueryClient
from clipperlab.real.ray_launcher import NAMESPACE
from tests.services import (
    haproxy,
    haproxy_up,
    redis_server,
    require_haproxy,
    require_redis,
    serve_process,
)

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

WAIT_S = 120.0  # generous: a shared 2-core machine starting Ray workers

# The model answers each query's one number (numpy.ravel over the batch): an answer given
# to the wrong query cannot hide.  Two replicas on the gpu_host node; h on the head.
SERVER = """
[server]
heartbeat_interval_s = 0.2
store_dir = "{files}"
containers = "ray"
ray_address = "{ray}"
frontend_ttl_s = 2.0
"""
DEPLOY = """
[[applications]]
name = "app"
slo_ms = 1000
default_output = -1.0
models = ["m"]

[[models]]
name = "m"
kind = "python"
path = "numpy:ravel"
replicas = 2
resources = { gpu_host = 1, num_cpus = 0.5 }

[[models]]
name = "h"
kind = "noop"
replicas = 1
resources = { head_host = 1, num_cpus = 0.5 }
options = { output = 7 }
"""


class Outcome(NamedTuple):
    at: float  # time.monotonic() when the answer (or error) came
    x: float
    status: int  # 0: a connection error
    body: dict[str, Any]


def _until(cond: Callable[[], Any], timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            v = cond()
        except (OSError, http.client.HTTPException):
            v = None
        if v:
            return v
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    require_redis()
    require_haproxy()
    c = cluster_utils.Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "resources": {"head_host": 1}},
    )
    c.add_node(num_cpus=2, resources={"gpu_host": 2})
    ray.init(address=c.address, namespace=NAMESPACE, include_dashboard=False,
             log_to_driver=False)
    c.wait_for_nodes()
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def _connected(admin: str, model: str, n: int) -> bool:
    """The frontend at ``admin`` has ``n`` replicas of ``model`` connected."""
    up = AdminClient(admin).inspect()["replicas_connected"]
    return sum(1 for r in up if r.startswith(f"{model}:1#")) == n


def _load(url: str, stop: threading.Event, out: list[Outcome], k: int) -> None:
    """A client through HAProxy: one keep-alive connection, a fresh one after an error."""
    conn = http.client.HTTPConnection(url, timeout=30)
    i = 0
    while not stop.is_set():
        x = float(1000 * k + i % 1000)
        i += 1
        try:
            conn.request("POST", "/app/predict", orjson.dumps({"input": [x]}),
                         {"Content-Type": "application/json"})
            r = conn.getresponse()
            raw = r.read()
            body = orjson.loads(raw) if r.status == 200 else {}
            out.append(Outcome(time.monotonic(), x, r.status, body))
        except (OSError, http.client.HTTPException):
            out.append(Outcome(time.monotonic(), x, 0, {}))
            conn.close()
            conn = http.client.HTTPConnection(url, timeout=30)
    conn.close()


def test_two_frontends_ray_containers_haproxy(cluster: Any, tmp_path: Path) -> None:
    """The whole story, under load through HAProxy (see the module's docstring)."""
    with redis_server(tmp_path / "redis") as redis:
        server = SERVER.format(files=tmp_path / "files", ray=cluster.address)
        store = ("--store", redis.url)
        with serve_process(tmp_path / "a", server + DEPLOY, *store) as fa, \
                serve_process(tmp_path / "b", server, *store) as fb:
            for f in (fa, fb):
                _until(partial(_connected, f.admin, "m", 2))
                _until(partial(_connected, f.admin, "h", 1))

            # placed by resources: m on the gpu_host node, h on the head
            nodes = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
            for model, label in (("m", "gpu_host"), ("h", "head_host")):
                for name in ray.util.list_named_actors(all_namespaces=True):
                    if name["name"].endswith(f"/{model}/1/0"):
                        actor = ray.get_actor(name["name"], namespace=NAMESPACE)
                        where = ray.get(actor.where.remote(), timeout=60)
                        assert label in nodes[where["node_id"]]

            with haproxy(tmp_path / "lb", [fa.query, fb.query]) as lb:
                _until(lambda: set(haproxy_up(lb.stats_url).values()) == {"UP"})
                out: list[Outcome] = []
                stop = threading.Event()
                clients = [threading.Thread(target=_load, args=(lb.url, stop, out, k))
                           for k in range(3)]
                for t in clients:
                    t.start()
                try:
                    killed_at = _story(fa, fb, lb, out)
                finally:
                    stop.set()
                    for t in clients:
                        t.join(timeout=60)
                _check(out, killed_at)


def _story(fa: Any, fb: Any, lb: Any, out: list[Outcome]) -> float:
    """Add an app through A, kill a container actor, kill A; when A was killed."""
    AdminClient(fa.admin).add_app("app2", slo_ms=1000, default_output=-1, models=["h"])
    qb = QueryClient(fb.query)

    def b_serves_app2() -> bool:
        try:
            r = qb.predict("app2", [1.0])
        except Exception:  # noqa: BLE001 - 404 until B has heard of app2
            return False
        return bool(r["output"] == 7 and r["default"] is False)

    _until(b_serves_app2)

    # a container actor killed: Ray restarts it, it serves both frontends again
    n0 = len(out)
    name = next(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].endswith("/m/1/0"))
    actor = ray.get_actor(name, namespace=NAMESPACE)
    pid = ray.get(actor.where.remote(), timeout=60)["pid"]
    ray.kill(actor, no_restart=False)

    def restarted() -> bool:
        try:
            return bool(ray.get(actor.where.remote(), timeout=60)["pid"] != pid)
        except ray.exceptions.RayError:  # unavailable while it restarts
            return False

    _until(restarted)
    for f in (fa, fb):
        _until(partial(_connected, f.admin, "m", 2))
    _until(lambda: len(out) > n0 + 20)

    # frontend A killed: HAProxy takes it out, B keeps answering
    killed_at = time.monotonic()
    fa.proc.kill()
    fa.proc.wait()
    _until(lambda: haproxy_up(lb.stats_url)["fe1"].startswith("DOWN"))
    n1 = len(out)
    _until(lambda: len(out) > n1 + 50)
    tail = out[n1:]
    assert all(o.status == 200 for o in tail), [o for o in tail if o.status != 200][:5]
    return killed_at


def _check(out: list[Outcome], killed_at: float) -> None:
    """Every answer right or an explained default; errors only once a frontend died."""
    assert len(out) > 100
    wrong = [o for o in out if o.status == 200 and not (
        (o.body["default"] is False and o.body["output"] == o.x)
        or (o.body["default"] is True and o.body.get("default_explanation")))]
    assert wrong == []
    errors = [o for o in out if o.status != 200]
    assert all(o.status in (0, 502, 503) for o in errors), errors[:5]
    assert all(o.at >= killed_at for o in errors), errors[:5]
