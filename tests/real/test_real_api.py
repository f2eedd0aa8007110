"""Real mode through its APIs: one server on loopback (ephemeral ports) with real container
processes (a no-op, a scikit-learn SVM trained on digits here, a torch module), queried
through Clipper's REST API, the Open Inference Protocol with ``tritonclient.http``, and
plain sockets for every bad input the issue lists."""

from __future__ import annotations

import http.client
import json
import socket
import struct
import threading
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.dummy import DummyClassifier
from sklearn.svm import SVC

from clipperlab.real.client import AdminClient, QueryClient, ServerError
from tests.servers import start_server


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Any:
    store = tmp_path_factory.mktemp("store")
    # The server's default heartbeat limit (0.5 s x 4), not the tests' quick 0.2 s: nothing
    # here tests a silent container, and on a loaded 2-core CI host a container starved
    # for 0.8 s was once restarted under a later test's feet.
    st = start_server(store, max_body_bytes=64 * 1024, heartbeat_interval_s=0.5)
    admin = AdminClient(f"127.0.0.1:{st.ports['admin']}")
    q = QueryClient(f"127.0.0.1:{st.ports['query']}")
    digits = load_digits()
    x, y = digits.data, digits.target
    svm = SVC(gamma=0.001).fit(x[:1000], y[:1000])
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 10))
    admin.add_app("echo", slo_ms=2000, default_output=-1)  # generous: a loaded CI host
    admin.add_model("noop", kind="noop", app="echo")
    admin.add_app("digits", slo_ms=2000, default_output=-1, input_shape=[64])
    admin.deploy_sklearn("svm", svm, app="digits")
    admin.add_app("tdigits", slo_ms=5000, default_output=-1, input_type="floats")
    admin.deploy_torch("net", net, app="tdigits", input_type="floats", output="argmax")
    for app in ("echo", "digits", "tdigits"):
        admin.wait_ready(app, timeout_s=60)
    yield SimpleNamespace(st=st, admin=admin, q=q, x=x, y=y, svm=svm, net=net, ports=st.ports)
    st.stop()


