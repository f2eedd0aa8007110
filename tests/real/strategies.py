"""Hypothesis strategies for fuzzing the real server from outside: what a stranger can send.

Shared by ``tests/real/test_fuzz.py`` (a few thousand cases in CI) and ``scripts/fuzz.py``
(tens of thousands, with a table).  ``tests`` is a plain folder with an ``__init__.py``,
not an installed package: the script puts the repository root on ``sys.path`` and imports
``tests.real.strategies`` and ``tests.real.oracle`` like the tests do.

Every strategy draws a *case*, a small frozen record that says what to send and how many
answers it may get; ``tests.real.oracle`` sends it and judges the answers.

- ``HttpCase``: bytes for the query port (``port="query"``) or the admin port
  (``"admin"``): Clipper's REST API (valid and invalid JSON, deep nesting, huge numbers,
  ``NaN``, wrong types, unicode and percent-encoded application names, ``input_batch`` of
  varied sizes, ``uid``, ``/update``), the Open Inference Protocol v2 (datatypes, shapes
  with booleans, negatives, huge dimensions and 65 dimensions, data that does not fit the
  shape, binary tensors, ``parameters`` and ``outputs`` of the wrong type), the admin API,
  and raw HTTP oddities (pipelining, a missing ``Content-Length``, chunked bodies,
  ``Upgrade``/``CONNECT``, ``HEAD``, big headers and URLs kept modest).  The last request
  of every case says ``Connection: close`` (or is HTTP/1.0, or is malformed), so an extra
  answer shows up before the server closes.
- ``RpcCase``: bytes for the container RPC port (garbage, truncated and mis-sized frames,
  HELLOs with wrong fields).
- ``OddOutputCase``: a query to the application served by ``FakeContainer`` (a raw
  socket speaking the protocol) together with the odd output it answers with: ``2**70``,
  complex numbers, ``NaN``, strings, the wrong number of outputs, a list/scalar mix, bytes.

The fixture's names are fixed here (``APP``, ``MODEL`` ...): the admin strategy never
names them, so fuzzing the admin API cannot legitimately take the health check's model
away; and it never asks for a positive number of replicas (each would be a process).
"""

from __future__ import annotations

import json
import math
import shlex
import struct
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from clipperlab.real import protocol as p

__all__ = [
    "APP",
    "MODEL",
    "ODD_APP",
    "DEEP_BODIES",
    "ODD_KINDS",
    "ODD_MODEL",
    "STR_APP",
    "STR_MODEL",
    "HttpCase",
    "OddOutputCase",
    "RpcCase",
    "admin_cases",
    "all_cases",
    "clipper_cases",
    "deep_body",
    "http_request",
    "odd_output_cases",
    "oip_cases",
    "raw_http_cases",
    "rpc_cases",
]

# The fuzzed server's deployment (see tests/real/oracle.py: deploy).
APP = "fz"  # doubles, served by MODEL (no-op)
MODEL = "m"
STR_APP = "fzs"  # strings, served by STR_MODEL (no-op)
STR_MODEL = "ms"
ODD_APP = "odd"  # doubles, served by the tests' FakeContainer only
ODD_MODEL = "odd"
_PROTECTED = frozenset((APP, MODEL, STR_APP, STR_MODEL, ODD_APP, ODD_MODEL))


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True, slots=True)
class HttpCase:
    """Bytes for one connection; ``min_answers``..``max_answers`` HTTP responses allowed.

    ``route`` labels the case in summaries (``clipper.predict``, ``oip.infer``, ``raw.head``
    ...).  ``head`` says the (single) request is a HEAD: its answer must carry no body.
    ``half_close`` shuts the client's sending side after the bytes (a body cut short).
    ``odd`` names the FakeContainer's answer mode for the case (OddOutputCase)."""

    route: str
    port: str
    raw: bytes
    min_answers: int = 1
    max_answers: int = 1
    head: bool = False
    half_close: bool = False
    odd: str = ""

    def reproduce(self, host: str, port: int) -> str:
        """A shell line that sends the same bytes (curl when the case is one plain request,
        else printf into nc)."""
        curl = _as_curl(self.raw, host, port)
        if curl and not self.half_close:
            return curl
        return f"printf %s {shlex.quote(_printf_escape(self.raw))} | nc -q 2 {host} {port}"


@dataclass(frozen=True, slots=True)
class RpcCase:
    """Bytes for one connection to the container RPC port."""

    route: str
    raw: bytes

    def reproduce(self, host: str, port: int) -> str:
        return f"printf %s {shlex.quote(_printf_escape(self.raw))} | nc -q 2 {host} {port}"


