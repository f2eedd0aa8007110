"""The lean query path's shortcuts answer exactly what the long way would."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clipperlab.engine import Application, Reply
from clipperlab.engine._types import Prediction
from clipperlab.real import oip
from clipperlab.real.frontend import QueryFrontend, _ReplyCache, reply_body
from clipperlab.real.inputs import BadInput

APP = Application(name="bench", slo_s=0.02, default_output=-1, input_type="doubles")


def _reply(qid: int, output: Any, default: bool = False) -> Reply:
    return Reply(qid, Prediction(output=output, confidence=1.0, default=default,
                                 models=("m",)), 0.001)


def _body(http: bytes) -> Any:
    return orjson.loads(http.split(b"\r\n\r\n", 1)[1])


def test_rest_reply_cache_tells_1_from_1_0_and_true() -> None:
    """1, 1.0 and True are equal dict keys; the cached encoding must not mix them up."""
    cache = _ReplyCache()
    for qid, out in enumerate([1, 1.0, True, 1, True, 1.0]):
        got = _body(cache.encode(_reply(qid, out)))
        want = orjson.loads(orjson.dumps(reply_body(_reply(qid, out))))
        assert got == want and type(got["output"]) is type(out), (out, got)


def test_rest_reply_cache_writes_the_long_ways_bytes() -> None:
    """A cached reply is byte for byte the plain encoding (``json_response``), its
    Content-Length right whatever the query id's digits, cached or not (a list output)."""
    from clipperlab.real.http import json_response

    cache = _ReplyCache()
    for qid in (0, 9, 10, 99, 100, 12345, 10**12, 2**63 - 1):
        for out in (0, 1.5, "cat", [1, 2], True):
            r = _reply(qid, out)
            assert cache.encode(r) == json_response(200, reply_body(r)), (qid, out)


def test_rest_reply_cache_one_prediction_shared_by_many_replies() -> None:
    """Replies sharing one Prediction object (the engine's int answers) are encoded from
    the last one's tail: the long way's bytes whatever the id, and another prediction
    in between is not mistaken for it."""
    from clipperlab.real.http import json_response

    cache = _ReplyCache()
    shared, other = _reply(0, 3).prediction, _reply(0, 4).prediction
    for qid in (1, 10, 99, 100, 7, 10**12):
        for p in (shared, shared, other, shared):
            r = Reply(query_id=qid, prediction=p, latency_s=0.0)
            assert cache.encode(r) == json_response(200, reply_body(r)), (qid, p.output)


class _Fe:
    max_nesting = 32
    refused: Counter[str] = Counter()
    parse_json = QueryFrontend.parse_json

    def check_batch(self, n: int, what: str) -> None:
        pass


def _handler() -> oip.OipHandler:
    h = oip.OipHandler.__new__(oip.OipHandler)
    h.fe = _Fe()  # type: ignore[assignment]
    h._tails = {}
    h._templates = {}
    h._memo = None
    h._infer_paths = {}
    return h


@pytest.mark.parametrize("rid", [None, "req-7", 12])
def test_oip_single_reply_shortcut_matches_the_full_encoding(rid: Any) -> None:
    """A one-row JSON reply comes from a cache of encoded tails; it equals the document
    built the long way, for each output type, with and without a request id."""
    h = _handler()
    wanted = [("output", False), ("default", False)]
    for out, default in [(0, False), (1, False), (1.0, False), (True, False), ("cat", False),
                         (-1, True), (1, False), (True, False), ([1, 2], False)]:
        rep = _reply(3, out, default)
        got = _body(h.encode(APP, rid, [rep], wanted))
        doc, blobs = h._document(APP, rid, [rep], wanted)
        assert not blobs
        assert got == orjson.loads(orjson.dumps(doc)), (out, got)
        if not isinstance(out, list):
            assert type(got["outputs"][0]["data"][0]) is type(out)


def test_oip_typed_array_checks_every_element() -> None:
    """Types in one pass, integer ranges by numpy's conversion: each refusal names it."""
    f8, u1, f4 = np.dtype("<f8"), np.dtype("<u1"), np.dtype("<f4")
    assert oip._typed_array([1, 2.5], "FP64", f8, "x").tolist() == [1.0, 2.5]
    with pytest.raises(BadInput, match="numbers"):
        oip._typed_array([1.0, True], "FP64", f8, "x")
    with pytest.raises(BadInput, match="numbers"):
        oip._typed_array([1.0, "2"], "FP64", f8, "x")
    with pytest.raises(BadInput, match=r"\[0, 255\], got 256"):
        oip._typed_array([1, 256], "UINT8", u1, "x")
    with pytest.raises(BadInput, match=r"got -1"):
        oip._typed_array([-1, 3], "UINT8", u1, "x")
    with pytest.raises(BadInput, match="FP32 data must be numbers in"):
        oip._typed_array([1e300], "FP32", f4, "x")
    with pytest.raises(BadInput, match="finite"):
        oip._typed_array([10**400], "FP64", f8, "x")


def test_oip_rows_one_row_and_many() -> None:
    """The one-row shortcut gives what indexing the reshaped tensor gives."""
    h = _handler()
    for shape, data in [([1, 4], [1.0, 2.0, 3.0, 4.0]), ([4], [1.0, 2.0, 3.0, 4.0]),
                        ([2, 2], [[1.0, 2.0], [3.0, 4.0]])]:
        body = orjson.dumps({"inputs": [{"name": "x", "shape": shape, "datatype": "FP64",
                                         "data": data}]})
        r = oip.parse_request(orjson.loads(body), "bench")
        t = oip.parse_tensor(r.input, len(body), 0)
        rows = h.rows(APP, t, memoryview(b""))
        want = np.asarray(data, dtype=np.float64).reshape(shape)
        want_rows = [want] if len(shape) < 2 else [want[i] for i in range(shape[0])]
        assert [x.tolist() for x in rows] == [w.tolist() for w in want_rows]