def raw(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    try:
        return r.status, json.loads(data)
    except ValueError:
        return r.status, data


# ---------------------------------------------------------------- Clipper's API
def test_predict_noop_and_batch(srv: Any) -> None:
    """A query through HTTP -> engine -> RPC -> container comes back with Clipper's fields."""
    r = srv.q.predict("echo", [1.0, 2.0, 3.0])
    assert r["output"] == 0 and r["default"] is False and r["models"] == ["noop"]
    assert isinstance(r["query_id"], int)
    rs = srv.q.predict_batch("echo", [[1.0], [2.0], [3.0]])
    assert [x["output"] for x in rs] == [0, 0, 0]
    assert len({x["query_id"] for x in rs}) == 3


def test_sklearn_digits_match_local_predictions(srv: Any) -> None:
    """The deployed SVM answers exactly what the estimator answers locally."""
    xs = srv.x[1000:1040]
    want = srv.svm.predict(xs).tolist()
    got = [r["output"] for r in srv.q.predict_batch("digits", list(xs))]
    assert got == want
    assert sum(g == t for g, t in zip(got, srv.y[1000:1040], strict=True)) >= 30


def test_torch_module(srv: Any) -> None:
    """A torch module runs in its container (CPU here) and answers argmax classes."""
    xs = srv.x[:8].astype(np.float32)
    with torch.no_grad():
        want = srv.net(torch.as_tensor(xs)).argmax(dim=-1).tolist()
    got = [r["output"] for r in srv.q.predict_batch("tdigits", list(xs))]
    assert got == want


def test_update_feedback(srv: Any) -> None:
    """/update joins a label with the query's answer and returns the losses."""
    r = srv.q.predict("digits", srv.x[1500])
    fb = srv.q.update("digits", label=int(srv.y[1500]), query_id=r["query_id"])
    assert fb["losses"] == {"svm": 0.0 if r["output"] == srv.y[1500] else 1.0}
    fb2 = srv.q.update("digits", label=int(srv.y[1501]), input=srv.x[1501])
    assert set(fb2["losses"]) == {"svm"}


# ---------------------------------------------------------------- OIP v2
def test_oip_with_tritonclient(srv: Any) -> None:
    """tritonclient.http works unchanged: health, metadata, infer (binary and JSON)."""
    import tritonclient.http as tc

    c = tc.InferenceServerClient(f"127.0.0.1:{srv.ports['query']}")
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready("digits")
    md = c.get_model_metadata("digits")
    assert md["name"] == "digits" and md["inputs"][0]["shape"] == [-1, 64]
    xs = srv.x[1100:1105]
    for binary in (True, False):
        inp = tc.InferInput("input", list(xs.shape), "FP64")
        inp.set_data_from_numpy(xs, binary_data=binary)
        outs = [tc.InferRequestedOutput("output", binary_data=binary)]
        res = c.infer("digits", [inp], outputs=outs)
        assert res.as_numpy("output").tolist() == srv.svm.predict(xs).tolist()
    res = c.infer("digits", [inp])
    assert res.as_numpy("default").tolist() == [False] * 5
    with pytest.raises(Exception, match="does not exist"):
        c.infer("nope", [inp])


def test_oip_plain_json(srv: Any) -> None:
    """A plain JSON OIP request (as curl would send) and its error cases."""
    port = srv.ports["query"]
    body = {
        "inputs": [
            {"name": "input", "shape": [1, 64], "datatype": "FP64", "data": srv.x[7].tolist()}
        ]
    }
    st, doc = raw(port, "POST", "/v2/models/digits/infer", json.dumps(body).encode())
    assert st == 200 and doc["outputs"][0]["data"] == srv.svm.predict(srv.x[7:8]).tolist()
    body["inputs"][0]["shape"] = [1, 63]
    st, doc = raw(port, "POST", "/v2/models/digits/infer", json.dumps(body).encode())
    assert st == 400 and "elements for shape" in doc["error"]
    st, doc = raw(port, "GET", "/v2/models/digits/versions/9")
    assert st == 404 and "no version" in doc["error"]
    assert raw(port, "GET", "/v2")[1]["name"] == "clipperlab"


# ---------------------------------------------------------------- versions
def test_deploy_second_version_and_roll_back(srv: Any) -> None:
    """Version 2 (a constant 7) takes over when deployed; rollback brings version 1 back."""
    a, q = srv.admin, srv.q
    a.add_app("ver", slo_ms=5000, default_output=-1)
    a.add_model("m", "1", kind="noop", options={"output": 1}, app="ver")
    a.wait_ready(model="m")
    assert q.predict("ver", [0.0])["output"] == 1
    a.deploy_sklearn(
        "m", DummyClassifier(strategy="constant", constant=7).fit([[0.0]], [7]), version="2"
    )
    assert a.get_model("m")["active_version"] == "2"
    a.wait_ready(model="m")
    assert q.predict("ver", [0.0])["output"] == 7
    assert a.rollback("m") == "1"
    a.wait_ready(model="m")
    assert q.predict("ver", [0.0])["output"] == 1
    assert a.get_model("m")["history"] == ["1", "2", "1"]


# ---------------------------------------------------------------- admin
def test_admin_inspect_policy_and_errors(srv: Any) -> None:
    a = srv.admin
    assert a.ping()
    assert "digits" in a.get_all_apps()
    assert a.get_app("digits")["latency_slo_micros"] == 2_000_000
    a.set_policy("digits", "exp3", {"eta": 0.1})
    assert a.get_app("digits")["policy"] == "exp3"
    a.set_policy("digits", "static")
    a.wait_ready("digits", timeout_s=60)
    st = a.inspect()
    assert "svm:1#0" in st["replicas_connected"]
    assert st["selection"]["digits"]["probabilities"] == {"svm": 1.0}
    with pytest.raises(ServerError) as e:
        a.get_model("ghost")
    assert e.value.status == 404 and "ghost" in e.value.message
    with pytest.raises(ServerError) as e:
        a.add_app("digits")
    assert e.value.status == 409
    with pytest.raises(ServerError) as e:
        a.link("digits", ["ghost"])
    assert e.value.status == 404
    with pytest.raises(ServerError) as e:
        a.post("/admin/add_app", {"name": "x", "input_type": "complex"})
    assert e.value.status == 400 and "complex" in e.value.message
    assert a.metrics()["clipperlab_queries_total{app=echo}"] >= 1


def test_metrics_in_prometheus_format(srv: Any) -> None:
    """/metrics carries the engine's metric names in Prometheus text."""
    srv.q.predict("echo", [1.0])
    st, text = raw(srv.ports["query"], "GET", "/metrics")
    text = text.decode()
    assert st == 200
    for name in (
        "clipperlab_queries_total",
        "clipperlab_batch_size_bucket",
        "clipperlab_batches_total",
        "clipperlab_real_replicas_connected",
    ):
        assert name in text
    assert 'clipperlab_queries_total{app="echo"}' in text


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "path,body,status,words",
    [
        ("/echo/predict", b"{not json", 400, "not valid JSON"),
        ("/echo/predict", b"[1, 2]", 400, "JSON object"),
        ("/echo/predict", b'{"inputs": [1]}', 400, "'input' or 'input_batch'"),
        ("/echo/predict", b'{"input": "abc"}', 400, "list of numbers"),
        ("/echo/predict", b'{"input": [1, "a"]}', 400, "strings"),
        ("/echo/predict", b'{"input": [[1, 2], [3]]}', 400, "ragged"),
        ("/echo/predict", b'{"input": [true, false]}', 400, "booleans"),
        ("/echo/predict", b'{"input": []}', 400, "empty"),
        ("/echo/predict", b'{"input_batch": []}', 400, "input_batch is empty"),
        ("/digits/predict", b'{"input": [1.0, 2.0]}', 400, "shape [2]"),
        ("/nope/predict", b'{"input": [1.0]}', 404, "'nope' does not exist"),
        ("/nope/update", b'{"input": [1.0], "label": 1}', 404, "'nope' does not exist"),
        ("/echo/update", b'{"input": [1.0]}', 400, "'label'"),
        ("/echo/predict", b'{"input": [1.0], "uid": [1]}', 400, "uid must be"),
        ("/echo/update", b'{"input": [1.0], "label": 1, "uid": [1]}', 400, "uid must be"),
        ("/a/b/c", b"{}", 404, "no route"),
    ],
)
def test_bad_input_gets_4xx_with_error(
    srv: Any, path: str, body: bytes, status: int, words: str
) -> None:
    st, doc = raw(srv.ports["query"], "POST", path, body, {"Content-Type": "application/json"})
    assert st == status
    assert words in doc["error"]