@dataclass(frozen=True, slots=True)
class OddOutputCase:
    """A query to ``ODD_APP`` whose batch the FakeContainer answers as ``mode`` says."""

    mode: str
    http: HttpCase = field(repr=False)

    @property
    def route(self) -> str:
        return f"odd.{self.mode}"

    def reproduce(self, host: str, port: int) -> str:
        return (f"# the replica of {ODD_MODEL!r} answers with mode {self.mode!r}\n"
                + self.http.reproduce(host, port))


def _printf_escape(raw: bytes) -> str:
    out = []
    for b in raw:
        c = chr(b)
        if c == "\\":
            out.append("\\\\")
        elif c == "%":
            out.append("%%")
        elif 32 <= b < 127:
            out.append(c)
        else:
            out.append(f"\\{b:03o}")
    return "".join(out)


def _as_curl(raw: bytes, host: str, port: int) -> str:
    """``curl`` for one well-formed request with a Content-Length body, else ''."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return ""
    try:
        lines = head.decode("ascii").split("\r\n")
    except UnicodeDecodeError:
        return ""
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] != "HTTP/1.1" or not parts[1].startswith("/"):
        return ""
    method, target = parts[0], parts[1]
    headers = []
    length = 0
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            return ""
        low = name.strip().lower()
        if low == "content-length":
            try:
                length = int(value)
            except ValueError:
                return ""
        elif low in ("transfer-encoding", "upgrade", "expect"):
            return ""
        elif low not in ("host", "connection"):
            headers.append(f"{name.strip()}: {value.strip()}")
    if length != len(body) or method not in ("GET", "POST", "PUT", "DELETE", "PATCH"):
        return ""
    cmd = ["curl", "-sS", "-i", "-X", method, f"http://{host}:{port}{target}"]
    for h in headers:
        cmd += ["-H", h]
    if body:
        cmd.append("--data-binary")
        try:
            cmd.append(body.decode("utf-8"))
        except UnicodeDecodeError:
            return ""
        if any(ord(c) < 32 for c in cmd[-1]):
            return ""
    return " ".join(shlex.quote(c) for c in cmd)


def http_request(
    method: str,
    target: str,
    body: bytes = b"",
    headers: tuple[tuple[str, str], ...] = (),
    *,
    close: bool = True,
    content_type: str | None = "application/json",
) -> bytes:
    """One HTTP/1.1 request with a Content-Length body (bytes as sent)."""
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1"]
    if content_type is not None and body:
        lines.append(f"Content-Type: {content_type}")
    lines += [f"{k}: {v}" for k, v in headers]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# --------------------------------------------------------------------------- JSON


def deep_body(depth: int, kind: str) -> bytes:
    """``{"input": ...}`` nested ``depth`` lists (``kind="list"``) or objects deep."""
    o, c = ("[", "]") if kind == "list" else ('{"a":', "}")
    return ('{"input":' + o * depth + "1" + c * depth + "}").encode()


# bodies nested past what a C parser's stack survives (orjson 3.8.3 crashed on both when it
# parsed before the nesting check)
DEEP_BODIES = ((100_000, "dict"), (1_000_000, "list"))


class _Raw(str):
    """A JSON fragment written as is (``NaN``, ``1e999``, a 400-digit integer)."""


_ODD_NUMBERS = st.sampled_from(
    [_Raw("NaN"), _Raw("Infinity"), _Raw("-Infinity"), _Raw("1e999"), _Raw("-1e999"),
     _Raw("1" * 400), _Raw("-0"), _Raw("1e-400"), 2**63, 2**64, -(2**63) - 1, 2**70,
     1.7976931348623157e308, 5e-324]
)
_NUMBER = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.integers(min_value=-(2**64), max_value=2**64),
    _ODD_NUMBERS,
)
_SCALAR = st.one_of(st.none(), st.booleans(), _NUMBER, st.text(max_size=20))
_JSON = st.recursive(
    _SCALAR,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.dictionaries(st.text(max_size=8), inner, max_size=5),
    ),
    max_leaves=20,
)


def _dump(v: Any) -> str:
    """JSON text of ``v``; ``_Raw`` fragments are written as they are."""
    if isinstance(v, _Raw):
        return str(v)
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, float):
        return json.dumps(v) if math.isfinite(v) else ("NaN" if v != v else
                                                     ("Infinity" if v > 0 else "-Infinity"))
    if isinstance(v, int | str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ",".join(_dump(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{_dump(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v).__name__)


@st.composite
def _nested(draw: st.DrawFn) -> Any:
    """A value nested 2..5,000 levels deep (``[[[...[1.0]...]]]``, dicts, or both), as
    JSON text: Python's own recursion would stop a deep one here.  Deeper ones are
    ``DEEP_BODIES`` (a parser that crashes on them takes the server down with it)."""
    depth = draw(st.sampled_from([2, 32, 63, 64, 65, 100, 1000, 5000]))
    kind = draw(st.sampled_from(["list", "list", "dict", "mixed"]))
    pairs = [("[", "]") if kind == "list" or (kind == "mixed" and i % 2) else ('{"a":', "}")
             for i in range(depth)]
    leaf = draw(st.sampled_from(["1.0", "[]", "[1.0, 2.0]", '"x"', "null"]))
    return _Raw("".join(o for o, _ in pairs) + leaf + "".join(c for _, c in reversed(pairs)))


_VECTOR = st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=16)
_INPUT = st.one_of(
    _VECTOR,
    _VECTOR,
    _nested(),
    st.lists(_NUMBER, min_size=0, max_size=8),
    st.lists(st.lists(st.floats(-10, 10, allow_nan=False), min_size=1, max_size=3),
             min_size=1, max_size=3),
    _nested(),
    _JSON,
    st.text(max_size=30),
)


@st.composite
def _body_text(draw: st.DrawFn, obj: st.SearchStrategy[Any]) -> bytes:
    """The JSON of ``obj``, sometimes damaged: cut short, non-UTF-8, trailing garbage."""
    text = _dump(draw(obj)).encode()
    how = draw(st.sampled_from(["ok"] * 6 + ["cut", "bytes", "trail", "empty", "bom"]))
    if how == "cut" and len(text) > 1:
        return text[: draw(st.integers(1, len(text) - 1))]
    if how == "bytes":
        return draw(st.binary(max_size=64))
    if how == "trail":
        return text + draw(st.sampled_from([b"x", b"}", b" \x00", b"\xff", b"{}"]))
    if how == "empty":
        return b""
    if how == "bom":
        return b"\xef\xbb\xbf" + text
    return text


# --------------------------------------------------------------------------- Clipper API

_APP_NAME = st.one_of(
    st.just(APP), st.just(APP), st.just(APP), st.just(STR_APP),
    st.sampled_from(["nope", "f%7A", "%66z", "fz%00", "fz%2Fx", "..", "%", "é", "Ω" * 3,
                     "a" * 300, "fz.", "FZ", "fz;x", "fz%20"]),
    st.text(st.characters(codec="utf-8", exclude_characters="/?# \r\n"), min_size=1,
            max_size=12),
)


def _path_name(name: str) -> str:
    """A name as it goes into a request target (non-ASCII percent-encoded as UTF-8, other
    characters kept: the fuzzer wants odd targets, not only clean ones)."""
    return "".join(c if ord(c) < 128 else "".join(f"%{b:02X}" for b in c.encode())
                   for c in name)


@st.composite
def _predict_body(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["input", "input", "batch", "both", "neither", "odd"]))
    body: dict[str, Any] = {}
    if kind in ("input", "both"):
        body["input"] = draw(_INPUT)
    if kind in ("batch", "both"):
        size = draw(st.sampled_from([0, 1, 2, 5, 17, 64, 300]))
        body["input_batch"] = draw(st.one_of(
            st.lists(_VECTOR, min_size=size, max_size=size),
            st.lists(_INPUT, min_size=min(size, 4), max_size=min(size, 4)),
            _JSON,
        ))
    if kind == "odd":
        return draw(st.one_of(_JSON, st.lists(_VECTOR, max_size=3)))
    if draw(st.booleans()):
        body["uid"] = draw(st.one_of(st.integers(), st.text(max_size=20), _JSON,
                                     st.just(_Raw("1" * 60)), _nested()))
    if draw(st.integers(0, 9)) == 0:
        body[draw(st.text(max_size=6))] = draw(_JSON)
    return body


@st.composite
def _update_body(draw: st.DrawFn) -> Any:
    body: dict[str, Any] = {}
    if draw(st.integers(0, 5)):
        body["label"] = draw(st.one_of(st.integers(-3, 3), _NUMBER, _JSON, _nested()))
    which = draw(st.sampled_from(["input", "query_id", "both", "neither"]))
    if which in ("input", "both"):
        body["input"] = draw(_INPUT)
    if which in ("query_id", "both"):
        body["query_id"] = draw(st.one_of(st.integers(-5, 10**6), _NUMBER, _JSON))
    if draw(st.booleans()):
        body["uid"] = draw(st.one_of(st.integers(), st.text(max_size=10), _JSON))
    return body


@st.composite
def clipper_cases(draw: st.DrawFn) -> HttpCase:
    """``POST /{app}/predict`` and ``/update`` (and their wrong methods)."""
    name = _path_name(draw(_APP_NAME))
    op = draw(st.sampled_from(["predict"] * 4 + ["update"]))
    method = draw(st.sampled_from(["POST"] * 12 + ["GET", "PUT", "DELETE"]))
    body = draw(_body_text(_predict_body() if op == "predict" else _update_body()))
    ctype = draw(st.sampled_from(["application/json"] * 4 + ["text/plain", None]))
    query = draw(st.sampled_from(["", "", "", "?x=1", "?%ZZ", "#frag"]))
    raw = http_request(method, f"/{name}/{op}{query}", body, content_type=ctype)
    return HttpCase(f"clipper.{op}", "query", raw)


# --------------------------------------------------------------------------- OIP v2

_DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
              "INT64", "FP16", "FP32", "FP64", "BYTES"]
_NP = {"BOOL": "?", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
       "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2",
       "FP32": "<f4", "FP64": "<f8"}
_DATATYPE = st.one_of(
    st.sampled_from(_DATATYPES), st.sampled_from(_DATATYPES), st.sampled_from(_DATATYPES),
    st.sampled_from(["FLOAT", "fp32", "", "FP8", "BF16"]),
    st.sampled_from([["FP32"], 5, None, {"a": 1}, True]),
)
_SHAPE = st.one_of(
    st.lists(st.integers(0, 4), min_size=1, max_size=3),
    st.lists(st.integers(0, 4), min_size=1, max_size=3),
    st.lists(st.integers(-3, 4), min_size=0, max_size=4),
    st.lists(st.sampled_from([True, False, 1.5, "2", None, 2**62, 2**63, 2**64, -(2**63)]),
             min_size=1, max_size=3),
    st.sampled_from([[1] * 65, [1] * 64, [2**62, 2**62], [2**31, 2**31], [0, 2**40]]),
    st.sampled_from([None, "1,2", 3, {"0": 1}]),
)


def _count(shape: Any) -> int | None:
    if not isinstance(shape, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= 64 for s in shape
    ):
        return None
    n = 1
    for s in shape:
        n *= s
    return n if n <= 4096 else None


@st.composite
def _tensor(draw: st.DrawFn) -> tuple[dict[str, Any], bytes]:
    """One input tensor (JSON part) and its binary data (empty when JSON ``data``)."""
    dt = draw(_DATATYPE)
    shape = draw(_SHAPE)
    t: dict[str, Any] = {"name": draw(st.sampled_from(["input", "input", "x", ""])),
                         "shape": shape, "datatype": dt}
    n = _count(shape)
    fits = n is not None and draw(st.integers(0, 3)) > 0
    count = n if fits and n is not None else draw(st.integers(0, 6))
    if draw(st.integers(0, 3)) == 0 and isinstance(dt, str) and dt in _NP:
        # binary tensor data
        itemsize = int(_NP[dt][-1]) if dt != "BOOL" else 1
        raw = draw(st.binary(min_size=count * itemsize, max_size=count * itemsize))
        size = draw(st.one_of(st.just(len(raw)), st.just(len(raw)), st.integers(-2, 10**9),
                              st.sampled_from(["8", None, 1.5, True])))
        t["parameters"] = {"binary_data_size": size}
        return t, raw
    if draw(st.integers(0, 5)) == 0:
        t["parameters"] = draw(st.one_of(_JSON, st.just([]), st.just("x"),
                                         st.just({"binary_data_size": 4})))
    if dt == "BYTES":
        elem: st.SearchStrategy[Any] = st.one_of(st.text(max_size=8), st.integers(), _JSON)
    elif dt == "BOOL":
        elem = st.one_of(st.booleans(), st.booleans(), st.integers(-1, 2))
    elif isinstance(dt, str) and dt.startswith(("UINT", "INT")):
        elem = st.one_of(st.integers(-5, 300), st.integers(-(2**70), 2**70), _ODD_NUMBERS)
    else:
        elem = st.one_of(st.floats(width=32, allow_nan=False, allow_infinity=False),
                         _NUMBER, st.text(max_size=3))
    data = draw(st.lists(elem, min_size=count, max_size=count))
    shape_ok = isinstance(shape, list) and len(shape) >= 2 and n is not None and fits
    if shape_ok and draw(st.booleans()) and shape[0] > 0:
        rows = shape[0]
        per = len(data) // rows if rows else 0
        data = [data[i * per:(i + 1) * per] for i in range(rows)]  # nested data
    if draw(st.integers(0, 9)) == 0:
        t["data"] = draw(st.one_of(_JSON, _nested()))
    elif draw(st.integers(0, 19)):
        t["data"] = data
    return t, b""


@st.composite
def oip_cases(draw: st.DrawFn) -> HttpCase:
    """``/v2`` routes: infer (JSON and binary), metadata, ready, health."""
    name = _path_name(draw(st.one_of(st.just(APP), st.just(APP), st.just(STR_APP),
                                     _APP_NAME)))
    version = draw(st.sampled_from(["", "", "", "/versions/1", "/versions/2", "/versions/"]))
    what = draw(st.sampled_from(["infer"] * 8 + ["meta", "ready", "health", "server"]))
    if what != "infer":
        target = {"meta": f"/v2/models/{name}{version}",
                  "ready": f"/v2/models/{name}{version}/ready",
                  "health": draw(st.sampled_from(["/v2/health/live", "/v2/health/ready"])),
                  "server": "/v2"}[what]
        method = draw(st.sampled_from(["GET", "GET", "POST", "DELETE"]))
        return HttpCase(f"oip.{what}", "query", http_request(method, target))
    target = f"/v2/models/{name}{version}/infer"
    tensors = draw(st.lists(_tensor(), min_size=1, max_size=2)) if draw(
        st.integers(0, 9)) else []
    doc: dict[str, Any] = {"inputs": [t for t, _ in tensors][: draw(st.integers(0, 2))]
                           or [t for t, _ in tensors]}
    blob = b"".join(b for _, b in tensors)
    if draw(st.integers(0, 9)) == 0:
        doc["inputs"] = draw(st.one_of(_JSON, st.just({"name": "input"})))
    if draw(st.integers(0, 4)) == 0:
        doc["outputs"] = draw(st.one_of(
            st.just([{"name": "output"}]),
            st.just([{"name": "output", "parameters": {"binary_data": True}},
                     {"name": "default"}]),
            st.just([{"name": "nope"}]), st.just({"name": "output"}), st.just(["output"]),
            st.just([{"name": "output", "parameters": "x"}]), _JSON,
        ))
    if draw(st.integers(0, 5)) == 0:
        doc["parameters"] = draw(st.one_of(st.just({"binary_data_output": True}), _JSON))
    if draw(st.booleans()):
        doc["id"] = draw(st.one_of(st.text(max_size=8), _JSON))
    head = _dump(doc).encode()
    headers: tuple[tuple[str, str], ...] = ()
    ctype = "application/json"
    if blob or draw(st.integers(0, 9)) == 0:
        hlen = draw(st.one_of(st.just(str(len(head))), st.just(str(len(head))),
                              st.sampled_from(["0", "-1", "x", str(10**30), "1e3", ""]),
                              st.integers(0, len(head) + len(blob) + 2).map(str)))
        headers = (("Inference-Header-Content-Length", hlen),)
        ctype = "application/octet-stream"
    body = head + blob
    if draw(st.integers(0, 14)) == 0:
        body = draw(_body_text(_JSON))
    return HttpCase("oip.infer", "query", http_request("POST", target, body, headers,
                                                        content_type=ctype))


# --------------------------------------------------------------------------- admin API

_ADMIN_OPS = ["ping", "add_app", "add_model", "add_model_links", "remove_model_links",
              "set_model_version", "get_all_apps", "get_app", "get_all_models", "get_model",
              "rollback", "set_replicas", "set_policy", "update_app", "inspect", "metrics",
              "upload_model", "nope", ""]
_FUZZ_NAME = st.one_of(
    st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1,
            max_size=10).map(lambda s: "x" + s),
    st.sampled_from(["", "é", "a b", "a\x00b", "a" * 300, "../x", "%41"]),
).filter(lambda s: s not in _PROTECTED)
_ADMIN_VALUE = st.one_of(_JSON, _FUZZ_NAME, st.lists(_FUZZ_NAME, max_size=3))
# never a positive count (each replica is a process); None or True could mean one
_NOT_POSITIVE = st.one_of(st.integers(-(2**70), 0), st.sampled_from(["x", -1.5, [], {}]))


@st.composite
def _admin_body(draw: st.DrawFn, op: str) -> Any:
    body: dict[str, Any] = {}
    keys = {"add_app": ["name", "slo_ms", "default_output", "input_type", "policy",
                        "input_shape", "models", "latency_slo_micros",
                        "candidate_model_names", "confidence_threshold"],
            "add_model": ["model_name", "model_version", "kind", "path", "input_type",
                          "batching", "options", "labels", "container_name"],
            "update_app": ["name", "slo_ms", "default_output", "policy", "policy_params"],
            "set_policy": ["app_name", "policy", "policy_params"]}.get(
        op, ["name", "app_name", "model_name", "model_names", "model_version", "verbose"])
    for k in draw(st.lists(st.sampled_from(keys), max_size=len(keys), unique=True)):
        if k in ("name", "app_name", "model_name"):
            body[k] = draw(_FUZZ_NAME)
        elif k == "kind" or k == "container_name":
            body[k] = draw(st.sampled_from(["noop", "python", "sklearn", "torch", "x", 3]))
        elif k == "path":
            body[k] = draw(st.sampled_from(["", "/etc/passwd", "../../x.pkl", "os:system"]))
        elif k == "input_type":
            body[k] = draw(st.sampled_from(["doubles", "strings", "bytes", "x", 1, None]))
        elif k in ("model_names", "models", "candidate_model_names"):
            body[k] = draw(st.one_of(st.lists(_FUZZ_NAME, max_size=3), _JSON))
        elif k == "policy":
            body[k] = draw(st.sampled_from(["static", "exp3", "exp4", "os:system",
                                            "/tmp/x.py:C", "", 3]))
        else:
            body[k] = draw(_ADMIN_VALUE)
    if op in ("add_model", "set_replicas"):
        body["replicas"] = draw(_NOT_POSITIVE)  # never a process started
    return body


@st.composite
def admin_cases(draw: st.DrawFn) -> HttpCase:
    """``/admin/{op}`` with bodies of every shape; names never the fixture's own."""
    op = draw(st.sampled_from(_ADMIN_OPS))
    method = draw(st.sampled_from(["POST"] * 8 + ["GET", "PUT", "OPTIONS"]))
    headers: list[tuple[str, str]] = []
    if draw(st.integers(0, 5)) == 0:
        headers.append(draw(st.sampled_from([
            ("Origin", "http://evil.example"), ("Authorization", "Bearer x"),
            ("Authorization", "Bearer \u00e9"), ("X-Clipperlab-Token", "t"),
            ("Sec-Fetch-Site", "cross-site"), ("Host", "evil.example")])))
    if op == "upload_model":
        q = draw(st.sampled_from(["?name=xu&version=1&ext=pkl", "?name=../x", "?ext=a/b",
                                  "", "?name=" + "a" * 200, "?name=%00"]))
        body = draw(st.binary(max_size=64))
        ctype = draw(st.sampled_from(["application/octet-stream", "text/plain", None]))
        raw = http_request(method, f"/admin/upload_model{q}", body, tuple(headers),
                           content_type=ctype)
        return HttpCase("admin.upload_model", "admin", raw)
    body = draw(_body_text(_admin_body(op))) if draw(st.integers(0, 7)) else draw(
        _body_text(_JSON))
    ctype = draw(st.sampled_from(["application/json"] * 6 + ["text/plain", None]))
    raw = http_request(method, f"/admin/{op}", body, tuple(headers), content_type=ctype)
    return HttpCase(f"admin.{op or 'empty'}", "admin", raw)