@contextmanager
def _memo_server(tmp_path: Any) -> Iterator[tuple[Any, Any, dict[str, int]]]:
    """A server with the cache on and an application ``memo`` on the no-op model, ready:
    its admin and query clients and its ports; stopped on the way out."""
    from clipperlab.real.client import AdminClient, QueryClient
    from tests.servers import start_server

    srv = start_server(tmp_path / "store", cache=True)
    try:
        admin = AdminClient(f"127.0.0.1:{srv.ports['admin']}")
        q = QueryClient(f"127.0.0.1:{srv.ports['query']}")
        admin.add_app("memo", slo_ms=2000, default_output=-1)
        admin.add_model("noop", kind="noop", app="memo")
        admin.wait_ready("memo", timeout_s=60)
        yield admin, q, srv.ports
    finally:
        srv.stop()


def test_request_memo_answers_repeats_and_follows_application_changes(tmp_path: Any) -> None:
    """With the cache on, a body seen before skips parsing (a cache hit, the same answer);
    a changed application (a new input shape) is checked again, not served from the memo;
    another user's identical input keeps its own uid."""
    from clipperlab.real.client import ServerError

    with _memo_server(tmp_path) as (admin, q, ports):
        first = q.predict("memo", [1.0, 2.0, 3.0, 4.0])
        again = q.predict("memo", [1.0, 2.0, 3.0, 4.0])
        assert first["output"] == again["output"] == 0 and not again["default"]
        assert again["query_id"] != first["query_id"]
        hits = [ln for ln in q.metrics().splitlines()
                if ln.startswith("clipperlab_cache_hits_total")]
        assert hits and float(hits[0].rsplit(" ", 1)[1]) >= 1
        admin.post("/admin/update_app", {"name": "memo", "input_shape": [3]})
        with pytest.raises(ServerError) as e:
            q.predict("memo", [1.0, 2.0, 3.0, 4.0])
        assert e.value.status == 400 and "shape" in str(e.value)
        assert q.predict("memo", [1.0, 2.0, 3.0], uid=7)["default"] is False


def test_request_memo_serves_one_body_to_each_application_as_its_own(tmp_path: Any) -> None:
    """The memo is keyed by the body alone: the same bytes sent to two applications are
    checked against each one's input type (never the other's converted input), also when
    they take turns."""
    from clipperlab.real.client import ServerError

    with _memo_server(tmp_path) as (admin, q, ports):
        admin.add_app("ints", slo_ms=2000, default_output=-1, input_type="integers")
        admin.link("ints", ["noop"])
        for _ in range(3):
            assert q.predict("memo", [1.5, 2.0, 3.0, 4.0])["default"] is False
            with pytest.raises(ServerError) as e:
                q.predict("ints", [1.5, 2.0, 3.0, 4.0])
            assert e.value.status == 400 and "int" in str(e.value)
            assert q.predict("ints", [1, 2, 3, 4])["output"] == 0
            assert q.predict("memo", [1, 2, 3, 4])["default"] is False


def _hits(q: Any) -> float:
    lines = [ln for ln in q.metrics().splitlines()
             if ln.startswith("clipperlab_cache_hits_total")]
    return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0


