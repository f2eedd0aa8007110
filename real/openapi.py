"""OpenAPI 3 documents of the REST APIs, served at ``GET /openapi.json`` on each port.

``query_document()``: the query port (Clipper's REST query API, the Open Inference
Protocol v2 over REST, ``/metrics``); ``admin_document()``: the admin port (Clipper's
management paths and ours under ``/admin/``, ``/metrics``).  Both are data: plain dicts
built from the few helpers below, so that ``tests/real/test_openapi.py`` can check them
against the routes (every admin operation documented, every documented path routed) and
schemathesis can fuzz a live server with them.

Rules: every status a route answers is documented with its media type (errors are
``{"error": msg}``, Clipper's query routes add ``cause``); 501 (a Triton call with nothing
to act on) and 503 (readiness, overload) are the only 5xx documented.
"""

from __future__ import annotations

from functools import cache
from typing import Any

__all__ = ["ADMIN_READS", "admin_document", "query_document"]

_JSON = "application/json"
_ERROR = {"type": "object", "required": ["error"],
          "properties": {"error": {"type": "string"}, "cause": {"type": "string"}}}
_ANY: dict[str, Any] = {}
_UID = {"anyOf": [{"type": "integer"}, {"type": "string"}]}
_NAME = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[A-Za-z0-9_.-]+$"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {_JSON: {"schema": schema}}}


