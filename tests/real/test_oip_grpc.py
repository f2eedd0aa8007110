"""OIP v2 over gRPC (issue 15, item 2): ``tritonclient.grpc`` against clipperlab, the same
answers as over HTTP, bad requests named, readiness that tells the truth, and the
repository, configuration and statistics calls over both transports."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from clipperlab.real.client import AdminClient
from tests.servers import start_server


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any, Any]]:
    """A server with ``numpy.ravel`` (a batch of one-element rows -> one output per row,
    the row's value; one replica) behind application ``app``."""
    st = start_server(tmp_path_factory.mktemp("grpc"), admin_token="t")
    try:
        a = AdminClient(f"127.0.0.1:{st.ports['admin']}", token="t")
        a.add_app("app", slo_ms=5000, default_output=-1.0)
        a.add_model("m", kind="python", path="numpy:ravel", replicas=1, app="app")
        a.wait_ready("app")
        g = tg.InferenceServerClient(f"127.0.0.1:{st.ports['grpc']}")
        h = th.InferenceServerClient(f"127.0.0.1:{st.ports['query']}")
        yield st, g, h
    finally:
        st.stop()


def _infer(client: Any, mod: Any, x: np.ndarray, dt: str) -> tuple[np.ndarray, np.ndarray]:
    inp = mod.InferInput("input", list(x.shape), dt)
    inp.set_data_from_numpy(x)
    r = client.infer("app", [inp])
    return r.as_numpy("output"), r.as_numpy("default")


def test_grpc_infers_like_http(served: Any) -> None:
    """The same FP64 and INT64 batches over gRPC and HTTP give the same outputs (each
    row's value, from the model: not a default)."""
    _, g, h = served
    for x, dt in ((np.arange(4, dtype=np.float64).reshape(4, 1) + 0.5, "FP64"),
                  (np.arange(3, dtype=np.int64).reshape(3, 1) + 7, "INT64")):
        out_g, dflt_g = _infer(g, tg, x, dt)
        out_h, dflt_h = _infer(h, th, x, dt)
        assert out_g.tolist() == out_h.tolist() == x[:, 0].tolist()
        assert dflt_g.tolist() == dflt_h.tolist() == [False] * len(x)


def test_contents_instead_of_raw(served: Any) -> None:
    """A tensor in ``contents.fp64_contents`` (not raw bytes) is read too."""
    _, g, _ = served
    from tritonclient.grpc import service_pb2 as pb

    req = pb.ModelInferRequest(model_name="app")
    t = req.inputs.add(name="input", datatype="FP64", shape=[2, 1])
    t.contents.fp64_contents.extend([1.25, 2.5])
    resp = g._client_stub.ModelInfer(req)
    out = np.frombuffer(resp.raw_output_contents[0], dtype="<f8")
    assert out.tolist() == [1.25, 2.5]


@pytest.mark.parametrize(("shape", "dt", "field"), [
    ([5, 3], "FP64", "binary_data_size"),      # raw bytes for 6 elements, shape says 15
    ([2, 3], "COMPLEX", "datatype"),
])
def test_bad_requests_are_invalid_argument(served: Any, shape: list[int], dt: str,
                                           field: str) -> None:
    """A bad tensor is INVALID_ARGUMENT and the message names the field."""
    _, g, _ = served
    from tritonclient.grpc import service_pb2 as pb

    req = pb.ModelInferRequest(model_name="app")
    req.inputs.add(name="input", datatype=dt, shape=shape)
    req.raw_input_contents.append(np.ones(6).tobytes())
    import grpc

    with pytest.raises(grpc.RpcError) as e:
        g._client_stub.ModelInfer(req)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in e.value.details()


def test_unknown_model_is_not_found(served: Any) -> None:
    _, g, _ = served
    inp = tg.InferInput("input", [1, 1], "FP64")
    inp.set_data_from_numpy(np.ones((1, 1)))
    with pytest.raises(InferenceServerException, match="NOT_FOUND"):
        g.infer("ghost", [inp])


def test_metadata_config_stats_index(served: Any) -> None:
    """Metadata, configuration, statistics and the repository index answer the same over
    gRPC and HTTP (statistics is its own route, not a model named ``stats``)."""
    _, g, h = served
    assert g.get_server_metadata(as_json=True)["name"] == h.get_server_metadata()["name"]
    assert g.get_model_metadata("app", as_json=True)["inputs"][0]["datatype"] == "FP64"
    cg, ch = g.get_model_config("app", as_json=True)["config"], h.get_model_config("app")
    assert cg["name"] == ch["name"] == "app"
    assert cg["input"][0]["data_type"] == ch["input"][0]["data_type"] == "TYPE_FP64"
    _infer(g, tg, np.ones((1, 1)), "FP64")
    sg = g.get_inference_statistics("app", as_json=True)["model_stats"][0]
    sh = h.get_inference_statistics("app")["model_stats"][0]
    assert sg["name"] == sh["name"] == "app"
    assert int(sg["inference_count"]) >= 1 and sh["inference_count"] >= 1
    assert [m["name"] for m in h.get_inference_statistics()["model_stats"]] == ["app"]
    ig = g.get_model_repository_index(as_json=True)["models"]
    ih = h.get_model_repository_index()
    assert [(m["name"], m["state"]) for m in ig] == [(m["name"], m["state"]) for m in ih] == [
        ("app", "READY")]
    with pytest.raises(InferenceServerException, match="not supported"):
        g.load_model("app")


def _http_ready(port: int) -> int:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/v2/health/ready")
    status = c.getresponse().status
    c.close()
    return status


def test_readiness_tells_the_truth(tmp_path: Path) -> None:
    """With an application whose model has no replica connected, ``/v2/health/ready`` is
    503 and ServerReady false; ModelReady is false too, and for an unknown model."""
    st = start_server(tmp_path)
    try:
        a = AdminClient(f"127.0.0.1:{st.ports['admin']}")
        a.add_app("app", slo_ms=1000, default_output=-1)
        a.add_model("m", kind="noop", replicas=0, app="app")
        g = tg.InferenceServerClient(f"127.0.0.1:{st.ports['grpc']}")
        assert g.is_server_live()
        assert not g.is_server_ready() and _http_ready(st.ports["query"]) == 503
        assert not g.is_model_ready("app") and not g.is_model_ready("ghost")
    finally:
        st.stop()


def test_grpc_off(tmp_path: Path) -> None:
    """``grpc = false`` opens no gRPC port."""
    st = start_server(tmp_path, grpc=False)
    try:
        assert "grpc" not in st.ports
    finally:
        st.stop()


@pytest.mark.parametrize(("rpc", "request_type", "reason"), [
    ("RepositoryModelLoad", "RepositoryModelLoadRequest", "load/unload"),
    ("RepositoryModelUnload", "RepositoryModelUnloadRequest", "load/unload"),
    ("SystemSharedMemoryStatus", "SystemSharedMemoryStatusRequest", "shared memory"),
    ("SystemSharedMemoryRegister", "SystemSharedMemoryRegisterRequest", "shared memory"),
    ("SystemSharedMemoryUnregister", "SystemSharedMemoryUnregisterRequest", "shared memory"),
    ("CudaSharedMemoryStatus", "CudaSharedMemoryStatusRequest", "shared memory"),
    ("CudaSharedMemoryRegister", "CudaSharedMemoryRegisterRequest", "shared memory"),
    ("CudaSharedMemoryUnregister", "CudaSharedMemoryUnregisterRequest", "shared memory"),
    ("TraceSetting", "TraceSettingRequest", "trace settings"),
    ("LogSettings", "LogSettingsRequest", "log settings"),
])
def test_unsupported_calls_say_why(served: Any, rpc: str, request_type: str,
                                   reason: str) -> None:
    """Each call the server does not support is UNIMPLEMENTED, and the message says what
    is not supported (not gRPC's bare "Method not implemented!")."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb

    _, g, _ = served
    with pytest.raises(grpc.RpcError) as e:
        getattr(g._client_stub, rpc)(getattr(pb, request_type)())
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert reason in e.value.details()