# --------------------------------------------------------------------------- raw HTTP


def _good_predict(i: int, close: bool) -> bytes:
    body = json.dumps({"input": [float(i), 0.5]}).encode()
    return http_request("POST", f"/{APP}/predict", body, close=close)


@st.composite
def raw_http_cases(draw: st.DrawFn) -> HttpCase:
    """HTTP the parser has to think about; the last request closes the connection."""
    kind = draw(st.sampled_from(["pipelined", "no_length", "chunked", "upgrade", "connect",
                                 "head", "big_header", "long_url", "http10", "garbage",
                                 "bare_lf", "cut_body", "many_headers", "expect"]))
    i = draw(st.integers(0, 10**6))
    route = f"raw.{kind}"
    if kind == "pipelined":
        k = draw(st.integers(2, 6))
        raw = b"".join(_good_predict(i + j, close=j == k - 1) for j in range(k))
        return HttpCase(route, "query", raw, k, k)
    if kind == "no_length":  # a body nobody announced: it parses as the next request
        body = _dump({"input": [1.0]}).encode()
        raw = (b"POST /%s/predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
               % APP.encode()) + body
        return HttpCase(route, "query", raw, 1, 2)
    if kind == "chunked":
        body = _dump({"input": [float(i)]}).encode()
        n = draw(st.integers(1, max(1, len(body))))
        chunks = [body[j:j + n] for j in range(0, len(body), n)]
        enc = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
        broken = draw(st.integers(0, 3)) == 0
        if broken:  # a bad chunk size, or one announcing more than is sent: the client
            # stops sending (the server may answer 4xx or wait for the rest, then close)
            enc = draw(st.sampled_from([b"zz\r\n", b"5\r\nab\r\n0\r\n\r\n",
                                        b"ffffffffffffffff\r\n"]))
        raw = (b"POST /%s/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
               b"Content-Type: application/json\r\nConnection: close\r\n\r\n" % APP.encode()
               ) + enc
        return HttpCase(route, "query", raw, 0 if broken else 1, 1, half_close=broken)
    if kind == "upgrade":
        proto = draw(st.sampled_from([b"websocket", b"h2c", b"foo"]))
        raw = (b"GET /%s/predict HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: %s\r\n"
               b"\r\n" % (APP.encode(), proto))
        if draw(st.booleans()):
            raw += _good_predict(i, close=True)
        return HttpCase(route, "query", raw, 1, 1)
    if kind == "connect":
        raw = b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n"
        if draw(st.booleans()):
            raw += b"SSH-2.0-x\r\n"
        return HttpCase(route, "query", raw, 1, 1)
    if kind == "head":
        target = draw(st.sampled_from([f"/{APP}/predict", "/v2", "/v2/health/live",
                                       f"/v2/models/{APP}", "/metrics", "/", "/nope"]))
        raw = http_request("HEAD", target)
        return HttpCase(route, "query", raw, 1, 1, head=True)
    if kind == "big_header":
        n = draw(st.sampled_from([1 << 10, 8 << 10, 64 << 10]))
        raw = _good_predict(i, close=True).replace(
            b"\r\n\r\n", b"\r\nX-Big: " + b"a" * n + b"\r\n\r\n", 1)
        return HttpCase(route, "query", raw, 1, 1)
    if kind == "many_headers":
        n = draw(st.sampled_from([50, 500, 2000]))
        extra = b"".join(b"X-H%d: v\r\n" % j for j in range(n))
        raw = _good_predict(i, close=True).replace(b"\r\n\r\n", b"\r\n" + extra + b"\r\n", 1)
        return HttpCase(route, "query", raw, 1, 1)
    if kind == "long_url":
        n = draw(st.sampled_from([1 << 10, 16 << 10, 64 << 10]))
        raw = http_request("POST", f"/{APP}/predict?" + "q" * n,
                           _dump({"input": [1.0]}).encode())
        return HttpCase(route, "query", raw, 1, 1)
    if kind == "http10":
        body = _dump({"input": [float(i)]}).encode()
        raw = b"POST /%s/predict HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (
            APP.encode(), len(body), body)
        return HttpCase(route, "query", raw, 1, 1)
    if kind == "garbage":
        raw = draw(st.one_of(
            st.binary(min_size=1, max_size=200).map(lambda b: b + b"\r\n\r\n"),
            st.sampled_from([b"GET\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"\x16\x03\x01\x00\xa5",
                             b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"get / http/1.1\r\n\r\n",
                             b"POST /fz/predict HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                             b"POST /fz/predict HTTP/1.1\r\nContent-Length: 1\r\n"
                             b"Content-Length: 2\r\n\r\nab",
                             b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
                             b"GET /\x00 HTTP/1.1\r\n\r\n"]),
        ))
        # garbage may happen to be a request the server answers and keeps open
        return HttpCase(route, "query", raw, 0, 1, half_close=True)
    if kind == "bare_lf":
        body = _dump({"input": [1.0]}).encode()
        raw = b"POST /%s/predict HTTP/1.1\nHost: x\nContent-Length: %d\nConnection: close\n\n%s" % (
            APP.encode(), len(body), body)
        return HttpCase(route, "query", raw, 1, 1)
    if kind == "cut_body":  # announced 1000 bytes, sent 10, then the client stops sending
        raw = (b"POST /%s/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
               b"Connection: close\r\n\r\n{\"input\":" % APP.encode())
        return HttpCase(route, "query", raw, 0, 1, half_close=True)
    # expect: 100-continue (an interim answer, then the real one)
    raw = _good_predict(i, close=True).replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n",
                                               1)
    return HttpCase(route, "query", raw, 1, 1)