def _op(summary: str, ok: dict[str, Any] | None = None, *, errors: tuple[int, ...] = (),
        body: dict[str, Any] | None = None, params: list[dict[str, Any]] | None = None,
        ok_status: str = "200", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """One operation: its 200 answer (``ok``: a response object), its error statuses."""
    responses: dict[str, Any] = {ok_status: ok or {"description": "OK", **_json(_ANY)}}
    for status in errors:
        responses[str(status)] = {"description": _REASONS[status], **_json(_ERROR)}
    op: dict[str, Any] = {"summary": summary, "responses": {**responses, **(extra or {})}}
    if body is not None:
        op["requestBody"] = {"required": True, **_json(body)}
    if params:
        op["parameters"] = params
    return op


_REASONS = {400: "Bad field or body", 401: "Token missing or wrong", 403: "Forbidden",
            404: "No such application, model, version or route", 405: "Wrong method",
            409: "Conflict", 413: "Too large", 415: "Wrong content type",
            501: "Not supported", 503: "Not ready, overloaded or shutting down"}


def _path(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": _NAME}


def _obj(props: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    d: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        d["required"] = list(required)
    return d


_TEXT_OK = {"description": "Prometheus text format",
            "content": {"text/plain": {"schema": {"type": "string"}}}}
_DOC_OK = {"description": "This port's OpenAPI document", **_json({"type": "object"})}

# -- the query port
_PREDICTION = _obj({"query_id": {"type": "integer"}, "output": _ANY,
                    "default": {"type": "boolean"}, "default_explanation": {"type": "string"},
                    "confidence": {"type": "number", "nullable": True},
                    "models": {"type": "array", "items": {"type": "string"}},
                    "missing": {"type": "array", "items": {"type": "string"}}},
                   ("query_id", "output", "default"))
_PREDICT_OK = {"description": "The prediction; a batch answers batch_predictions in input"
               " order (a batch of one also has that answer's fields, as Clipper answers it)",
               **_json({"anyOf": [_PREDICTION, _obj({"batch_predictions": {
                   "type": "array", "items": _PREDICTION}}, ("batch_predictions",))]})}
_INPUT = {"description": "One input of the application's input_type: a list of numbers, a"
          " string (strings, bytes as base64)", "anyOf": [
              {"type": "array", "items": {"type": "number"}}, {"type": "string"}]}
_TENSOR = _obj({"name": {"type": "string"}, "datatype": {"type": "string", "enum": [
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16",
    "FP32", "FP64", "BYTES"]}, "shape": {"type": "array", "items": {"type": "integer",
                                                                    "minimum": 0}},
    "parameters": {"type": "object"}, "data": {"type": "array"}},
    ("name", "datatype", "shape"))
_INFER = _obj({"id": {"type": "string"}, "parameters": {"type": "object"},
               "inputs": {"type": "array", "items": _TENSOR, "minItems": 1, "maxItems": 1},
               "outputs": {"type": "array", "items": _obj({"name": {"type": "string"},
                                                           "parameters": {"type": "object"}},
                                                          ("name",))}}, ("inputs",))
_INFER_OK = {"description": "The output and default tensors (JSON, or with binary data the"
             " JSON header and the tensors' bytes: Inference-Header-Content-Length)",
             "content": {_JSON: {"schema": _obj({"model_name": {"type": "string"},
                                                 "model_version": {"type": "string"},
                                                 "id": {"type": "string"},
                                                 "outputs": {"type": "array"}},
                                                ("model_name", "outputs"))},
                         "application/octet-stream": {"schema": {"type": "string",
                                                                 "format": "binary"}}}}
_MODEL = _path("model", "An OIP model: a clipperlab application")
_VERSION = {"name": "version", "in": "path", "required": True, "description": "Always 1",
            "schema": {"type": "string", "minLength": 1, "maxLength": 8,
                       "pattern": "^[A-Za-z0-9_.-]+$"}}
_READY = {"description": "Ready", **_json(_obj({"ready": {"type": "boolean"}}, ("ready",)))}
_NOT_READY = {"503": {"description": "Not ready", **_json(_ANY)}}


def _model_paths(prefix: str, params: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        prefix: {"get": _op("Model metadata (inputs, outputs)", errors=(404,), params=params)},
        f"{prefix}/ready": {"get": _op("Whether a replica of a linked model is connected",
                                       _READY, errors=(404,), params=params,
                                       extra=_NOT_READY)},
        f"{prefix}/infer": {"post": _op("Inference: one input tensor, each row a query",
                                        _INFER_OK, errors=(400, 404, 413, 503), body=_INFER,
                                        params=params)},
        f"{prefix}/config": {"get": _op("Model configuration (Triton's)", errors=(404,),
                                        params=params)},
        f"{prefix}/stats": {"get": _op("Inference statistics (Triton's)", errors=(404,),
                                       params=params)},
    }


@cache
def query_document() -> dict[str, Any]:
    """The query port's OpenAPI document."""
    app = _path("app", "An application")
    paths: dict[str, Any] = {
        "/{app}/predict": {"post": _op(
            "Clipper's prediction: one input or a batch", _PREDICT_OK,
            errors=(400, 404, 413, 503), params=[app],
            body={"anyOf": [_obj({"input": _INPUT, "uid": _UID},
                                 ("input",)),
                            _obj({"input_batch": {"type": "array", "items": _INPUT,
                                                  "minItems": 1},
                                  "uid": _UID}, ("input_batch",))]})},
        "/{app}/update": {"post": _op(
            "Clipper's feedback: a label for an input or a query id",
            {"description": "Feedback applied", **_json(_obj({
                "feedback_id": {"type": "integer"}, "losses": {"type": "object"},
                "from_cache": {"type": "array"}, "computed": {"type": "array"}},
                ("feedback_id",)))},
            errors=(400, 404), params=[app],
            body=_obj({"label": _ANY, "input": _INPUT, "query_id": {"type": "integer"},
                       "uid": _UID}, ("label",)))},
        "/metrics": {"get": _op("Prometheus metrics", _TEXT_OK)},
        "/openapi.json": {"get": _op("This document", _DOC_OK)},
        "/": {"get": _op("Liveness", {"description": "Up", **_json(_obj(
            {"status": {"type": "string"}}, ("status",)))})},
        "/healthz": {"get": _op("Liveness", {"description": "Up", **_json(_obj(
            {"status": {"type": "string"}}, ("status",)))})},
        "/v2": {"get": _op("Server metadata", {"description": "Metadata", **_json(_obj(
            {"name": {"type": "string"}, "version": {"type": "string"},
             "extensions": {"type": "array", "items": {"type": "string"}}},
            ("name", "version", "extensions")))})},
        "/v2/health/live": {"get": _op("Liveness", _READY | {"description": "Live",
                                                            **_json(_ANY)})},
        "/v2/health/ready": {"get": _op(
            "Readiness: accepting, and every application with linked models has a replica",
            _READY, extra=_NOT_READY)},
        "/v2/models/stats": {"get": _op("Inference statistics of every model")},
        "/v2/repository/index": {"post": _op("Every model and its state")},
        "/v2/repository/models/{model}/load": {"post": _op(
            "Not supported (models are deployed through the admin API)",
            ok_status="501", ok={"description": "Not supported", **_json(_ERROR)},
            params=[_MODEL])},
        "/v2/repository/models/{model}/unload": {"post": _op(
            "Not supported (models are deployed through the admin API)",
            ok_status="501", ok={"description": "Not supported", **_json(_ERROR)},
            params=[_MODEL])},
    }
    paths.update(_model_paths("/v2/models/{model}", [_MODEL]))
    paths.update(_model_paths("/v2/models/{model}/versions/{version}", [_MODEL, _VERSION]))
    return {"openapi": "3.0.3",
            "info": {"title": "clipperlab query API", "version": "1",
                     "description": "Clipper's REST query API and the Open Inference Protocol"
                                    " v2 (an OIP model is a clipperlab application)"},
            "paths": paths}


# -- the admin port
# the reads a GET may ask for (real/admin.py applies the same set)
ADMIN_READS = frozenset(("ping", "get_all_apps", "get_all_applications", "get_all_models",
                         "get_all_containers", "inspect", "metrics"))
_S, _I, _B = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}
_LIST = {"type": "array", "items": {"type": "string"}}
_VERBOSE = _obj({"verbose": _B})
_MODEL_ROW = _obj({"model_name": _S, "model_version": _S, "is_current_version": _B,
                   "input_type": _S, "labels": _LIST, "container_name": _S,
                   "model_data_path": _S, "batch_size": _I},
                  ("model_name", "model_version", "is_current_version"))
_APP_ROW = _obj({"name": _S, "input_type": _S, "default_output": _ANY,
                 "latency_slo_micros": _I, "linked_models": _LIST},
                ("name", "input_type", "latency_slo_micros", "linked_models"))
_CONTAINER_ROW = _obj({"model_id": _S, "model_name": _S, "model_version": _S,
                       "model_replica_id": _I, "input_type": _S},
                      ("model_id", "model_name", "model_version", "model_replica_id"))
_OR_EMPTY = {"description": "The row, or {} when there is none (Clipper's answer)",
             **_json({"anyOf": [{"type": "object", "maxProperties": 0}, {"type": "object"}]})}


def _ok(schema: dict[str, Any], what: str = "OK") -> dict[str, Any]:
    return {"description": what, **_json(schema)}


_DELETED = _obj({"name": _S, "deleted": _B}, ("name", "deleted"))


# op -> (summary, request body, 200 answer or None for any JSON, more error statuses)
_ADMIN_OPS: dict[str, tuple[str, dict[str, Any], dict[str, Any] | None, tuple[int, ...]]] = {
    "ping": ("Health", _obj({}), _ok(_S), ()),
    "add_app": ("Register an application (Clipper's fields or ours)",
                _obj({"name": _NAME, "input_type": _S, "default_output": _ANY,
                      "latency_slo_micros": _I, "slo_ms": {"type": "number"}, "policy": _S,
                      "candidate_model_names": _LIST}, ("name",)), None, (403, 409)),
    "delete_app": ("Delete an application with its links and selection state (its models"
                   " stay; its queries in flight are answered)",
                   _obj({"name": _NAME}, ("name",)), _ok(_DELETED), ()),
    "delete_application": ("The same as delete_app", _obj({"name": _NAME}, ("name",)),
                           _ok(_DELETED), ()),
    "remove_app": ("The same as delete_app", _obj({"name": _NAME}, ("name",)), _ok(_DELETED),
                   ()),
    "add_model": ("Register a model version (Clipper's fields with batch_size, or ours)",
                  _obj({"model_name": _NAME, "model_version": _S, "labels": _LIST,
                        "input_type": _S, "container_name": _S, "model_data_path": _S,
                        "batch_size": _I, "kind": _S, "path": _S, "replicas": _I},
                       ("model_name",)), None, (403, 409)),
    "delete_versioned_model": ("A version stops serving (its replicas go to 0 when active)",
                               _obj({"model_name": _NAME, "model_version": _S},
                                    ("model_name", "model_version")), None, ()),
    "add_model_links": ("Link models to an application",
                        _obj({"app_name": _NAME, "model_names": _LIST},
                             ("app_name", "model_names")), None, ()),
    "delete_model_links": ("Unlink models (Clipper's name)",
                           _obj({"app_name": _NAME, "model_names": _LIST},
                                ("app_name", "model_names")), None, ()),
    "remove_model_links": ("Unlink models", _obj({"app_name": _NAME, "model_names": _LIST},
                                                 ("app_name", "model_names")), None, ()),
    "set_model_version": ("Activate a version", _obj({"model_name": _NAME,
                                                      "model_version": _S},
                                                     ("model_name", "model_version")), None,
                          ()),
    "get_all_applications": ("Application names, or (verbose) rows", _VERBOSE,
                             _ok({"type": "array", "items": {"anyOf": [_S, _APP_ROW]}}), ()),
    "get_all_apps": ("Application names, or (verbose) rows", _VERBOSE,
                     _ok({"type": "array", "items": {"anyOf": [_S, _APP_ROW]}}), ()),
    "get_application": ("An application's row, {} when unknown", _obj({"name": _NAME},
                                                                     ("name",)), _OR_EMPTY, ()),
    "get_app": ("An application's row", _obj({"name": _NAME}, ("name",)), _ok(_APP_ROW), ()),
    "get_linked_models": ("The models linked to an application",
                          _obj({"app_name": _NAME}, ("app_name",)), _ok(_LIST), ()),
    "get_all_models": ("name:version strings, or (verbose) one row per version", _VERBOSE,
                       _ok({"type": "array", "items": {"anyOf": [_S, _MODEL_ROW]}}), ()),
    "get_model": ("A version's row ({} when unknown), or the active version's",
                  _obj({"model_name": _NAME, "model_version": _S}, ("model_name",)),
                  _OR_EMPTY, ()),
    "get_all_containers": ("Replicas connected: name:version:replica_id, or rows", _VERBOSE,
                           _ok({"type": "array", "items": {"anyOf": [_S, _CONTAINER_ROW]}}),
                           ()),
    "get_container": ("A connected replica's row, {} when none",
                      _obj({"model_name": _NAME, "model_version": _S, "replica_id": _I},
                           ("model_name", "model_version", "replica_id")), _OR_EMPTY, ()),
    "get_state": ("An application's selection state for a user",
                  _obj({"app_name": _NAME, "uid": _I}, ("app_name",)), None, ()),
    "rollback": ("Activate the previous (or a given) version",
                 _obj({"model_name": _NAME, "model_version": _S}, ("model_name",)), None,
                 (409,)),
    "set_replicas": ("Replicas wanted for a model", _obj({"model_name": _NAME,
                                                          "replicas": _I},
                                                         ("model_name", "replicas")), None,
                     (409,)),
    "set_policy": ("An application's selection policy (a built-in name or entry point;"
                   " module:Class needs the token)",
                   _obj({"app_name": _NAME, "policy": _S, "policy_params": {"type": "object"}},
                        ("app_name", "policy")), None, (403,)),
    "update_app": ("Change an application's settings", _obj({"name": _NAME}, ("name",)),
                   None, (403,)),
    "inspect": ("Everything the server knows", _obj({}), None, ()),
    "metrics": ("The engine's metrics as JSON", _obj({}), None, ()),
}


@cache
def admin_document() -> dict[str, Any]:
    """The admin port's OpenAPI document."""
    common = (400, 401, 403, 404, 405, 415)
    paths: dict[str, Any] = {}
    for op, (summary, body, ok, more) in _ADMIN_OPS.items():
        errors = tuple(sorted(set(common + more)))
        item = {"post": _op(summary, ok, errors=errors, body=body)}
        if op in ADMIN_READS:
            item["get"] = _op(summary, ok, errors=(401, 403, 404))
        paths[f"/admin/{op}"] = item
    paths["/admin/upload_model"] = {"post": {
        "summary": "Upload a serialized model into the store; returns the path for add_model",
        "parameters": [
            {"name": "name", "in": "query", "required": True, "schema": _NAME},
            {"name": "version", "in": "query", "schema": _NAME},
            {"name": "ext", "in": "query", "schema": _NAME}],
        "requestBody": {"required": True, "content": {"application/octet-stream": {
            "schema": {"type": "string", "format": "binary"}}}},
        "responses": {"200": _ok(_obj({"path": _S, "bytes": _I}, ("path", "bytes"))),
                      **{str(s): {"description": _REASONS[s], **_json(_ERROR)}
                         for s in (400, 401, 403, 405, 413, 415)}}}}
    paths["/metrics"] = {"get": _op("Prometheus metrics (as on the query port)", _TEXT_OK,
                                    errors=(401, 403))}
    paths["/openapi.json"] = {"get": _op("This document", _DOC_OK, errors=(401, 403))}
    return {"openapi": "3.0.3",
            "info": {"title": "clipperlab admin API", "version": "1",
                     "description": "Clipper's management API (clipper_admin's paths and"
                                    " fields) and ours; POST with application/json"},
            "components": {"securitySchemes": {"token": {"type": "http", "scheme": "bearer"}}},
            "security": [{}, {"token": []}],
            "paths": paths}