def test_oip_request_memo_answers_repeats_and_follows_application_changes(
    tmp_path: Any,
) -> None:
    """OIP with the cache on: a body seen before is answered from the memo (a cache hit,
    the same answer, its own request id); a changed application is checked again; the
    same bytes with binary data (Inference-Header-Content-Length) are not the same body."""
    from clipperlab.real.client import ServerError

    with _memo_server(tmp_path) as (admin, q, ports):
        path = "/v2/models/memo/infer"
        body = orjson.dumps({"id": "r1", "inputs": [
            {"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1.0, 2.0, 3.0, 4.0]}]})
        first = q.request("POST", path, body)
        before = _hits(q)
        again = q.request("POST", path, body)
        assert first == again and again["id"] == "r1"
        assert again["outputs"][0]["data"] == [0] and again["outputs"][1]["data"] == [False]
        assert _hits(q) == before + 1
        http = (b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Inference-Header-Content-Length: 5\r\nContent-Length: %d\r\n\r\n%s"
                % (path.encode(), len(body), body))
        import socket

        with socket.create_connection(("127.0.0.1", ports["query"]), timeout=30) as sock:
            sock.sendall(http)
            head = sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 400"), head[:200]
        admin.post("/admin/update_app", {"name": "memo", "input_shape": [3]})
        with pytest.raises(ServerError) as e:
            q.request("POST", path, body)
        assert e.value.status == 400 and "shape" in str(e.value)


def _long_way(doc: Any, app: Application) -> Any:
    """What ``infer`` gives without ``one_row``: the query rows, or the ``BadInput``."""
    body = orjson.dumps(doc)
    try:
        r = oip.parse_request(doc, app.name)
        t = oip.parse_tensor(r.input, len(body), 0)
        return _handler().rows(app, t, memoryview(b""))
    except BadInput as e:
        return e


_ELEMENTS = st.one_of(st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False),
                      st.booleans(), st.text(max_size=2), st.none(),
                      st.lists(st.floats(-9, 9), max_size=2))


@st.composite
def _bodies(draw: Any) -> tuple[Application, dict[str, Any]]:
    """A common body for a numeric application with one or two of its parts changed
    (so the short way is tried often, and each odd part on its own)."""
    input_type = draw(st.sampled_from(["doubles", "integers"]))
    own = {"doubles": "FP64", "integers": "INT64"}[input_type]
    numbers = st.integers(-(2**63), 2**64 - 1) if own == "INT64" else st.floats(-1e3, 1e3)
    common: dict[str, Any] = {
        "input_type": input_type, "input_shape": None,
        "shape": draw(st.sampled_from([[1, 4], [4]])),
        "data": draw(st.lists(numbers, min_size=4, max_size=4)),
        "datatype": own, "name": "x", "tensor": {}, "doc": {},
    }
    odd_data = draw(st.lists(_ELEMENTS, min_size=4, max_size=4))
    choices: dict[str, st.SearchStrategy[Any]] = {
        "input_type": st.sampled_from(["floats", "strings", "bytes"]),
        "input_shape": st.sampled_from([(4,), (2, 2), (-1,), (3,), (1, 4)]),
        "shape": st.one_of(st.sampled_from([[2, 2], [1, 2, 2], [0], [1, 0], [], [True, 4],
                                            [4, 1], [1, 1, 4], [1, 5], [1.0, 4], "4", None]),
                           st.lists(st.integers(-1, 5), max_size=4)),
        "data": st.one_of(st.just(odd_data), st.lists(_ELEMENTS, max_size=5),
                          st.just([[1.0, 2.0], [3.0, 4.0]]), st.just({"a": 1})),
        "datatype": st.sampled_from(["FP64", "INT64", "FP32", "BOOL", "BYTES", "UINT8", 7]),
        "name": st.sampled_from([None, 3, ""]),
        "tensor": st.sampled_from([{"parameters": {"binary_data_size": 0}}, {"odd": 1},
                                   {"parameters": {}}]),
        "doc": st.sampled_from([{"id": "r1"}, {"id": 5}, {"id": None}, {"parameters": {}},
                                {"outputs": [{"name": "output"}]}]),
    }
    for part in draw(st.lists(st.sampled_from(sorted(choices)), max_size=2, unique=True)):
        common[part] = draw(choices[part])
    c = common
    app = Application(name="a", slo_s=0.02, default_output=-1, input_type=c["input_type"],
                      input_shape=c["input_shape"])
    tensor: dict[str, Any] = {"shape": c["shape"], "data": c["data"], "datatype": c["datatype"],
                              **c["tensor"]}
    if c["name"] is not None:
        tensor["name"] = c["name"]
    return app, orjson.loads(orjson.dumps({"inputs": [tensor], **c["doc"]}))


@given(_bodies())
@settings(max_examples=500, deadline=None)
def test_oip_one_row_gives_the_long_ways_row_or_steps_aside(
    case: tuple[Application, dict[str, Any]],
) -> None:
    """``one_row`` answers a body only when the long way would give one row, and gives
    that row (values, dtype and shape); every other body, good or bad, it leaves to the
    long way (``None``), which answers or names the problem as before."""
    app, doc = case
    fast = oip.one_row(doc, app)
    if fast is None:
        return
    want = _long_way(doc, app)
    assert isinstance(want, list) and len(want) == 1, want
    assert oip.parse_request(doc, "a") == (doc.get("id"), doc["inputs"][0], oip._WANT_ALL)
    assert fast.dtype == want[0].dtype and fast.shape == want[0].shape
    assert fast.tolist() == want[0].tolist()


_T = {"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1.0, 2.0, 3.0, 4.0]}


@pytest.mark.parametrize("doc", [
    {"inputs": [{**_T, "shape": [2, 2]}]},
    {"inputs": [{**_T, "shape": [4, 1]}]},
    {"inputs": [{**_T, "shape": [1, 5]}]},
    {"inputs": [{**_T, "shape": [1, 1, 4]}]},
    {"inputs": [{**_T, "shape": [1, 0], "data": []}]},
    {"inputs": [{**_T, "shape": [True, 4]}]},
    {"inputs": [{**_T, "datatype": "FP32"}]},
    {"inputs": [{**_T, "datatype": "INT64"}]},
    {"inputs": [{**_T, "data": [1.0, True, 3.0, 4.0]}]},
    {"inputs": [{**_T, "data": [1.0, "2", 3.0, 4.0]}]},
    {"inputs": [{**_T, "data": [[1.0, 2.0], [3.0, 4.0]]}]},
    {"inputs": [{**_T, "name": 3}]},
    {"inputs": [{**_T, "parameters": {"binary_data_size": 0}}]},
    {"inputs": [{**_T, "odd": 1}]},
    {"inputs": [_T], "id": 5},
    {"inputs": [_T], "parameters": {"binary_data_output": True}},
    {"inputs": [_T], "outputs": [{"name": "output"}]},
    {"inputs": [_T, _T]},
])
@pytest.mark.parametrize("input_shape", [None, (4,), (3,), (1, 4)])
def test_oip_one_row_edges(doc: dict[str, Any], input_shape: Any) -> None:
    """Bodies next to the common one: the short way steps aside, or gives the long way's
    one row."""
    app = Application(name="a", slo_s=0.02, default_output=-1, input_type="doubles",
                      input_shape=input_shape)
    fast = oip.one_row(doc, app)
    want = _long_way(doc, app)
    if fast is not None:
        assert isinstance(want, list) and len(want) == 1, want
        # the request's id and outputs are the ones the short way answers with
        assert oip.parse_request(doc, "a") == (doc.get("id"), doc["inputs"][0], oip._WANT_ALL)
        assert fast.dtype == want[0].dtype and fast.tolist() == want[0].tolist()
        assert fast.shape == want[0].shape


def test_oip_one_row_takes_the_common_bodies() -> None:
    """The bodies tritonclient and the benches send take the short way."""
    app = Application(name="a", slo_s=0.02, default_output=-1, input_type="doubles")
    for doc in [
        {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1, 2.5, 3, 4]}]},
        {"id": "q", "inputs": [{"name": "x", "shape": [4], "datatype": "FP64",
                                "data": [1.0, 2.0, 3.0, 4.0]}]},
    ]:
        x = oip.one_row(doc, app)
        assert x is not None and x.tolist() == [1.0, 2.5, 3.0, 4.0][: 1] + x.tolist()[1:]
    ints = Application(name="i", slo_s=0.02, default_output=-1, input_type="integers")
    x = oip.one_row({"inputs": [{"shape": [1, 2], "datatype": "INT64", "data": [1, -2]}]}, ints)
    assert x is not None and x.dtype == np.int64 and x.tolist() == [1, -2]


def _decoded(h: oip.OipHandler, body: bytes, app: Application) -> Any:
    """What ``decode`` gives for ``body``: the request's id and outputs and each row's
    values, dtype and shape, or the ``BadInput`` message."""
    try:
        r, rows = h.decode(body, None, app)
    except BadInput as e:
        return str(e)
    return r.id, r.wanted, [(x.tolist(), x.dtype, x.shape) for x in rows]


# Bodies the short way takes, so that a handler keeps them as templates
_LEARNED = [
    b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP64","data":[1,2.5,3,4]}]}',
    b'{"id":"q7","inputs":[{"shape":[4],"datatype":"FP64","data":[1.0,2.0,3.0,4.0]}]}',
    b'{"inputs":[{"data":[1.0,2.0,3.0,4.0],"shape":[1,4],"datatype":"FP64"}]}',
    b'{ "inputs" : [ { "name" : "x" , "shape" : [ 1 , 4 ] , "datatype" : "FP64" ,'
    b' "data":[ 1 , 2 , 3 , 4 ] } ] }',
    # "data" twice (the last one counts), and spelled with an escape: never templates
    b'{"inputs":[{"data":[1,2,3,4],"shape":[1,4],"datatype":"FP64","data":[1,2,3,4]}]}',
    b'{"inputs":[{"d\\u0061ta":[1,2,3,4],"shape":[1,4],"datatype":"FP64","data":[1,2,3,4]}]}',
    b'{"inputs":[{"data":[1,2,3,4],"shape":[1,4],"datatype":"FP64","d\\u0061ta":[1,2,3,4]}]}',
    b'{"inputs":[{"name":"x","shape":[2],"datatype":"INT64","data":[1,-2]}]}',
]
_MIDDLES = st.one_of(
    st.lists(st.one_of(st.floats(-1e300, 1e300), st.integers(-(2**70), 2**70)),
             min_size=1, max_size=5).map(lambda v: ",".join(map(repr, v)).encode()),
    st.lists(_ELEMENTS, max_size=5).map(lambda v: orjson.dumps(v)[1:-1]),
    st.sampled_from([b"", b"1,2,3,4", b" 1 , 2 , 3 , 4 ", b"1,2,3", b"1,2,3,4,5", b"NaN,1,2,3",
                     b"1e999,1,2,3", b"1,,2,3", b"1,2,3,4],[5", b"[1,2,3,4", b'1,2,3,"4"',
                     b"true,1,2,3", b"1,2,3,4]}]}", b"1,2,3,null", b"-0,0.0,1E2,2",
                     b"9223372036854775808,1,2,3", b"1,2"]),
)


@given(st.sampled_from(_LEARNED), _MIDDLES, st.sampled_from(["doubles", "integers"]),
       st.sampled_from([None, (4,), (2, 2), (-1,)]))
@settings(max_examples=600, deadline=None)
def test_oip_templated_bodies_decode_as_the_long_way(
    learned: bytes, middle: bytes, input_type: str, input_shape: Any,
) -> None:
    """A body that differs from one seen before only inside its data list is decoded from
    the kept template: to the same request, rows (values, dtype, shape), or error as a
    handler that has seen nothing gives, whatever the list holds."""
    app = Application(name="a", slo_s=0.02, default_output=-1, input_type=input_type,
                      input_shape=input_shape)
    seasoned = _handler()
    first = _decoded(seasoned, learned, app)
    assert first == _decoded(_handler(), learned, app)
    i = learned.find(b'"data":[') + 8
    j = learned.find(b"]", i)
    body = learned[:i] + middle + learned[j:]
    assert _decoded(seasoned, body, app) == _decoded(_handler(), body, app)


def test_oip_templates_take_the_common_bodies_and_follow_the_application() -> None:
    """The benches' body is kept after one query and then decoded from its template; an
    application replaced under the same name is not served from the old one's template."""
    app = Application(name="a", slo_s=0.02, default_output=-1, input_type="doubles")
    h = _handler()
    h.decode(_LEARNED[0], None, app)
    assert len(h._templates) == 1
    again = _LEARNED[0].replace(b"2.5", b"7.25")
    assert h._templated(again, app) is not None
    r, rows = h.decode(again, None, app)
    assert rows[0].tolist() == [1.0, 7.25, 3.0, 4.0] and r.id is None
    shaped = Application(name="a", slo_s=0.02, default_output=-1, input_type="doubles",
                         input_shape=(3,))
    assert h._templated(again, shaped) is None
    with pytest.raises(BadInput, match="shape"):
        h.decode(again, None, shaped)
    for dup in _LEARNED[4:7]:
        h2 = _handler()
        h2.decode(dup, None, app)
        assert not h2._templates, dup


class _Transport:
    """Records what a connection writes."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def test_answers_go_out_in_order_one_write_per_connection_per_turn() -> None:
    """Answers given later (a batch's replies, in any order) go out on the next loop turn
    in request order, one write per connection; so does an answer given while its request
    is parsed (a cache hit), with the turn's other such answers."""
    import asyncio

    from clipperlab.real.http import HttpProtocol, Request, response

    async def main() -> None:
        held: list[Request] = []

        def handler(req: Request) -> bytes | None:
            if req.path == "/now":
                return response(200, b'"now"')
            held.append(req)
            return None

        conns = [(HttpProtocol(handler), _Transport()) for _ in range(3)]
        for proto, t in conns:
            proto.connection_made(t)  # type: ignore[arg-type]
            proto.data_received(b"".join(
                b"POST /p%d HTTP/1.1\r\nContent-Length: 0\r\n\r\n" % i for i in range(3)))
        proto, t = conns[0]
        proto.data_received(b"GET /now HTTP/1.1\r\n\r\n")
        assert t.writes == []  # the held answers come first
        for req in reversed(held):
            req.respond(response(200, req.path.encode()))
        assert all(t.writes == [] for _, t in conns)
        await asyncio.sleep(0)
        for i, (_, t) in enumerate(conns):
            assert len(t.writes) == 1, (i, t.writes)
            bodies = [part.rsplit(b"\r\n\r\n", 1)[-1] for part in
                      t.writes[0].split(b"HTTP/1.1 200 OK")[1:]]
            assert bodies == [b"/p0", b"/p1", b"/p2"] + ([b'"now"'] if i == 0 else [])
        proto, t = conns[1]
        proto.data_received(b"GET /now HTTP/1.1\r\n\r\n")
        assert len(t.writes) == 1  # not yet: after the turn's reads
        await asyncio.sleep(0)
        assert len(t.writes) == 2 and t.writes[1].endswith(b'"now"')

    asyncio.run(main())


def test_answers_given_while_reads_are_parsed_go_out_together_by_one_callback() -> None:
    """Small reads parsed at once and answered at once (cache hits) on several
    connections in one loop turn are written after the turn's reads, one write per
    connection, by one loop callback for all of them (not a write as each is parsed: the
    clients, woken by each write, went back to sleep between them and were woken again at
    the server's expense; nor a callback each)."""
    import asyncio

    from clipperlab.real.http import HttpProtocol, response

    async def main() -> None:
        loop = asyncio.get_running_loop()
        conns = [(HttpProtocol(lambda req: response(200, b'"now"')), _Transport())
                 for _ in range(3)]
        for proto, t in conns:
            proto.connection_made(t)  # type: ignore[arg-type]
        calls: list[Any] = []
        call_soon = loop.call_soon

        def counting(*args: Any, **kwargs: Any) -> Any:
            calls.append(args[0])
            return call_soon(*args, **kwargs)

        loop.call_soon = counting  # type: ignore[method-assign,assignment]
        try:
            for proto, _ in conns:
                proto.data_received(b"GET /now HTTP/1.1\r\n\r\n")
            proto.data_received(b"GET /now HTTP/1.1\r\n\r\n")  # the last one's second
            assert all(t.writes == [] for _, t in conns)
            assert len(calls) == 1
            await asyncio.sleep(0)
        finally:
            del loop.call_soon
        assert [len(t.writes) for _, t in conns] == [1, 1, 1]
        assert conns[2][1].writes[0].count(b"HTTP/1.1 200") == 2
        for proto, _ in conns:
            proto.close()

    asyncio.run(main())


def test_small_reads_past_the_inline_budget_wait_their_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Within one millisecond at most ``_INLINE_BYTES`` of small reads are parsed at once;
    the reads after them are parsed by the fair scheduler on a later loop turn (in order),
    and the next millisecond parses at once again."""
    import asyncio

    from clipperlab.real import http

    clock = [100.0]
    monkeypatch.setattr(http, "_monotonic", lambda: clock[0])
    req = b"GET /now HTTP/1.1\r\n\r\n"

    parsed: list[bytes] = []

    def handler(r: http.Request) -> bytes:
        parsed.append(r.path.encode())
        return http.response(200, r.path.encode())

    async def main() -> None:
        conns = [(http.HttpProtocol(handler), _Transport())
                 for _ in range(http._INLINE_BYTES // len(req) + 2)]
        at_once = []
        for proto, t in conns:
            proto.connection_made(t)  # type: ignore[arg-type]
            before = len(parsed)
            proto.data_received(req)
            at_once.append(len(parsed) > before)
        n = at_once.index(False)
        assert n * len(req) >= http._INLINE_BYTES and not any(at_once[n:])
        await asyncio.sleep(0)
        assert all(len(t.writes) == 1 for _, t in conns)
        clock[0] += 0.001
        proto, t = conns[-1]
        before = len(parsed)
        proto.data_received(req)
        assert len(parsed) == before + 1  # parsed at once again
        await asyncio.sleep(0)
        assert len(t.writes) == 2
        for proto, _ in conns:
            proto.close()

    asyncio.run(main())


def test_a_queued_read_pauses_reading_only_when_another_finds_it_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A small read past the inline budget waits for the scheduler without pausing the
    connection; a second read that finds it still waiting pauses reading, which resumes
    once the scheduler has parsed both; every request is answered, in order, in the
    scheduler's write (no loop callback per answer)."""
    import asyncio

    from clipperlab.real import http

    clock = [100.0]
    monkeypatch.setattr(http, "_monotonic", lambda: clock[0])

    class Counting(_Transport):
        def __init__(self) -> None:
            super().__init__()
            self.pauses = self.resumes = 0

        def pause_reading(self) -> None:
            self.pauses += 1

        def resume_reading(self) -> None:
            self.resumes += 1

    async def main() -> None:
        proto, t = http.HttpProtocol(lambda r: http.response(200, r.path.encode())), Counting()
        proto.connection_made(t)  # type: ignore[arg-type]
        callbacks: list[Any] = []

        class Loop:  # the connection's loop, counting the callbacks it is asked for
            def call_soon(self, fn: Any, *args: Any) -> None:
                callbacks.append(fn)

        proto._loop = Loop()  # type: ignore[assignment]
        proto._sched.inline_ms = int(clock[0] * 1000.0)
        proto._sched.inline_bytes = http._INLINE_BYTES  # the budget of this ms is spent
        proto.data_received(b"GET /a HTTP/1.1\r\n\r\n")
        assert (t.writes, t.pauses) == ([], 0)
        proto.data_received(b"GET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n")
        assert (t.writes, t.pauses, t.resumes) == ([], 1, 0)
        await asyncio.sleep(0)
        answers = b"".join(t.writes).split(b"HTTP/1.1 200 OK")[1:]
        assert [a.split(b"\r\n\r\n")[1] for a in answers] == [b"/a", b"/b", b"/c"]
        assert (t.pauses, t.resumes, callbacks) == (1, 1, [])
        proto.close()

    asyncio.run(main())


def test_a_container_read_writes_its_replies_before_it_returns() -> None:
    """The replies a RESULT frame gives are written while that read is handled (one
    write per connection, no extra loop turn before the answer leaves)."""
    import asyncio
    import time

    from clipperlab.engine import Engine, ModelSpec
    from clipperlab.real import protocol as p
    from clipperlab.real.driver import EngineDriver
    from clipperlab.real.frontend import QueryFrontend
    from clipperlab.real.http import HttpProtocol
    from clipperlab.real.rpc import ContainerConnection, RpcServer

    async def main() -> None:
        loop = asyncio.get_running_loop()
        engine = Engine(seed=0)
        now = time.monotonic()
        engine.add_model(ModelSpec(name="m", version="1", input_type="doubles"), now=now)
        engine.add_application(Application(name="a", slo_s=1.0, default_output=-1,
                                           input_type="doubles"), now=now)
        engine.link("a", ["m"], now=now)
        driver = EngineDriver(engine, loop)
        conn = ContainerConnection(RpcServer(driver))
        rpc_t = _Transport()
        conn.connection_made(rpc_t)  # type: ignore[arg-type]
        hello = {"protocol": p.PROTOCOL_VERSION, "model": "m", "version": "1"}
        conn.data_received(p.encode_json(p.HELLO, hello))
        assert conn.welcomed
        fe = QueryFrontend(driver, cache=False)
        http = [(HttpProtocol(fe), _Transport()) for _ in range(2)]
        body = b'{"input": [1.0, 2.0]}'
        for proto, t in http:
            proto.connection_made(t)  # type: ignore[arg-type]
            proto.data_received(b"POST /a/predict HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s"
                                % (len(body), body))
        frames = p.FrameDecoder().feed(b"".join(rpc_t.writes[1:]))
        assert [k for k, _ in frames] == [p.BATCH]
        bid, inputs = p.decode_batch(frames[0][1])
        assert inputs.tolist() == [[1.0, 2.0]]  # the first query; the second waits
        conn.data_received(p.encode_batch(p.RESULT, bid, np.array([7])))
        _, t0 = http[0]
        assert len(t0.writes) == 1 and _body(t0.writes[0])["output"] == 7
        frames = p.FrameDecoder().feed(rpc_t.writes[-1])
        bid, _ = p.decode_batch(frames[0][1])
        conn.data_received(p.encode_batch(p.RESULT, bid, np.array([8])))
        _, t1 = http[1]
        assert len(t1.writes) == 1 and _body(t1.writes[0])["output"] == 8
        conn.connection_lost(None)

    asyncio.run(main())


_ROW_DTYPES = ["<f8", "<f4", "<i8", "<i4", "<u2", "|u1", "|b1"]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(_ROW_DTYPES), st.lists(st.integers(0, 3), max_size=3),
       st.integers(1, 6), st.integers(0, 2**32))
def test_batch_frames_from_rows_match_the_stacked_array(
        dtype: str, shape: list[int], n: int, seed: int) -> None:
    """``encode_rows`` writes the frame ``encode_batch`` writes for the stacked rows, and
    ``decode_list`` reads back what ``decode_values(...).tolist()`` reads, types included."""
    from clipperlab.real import protocol as p

    rng = np.random.default_rng(seed)
    rows = tuple(np.asarray(rng.standard_normal(shape) * 1000).astype(dtype) for _ in range(n))
    frame = p.encode_rows(p.BATCH, 5, rows)
    assert frame == p.encode_batch(p.BATCH, 5, np.array(rows))
    payload = frame[5:]
    want = p.decode_values(payload, 8).tolist()
    got = p.decode_list(payload, 8)
    assert got == want or np.array_equal(np.array(got), np.array(want), equal_nan=True)
    assert [type(x) for x in np.ravel(np.array(got, dtype=object))] == [
        type(x) for x in np.ravel(np.array(want, dtype=object))]


def test_rows_that_do_not_stack_take_the_long_way_and_bad_outputs_are_refused() -> None:
    """Rows of different shapes or dtypes, or not arrays, get ``None`` from
    ``encode_rows``; a RESULT whose size does not match its shape is a ``ProtocolError``
    from ``decode_list`` as from ``decode_values``."""
    from clipperlab.real import protocol as p

    assert p.encode_rows(p.BATCH, 1, (np.zeros(2), np.zeros(3))) is None
    assert p.encode_rows(p.BATCH, 1, (np.zeros(2), np.zeros(2, np.float32))) is None
    assert p.encode_rows(p.BATCH, 1, (np.array(["a"]),)) is None
    assert p.encode_rows(p.BATCH, 1, ("a", "b")) is None
    assert p.encode_rows(p.BATCH, 1, ()) is None
    good = p.encode_batch(p.RESULT, 1, np.arange(5))[5:]
    for bad in (good[:-1], good + b"\0", good[:12], good[:8] + b"\x09"):
        with pytest.raises(p.ProtocolError):
            p.decode_list(bad, 8)
    assert p.decode_list(p.encode_batch(p.RESULT, 1, ["x", "y"])[5:], 8) == ["x", "y"]
    assert p.decode_list(p.encode_batch(p.RESULT, 1, np.zeros(0))[5:], 8) == []


def test_kept_headers_are_found_however_they_are_spelled() -> None:
    """The header shortcut (common spellings looked up, not lowered) keeps the same
    headers, in lower case, as lowering every name would."""
    import asyncio

    from clipperlab.real.http import _KEEP, HttpProtocol, Request

    async def main() -> None:
        seen: list[Request] = []

        def handler(req: Request) -> bytes | None:
            seen.append(req)
            return b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

        proto = HttpProtocol(handler)
        proto.connection_made(_Transport())  # type: ignore[arg-type]
        names = [b"Content-Type", b"AUTHORIZATION", b"User-Agent", b"user-agent",
                 b"X-Clipperlab-Token", b"x-other", b"Accept", b"Origin", b"EXPECT", b"Host"]
        head = b"".join(b"%s: v%d\r\n" % (n, i) for i, n in enumerate(names))
        proto.data_received(b"POST /p HTTP/1.1\r\n%scontent-length: 2\r\n\r\n{}" % head)
        [req] = seen
        want = {n.lower() for n in names if n.lower() in _KEEP} | {b"content-length"}
        assert set(req.headers) == want
        assert req.headers[b"authorization"] == b"v1" and req.headers[b"content-length"] == b"2"

    asyncio.run(main())


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([*_ROW_DTYPES, ">f8", ">i4"]), st.lists(st.integers(0, 3), max_size=3),
       st.sampled_from(["c", "f", "step"]), st.integers(0, 2**32))