def test_oversized_body_413_and_server_keeps_serving(srv: Any) -> None:
    body = b'{"input": [' + b"1.0," * 40_000 + b"1.0]}"
    st, doc = raw(srv.ports["query"], "POST", "/echo/predict", body)
    assert st == 413 and "exceeds the limit" in doc["error"]
    assert srv.q.predict("echo", [1.0])["default"] is False


def test_wrong_method_and_malformed_http(srv: Any) -> None:
    st, doc = raw(srv.ports["query"], "GET", "/echo/predict")
    assert st == 405 and "POST" in doc["error"]
    s = socket.create_connection(("127.0.0.1", srv.ports["query"]))
    s.sendall(b"THIS IS NOT HTTP\r\n\r\n")
    data = s.recv(4096)
    s.close()
    assert data.startswith(b"HTTP/1.1 400") and b"malformed HTTP" in data


def test_client_disconnects_mid_request(srv: Any) -> None:
    """Half a request, then the client goes away: nothing breaks."""
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", srv.ports["query"]))
        s.sendall(b'POST /echo/predict HTTP/1.1\r\nContent-Length: 100\r\n\r\n{"input": [1')
        s.close()
    s = socket.create_connection(("127.0.0.1", srv.ports["query"]))
    s.sendall(b'POST /echo/predict HTTP/1.1\r\nContent-Length: 16\r\n\r\n{"input": [1.0]}')
    s.close()  # leave before the answer
    assert srv.q.predict("echo", [1.0])["default"] is False


