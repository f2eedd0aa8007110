"""The query frontend: Clipper's REST API, the Open Inference Protocol v2 and /metrics.

Routes (port 1337 by default):
- ``POST /{app}/predict`` with ``{"input": x}`` or ``{"input_batch": [x, ...]}`` (optional
  ``"uid"`` selects per-user selection state) -> ``{"query_id", "output", "default",
  "default_explanation"?, "confidence", "models"}``; a batch answers
  ``{"batch_predictions": [...]}`` in input order.
- ``POST /{app}/update`` with ``{"input": x, "label": y}`` or ``{"query_id": n, "label": y}``
  (optional ``"uid"``) -> ``{"feedback_id", "losses", "from_cache", "computed"}``.
- ``/v2/...``: see ``clipperlab.real.oip``.  ``GET /metrics``: Prometheus text.
Errors: ``{"error": "..."}`` with 400 (bad JSON, input or field), 404 (unknown application
or path), 405 (wrong method), 413 (body too large), 503 (overload: the engine refused the
query; or the server is shutting down).  Every error is logged and the server keeps serving.
"""

from __future__ import annotations

import base64
import json
import json.scanner
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from clipperlab.engine import EngineError, Feedback, FeedbackApplied, NotFound, Reply, input_digest

from .driver import EngineDriver
from .http import Request, error_response, json_response, response
from .inputs import BadInput, convert

__all__ = ["QueryFrontend", "reply_body"]

log = logging.getLogger("clipperlab.frontend")


def _json_default(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, bytes):
        return base64.b64encode(x).decode()
    if isinstance(x, tuple | set):
        return list(x)
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


_dumps = json.JSONEncoder(separators=(",", ":"), default=_json_default).encode
_loads = json.JSONDecoder().decode
_scan: Any = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


def _parse_json(text: str) -> Any:
    """``json.loads`` without its two whitespace regex matches on the common path (a body
    that starts with ``{`` and has nothing after the value); anything else takes the
    standard path, which also produces the standard error messages."""
    if text[:1] == "{":
        try:
            obj, end = _scan(text, 0)
        except (StopIteration, ValueError):
            return _loads(text)
        if end == len(text) or not text[end:].strip():
            return obj
    return _loads(text)


_OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "


class _ReplyCache:
    """Encoded tails (everything after ``query_id``) of frequent predictions, keyed by the
    prediction itself: most answers are one of a few class labels from the same models."""

    def __init__(self, limit: int = 4096) -> None:
        self.tails: dict[Any, bytes] = {}
        self.limit = limit

    def encode(self, r: Reply) -> bytes:
        p: Any = r.prediction
        try:
            tail = self.tails.get(p)
        except TypeError:  # an unhashable output (a list): encode it every time
            tail = None
            p = None
        if tail is None:
            d = reply_body(r)
            del d["query_id"]
            tail = _dumps(d).encode()[1:]
            if p is not None:
                if len(self.tails) >= self.limit:
                    self.tails.clear()
                self.tails[p] = tail
        body = b'{"query_id":%d,%s' % (r.query_id, tail)
        return b"%s%d\r\n\r\n%s" % (_OK_HEAD, len(body), body)


def _uid(body: dict[str, Any]) -> Any:
    """The request's user id (the selection context): an integer, a string or none."""
    ctx = body.get("uid")
    if ctx is not None and not isinstance(ctx, int | str):
        raise BadInput(f"uid must be an integer or a string, got {type(ctx).__name__}")
    return ctx


def reply_body(r: Reply) -> dict[str, Any]:
    p = r.prediction
    d: dict[str, Any] = {"query_id": r.query_id, "output": p.output, "default": p.default}
    if p.default:
        d["default_explanation"] = p.explanation
    d["confidence"] = p.confidence
    d["models"] = list(p.models)
    if p.missing:
        d["missing"] = list(p.missing)
    return d