def test_array_frames_take_the_kept_layouts_and_say_the_same(
        dtype: str, shape: list[int], order: str, seed: int) -> None:
    """``encode_batch`` of any numeric array (C order, Fortran order, a strided view)
    writes the frame its C-ordered copy gets the long way (``encode_values``), and
    ``decode_values`` reads it back the same the first time (full checks) and the next
    (the kept layout); every truncation or extension of the payload is a ``ProtocolError``
    both times."""
    from clipperlab.real import protocol as p

    rng = np.random.default_rng(seed)
    a = np.asarray(rng.standard_normal([*shape, 2]) * 100).astype(dtype)
    a = np.asfortranarray(a) if order == "f" else a[..., ::2] if order == "step" else a
    frame = p.encode_batch(p.RESULT, 9, a)
    long_way = p.encode_frame(p.RESULT, (9).to_bytes(8, "little")
                              + p.encode_values(np.ascontiguousarray(a)))
    assert frame == long_way
    payload = frame[5:]
    for _ in range(2):
        got = p.decode_values(payload, 8)
        assert got.dtype == a.dtype and got.shape == a.shape
        assert np.array_equal(got, a, equal_nan=True)
    for bad in (payload[:-1], payload + b"\0", payload[:10], payload[:8] + b"\0\x09"):
        for _ in range(2):
            with pytest.raises(p.ProtocolError):
                p.decode_values(bad, 8)


