"""The Open Inference Protocol (KServe v2) over REST, so ``tritonclient.http`` works.

Rules:
- An OIP *model* is a clipperlab *application* (what clients query by name); its one
  version is ``"1"``.  ``/v2/models/{m}/ready`` is 200 when at least one replica of a
  linked model is up, else 503.
- ``infer`` takes exactly one input tensor.  ``shape[0]`` is the batch dimension when the
  tensor has two or more dimensions, each row one query; a numeric tensor of one dimension
  is one query (a vector); each element of a BYTES tensor is one query (a str or bytes).
  JSON ``data`` may be flat or nested; binary tensor data
  (``Inference-Header-Content-Length``, ``binary_data_size``) is accepted.
- The response has the output ``output`` (datatype from the values) and ``default`` (BOOL,
  one per row); ``outputs`` in the request may ask for a subset and for binary data.
- Errors: ``{"error": msg}`` with 400, 404 (unknown model/version), 503 (overload).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from clipperlab.engine import Application, Reply, input_digest

from .http import Request, error_response, json_response, response
from .inputs import BadInput, check_array

if TYPE_CHECKING:
    from .frontend import QueryFrontend

__all__ = ["OipHandler"]

NP_OF: dict[str, str] = {
    "BOOL": "?",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}
_DT_OF_INPUT = {
    "doubles": "FP64",
    "floats": "FP32",
    "integers": "INT64",
    "strings": "BYTES",
    "bytes": "BYTES",
}


def _datatype(values: list[Any]) -> str:
    flat = values
    while flat and isinstance(flat[0], list):
        flat = [v for row in flat for v in row]
    if all(isinstance(v, bool) for v in flat):
        return "BOOL"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in flat):
        return "INT64"
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in flat):
        return "FP64"
    return "BYTES"


class OipHandler:
    def __init__(self, fe: QueryFrontend) -> None:
        self.fe = fe
        self.engine = fe.engine

    def handle(self, req: Request) -> bytes | None:
        fe = self.fe
        parts = req.path.strip("/").split("/")
        get = req.method in ("GET", "HEAD")
        if parts == ["v2"] and get:
            return json_response(
                200,
                {"name": "clipperlab", "version": "0.1.0", "extensions": ["binary_tensor_data"]},
            )
        if parts == ["v2", "health", "live"] and get:
            return json_response(200, {"live": True})
        if parts == ["v2", "health", "ready"] and get:
            return json_response(200 if fe.accepting else 503, {"ready": fe.accepting})
        if len(parts) < 3 or parts[1] != "models":
            return fe.bad(req, 404, f"no route {req.method} {req.path}")
        name = parts[2]
        rest = parts[3:]
        if len(rest) >= 2 and rest[0] == "versions":
            if rest[1] != "1":
                return fe.bad(req, 404, f"model {name!r} has no version {rest[1]!r}; it has ['1']")
            rest = rest[2:]
        app = self.engine.registry.apps.get(name)
        if app is None:
            return fe.bad(req, 404, f"model {name!r} does not exist")
        if rest == [] and get:
            return json_response(200, self.metadata(app))
        if rest == ["ready"] and get:
            ready = self.ready(app)
            return json_response(200 if ready else 503, {"name": name, "ready": ready})
        if rest == ["infer"]:
            if req.method != "POST":
                return fe.bad(req, 405, f"{req.path} takes POST, not {req.method}")
            if not fe.accepting:
                return fe.bad(req, 503, "the server is shutting down")
            try:
                return self.infer(req, app)
            except BadInput as e:
                return fe.bad(req, 400, str(e))
        return fe.bad(req, 404, f"no route {req.method} {req.path}")

    def ready(self, app: Application) -> bool:
        linked = self.engine.registry.links.get(app.name, [])
        up = {r.model for r in self.fe.driver.links}
        return any(m in up for m in linked)

    def metadata(self, app: Application) -> dict[str, Any]:
        shape = [-1, *(app.input_shape or [-1])]
        d = app.default_output
        out_dt = "BYTES" if isinstance(d, str) else ("FP64" if isinstance(d, float) else "INT64")
        return {
            "name": app.name,
            "versions": ["1"],
            "platform": "clipperlab",
            "inputs": [{"name": "input", "datatype": _DT_OF_INPUT[app.input_type], "shape": shape}],
            "outputs": [
                {"name": "output", "datatype": out_dt, "shape": [-1]},
                {"name": "default", "datatype": "BOOL", "shape": [-1]},
            ],
        }

    # -- infer
    def infer(self, req: Request, app: Application) -> bytes | None:
        body = req.body
        hlen = req.headers.get(b"inference-header-content-length")
        if hlen is not None:
            try:
                n = int(hlen)
            except ValueError:
                raise BadInput(
                    f"Inference-Header-Content-Length {hlen!r} is not a number"
                ) from None
            if not 0 < n <= len(body):
                raise BadInput(f"Inference-Header-Content-Length {n} exceeds the body")
            head, binary = body[:n], memoryview(body)[n:]
        else:
            head, binary = body, memoryview(b"")
        try:
            doc = json.loads(head)
        except (ValueError, UnicodeDecodeError) as e:
            raise BadInput(f"request body is not valid JSON: {e}") from None
        if not isinstance(doc, dict):
            raise BadInput("inference request must be a JSON object")
        inputs = doc.get("inputs")
        if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
            raise BadInput(f"inference request needs exactly one input tensor for {app.name!r}")
        rows = self.rows(app, inputs[0], binary)
        wanted = self.wanted_outputs(doc)
        rid = doc.get("id")
        results: list[Reply | None] = [None] * len(rows)
        left = [len(rows)]

        def finish() -> bytes:
            refused = [r for r in results if r is not None and r.refused]
            if refused:
                return error_response(503, refused[0].prediction.explanation or "overloaded")
            return self.encode(app, rid, [r for r in results if r is not None], wanted)

        def make(i: int) -> Callable[[Reply], None]:
            def done(r: Reply) -> None:
                results[i] = r
                left[0] -= 1
                if left[0] == 0:
                    req.respond(finish())

            return done

        for i, x in enumerate(rows):
            key = input_digest(x) if self.fe.cache else None
            self.fe.driver.query(app.name, x, make(i), input_key=key)
        return None

    def rows(self, app: Application, t: dict[str, Any], binary: memoryview) -> list[Any]:
        name = t.get("name", "input")
        shape = t.get("shape")
        dt = t.get("datatype")
        if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise BadInput(f"input {name!r}: shape must be a list of non-negative integers")
        if dt not in NP_OF and dt != "BYTES":
            raise BadInput(f"input {name!r}: datatype {dt!r} is unknown")
        count = int(np.prod(shape)) if shape else 1
        params = t.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is not None:
            if not isinstance(size, int) or size > len(binary):
                raise BadInput(f"input {name!r}: binary_data_size {size!r} exceeds the body")
            raw = binary[:size]
        elif "data" not in t:
            raise BadInput(f"input {name!r} has no data")
        if dt == "BYTES":
            if app.input_type not in ("strings", "bytes"):
                raise BadInput(
                    f"input {name!r} is BYTES; application {app.name!r} takes {app.input_type}"
                )
            if size is not None:
                items = _split_bytes(raw)
            else:
                data = t["data"]
                items = list(np.asarray(data, dtype=object).reshape(-1)) if data else []
            if len(items) != count:
                raise BadInput(f"input {name!r}: {len(items)} elements for shape {shape}")
            if not items:
                raise BadInput(f"input {name!r} is an empty batch")
            out: list[Any] = []
            v: Any
            for v in items:
                if app.input_type == "strings":
                    if isinstance(v, bytes):
                        v = v.decode(errors="replace")
                    if not isinstance(v, str):
                        raise BadInput(f"input {name!r} must hold strings")
                else:
                    v = v.encode() if isinstance(v, str) else v
                    if not isinstance(v, bytes):
                        raise BadInput(f"input {name!r} must hold bytes")
                out.append(v)
            return out
        if app.input_type in ("strings", "bytes"):
            raise BadInput(
                f"input {name!r} is {dt}; application {app.name!r} takes"
                f" {app.input_type} (send BYTES)"
            )
        npdt = np.dtype(NP_OF[dt])
        try:
            if size is not None:
                a = np.frombuffer(raw, dtype=npdt)
            else:
                a = np.asarray(t["data"], dtype=npdt).reshape(-1)
        except (ValueError, TypeError) as e:
            raise BadInput(f"input {name!r}: data does not fit datatype {dt}: {e}") from None
        if a.size != count:
            raise BadInput(f"input {name!r}: {a.size} elements for shape {shape}")
        a = np.reshape(a, tuple(shape))
        if count == 0:
            raise BadInput(f"input {name!r} is an empty batch")
        if a.ndim >= 2:
            n_rows = len(a)
            return [check_array(app, a[i], f"input {name!r}[{i}]") for i in range(n_rows)]
        return [check_array(app, a, f"input {name!r}")]

    def wanted_outputs(self, doc: dict[str, Any]) -> list[tuple[str, bool]]:
        outs = doc.get("outputs")
        if outs is None:
            binary = bool((doc.get("parameters") or {}).get("binary_data_output", False))
            return [("output", binary), ("default", binary)]
        if not isinstance(outs, list):
            raise BadInput("outputs must be a list")
        wanted = []
        for o in outs:
            if not isinstance(o, dict) or o.get("name") not in ("output", "default"):
                raise BadInput(f"requested output {o!r} is unknown; outputs are output, default")
            wanted.append((o["name"], bool((o.get("parameters") or {}).get("binary_data"))))
        return wanted

    def encode(
        self, app: Application, rid: Any, replies: list[Reply], wanted: list[tuple[str, bool]]
    ) -> bytes:
        values = {
            "output": [r.prediction.output for r in replies],
            "default": [r.prediction.default for r in replies],
        }
        outputs = []
        blobs = []
        for name, binary in wanted:
            vals = values[name]
            dt = _datatype(vals)
            arr = np.asarray(vals, dtype=object if dt == "BYTES" else NP_OF[dt])
            o: dict[str, Any] = {"name": name, "datatype": dt, "shape": list(arr.shape)}
            if binary:
                blob = (
                    _join_bytes(arr.reshape(-1))
                    if dt == "BYTES"
                    else np.ascontiguousarray(arr).tobytes()
                )
                o["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                o["data"] = (
                    [
                        v if not isinstance(v, bytes) else v.decode("latin-1")
                        for v in arr.reshape(-1).tolist()
                    ]
                    if dt == "BYTES"
                    else arr.reshape(-1).tolist()
                )
                if dt == "BYTES":
                    o["data"] = [v if isinstance(v, str) else json.dumps(v) for v in o["data"]]
            outputs.append(o)
        doc: dict[str, Any] = {"model_name": app.name, "model_version": "1", "outputs": outputs}
        if rid is not None:
            doc["id"] = rid
        head = json.dumps(doc, separators=(",", ":")).encode()
        if not blobs:
            return response(200, head)
        return response(
            200,
            head + b"".join(blobs),
            b"application/octet-stream",
            b"Inference-Header-Content-Length: %d\r\n" % len(head),
        )


def _split_bytes(raw: memoryview) -> list[bytes]:
    out, pos = [], 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise BadInput("BYTES tensor data is truncated")
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise BadInput("BYTES tensor data is truncated")
        out.append(bytes(raw[pos : pos + n]))
        pos += n
    return out


def _join_bytes(items: Any) -> bytes:
    parts = []
    for v in items:
        b = v if isinstance(v, bytes) else (v if isinstance(v, str) else json.dumps(v)).encode()
        parts.append(struct.pack("<I", len(b)) + b)
    return b"".join(parts)