def test_pipelined_requests_answered_in_order(srv: Any) -> None:
    """Responses of pipelined requests come back in request order, even across apps."""
    s = socket.create_connection(("127.0.0.1", srv.ports["query"]))
    reqs = []
    for i in range(20):
        app = "digits" if i % 2 else "echo"
        b = json.dumps({"input": srv.x[i].tolist() if app == "digits" else [float(i)]}).encode()
        reqs.append(
            b"POST /%s/predict HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (app.encode(), len(b), b)
        )
    s.sendall(b"".join(reqs))
    f = s.makefile("rb")
    outs = []
    for _ in range(20):
        line = f.readline()
        assert line.startswith(b"HTTP/1.1 200")
        n = 0
        while (h := f.readline()) != b"\r\n":
            if h.lower().startswith(b"content-length:"):
                n = int(h.split(b":")[1])
        outs.append(json.loads(f.read(n)))
    s.close()
    want = [int(srv.svm.predict(srv.x[i : i + 1])[0]) if i % 2 else 0 for i in range(20)]
    assert [o["output"] for o in outs] == want


def test_garbage_frame_on_rpc_port_drops_only_that_connection(srv: Any) -> None:
    before = srv.admin.inspect()["replicas_connected"]
    s = socket.create_connection(("127.0.0.1", srv.ports["rpc"]))
    s.sendall(struct.pack("<IB", 5, 99) + b"junk")
    s.settimeout(5)
    assert s.recv(100) == b""  # dropped
    s.close()
    s = socket.create_connection(("127.0.0.1", srv.ports["rpc"]))
    s.sendall(struct.pack("<IB", 0xFFFFFFF0, 1))
    assert s.recv(100) == b""
    s.close()
    assert srv.admin.inspect()["replicas_connected"] == before
    assert srv.q.predict("echo", [1.0])["default"] is False


def test_overload_gets_503_with_explanation(srv: Any) -> None:
    """A bounded queue: beyond it, an immediate 503 that says why."""
    a = srv.admin
    a.add_app("slow", slo_ms=3000, default_output=-1)
    a.add_model(
        "slowm",
        kind="noop",
        options={"delay_s": 0.3},
        batching={"policy": "none", "max_queue": 2},
        app="slow",
    )
    a.wait_ready(model="slowm")
    s = socket.create_connection(("127.0.0.1", srv.ports["query"]))
    # Distinct inputs: identical ones would coalesce onto one request in the cache.
    s.sendall(
        b"".join(
            b'POST /slow/predict HTTP/1.1\r\nContent-Length: 16\r\n\r\n{"input": [%d.0]}' % i
            for i in range(6)
        )
    )
    f = s.makefile("rb")
    codes, errors = [], []
    for _ in range(6):
        codes.append(int(f.readline().split()[1]))
        n = 0
        while (h := f.readline()) != b"\r\n":
            if h.lower().startswith(b"content-length:"):
                n = int(h.split(b":")[1])
        doc = json.loads(f.read(n))
        if "error" in doc:
            errors.append(doc["error"])
    s.close()
    assert 503 in codes and 200 in codes
    assert all("full" in e and "slowm" in e for e in errors)
    t0 = time.monotonic()
    assert srv.q.predict("echo", [1.0])["default"] is False
    assert time.monotonic() - t0 < 30