def test_frames_split_in_two_anywhere_decode_the_same() -> None:
    """A read that ends inside a frame keeps only that frame's bytes, from a ``bytes`` or
    a view of a reused buffer; the frames come out whole and in order however two reads
    split them."""
    from clipperlab.real import protocol as p

    data = (p.encode_batch(p.BATCH, 1, np.arange(6.0).reshape(3, 2))
            + p.encode_frame(p.HEARTBEAT) + p.encode_batch(p.RESULT, 2, np.arange(3)))
    for cut in range(len(data) + 1):
        for view in (False, True):
            dec = p.FrameDecoder()
            into = bytearray(len(data))
            frames = []
            for part in (data[:cut], data[cut:]):
                if view:
                    into[:len(part)] = part
                    frames += dec.feed(memoryview(into)[:len(part)])
                    into[:] = b"\xee" * len(into)  # the buffer is reused after the read
                else:
                    frames += dec.feed(part)
            assert [k for k, _ in frames] == [p.BATCH, p.HEARTBEAT, p.RESULT], cut
            assert p.decode_batch(frames[0][1])[1].tolist() == [[0, 1], [2, 3], [4, 5]]
            assert p.decode_list(frames[2][1], 8) == [0, 1, 2]


def test_noop_model_answers_its_output_for_each_input() -> None:
    """The no-op model's kept arrays: one output per input, the configured value, and
    read-only (a caller cannot change what the next batch gets)."""
    from clipperlab.real.models import load_model

    predict = load_model("noop", options={"output": 3})
    for n in (1, 5, 1, 5):
        out = predict(np.zeros((n, 4)))
        assert out.tolist() == [3] * n and out.dtype == np.int64
        with pytest.raises(ValueError):
            out[0] = 4
    assert load_model("noop", options={"output": "x"})(np.zeros((2, 1))) == ["x", "x"]


