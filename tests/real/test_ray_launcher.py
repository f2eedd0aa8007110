"""Containers placed by Ray (``[server] containers = "ray"``) on a two-node Ray cluster
simulated on this machine (``ray.cluster_utils.Cluster``): placement by resources,
restarts after ``ray.kill`` and after SIGKILL of the actor's process, actors killed for
good are created anew, scaling up and down.  One cluster for the module (starting one
costs ~10 s here)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clipperlab.engine import ConfigError, ReplicaId
from clipperlab.real.client import AdminClient, QueryClient, ServerError
from clipperlab.real.config import load_config, model_from_dict
from clipperlab.real.ray_launcher import NAMESPACE, RayLauncher, actor_options
from clipperlab.real.server import ServerThread
from tests.servers import start_server

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, str]]:
    """A head with 1 CPU labelled ``head_host`` and a node with 2 CPUs and two
    ``gpu_host`` units; yields each node's id."""
    c = cluster_utils.Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "resources": {"head_host": 1}},
    )
    node = c.add_node(num_cpus=2, resources={"gpu_host": 2})
    ray.init(address=c.address, namespace=NAMESPACE, include_dashboard=False,
             log_to_driver=False)
    c.wait_for_nodes()
    try:
        yield {"head": c.head_node.node_id, "gpu": node.node_id}
    finally:
        ray.shutdown()
        c.shutdown()