# --------------------------------------------------------------------------- RPC frames


def _frame(kind: int, payload: bytes, length: int | None = None) -> bytes:
    n = len(payload) + 1 if length is None else length
    return struct.pack("<IB", n & 0xFFFFFFFF, kind & 0xFF) + payload


_HELLO_FIELD = st.one_of(_JSON, st.sampled_from([MODEL, "1", 1, -1, 2**70, "", None,
                                                 "doubles", "nope"]))


@st.composite
def _hello_payload(draw: st.DrawFn) -> bytes:
    h: dict[str, Any] = {"protocol": p.PROTOCOL_VERSION, "model": "nope", "version": "1"}
    for k in draw(st.lists(st.sampled_from(["protocol", "model", "version", "input_type",
                                            "ordinal", "secret", "extra"]),
                           min_size=1, max_size=4, unique=True)):
        h[k] = draw(_HELLO_FIELD)
    if h.get("model") == MODEL and h.get("version") == "1":
        h["model"] = "nope"  # the health check's replicas are not the fuzzer's to take
    if draw(st.integers(0, 5)) == 0:
        return draw(_body_text(_JSON))
    return _dump(h).encode()


@st.composite
def rpc_cases(draw: st.DrawFn) -> RpcCase:
    """Frames to the RPC port: garbage, truncated, wrong lengths, unknown types, frames
    before HELLO, HELLOs with wrong fields."""
    kind = draw(st.sampled_from(["garbage", "truncated", "length", "type", "early",
                                 "hello", "hello_then_garbage", "http"]))
    if kind == "garbage":
        raw = draw(st.binary(min_size=1, max_size=300))
    elif kind == "truncated":
        whole = _frame(p.HELLO, draw(_hello_payload()))
        raw = whole[: draw(st.integers(1, len(whole) - 1))]
    elif kind == "length":
        raw = _frame(draw(st.sampled_from([p.HELLO, p.RESULT, p.HEARTBEAT])),
                     draw(st.binary(max_size=40)),
                     draw(st.sampled_from([0, 1, 2**31, 2**32 - 1, (256 << 20) + 1, 65 << 10])))
    elif kind == "type":
        raw = _frame(draw(st.integers(0, 255).filter(lambda t: t not in range(1, 8))),
                     draw(st.binary(max_size=20)))
    elif kind == "early":  # frames a container may send only after WELCOME
        t = draw(st.sampled_from([p.RESULT, p.ERROR, p.BATCH, p.WELCOME, p.REFUSE]))
        raw = _frame(t, struct.pack("<Q", draw(st.integers(0, 2**64 - 1)))
                     + draw(st.binary(max_size=20)))
    elif kind == "hello":
        raw = _frame(p.HELLO, draw(_hello_payload()))
    elif kind == "hello_then_garbage":
        raw = _frame(p.HELLO, draw(_hello_payload())) + draw(st.binary(min_size=5,
                                                                       max_size=50))
    else:  # someone speaks HTTP to the RPC port
        raw = http_request("GET", "/", b"")
    return RpcCase(f"rpc.{kind}", raw)


