"""Bad input gets a 400 naming the field, never a 500 (issue 11, defects 9 and 10): deep
nesting, OIP tensors with fields of the wrong type or range, ``NaN`` in and out, and the
one name rule for applications and models (and percent-encoded paths that reach them).
One server, no model containers: each request here is refused before a query is made."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clipperlab.engine import Prediction, Reply
from clipperlab.real.client import AdminClient, ServerError
from clipperlab.real.frontend import _ReplyCache
from clipperlab.real.inputs import json_depth
from tests.real.rawhttp import answers, exchange, request
from tests.servers import start_server


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Any:
    st = start_server(tmp_path_factory.mktemp("store"))
    admin = AdminClient(f"127.0.0.1:{st.ports['admin']}")
    admin.add_app("app", slo_ms=100, default_output=-1)
    admin.add_app("words", slo_ms=100, default_output="?", input_type="strings")
    admin.add_app("my-app.v2", slo_ms=100, default_output=-1)
    yield SimpleNamespace(st=st, q=st.ports["query"], admin=admin)
    admin.close()
    st.stop()


def post(port: int, path: str, body: bytes) -> tuple[int, str]:
    raw, _ = exchange(port, request("POST", path, body))
    got = answers(raw)
    assert len(got) == 1, raw[:300]
    doc = json.loads(got[0].body)
    return got[0].status, doc.get("error", "") if isinstance(doc, dict) else ""


DEEP = b"[" * 100_000 + b"]" * 100_000
# past orjson 3.8.3's C stack (it dies of SIGSEGV on these): refused before parsing
DEEPER_OBJECTS = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
DEEPER_LISTS = b"[" * 1_000_000 + b"]" * 1_000_000


@pytest.mark.parametrize(
    ("path", "body"),
    ids=["predict", "update-input", "update-query-id", "infer", "objects", "lists"],
    argvalues=[
        ("/app/predict", b'{"input": ' + DEEP + b"}"),
        ("/app/update", b'{"input": [1.0], "label": ' + DEEP + b"}"),
        ("/app/update", b'{"query_id": 1, "label": ' + DEEP + b"}"),
        ("/v2/models/app/infer", b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP64",'
                                 b' "data": ' + DEEP + b"}]}"),
        ("/app/predict", b'{"input": 1, "x": ' + DEEPER_OBJECTS + b"}"),
        ("/app/predict", b'{"input": ' + DEEPER_LISTS + b"}"),
    ],
)
def test_deep_nesting_is_400_naming_max_nesting(srv: Any, path: str, body: bytes) -> None:
    """100,000 nested lists: a 400 naming ``max_nesting``, not a RecursionError's 500;
    bodies that would crash the JSON parser never reach it."""
    status, error = post(srv.q, path, body)
    assert status == 400 and "max_nesting" in error


@pytest.mark.parametrize(("path", "body"), [
    ("/app/predict", b'{"input": [true, 1.5]}'),
    ("/app/predict", b'{"input": [1, false]}'),
    ("/app/predict", b'{"input_batch": [[1.0, 2.0], [true, 1.0]]}'),
    ("/app/update", b'{"input": [1.0, true], "label": 1}'),
])
def test_booleans_among_numbers_are_400(srv: Any, path: str, body: bytes) -> None:
    """A JSON boolean beside numbers is refused by name, not read as 1 or 0."""
    status, error = post(srv.q, path, body)
    assert status == 400 and "holds booleans" in error, (status, error)


def depth(v: Any) -> int:
    """The reference: how deep lists and dicts nest, by recursion."""
    if isinstance(v, list):
        return 1 + max((depth(x) for x in v), default=0)
    if isinstance(v, dict):
        return 1 + max((depth(x) for x in v.values()), default=0)
    return 0


TRICKY = st.text(alphabet='[]{}"\\ab\n\u00e9', max_size=8)
DOCS = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
    | TRICKY,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(TRICKY, kids, max_size=4),
    max_leaves=30,
)


@given(DOCS)
def test_json_depth_matches_the_structure(doc: Any) -> None:
    """The nesting check reads the text as the parser does: brackets, quotes and
    backslashes inside strings never count."""
    assert json_depth(json.dumps(doc).encode()) == depth(doc)
    assert json_depth(orjson.dumps(doc)) == depth(doc)


def infer(srv: Any, tensor: dict[str, Any], app: str = "app", **top: Any) -> tuple[int, str]:
    return post(srv.q, f"/v2/models/{app}/infer",
                json.dumps({"inputs": [tensor], **top}).encode())


def tensor(**fields: Any) -> dict[str, Any]:
    return {"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1.0, 2.0], **fields}


@pytest.mark.parametrize(
    ("fields", "top", "names"),
    [
        ({"datatype": ["FP64"]}, {}, ["datatype", "['FP64']"]),
        ({"datatype": {"a": 1}}, {}, ["datatype"]),
        ({"datatype": "FP128"}, {}, ["datatype", "FP128"]),
        ({"shape": [True, 2]}, {}, ["shape", "True"]),
        ({"shape": [1, -2]}, {}, ["shape"]),
        ({"shape": [1, 2.0]}, {}, ["shape"]),
        ({"shape": "1,2"}, {}, ["shape"]),
        ({"shape": [2**62, 2]}, {}, ["shape", str(2**62)]),
        ({"shape": [2**62], "data": [1.0]}, {}, ["shape", str(2**62)]),
        ({"shape": [1] * 65}, {}, ["shape", "at most 32"]),
        ({"parameters": [1]}, {}, ["parameters", "object"]),
        ({"parameters": "binary"}, {}, ["parameters", "object"]),
        ({"parameters": {"binary_data_size": True}}, {}, ["binary_data_size"]),
        ({"parameters": {"binary_data_size": 10**30}}, {}, ["binary_data_size"]),
        ({"name": 7}, {}, ["name"]),
        ({"datatype": "INT64", "data": [2**63, 1]}, {}, ["INT64", "integers in"]),
        ({"datatype": "INT64", "data": [-(2**63) - 1, 1]}, {}, ["INT64"]),
        ({"datatype": "INT64", "data": [2**70, 1]}, {}, ["INT64"]),
        ({"datatype": "UINT8", "data": [300, 1]}, {}, ["UINT8", "[0, 255]", "300"]),
        ({"datatype": "UINT8", "data": [-1, 1]}, {}, ["UINT8", "-1"]),
        ({"datatype": "UINT32", "data": [2**32, 1]}, {}, ["UINT32", str(2**32)]),
        ({"datatype": "INT8", "data": [1.5, 1]}, {}, ["INT8", "1.5"]),
        ({"datatype": "INT32", "data": [True, 1]}, {}, ["INT32", "True"]),
        ({"datatype": "FP32", "data": [1e300, 1.0]}, {}, ["FP32"]),
        ({"datatype": "FP64", "data": ["a", 1.0]}, {}, ["FP64", "'a'"]),
        ({"datatype": "BOOL", "data": [1, 0]}, {}, ["BOOL"]),
        ({"data": [[1.0, [2.0]]]}, {}, ["data"]),
        ({"data": [{"a": 1}, 2.0]}, {}, ["data"]),
        ({}, {"parameters": "x"}, ["parameters", "object"]),
        ({}, {"parameters": {"binary_data_output": "yes"}}, ["binary_data_output"]),
        ({}, {"outputs": {"name": "output"}}, ["outputs"]),
        ({}, {"outputs": [{"name": "output", "parameters": 3}]}, ["parameters"]),
        ({}, {"id": {"nested": True}}, ["id"]),
    ],
)
def test_oip_fields_of_wrong_type_or_range_are_400(
    srv: Any, fields: dict[str, Any], top: dict[str, Any], names: list[str]
) -> None:
    """Each tensor and request field is checked for type and range before use: 400 with
    an error naming the field (and the value), never a 500 from numpy or a TypeError."""
    status, error = infer(srv, tensor(**fields), **top)
    assert status == 400, error
    for n in names:
        assert n in error, error


def test_oip_bytes_of_wrong_kind_are_400(srv: Any) -> None:
    status, error = infer(srv, {"name": "x", "shape": [2], "datatype": "BYTES",
                                "data": ["a", 3]}, app="words")
    assert status == 400 and "strings" in error


def test_oip_binary_size_must_match_the_shape(srv: Any) -> None:
    head = json.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64",
                                   "parameters": {"binary_data_size": 12}}]}).encode()
    body = head + b"\0" * 12
    raw, _ = exchange(srv.q, request(
        "POST", "/v2/models/app/infer", body,
        headers=f"Inference-Header-Content-Length: {len(head)}\r\n"))
    got = answers(raw)[0]
    assert got.status == 400 and "binary_data_size 12" in json.loads(got.body)["error"]
    nan = head.replace(b"12", b"16") + np.array([np.nan, 1.0]).tobytes()
    raw, _ = exchange(srv.q, request(
        "POST", "/v2/models/app/infer", nan,
        headers=f"Inference-Header-Content-Length: {len(head)}\r\n"))
    got = answers(raw)[0]
    assert got.status == 400 and "NaN" in json.loads(got.body)["error"]


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_nan_and_infinity_in_bodies_are_400(srv: Any, literal: bytes) -> None:
    """``NaN``/``Infinity`` are not JSON (RFC 8259): refused, not passed to a model."""
    status, error = post(srv.q, "/app/predict", b'{"input": [1.0, ' + literal + b"]}")
    assert status == 400 and "not valid JSON" in error


def strict_json(data: bytes) -> Any:
    """JSON as RFC 8259 has it: no NaN, no Infinity."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(data, parse_constant=refuse)