def test_the_parse_turn_bounds_what_one_scheduler_turn_parses() -> None:
    """The fair scheduler parses until its turn (``set_parsing``'s ``turn_s``: the server's
    ``parse_turn_ms``) is spent, then asks the loop for another turn, so that a container's
    batch result is read before more requests are parsed: a turn shorter than any slice
    parses one slice and yields; a long one parses every backlog in one turn."""
    import asyncio

    from clipperlab.real import http

    req = b"GET /x HTTP/1.1\r\n\r\n" * 400  # two slices of the scheduler
    n_conns = 3

    class Loop:  # counts the turns the scheduler asks for
        def __init__(self) -> None:
            self.asked: list[Any] = []

        def call_soon(self, fn: Any, *args: Any) -> None:
            self.asked.append(fn)

    async def main() -> None:
        for turn_s in (1e-12, 1.0):
            loop = Loop()
            sched = http._Scheduler(loop)  # type: ignore[arg-type]
            sched.turn_s = turn_s
            conns = []
            for _ in range(n_conns):
                proto, t = http.HttpProtocol(lambda r: http.response(200, b"1")), _Transport()
                proto._sched = sched
                proto.connection_made(t)  # type: ignore[arg-type]
                proto.data_received(req)
                conns.append((proto, t))
            assert len(loop.asked) == 1 and not any(t.writes for _, t in conns)
            loop.asked.clear()
            sched.run()
            answered = [b"".join(t.writes).count(b"HTTP/1.1 200") for _, t in conns]
            if turn_s < 1e-9:
                assert answered[0] > 0 and answered[1:] == [0] * (n_conns - 1)
                assert loop.asked == [sched.run]
            else:
                assert answered == [400] * n_conns and loop.asked == []
            for proto, _ in conns:
                proto.close()

    asyncio.run(main())