def test_deploy_python_callable(srv: Any) -> None:
    """A Python batch function (pickled by reference) serves as a model: ``list`` turns a
    batch into its rows, an identity model."""
    a = srv.admin
    a.add_app("ident", slo_ms=5000, default_output=-1)
    a.deploy_python("ident_m", list, app="ident")
    a.wait_ready("ident")
    assert srv.q.predict("ident", [1.5, 2.5])["output"] == [1.5, 2.5]


def test_expect_100_continue(srv: Any) -> None:
    """curl's ``Expect: 100-continue`` (bodies over 1 KiB) gets the interim answer at once."""
    body = json.dumps({"input": [0.5] * 300}).encode()
    s = socket.create_connection(("127.0.0.1", srv.ports["query"]))
    s.settimeout(5)
    s.sendall(
        b"POST /echo/predict HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
        % len(body)
    )
    assert s.recv(100).startswith(b"HTTP/1.1 100 Continue")
    s.sendall(body)
    f = s.makefile("rb")
    assert f.readline().startswith(b"HTTP/1.1 200")
    s.close()


def test_container_that_cannot_load_says_why(srv: Any) -> None:
    """A model file that does not exist: the container exits, is retried with back-off,
    and ``inspect`` shows its last error."""
    a = srv.admin
    missing = str(srv.st.server.store.models_dir / "nonexistent" / "model.joblib")
    a.add_model("broken", kind="sklearn", path=missing)
    deadline = time.monotonic() + 30
    err = ""
    while time.monotonic() < deadline and not err:
        for c in a.inspect()["containers"]:
            if c["replica"].startswith("broken:") and c["last_error"]:
                err = c["last_error"]
        time.sleep(0.1)
    assert "nonexistent/model.joblib" in err
    a.set_replicas("broken", 0)


def test_deep_pipeline_is_answered_in_order(srv: Any) -> None:
    """2,000 pipelined requests in one write (parsed in slices by the fair scheduler) all
    come back, in order."""
    n = 2000
    reqs = []
    for i in range(n):
        b = b'{"input": [%d.5]}' % i
        reqs.append(b"POST /echo/predict HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(b), b))
    s = socket.create_connection(("127.0.0.1", srv.ports["query"]))
    s.settimeout(30)
    threading.Thread(target=s.sendall, args=(b"".join(reqs),), daemon=True).start()
    f = s.makefile("rb")
    ids = []
    for _ in range(n):
        assert f.readline().startswith(b"HTTP/1.1 200")
        size = 0
        while (h := f.readline()) != b"\r\n":
            if h.lower().startswith(b"content-length:"):
                size = int(h.split(b":")[1])
        ids.append(json.loads(f.read(size))["query_id"])
    s.close()
    assert ids == sorted(ids) and len(set(ids)) == n


def test_strings_application_over_both_apis(srv: Any) -> None:
    """A strings application: Clipper JSON and OIP BYTES tensors reach the container as a
    list of str (the RPC's string encoding)."""
    import tritonclient.http as tc

    a = srv.admin
    a.add_app("words", slo_ms=5000, default_output="none", input_type="strings")
    a.add_model("wordm", kind="noop", input_type="strings", options={"output": "word"}, app="words")
    a.wait_ready("words")
    assert srv.q.predict("words", "hello")["output"] == "word"
    c = tc.InferenceServerClient(f"127.0.0.1:{srv.ports['query']}")
    inp = tc.InferInput("input", [2], "BYTES")
    inp.set_data_from_numpy(np.array([b"a", b"bc"], dtype=object))
    res = c.infer("words", [inp])
    assert [x.decode() if isinstance(x, bytes) else x for x in res.as_numpy("output")] == [
        "word",
        "word",
    ]