def _until(cond: Callable[[], Any], timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        v = cond()
        if v:
            return v
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _add(a: AdminClient, name: str, resources: dict[str, float], replicas: int = 1) -> None:
    a.post("/admin/add_model", {"model_name": name, "model_version": "1", "kind": "noop",
                                "replicas": replicas, "resources": resources})


def _launcher(st: ServerThread) -> RayLauncher:
    m = st.server.manager
    assert isinstance(m, RayLauncher)
    return m


def _where(st: ServerThread, rid: ReplicaId) -> dict[str, Any]:
    """Where the replica's actor runs, once it answers: an actor Ray is restarting is
    nowhere yet (on a loaded machine a restart takes seconds, and the launcher may have
    counted it and the frontend still list the replica meanwhile)."""

    def ask() -> dict[str, Any] | None:
        actor = _launcher(st).actor(rid)
        if actor is None:
            return None
        try:
            out: dict[str, Any] = ray.get(actor.where.remote(), timeout=60)
        except ray.exceptions.ActorUnavailableError:
            return None
        return out

    where: dict[str, Any] = _until(ask)
    return where


def _up(st: ServerThread) -> set[ReplicaId]:
    return set(st.server.driver.links)


def test_resources_are_checked() -> None:
    """``[models.resources]`` is a table of amounts >= 0; Ray options follow from it."""
    spec, _ = model_from_dict({"name": "m", "resources": {"num_cpus": 0.5, "gpu_host": 1,
                                                          "num_gpus": 1}}, 10)
    assert actor_options(spec.metadata["resources"]) == {
        "num_cpus": 0.5, "num_gpus": 1, "resources": {"gpu_host": 1}}
    assert actor_options(None) == {"num_cpus": 1}
    with pytest.raises(ConfigError, match=r"m\.resources\.gpu_host = -1 must be a number"):
        model_from_dict({"name": "m", "resources": {"gpu_host": -1}}, 10, "m")
    with pytest.raises(ConfigError, match="expected a table"):
        model_from_dict({"name": "m", "resources": 3}, 10, "m")
    with pytest.raises(ConfigError, match="server.containers = 'k8s'"):
        load_config(None, containers="k8s")


def test_placed_by_resources_and_answering(cluster: dict[str, str], tmp_path: Path) -> None:
    """A model asking for ``gpu_host`` runs on the node that has it, one asking for
    ``head_host`` on the head; both connect to the frontend and answer queries."""
    st = start_server(tmp_path, containers="ray")
    try:
        a = AdminClient(f"127.0.0.1:{st.ports['admin']}")
        a.add_app("app", slo_ms=5000, default_output=-1)
        _add(a, "g", {"gpu_host": 1, "num_cpus": 0.5})
        _add(a, "h", {"head_host": 1, "num_cpus": 0.5})
        a.link("app", ["g"])
        a.wait_ready("app", timeout_s=120)
        a.wait_ready(model="h", timeout_s=120)
        assert _where(st, ReplicaId("g", "1", 0))["node_id"] == cluster["gpu"]
        assert _where(st, ReplicaId("h", "1", 0))["node_id"] == cluster["head"]
        r = QueryClient(f"127.0.0.1:{st.ports['query']}").predict("app", [1.0, 2.0])
        assert r["default"] is False
        rows = {row["replica"]: row for row in a.inspect()["containers"]}
        assert rows["g:1#0"]["resources"] == {"num_cpus": 0.5, "resources": {"gpu_host": 1}}
    finally:
        st.stop()
    # stop_all kills the actors for good
    with pytest.raises(ValueError):
        ray.get_actor(f"clipperlab/127.0.0.1:{st.ports['rpc']}/g/1/0", namespace=NAMESPACE)


def test_restarts_and_scaling(cluster: dict[str, str], tmp_path: Path) -> None:
    """SIGKILL of the actor's process and ``ray.kill`` (with or without restart) bring the
    replica back; ``set_replicas`` adds actors on the labelled node and kills the extra
    ones."""
    st = start_server(tmp_path, containers="ray")
    try:
        a = AdminClient(f"127.0.0.1:{st.ports['admin']}")
        a.add_app("app", slo_ms=5000, default_output=-1)
        _add(a, "g", {"gpu_host": 1, "num_cpus": 0.5})
        a.link("app", ["g"])
        a.wait_ready("app", timeout_s=120)
        rid = ReplicaId("g", "1", 0)
        launcher = _launcher(st)

        # SIGKILL of its process: Ray restarts the actor, the launcher serves again
        pid = _where(st, rid)["pid"]
        os.kill(pid, signal.SIGKILL)
        _until(lambda: launcher.restarts_total >= 1 and rid in _up(st))
        assert _where(st, rid)["pid"] != pid

        # ray.kill with restart (what ``kill`` does for a silent container)
        pid = _where(st, rid)["pid"]
        st.call(launcher.kill, rid)
        _until(lambda: launcher.restarts_total >= 2 and rid in _up(st)
               and _where(st, rid)["pid"] != pid)

        # ray.kill for good: the launcher creates the actor anew
        old = launcher.actor(rid)
        ray.kill(old)
        _until(lambda: launcher.actor(rid) is not old and rid in _up(st))
        _until(lambda: _where(st, rid)["node_id"] == cluster["gpu"])

        # scale up to two (both on the gpu node), then down to one
        a.set_replicas("g", 2)
        a.wait_ready("app", replicas=2, timeout_s=120)
        assert _where(st, ReplicaId("g", "1", 1))["node_id"] == cluster["gpu"]
        name1 = launcher.procs[ReplicaId("g", "1", 1)].name
        a.set_replicas("g", 1)
        _until(lambda: ReplicaId("g", "1", 1) not in _up(st))

        def gone() -> bool:
            try:
                ray.get_actor(name1, namespace=NAMESPACE)
            except ValueError:
                return True
            return False

        _until(gone)
        assert set(launcher.procs) == {rid}
        r = QueryClient(f"127.0.0.1:{st.ports['query']}").predict("app", [3.0])
        assert r["default"] is False
    finally:
        st.stop()


def test_unplaceable_model_waits(cluster: dict[str, str], tmp_path: Path) -> None:
    """A model asking for a resource no node has keeps its actor pending: the server
    answers its queries with the explained default and nothing else breaks."""
    st = start_server(tmp_path, containers="ray")
    try:
        a = AdminClient(f"127.0.0.1:{st.ports['admin']}")
        a.add_app("app", slo_ms=200, default_output=-1)
        _add(a, "tpu", {"tpu_host": 1})
        a.link("app", ["tpu"])
        r = QueryClient(f"127.0.0.1:{st.ports['query']}").predict("app", [1.0])
        assert r["default"] is True and r["default_explanation"]
        assert _up(st) == set()
        with pytest.raises(ServerError):
            a.set_replicas("tpu", -1)
    finally:
        st.stop()


def test_containers_none_starts_nothing(tmp_path: Path) -> None:
    """``containers = "none"``: no launcher; replicas wanted are only written down (the
    containers are started by hand), and no Ray is needed."""
    st = start_server(tmp_path, containers="none")
    try:
        a = AdminClient(f"127.0.0.1:{st.ports['admin']}")
        a.add_model("m", kind="noop", replicas=2)
        assert st.server.manager is None
        assert a.inspect()["replicas_wanted"] == {"m": 2}
        assert a.inspect()["containers"] == []
    finally:
        st.stop()