def test_set_parsing_checks_and_sets_the_loops_scheduler(tmp_path: Any) -> None:
    """``set_parsing`` refuses a turn outside (0, 1] s or a negative inline budget; the
    server sets its loop's scheduler from ``parse_turn_ms`` and
    ``parse_inline_bytes_per_ms``."""
    import asyncio

    from clipperlab.real import http
    from tests.servers import start_server

    async def check() -> None:
        loop = asyncio.get_running_loop()
        for bad in ({"turn_s": 0}, {"turn_s": 2.0}, {"turn_s": True},
                    {"inline_bytes_per_ms": -1}):
            with pytest.raises(ValueError, match="parse turn|inline parse budget"):
                http.set_parsing(loop, **bad)
        http.set_parsing(loop, turn_s=0.25, inline_bytes_per_ms=0)
        s = http._scheduler(loop)
        assert (s.turn_s, s.inline_limit) == (0.25, 0)

    asyncio.run(check())
    st = start_server(tmp_path / "store", parse_turn_ms=3, parse_inline_bytes_per_ms=512)
    try:
        s = http._scheduler(st.loop)
        assert (s.turn_s, s.inline_limit) == (0.003, 512)
    finally:
        st.stop()


def test_the_header_clock_stands_still_while_the_server_holds_the_bytes() -> None:
    """A request head cut off while reading is paused by the server (more answers owed
    than ``max_pipelined``: an overload) is not timed out for it: ``check_timers`` far
    past ``header_timeout_s`` answers nothing; once the answers are written and reading
    resumes, the clock runs again from the last check, and a head that still does not
    complete gets its 408 one timeout later.  (Before, the client got the 408 for the
    server's own pause: five of them in run 12's overload.)"""
    import asyncio

    from clipperlab.real import http

    class Paused(_Transport):
        def __init__(self) -> None:
            super().__init__()
            self.paused = False
            self.closed = False

        def pause_reading(self) -> None:
            self.paused = True

        def resume_reading(self) -> None:
            self.paused = False

        def close(self) -> None:
            self.closed = True

    async def main() -> None:
        held: list[Any] = []

        def handler(r: Any) -> None:
            held.append(r)

        conns = http.Connections()
        proto = http.HttpProtocol(handler, connections=conns, max_pipelined=1,
                                  limits=http.HttpLimits(header_timeout_s=2.0))
        t = Paused()
        proto.connection_made(t)  # type: ignore[arg-type]
        proto.data_received(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n"
                            b"GET /c HTTP/1.1\r\nHost: x\r\n")
        await asyncio.sleep(0)
        assert len(held) == 2 and t.paused
        now = conns.now
        for k in range(1, 20):  # 19 s paused, the timeout 2 s
            proto.check_timers(now + k)
        await asyncio.sleep(0)
        assert t.writes == [] and not t.closed
        for r in held:
            r.respond(http.response(200, b"1"))
        await asyncio.sleep(0)
        assert not t.paused and b"".join(t.writes).count(b"HTTP/1.1 200") == 2
        proto.check_timers(now + 20)
        await asyncio.sleep(0)
        assert b"408" not in b"".join(t.writes)
        proto.check_timers(now + 19 + 2.0 + 1.0 + conns.tick_s + 0.1)
        await asyncio.sleep(0)
        assert b"HTTP/1.1 408" in b"".join(t.writes)

    asyncio.run(main())