class QueryFrontend:
    """HTTP handler for the query port."""

    def __init__(
        self,
        driver: EngineDriver,
        *,
        cache: bool = True,
        metrics_text: Callable[[], bytes] | None = None,
    ) -> None:
        self.driver = driver
        self.engine = driver.engine
        self.cache = cache
        self.metrics_text = metrics_text
        self.accepting = True
        self.errors = 0
        self._feedback_ids = 0
        self._replies = _ReplyCache()
        # path -> (handler, application): skips splitting the path on every query.
        self._routes: dict[str, tuple[Callable[[Request, str], bytes | None], str]] = {}
        from .oip import OipHandler

        self.oip = OipHandler(self)

    def bad(self, req: Request, status: int, message: str) -> bytes:
        self.errors += 1
        log.warning("%s %s from %s -> %d: %s", req.method, req.path, req.peer, status, message)
        return error_response(status, message)

    # -- routing
    def __call__(self, req: Request) -> bytes | None:
        path = req.path
        route = self._routes.get(path)
        if route is not None and req.method == "POST" and self.accepting:
            return route[0](req, route[1])  # the common case: POST /{app}/predict
        if path.startswith("/v2"):
            return self.oip.handle(req)
        if path == "/metrics":
            if self.metrics_text is None:
                return self.bad(req, 404, "metrics are not enabled")
            return response(200, self.metrics_text(), b"text/plain; version=0.0.4")
        parts = path.strip("/").split("/")
        if len(parts) == 2 and parts[1] in ("predict", "update"):
            if req.method != "POST":
                return self.bad(req, 405, f"{path} takes POST, not {req.method}")
            if not self.accepting:
                return self.bad(req, 503, "the server is shutting down")
            fn = self.predict if parts[1] == "predict" else self.update
            if len(self._routes) > 10_000:
                self._routes.clear()
            self._routes[path] = (fn, parts[0])
            return fn(req, parts[0])
        if path in ("/", "/healthz"):
            return json_response(200, {"status": "ok"})
        return self.bad(req, 404, f"no route {req.method} {path}; try POST /{{app}}/predict or /v2")

    def body_object(self, req: Request) -> dict[str, Any]:
        try:
            body = _parse_json(req.body.decode())
        except (ValueError, UnicodeDecodeError) as e:
            raise BadInput(f"request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise BadInput(f"request body must be a JSON object, got {type(body).__name__}")
        return body

    # -- Clipper API
    def predict(self, req: Request, app_name: str) -> bytes | None:
        app = self.engine.registry.apps.get(app_name)
        if app is None:
            return self.bad(req, 404, f"application {app_name!r} does not exist")
        try:
            body = self.body_object(req)
            ctx = _uid(body)
            if "input" in body:
                x = convert(app, body["input"], "input")
                self._one(req, app_name, x, ctx)
                return None
            if "input_batch" in body:
                batch = body["input_batch"]
                if not isinstance(batch, list):
                    raise BadInput("input_batch must be a list of inputs")
                if not batch:
                    raise BadInput("input_batch is empty")
                xs = [convert(app, v, f"input_batch[{i}]") for i, v in enumerate(batch)]
                return self._many(req, app_name, xs, ctx)
            raise BadInput("request body needs 'input' or 'input_batch'")
        except BadInput as e:
            return self.bad(req, 400, str(e))
        except NotFound as e:
            return self.bad(req, 404, str(e))
        except EngineError as e:
            return self.bad(req, 400, str(e))

    def _one(self, req: Request, app: str, x: Any, ctx: Any) -> None:
        """Submit one query; its reply (maybe at once: a cache hit, a refusal) responds."""
        encode = self._replies.encode

        def done(r: Reply) -> None:
            if r.refused:
                req.respond(
                    error_response(
                        503, r.prediction.explanation or "query refused: the server is overloaded"
                    )
                )
            else:
                req.respond(encode(r))

        key = input_digest(x) if self.cache else None
        self.driver.query(app, x, done, input_key=key, context=ctx)

    def _many(self, req: Request, app: str, xs: list[Any], ctx: Any) -> bytes | None:
        results: list[dict[str, Any] | None] = [None] * len(xs)
        left = [len(xs)]
        refused: list[str] = []

        def make(i: int) -> Callable[[Reply], None]:
            def done(r: Reply) -> None:
                if r.refused:
                    refused.append(r.prediction.explanation or "overloaded")
                results[i] = reply_body(r)
                left[0] -= 1
                if left[0] == 0:
                    if refused:
                        req.respond(error_response(503, refused[0]))
                    else:
                        req.respond(json_response(200, {"batch_predictions": results}))

            return done

        for i, x in enumerate(xs):
            key = input_digest(x) if self.cache else None
            self.driver.query(app, x, make(i), input_key=key, context=ctx)
        return None

    def update(self, req: Request, app_name: str) -> bytes | None:
        app = self.engine.registry.apps.get(app_name)
        if app is None:
            return self.bad(req, 404, f"application {app_name!r} does not exist")
        try:
            body = self.body_object(req)
            if "label" not in body:
                raise BadInput("request body needs 'label'")
            x = convert(app, body["input"], "input") if "input" in body else None
            qid = body.get("query_id")
            if qid is not None and not isinstance(qid, int):
                raise BadInput("query_id must be an integer")
            if x is None and qid is None:
                raise BadInput("request body needs 'input' or 'query_id'")
            self._feedback_ids += 1
            fb = Feedback(
                feedback_id=self._feedback_ids,
                app=app_name,
                label=body["label"],
                input=x,
                input_key=input_digest(x) if x is not None and self.cache else None,
                context=_uid(body),
                query_id=qid,
            )

            def done(f: FeedbackApplied) -> None:
                req.respond(
                    json_response(
                        200,
                        {
                            "feedback_id": f.feedback_id,
                            "losses": f.losses,
                            "from_cache": f.from_cache,
                            "computed": f.computed,
                        },
                    )
                )

            self.driver.feedback(fb, done)
            return None
        except BadInput as e:
            return self.bad(req, 400, str(e))
        except NotFound as e:
            return self.bad(req, 404, str(e))
        except EngineError as e:
            return self.bad(req, 400, str(e))
