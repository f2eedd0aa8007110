"""The query frontend: Clipper's REST API, the Open Inference Protocol v2 and /metrics.

Routes (port 1337 by default):
- ``POST /{app}/predict`` with ``{"input": x}`` or ``{"input_batch": [x, ...]}`` (optional
  ``"uid"`` selects per-user selection state) -> ``{"query_id", "output", "default",
  "default_explanation"?, "confidence", "models"}``; a batch answers
  ``{"batch_predictions": [...]}`` in input order (a batch of one: that answer's fields
  too, as Clipper answers it bare).
- ``POST /{app}/update`` with ``{"input": x, "label": y}`` or ``{"query_id": n, "label": y}``
  (optional ``"uid"``) -> ``{"feedback_id", "losses", "from_cache", "computed"}``.
- ``/v2/...``: see ``clipperlab.real.oip``.  ``GET /metrics``: Prometheus text.
  ``GET /openapi.json``: this port's OpenAPI 3 document (``clipperlab.real.openapi``).
Limits: an ``input_batch`` of more than ``max_batch_items`` inputs gets 413; a body whose
JSON nests deeper than ``max_nesting`` gets 400 (both name the setting and are counted in
``refused``).  Bodies are parsed by orjson: ``NaN``/``Infinity`` (not JSON) are refused;
in answers, a NaN or infinite number (a model's output, say) is written ``null``.
Errors: ``{"error": "..."}`` (on ``predict``/``update``: ``{"error", "cause"}``, Clipper's
shape) with 400 (bad JSON, input or field), 404 (unknown application
or path), 405 (wrong method), 413 (body or batch too large), 503 (overload: the engine
refused the query; or the server is shutting down), 500 (an answer that cannot be encoded,
e.g. an integer beyond 64 bits from a model; logged and counted as ``handler_error``).
Every error is logged and the server keeps serving.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any, Final

import numpy as np
import orjson

from clipperlab.engine import (
    Application,
    EngineError,
    Feedback,
    FeedbackApplied,
    NotFound,
    Reply,
    input_digest,
)

from .driver import EngineDriver
from .http import Request, dumps, error_response, json_response, response
from .inputs import BadInput, TooDeep, check_nesting, convert
from .openapi import query_document

__all__ = ["QueryFrontend", "reply_body"]

log: Final = logging.getLogger("clipperlab.frontend")


_loads: Final = orjson.loads  # a C static compiled, not two look-ups a request
_OK_HEAD: Final = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "


class _ReplyCache:
    """Encoded tails (everything after ``query_id``) of frequent predictions, keyed by the
    prediction itself: most answers are one of a few class labels from the same models."""

    def __init__(self, limit: int = 4096) -> None:
        # prediction -> (its output's type, the tail from the comma after the id, the
        # body's length less the id's digits)
        self.tails: dict[Any, tuple[type, bytes, int]] = {}
        self.limit = limit
        # The last prediction encoded, with the response's bytes before the id (for ids of
        # its digit count) and after it: the engine shares one Prediction object among
        # one-model answers with the same int output (cache hits, batches), so most
        # replies find theirs here without hashing it (0.3 us less), and join three
        # pieces (0.6 against 1.7 us with the length formatted each time, measured)
        self._last: Any = None
        self._last_digits = 0
        self._last_head = b""
        self._last_tail = b""

    def encode(self, r: Reply) -> bytes:
        p: Any = r.prediction
        qid = b"%d" % r.query_id
        if p is self._last and len(qid) == self._last_digits:
            return b"".join((self._last_head, qid, self._last_tail))
        # Keyed by the prediction alone, its output's type checked (1, 1.0 and True are
        # equal, not alike), and joined, not formatted: 0.6 us a reply against 1.2 us
        try:
            kept = self.tails.get(p)
        except TypeError:  # an unhashable output (a list): encode it every time
            kept = None
            p = None
        if kept is None or kept[0] is not type(r.prediction.output):
            d = reply_body(r)
            del d["query_id"]
            tail = b"," + dumps(d)[1:]
            kept = (type(r.prediction.output), tail, len(tail) + 12)  # 12: {"query_id":
            if p is not None:
                if len(self.tails) >= self.limit:
                    self.tails.clear()
                self.tails[p] = kept
        head = b"".join((_OK_HEAD, b"%d" % (kept[2] + len(qid)), b'\r\n\r\n{"query_id":'))
        if p is not None:
            self._last, self._last_digits = p, len(qid)
            self._last_head, self._last_tail = head, kept[1]
        return b"".join((head, qid, kept[1]))


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


class _Respond:
    """A single query's callback: its reply, answered to its request.  One object a query
    where a closure is two (compiled: its variables and the function)."""

    __slots__ = ("fe", "req")

    def __init__(self, fe: QueryFrontend, req: Request) -> None:
        self.fe = fe
        self.req = req

    def __call__(self, r: Reply) -> None:
        self.req.respond(self.fe._answer(self.req, r))


class QueryFrontend:
    """HTTP handler for the query port."""

    def __init__(
        self,
        driver: EngineDriver,
        *,
        cache: bool = True,
        metrics_text: Callable[[], bytes] | None = None,
        max_batch_items: int = 1000,
        max_nesting: int = 32,
        refused: Counter[str] | None = None,
    ) -> None:
        self.driver = driver
        self.engine = driver.engine
        # the registry's applications by name (a dict changed in place, never replaced):
        # held here, two attribute look-ups less a query (the registry is not compiled)
        self._apps: dict[str, Application] = driver.engine.registry.apps
        self.cache = cache
        self.metrics_text = metrics_text
        self.max_batch_items = max_batch_items
        self.max_nesting = max_nesting
        self.refused: Counter[str] = refused if refused is not None else Counter()
        self.accepting = True
        self.errors = 0
        self._feedback_ids = 0
        self._replies = _ReplyCache()
        # Request memo (cache on): a body seen before is not parsed, converted or digested
        # again; a cache hit then costs HTTP, the engine's lookup and the reply.  Keyed by
        # the exact body bytes (up to 2 KiB, cleared when full), an entry used only by the
        # application it was made for (checked on use): no (application, body) tuple to
        # build, hash and compare a query; two applications sent one body take turns.
        self._memo: dict[bytes, tuple[Application, Any, bytes, Any]] | None = (
            {} if cache else None)
        # path -> (a prediction, not an update; application): skips splitting the path on
        # every query, and calls the method itself (compiled, a native call; a bound method
        # kept in the table went through Python's calling convention each query).
        self._routes: dict[str, tuple[bool, str]] = {}
        from .oip import OipHandler

        self.oip = OipHandler(self)

    def bad(self, req: Request, status: int, message: str) -> bytes:
        self.errors += 1
        log.warning("%s %s from %s -> %d: %s", req.method, req.path, req.peer, status, message)
        return error_response(status, message)

    def clipper_bad(self, req: Request, status: int, message: str) -> bytes:
        """An error of Clipper's routes: ``{"error", "cause"}`` as Clipper answers (its
        ``error`` names a kind, ``cause`` says what; ours says what in both)."""
        self.errors += 1
        log.warning("%s %s from %s -> %d: %s", req.method, req.path, req.peer, status, message)
        return json_response(status, {"error": message, "cause": message})

    # -- routing
    def __call__(self, req: Request) -> bytes | None:
        path = req.path
        route = self._routes.get(path)
        if route is not None and req.method == "POST" and self.accepting:
            if route[0]:  # the common case: POST /{app}/predict
                return self.predict(req, route[1])
            return self.update(req, route[1])
        if path.startswith("/v2"):
            return self.oip.handle(req)
        if path == "/metrics":
            if self.metrics_text is None:
                return self.bad(req, 404, "metrics are not enabled")
            return response(200, self.metrics_text(), b"text/plain; version=0.0.4")
        if path == "/openapi.json":
            if req.method not in ("GET", "HEAD"):
                return self.bad(req, 405, f"{path} takes GET, not {req.method}")
            return json_response(200, query_document())
        parts = path.strip("/").split("/")
        if len(parts) == 2 and parts[1] in ("predict", "update"):
            if req.method != "POST":
                return self.bad(req, 405, f"{path} takes POST, not {req.method}")
            if not self.accepting:
                return self.bad(req, 503, "the server is shutting down")
            predict = parts[1] == "predict"
            if len(self._routes) > 10_000:
                self._routes.clear()
            self._routes[path] = (predict, parts[0])
            return self.predict(req, parts[0]) if predict else self.update(req, parts[0])
        if path in ("/", "/healthz"):
            return json_response(200, {"status": "ok"})
        return self.bad(req, 404, f"no route {req.method} {path}; try POST /{{app}}/predict or /v2")

    def parse_json(self, data: bytes | memoryview, what: str = "request body") -> Any:
        """``data`` as JSON nested at most ``max_nesting`` deep, or ``BadInput``.  The
        depth is checked on the text first: orjson 3.8 overflows the C stack (SIGSEGV)
        on 100,000 nested objects."""
        # few brackets cannot nest deep: check_nesting's own first test, without the call
        if type(data) is not bytes or (
            len(data) > self.max_nesting  # a shorter text cannot nest deeper
            and data.count(b"[") + data.count(b"{") > self.max_nesting
        ):
            try:
                check_nesting(data, self.max_nesting, what)
            except TooDeep:
                self.refused["nesting_too_deep"] += 1
                raise
        try:
            return _loads(data)
        except orjson.JSONDecodeError as e:
            raise BadInput(f"{what} is not valid JSON: {e}") from None

    def body_object(self, req: Request) -> dict[str, Any]:
        body = self.parse_json(req.body)
        if not isinstance(body, dict):
            raise BadInput(f"request body must be a JSON object, got {type(body).__name__}")
        return body

    def check_batch(self, n: int, what: str) -> None:
        """413 (``BadInput`` with ``status``) when ``n`` queries exceed ``max_batch_items``."""
        if n > self.max_batch_items:
            self.refused["batch_too_large"] += 1
            raise BadInput(
                f"{what} has {n} items; the limit is max_batch_items = {self.max_batch_items}",
                status=413,
            )

    def encode_failed(self, req: Request, e: Exception) -> None:
        """The last resort for an answer that cannot be encoded: 500, logged, counted."""
        req.respond(self.failed_answer(req, e))

    def failed_answer(self, req: Request, e: Exception) -> bytes:
        """``encode_failed``'s answer, returned instead of sent."""
        log.error("cannot encode the answer to %s %s: %s", req.method, req.path, e)
        self.refused["handler_error"] += 1
        self.errors += 1
        return error_response(500, f"internal error: the answer cannot be encoded: {e}")

    # -- Clipper API
    def predict(self, req: Request, app_name: str) -> bytes | None:
        app = self._apps.get(app_name)
        if app is None:
            return self.clipper_bad(req, 404, f"application {app_name!r} does not exist")
        memo = self._memo
        if memo is not None:
            seen = memo.get(req.body)
            if seen is not None and seen[0] is app:  # the same application, not a new one
                return self._one(req, app_name, seen[1], seen[3], seen[2])
        try:
            body = self.body_object(req)
            ctx = _uid(body)
            # true and false both hold an "e", which the keys here and most numbers do not:
            # one memchr (0.02 us; b"true" in raw: 0.2-0.3 us, a look at each element: 0.3)
            bools = 101 in req.body
            if "input" in body:
                x = convert(app, body["input"], "input", maybe_bools=bools)
                key = input_digest(x) if self.cache else None
                data = self._one(req, app_name, x, ctx, key)
                if memo is not None and key is not None and len(req.body) <= 2048:
                    if isinstance(x, np.ndarray):
                        x.flags.writeable = False  # shared by every query with this body
                    if len(memo) >= 4096:
                        memo.clear()
                    memo[req.body] = (app, x, key, ctx)
                return data
            if "input_batch" in body:
                batch = body["input_batch"]
                if not isinstance(batch, list):
                    raise BadInput("input_batch must be a list of inputs")
                if not batch:
                    raise BadInput("input_batch is empty")
                self.check_batch(len(batch), "input_batch")
                xs = [convert(app, v, f"input_batch[{i}]", maybe_bools=bools)
                      for i, v in enumerate(batch)]
                return self._many(req, app_name, xs, ctx)
            raise BadInput("request body needs 'input' or 'input_batch'")
        # a name per exception type: compiled (mypyc), one name takes its first clause's type
        except BadInput as e:
            return self.clipper_bad(req, e.status, str(e))
        except NotFound as nf:
            return self.clipper_bad(req, 404, str(nf))
        except EngineError as ee:
            return self.clipper_bad(req, 400, str(ee))

    def _one(self, req: Request, app: str, x: Any, ctx: Any, key: bytes | None) -> bytes | None:
        """Submit one query (``key``: its input's digest, or none).  An answer the engine
        gives at once (a cache hit, a refusal) is returned, for the HTTP layer to write
        without a callback; a later one responds."""

        r = self.driver.ask(app, x, _Respond(self, req), input_key=key, context=ctx)
        return None if r is None else self._answer(req, r)

    def _answer(self, req: Request, r: Reply) -> bytes:
        """The response to a single query's reply: 200, 503 when refused, 500 when it
        cannot be encoded."""
        if r.refused:
            return error_response(
                503, r.prediction.explanation or "query refused: the server is overloaded")
        try:
            return self._replies.encode(r)
        except TypeError as e:  # orjson: an integer beyond 64 bits, an odd type
            return self.failed_answer(req, e)

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
                        return
                    doc: dict[str, Any] = {"batch_predictions": results}
                    if len(results) == 1 and results[0] is not None:
                        doc = {**results[0], **doc}  # Clipper answers a batch of one bare
                    try:
                        data = json_response(200, doc)
                    except TypeError as e:  # orjson: an integer beyond 64 bits, an odd type
                        self.encode_failed(req, e)
                        return
                    req.respond(data)

            return done

        for i, x in enumerate(xs):
            key = input_digest(x) if self.cache else None
            self.driver.query(app, x, make(i), input_key=key, context=ctx)
        return None

    def update(self, req: Request, app_name: str) -> bytes | None:
        app = self.engine.registry.apps.get(app_name)
        if app is None:
            return self.clipper_bad(req, 404, f"application {app_name!r} does not exist")
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
                doc = {
                    "feedback_id": f.feedback_id,
                    "losses": f.losses,
                    "from_cache": f.from_cache,
                    "computed": f.computed,
                }
                try:
                    data = json_response(200, doc)
                except TypeError as e:  # orjson: an integer beyond 64 bits, an odd type
                    self.encode_failed(req, e)
                    return
                req.respond(data)

            self.driver.feedback(fb, done)
            return None
        # a name per exception type: compiled (mypyc), one name takes its first clause's type
        except BadInput as e:
            return self.clipper_bad(req, e.status, str(e))
        except NotFound as nf:
            return self.clipper_bad(req, 404, str(nf))
        except EngineError as ee:
            return self.clipper_bad(req, 400, str(ee))