# --------------------------------------------------------------------------- odd outputs

ODD_KINDS = ("ok", "big_int", "complex", "nan", "inf", "strings", "short", "long",
             "mixed", "bytes", "nested", "datetime", "dicts", "error", "bad_values",
             "unknown_batch", "empty")


@st.composite
def odd_output_cases(draw: st.DrawFn) -> OddOutputCase:
    """A query to ``ODD_APP`` (one input or a batch) and how its replica answers."""
    mode = draw(st.sampled_from(ODD_KINDS))
    api = draw(st.sampled_from(["clipper", "clipper", "batch", "oip"]))
    i = draw(st.integers(0, 2**40))
    if api == "clipper":
        raw = http_request("POST", f"/{ODD_APP}/predict",
                           json.dumps({"input": [float(i), 1.0]}).encode())
    elif api == "batch":
        n = draw(st.integers(1, 5))
        raw = http_request("POST", f"/{ODD_APP}/predict", json.dumps(
            {"input_batch": [[float(i), float(j)] for j in range(n)]}).encode())
    else:
        raw = http_request("POST", f"/v2/models/{ODD_APP}/infer", json.dumps(
            {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP64",
                         "data": [float(i), 1.0]}]}).encode())
    return OddOutputCase(mode, HttpCase(f"odd.{mode}", "query", raw, odd=mode))


def all_cases() -> st.SearchStrategy[HttpCase | RpcCase | OddOutputCase]:
    """Every kind of case, weighted roughly by how much surface each covers."""
    return st.one_of(
        clipper_cases(), clipper_cases(), clipper_cases(),
        oip_cases(), oip_cases(), oip_cases(),
        admin_cases(), raw_http_cases(), raw_http_cases(),
        rpc_cases(), odd_output_cases(),
    )