def test_a_connection_whose_answer_waits_for_the_turns_write_is_not_evicted() -> None:
    """At ``max_connections`` a new connection closes the one idle the longest, and an
    answer written after the turn's reads (a cache hit) counts as work left: its
    connection is not closed before the answer goes out, however old its last read."""
    import asyncio

    from clipperlab.real import http

    async def main() -> None:
        conns = http.Connections(max_connections=2)
        protos = [(http.HttpProtocol(lambda r: http.response(200, b'"now"'), connections=conns),
                   _Transport()) for _ in range(2)]
        for proto, t in protos:
            proto.connection_made(t)  # type: ignore[arg-type]
        (hit, t_hit), (idle, _) = protos
        hit.data_received(b"GET /now HTTP/1.1\r\n\r\n")
        hit._active_at, idle._active_at = 1.0, 2.0  # the answered one is the older
        assert t_hit.writes == [] and not hit.quiet and idle.quiet
        newcomer = http.HttpProtocol(lambda r: None, connections=conns)
        newcomer.connection_made(_Transport())  # type: ignore[arg-type]
        assert idle.transport is None and hit.transport is not None  # the idle one went
        await asyncio.sleep(0)
        assert len(t_hit.writes) == 1 and t_hit.writes[0].endswith(b'"now"')
        assert hit.quiet
        for proto in (hit, newcomer):
            proto.close()

    asyncio.run(main())
