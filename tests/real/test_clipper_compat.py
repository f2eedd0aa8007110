"""Clipper's own client against clipperlab (issue 15, item 1).

``clipper_admin`` cannot be installed here (it pulls docker), so each test replays the
exact requests its methods send, as recorded from its source (ucbrise/clipper,
``clipper_admin/clipper_admin/clipper_admin.py`` at 9f25e3fc): every method POSTs
``json.dumps(...)`` with ``headers={'Content-type': 'application/json'}`` through
``requests`` and raises ``ClipperException`` unless the status is 200:

- ``register_application`` (l. 217-226): ``/admin/add_app`` ``{name, input_type,
  default_output, latency_slo_micros}``;
- ``register_model`` (l. 696-714): ``/admin/add_model`` ``{model_name, model_version,
  labels, input_type, container_name, model_data_path: "DEPRECATED", batch_size}`` with
  ``container_name`` ``"NO_CONTAINER"`` (``CONTAINERLESS_MODEL_IMAGE``) or an image, and
  ``batch_size`` -1 by default;
- ``link_model_to_app`` (l. 286-293): ``/admin/add_model_links`` ``{app_name,
  model_names: [m]}``; ``unlink_model_from_app`` (l. 327-334): ``/admin/delete_model_links``;
- ``set_model_version`` (l. 1201-1205): ``/admin/set_model_version`` ``{model_name,
  model_version}``;
- ``get_all_apps`` (l. 859-866): ``/admin/get_all_applications`` ``{verbose}`` ->
  ``r.json()``; ``get_app_info`` (l. 897-911): ``/admin/get_application`` ``{name}``, an
  empty answer means None; ``get_linked_models`` (l. 940-946) ``{app_name}``;
- ``get_all_models`` (l. 976-983) ``{verbose}``; ``get_current_model_version`` (l. 744-750)
  reads ``model_name``, ``is_current_version``, ``model_version`` of its verbose rows;
  ``get_model_info`` (l. 1016-1030): ``/admin/get_model`` ``{model_name, model_version}``,
  empty means None;
- ``get_all_model_replicas`` (l. 1059-1065): ``/admin/get_all_containers`` ``{verbose}``;
  ``get_model_replica_info`` (l. 1099-1115): ``/admin/get_container`` ``{model_name,
  model_version, replica_id}``, empty means None;
- ``_unregister_versioned_models`` (l. 1268-1277): ``/admin/delete_versioned_model``
  ``{model_name, model_version}``; ``unregister_application`` (l. 247-253):
  ``/admin/delete_app`` ``{name}``.

The query frontend's answers follow ``src/frontends/src/query_frontend.hpp``: a prediction
``{query_id, output, default, default_explanation?}``, an ``input_batch`` of one answered
bare (``get_batch_prediction_response_content``), errors ``{error, cause}``.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from clipperlab.real import protocol as p
from tests.servers import hello, start_server

HEADERS = {"Content-type": "application/json"}


class ClipperException(Exception):
    pass


class Replay:
    """The requests ``clipper_admin.ClipperConnection`` sends, one method each."""

    def __init__(self, admin: str) -> None:
        self.admin = admin

    def _post(self, op: str, doc: dict[str, Any]) -> requests.Response:
        r = requests.post(f"http://{self.admin}/admin/{op}", headers=HEADERS,
                          data=json.dumps(doc), timeout=10)
        if r.status_code != requests.codes.ok:
            raise ClipperException(f"{r.status_code}: {r.text}")
        return r

    def register_application(self, name: str, input_type: str, default_output: str,
                             slo_micros: int) -> None:
        self._post("add_app", {"name": name, "input_type": input_type,
                               "default_output": default_output,
                               "latency_slo_micros": slo_micros})

    def register_model(self, name: str, version: str, input_type: str,
                       image: str | None = None, labels: list[str] | None = None,
                       batch_size: int = -1) -> None:
        self._post("add_model", {"model_name": name, "model_version": str(version),
                                 "labels": labels if labels is not None else [],
                                 "input_type": input_type,
                                 "container_name": image or "NO_CONTAINER",
                                 "model_data_path": "DEPRECATED", "batch_size": batch_size})

    def link_model_to_app(self, app_name: str, model_name: str) -> None:
        self._post("add_model_links", {"app_name": app_name, "model_names": [model_name]})

    def unlink_model_from_app(self, app_name: str, model_name: str) -> None:
        self._post("delete_model_links", {"app_name": app_name, "model_names": [model_name]})

    def set_model_version(self, name: str, version: str) -> None:
        self._post("set_model_version", {"model_name": name, "model_version": str(version)})

    def get_all_apps(self, verbose: bool = False) -> Any:
        return self._post("get_all_applications", {"verbose": verbose}).json()

    def get_app_info(self, name: str) -> Any:
        info = self._post("get_application", {"name": name}).json()
        return None if len(info) == 0 else info

    def get_linked_models(self, app_name: str) -> Any:
        return self._post("get_linked_models", {"app_name": app_name}).json()

    def get_all_models(self, verbose: bool = False) -> Any:
        return self._post("get_all_models", {"verbose": verbose}).json()

    def get_current_model_version(self, name: str) -> str:
        for m in self.get_all_models(verbose=True):
            if m["model_name"] == name and m["is_current_version"]:
                return str(m["model_version"])
        raise ClipperException(f"No versions of model {name} registered with Clipper")

    def get_model_info(self, name: str, version: str) -> Any:
        info = self._post("get_model", {"model_name": name,
                                        "model_version": str(version)}).json()
        return None if len(info) == 0 else info

    def get_all_model_replicas(self, verbose: bool = False) -> Any:
        return self._post("get_all_containers", {"verbose": verbose}).json()

    def get_model_replica_info(self, name: str, version: str, replica_id: int) -> Any:
        info = self._post("get_container", {"model_name": name, "model_version": str(version),
                                            "replica_id": replica_id}).json()
        return None if len(info) == 0 else info

    def unregister_versioned_model(self, name: str, version: str) -> None:
        self._post("delete_versioned_model", {"model_name": name, "model_version": version})

    def unregister_application(self, name: str) -> None:
        self._post("delete_app", {"name": name})


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Any]:
    st = start_server(tmp_path, grpc=False)
    try:
        yield st
    finally:
        st.stop()


def _admin(st: Any) -> Replay:
    return Replay(f"127.0.0.1:{st.ports['admin']}")


def test_register_link_version_and_read_back(server: Any) -> None:
    """register_application, register_model (batch_size -1 and 4, containerless), link,
    set_model_version, then every get_* reads what clipper_admin expects."""
    c = _admin(server)
    c.register_application("digits", "doubles", "-1", 100000)
    c.register_model("svm", "1", "doubles")
    c.register_model("svm", "2", "doubles", labels=["v2"], batch_size=4)
    c.link_model_to_app("digits", "svm")
    assert c.get_all_apps() == ["digits"]
    row = c.get_all_apps(verbose=True)[0]
    assert (row["name"], row["input_type"], row["default_output"],
            row["latency_slo_micros"], row["linked_models"]) == (
                "digits", "doubles", "-1", 100000, ["svm"])
    assert c.get_app_info("digits")["linked_models"] == ["svm"]
    assert c.get_app_info("ghost") is None
    assert c.get_linked_models("digits") == ["svm"]
    assert sorted(c.get_all_models()) == ["svm:1", "svm:2"]
    assert c.get_current_model_version("svm") == "1"
    c.set_model_version("svm", "2")
    assert c.get_current_model_version("svm") == "2"
    info = c.get_model_info("svm", "2")
    assert info["is_current_version"] is True and info["labels"] == ["v2"]
    assert (info["container_name"], info["batch_size"]) == ("NO_CONTAINER", 4)
    assert info["model_data_path"] == "DEPRECATED"
    assert c.get_model_info("svm", "1")["is_current_version"] is False
    assert c.get_model_info("svm", "9") is None
    c.unlink_model_from_app("digits", "svm")
    assert c.get_linked_models("digits") == []


def test_bad_batch_size_is_refused(server: Any) -> None:
    """Clipper refuses a batch size that is neither -1 nor positive; so do we (400)."""
    c = _admin(server)
    with pytest.raises(ClipperException, match="400.*batch_size"):
        c.register_model("m", "1", "doubles", batch_size=0)


def _connect(port: int, model: str, version: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(hello(model, version))
    head = s.recv(5)
    assert head and head[4] == p.WELCOME, head
    return s


def test_containers_and_delete(server: Any) -> None:
    """get_all_model_replicas and get_model_replica_info list a connected container;
    delete_versioned_model of the active version stops its replicas."""
    c = _admin(server)
    c.register_application("a", "doubles", "0", 100000)
    c.register_model("m", "1", "doubles")
    c.link_model_to_app("a", "m")
    s = _connect(server.ports["rpc"], "m", "1")
    try:
        deadline = time.monotonic() + 10
        while not c.get_all_model_replicas() and time.monotonic() < deadline:
            time.sleep(0.05)
        row = c.get_all_model_replicas(verbose=True)[0]
        rid = row["model_replica_id"]
        assert c.get_all_model_replicas() == [f"m:1:{rid}"]
        assert (row["model_id"], row["model_name"], row["model_version"],
                row["input_type"]) == ("m:1", "m", "1", "doubles")
        assert c.get_model_replica_info("m", "1", rid) == row
        assert c.get_model_replica_info("m", "1", rid + 1) is None
    finally:
        s.close()
    c.unregister_versioned_model("m", "1")
    assert c.get_model_info("m", "1") is not None  # Clipper keeps listing it too
    with pytest.raises(ClipperException, match="404"):
        c.unregister_versioned_model("m", "5")


def test_unregister_application(server: Any) -> None:
    """unregister_application removes the application: it is no longer listed, queries
    naming it get 404, its model stays, and the name can be registered again."""
    c = _admin(server)
    c.register_application("gone", "doubles", "0", 100000)
    c.register_model("gm", "1", "doubles")
    c.link_model_to_app("gone", "gm")
    c.unregister_application("gone")
    assert c.get_app_info("gone") is None and "gone" not in c.get_all_apps()
    assert c.get_model_info("gm", "1") is not None
    url = f"http://127.0.0.1:{server.ports['query']}/gone/predict"
    r = requests.post(url, headers=HEADERS, data=json.dumps({"input": [1.0]}), timeout=10)
    assert r.status_code == 404
    with pytest.raises(ClipperException, match="404"):
        c.unregister_application("gone")
    c.register_application("gone", "doubles", "1", 100000)
    assert c.get_linked_models("gone") == []


def test_query_frontend_shapes(server: Any) -> None:
    """An input_batch of one is answered with the prediction's own fields (Clipper answers
    it bare) and batch_predictions; errors carry error and cause."""
    c = _admin(server)
    c.register_application("q", "doubles", "0.5", 100000)
    url = f"http://127.0.0.1:{server.ports['query']}/q/predict"
    one = requests.post(url, headers=HEADERS, data=json.dumps({"input_batch": [[1.0]]}),
                        timeout=10).json()
    assert {"query_id", "output", "default"} <= set(one)
    assert one["default"] is True and one["output"] == "0.5"
    assert len(one["batch_predictions"]) == 1
    r = requests.post(url, headers=HEADERS, data=json.dumps({"nope": 1}), timeout=10)
    assert r.status_code == 400 and set(r.json()) == {"error", "cause"}


def test_policy_import_needs_the_token(server: Any, tmp_path: Path) -> None:
    """Without admin_token, set_policy, update_app, add_app and batching.policy refuse a
    module:Class or file.py:Class (it imports code), and the class is never imported."""
    c = _admin(server)
    marker = tmp_path / "imported"
    plugin = tmp_path / "evil.py"
    plugin.write_text(f"open({str(marker)!r}, 'w').close()\nclass P: pass\n")
    c.register_application("p", "doubles", "0", 100000)
    for op, doc in (("set_policy", {"app_name": "p", "policy": f"{plugin}:P"}),
                    ("update_app", {"name": "p", "policy": "os.path:P"}),
                    ("add_app", {"name": "p2", "policy": f"{plugin}:P"}),
                    ("add_model", {"model_name": "pm", "batching": {"policy": f"{plugin}:P"}})):
        with pytest.raises(ClipperException, match="403.*admin_token"):
            c._post(op, doc)
    assert not marker.exists()
    c._post("set_policy", {"app_name": "p", "policy": "exp3"})  # a built-in name is fine