@pytest.mark.parametrize("output", [math.nan, math.inf, -math.inf, np.float32("nan"),
                                    [1.0, math.nan]])
def test_nan_outputs_are_written_null(output: Any) -> None:
    """A model answering NaN or infinity gets ``null`` in the 200 body (valid JSON)."""
    r = Reply(query_id=3, latency_s=0.0, prediction=Prediction(
        output=output, default=False, confidence=math.nan, models=("m",)))
    raw = _ReplyCache().encode(r)
    doc = strict_json(raw.partition(b"\r\n\r\n")[2])
    assert doc["query_id"] == 3 and doc["confidence"] is None
    assert doc["output"] is None or doc["output"] == [1.0, None]


def test_oip_nan_outputs_are_written_null(srv: Any) -> None:
    app = srv.st.server.engine.registry.apps["app"]
    r = Reply(query_id=1, latency_s=0.0, prediction=Prediction(
        output=math.nan, default=False, confidence=1.0, models=("m",)))
    raw = srv.st.server.frontend.oip.encode(app, "id", [r], [("output", False)])
    doc = strict_json(raw.partition(b"\r\n\r\n")[2])
    assert doc["outputs"][0]["data"] == [None]


@pytest.mark.parametrize(
    "name", ["café", "a b", "a/b", "%41pp", "-lead", "", "x" * 129, "a\x00b", "a:b"]
)
def test_application_names_follow_one_rule(srv: Any, name: str) -> None:
    """An application name that could not be routed to is refused with the rule."""
    with pytest.raises(ServerError) as e:
        srv.admin.add_app(name)
    assert e.value.status == 400 and "[A-Za-z0-9][A-Za-z0-9._-]{0,127}" in e.value.message


@pytest.mark.parametrize("name", ["a\x00b", "m" * 300, "naïve", "a b"])
def test_model_names_follow_one_rule(srv: Any, name: str) -> None:
    """A model name its container could never register with is refused with the rule."""
    with pytest.raises(ServerError) as e:
        srv.admin.add_model(name, kind="noop", replicas=0)
    assert e.value.status == 400 and "[A-Za-z0-9][A-Za-z0-9._-]{0,127}" in e.value.message


def test_percent_encoded_paths_reach_the_application(srv: Any) -> None:
    """``/my%2Dapp.v2`` is ``/my-app.v2``, on the REST API and on the OIP."""
    status, error = post(srv.q, "/my%2Dapp%2Ev2/predict", b'{"input": "not a list"}')
    assert status == 400 and "my-app.v2" in error  # routed: the body was judged
    raw, _ = exchange(srv.q, request("GET", "/v2/models/my%2dapp.v2"))
    got = answers(raw)[0]
    assert got.status == 200 and json.loads(got.body)["name"] == "my-app.v2"
