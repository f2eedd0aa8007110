"""The admin API (port 1338): Clipper's management paths under ``/admin/`` plus ours.

Clipper-compatible (POST, JSON): ``add_app``, ``add_model``, ``add_model_links``,
``set_model_version``, ``get_all_apps``, ``get_app``, ``get_all_models``, ``get_model``,
``ping`` (GET too).  Ours: ``remove_model_links``, ``rollback`` ``{model_name,
model_version?}``, ``set_replicas`` ``{model_name, replicas}``, ``set_policy`` ``{app_name,
policy, policy_params?}`` (``policy``: a built-in name, ``package.module:Class``,
``/path/to/file.py:Class`` or an entry point of group ``clipperlab.selection``; imported
and checked on the server, a 400 naming the value when it is not a ``SelectionPolicy``
that can be built from ``policy_params``), ``update_app`` ``{name, ...changes}`` (fields
and aliases of the one config schema, ``clipperlab.engine.schema``), ``inspect``, ``metrics``
(JSON; Prometheus text is at ``/metrics`` on the query port), ``upload_model?name=N&
version=V&ext=E`` (raw body: the serialized model; returns the path to give ``add_model``).

Rules, in the order they are applied:

- No browser may drive this API (a page the operator visits could otherwise upload a pickle
  and have a container load it: loading a pickle is running code).  A request with an
  ``Origin`` not in ``admin_allowed_origins``, or with ``Sec-Fetch-Site: cross-site``, gets
  403.  Without a token, a ``Host`` that is not loopback (``localhost``, ``127.0.0.0/8``,
  ``::1``) or in ``admin_allowed_hosts`` gets 403 (DNS rebinding).  We never answer a CORS
  preflight with permission, and every write needs a content type a browser may only send
  after one.
- When a token is configured every request must carry it (``Authorization: Bearer TOKEN``
  or ``X-Clipperlab-Token``), else 401 (whatever bytes it is made of).
- ``POST`` with ``Content-Type: application/json`` (``upload_model``:
  ``application/octet-stream``), else 415; ``GET``/``HEAD`` only for the reads ``ping``,
  ``get_all_apps``, ``get_all_models``, ``inspect``, ``metrics``, else 405.  A body nests
  at most ``max_nesting`` deep.
- Without a token, ``add_model`` of kind ``sklearn``, ``torch`` or ``python`` takes only a
  file inside the store's model folder (what ``upload_model`` returns; a ``python``
  ``module:function`` reference needs the token too): 403 naming the folder.
- Errors are ``{"error": msg}`` with 400 (bad field), 403, 404 (unknown app/model/version),
  405, 409 (already exists / nothing to roll back), 415.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson

from clipperlab.engine import ConfigError, Conflict, EngineError, NotFound

from .config import model_from_dict
from .http import Request, error_response, json_response
from .inputs import BadInput, check_nesting

if TYPE_CHECKING:
    from .server import Server

__all__ = ["AdminApi"]

log = logging.getLogger("clipperlab.admin")

_SAFE = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
# the operations a GET (or HEAD) may ask for: reads without a body
_READS = frozenset(("ping", "get_all_apps", "get_all_models", "inspect", "metrics"))
# model kinds whose file a container loads (unpickles, imports): code the server runs
_CODE_KINDS = frozenset(("python", "sklearn", "torch"))


class _Bad(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _need(d: dict[str, Any], key: str) -> Any:
    if key not in d:
        raise _Bad(400, f"field {key!r} is required")
    return d[key]


class AdminApi:
    def __init__(self, server: Server, metrics_text: Callable[[], bytes] | None = None) -> None:
        self.server = server
        cfg = server.cfg
        self.token = cfg.admin_token.encode()
        self.metrics_text = metrics_text
        self.allowed_origins = frozenset(o.encode() for o in cfg.admin_allowed_origins)
        self.allowed_hosts = frozenset(h.lower() for h in cfg.admin_allowed_hosts)
        self.max_nesting = cfg.max_nesting

    def __call__(self, req: Request) -> bytes:
        try:
            self._refuse_browsers(req)
            if self.token:
                auth = req.headers.get(b"authorization", b"")
                given = auth[7:] if auth.startswith(b"Bearer ") else b""
                given = given or req.headers.get(b"x-clipperlab-token", b"")
                if not hmac.compare_digest(given, self.token):
                    raise _Bad(401, "the admin API needs the configured token")
            path = req.path.rstrip("/")
            if not path.startswith("/admin/"):
                raise _Bad(404, f"no route {path}; admin paths start with /admin/")
            op = path[len("/admin/") :]
            if op != "upload_model" and not hasattr(self, "op_" + op):
                raise _Bad(404, f"unknown admin operation {op!r}")
            if req.method in ("GET", "HEAD"):
                if op not in _READS:
                    raise _Bad(405, f"/admin/{op} takes POST, not {req.method}")
                return json_response(200, getattr(self, "op_" + op)({}))
            if req.method != "POST":
                raise _Bad(405, f"/admin/{op} takes POST, not {req.method}")
            want = "application/octet-stream" if op == "upload_model" else "application/json"
            ctype = req.headers.get(b"content-type", b"").decode("latin-1")
            if ctype.partition(";")[0].strip().lower() != want:
                raise _Bad(415, f"/admin/{op} takes Content-Type: {want}, not {ctype!r}")
            if op == "upload_model":
                return json_response(200, self.upload(req))
            return json_response(200, getattr(self, "op_" + op)(self._body(req)))
        except _Bad as e:
            return self._error(req, e.status, str(e))
        except NotFound as e:
            return self._error(req, 404, str(e))
        except Conflict as e:
            return self._error(req, 409, str(e))
        except (ConfigError, EngineError, ValueError, TypeError, KeyError) as e:
            return self._error(req, 400, str(e))

    def _refuse_browsers(self, req: Request) -> None:
        """403 for what a web page could send: a foreign ``Origin``, ``Sec-Fetch-Site:
        cross-site``, and (without a token) a ``Host`` that is not ours."""
        h = req.headers
        origin = h.get(b"origin")
        if origin is not None and origin not in self.allowed_origins:
            raise _Bad(
                403,
                f"requests from web pages (Origin {origin.decode('latin-1')!r}) may not use"
                " the admin API; list the origin in admin_allowed_origins to let it in",
            )
        if h.get(b"sec-fetch-site", b"").lower() == b"cross-site" and origin is None:
            raise _Bad(403, "cross-site requests (Sec-Fetch-Site) may not use the admin API")
        host = h.get(b"host")
        if not self.token and host is not None and not self._our_host(host):
            raise _Bad(
                403,
                f"Host {host.decode('latin-1')!r} is not loopback: set admin_token, or list the"
                " name in admin_allowed_hosts",
            )

    def _our_host(self, host: bytes) -> bool:
        text = host.decode("latin-1").strip().lower()
        if text.startswith("["):
            name = text[1 : text.find("]")] if "]" in text else text
        else:
            name, _, port = text.rpartition(":")
            if not name or not port.isdigit():
                name = text
        if name in self.allowed_hosts or text in self.allowed_hosts or name == "localhost":
            return True
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False

    def _body(self, req: Request) -> dict[str, Any]:
        if not req.body:
            return {}
        try:  # on the text first: orjson 3.8 crashes on 100,000 nested objects
            check_nesting(req.body, self.max_nesting, "request body")
        except BadInput as e:
            raise _Bad(400, str(e)) from None
        try:
            body = orjson.loads(req.body)
        except orjson.JSONDecodeError as e:
            raise _Bad(400, f"request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise _Bad(400, "request body must be a JSON object")
        return body

    def _error(self, req: Request, status: int, msg: str) -> bytes:
        log.warning("admin %s %s -> %d: %s", req.method, req.path, status, msg)
        return error_response(status, msg)

    # -- Clipper's
    def op_ping(self, body: dict[str, Any]) -> Any:
        return "pong"

    def op_add_app(self, body: dict[str, Any]) -> Any:
        _need(body, "name")
        return {"app": self.server.add_app(body).to_dict()}

    def op_add_model(self, body: dict[str, Any]) -> Any:
        self._check_code_path(body)
        spec = self.server.add_model(body)
        return {"model": spec.to_dict()}

    def _check_code_path(self, body: dict[str, Any]) -> None:
        """Without a token, a model whose file a container loads must be in the store."""
        if self.token:
            return
        spec, _ = model_from_dict(body, self.server.cfg.max_queue)
        kind, path = spec.metadata["kind"], spec.metadata["path"]
        if kind not in _CODE_KINDS:
            return
        folder = self.server.store.models_dir.resolve()
        reference = kind == "python" and ":" in path and not path.endswith((".pkl", ".pickle"))
        inside = bool(path) and not reference and Path(path).resolve().is_relative_to(folder)
        if not inside:
            raise _Bad(
                403,
                f"add_model: a {kind} model is loaded as code, so without admin_token its path"
                f" must be a file in {str(folder)!r} (upload it with upload_model), got {path!r}",
            )

    def op_add_model_links(self, body: dict[str, Any]) -> Any:
        models = _need(body, "model_names")
        if not isinstance(models, list):
            raise _Bad(400, "model_names must be a list")
        return {"linked": self.server.link(str(_need(body, "app_name")), models)}

    def op_remove_model_links(self, body: dict[str, Any]) -> Any:
        models = _need(body, "model_names")
        return {"linked": self.server.unlink(str(_need(body, "app_name")), list(models))}

    def op_set_model_version(self, body: dict[str, Any]) -> Any:
        name, v = str(_need(body, "model_name")), str(_need(body, "model_version"))
        self.server.set_version(name, v)
        return {"model_name": name, "active_version": v}

    def op_get_all_apps(self, body: dict[str, Any]) -> Any:
        reg = self.server.engine.registry
        if body.get("verbose"):
            return [self._app(n) for n in reg.apps]
        return list(reg.apps)

    def op_get_app(self, body: dict[str, Any]) -> Any:
        return self._app(str(_pick_name(body, "name", "app_name")))

    def _app(self, name: str) -> dict[str, Any]:
        reg = self.server.engine.registry
        d = reg.app(name).to_dict()
        d["linked_models"] = list(reg.links[name])
        d["latency_slo_micros"] = int(round(d["slo_s"] * 1e6))
        return d

    def op_get_all_models(self, body: dict[str, Any]) -> Any:
        reg = self.server.engine.registry
        if body.get("verbose"):
            return [self._model(n) for n in reg.models]
        return [f"{n}:{v}" for n, vs in reg.models.items() for v in vs]

    def op_get_model(self, body: dict[str, Any]) -> Any:
        return self._model(str(_pick_name(body, "model_name", "name")))

    def _model(self, name: str) -> dict[str, Any]:
        reg = self.server.engine.registry
        reg.model(name)
        return {
            "model_name": name,
            "active_version": reg.active[name],
            "versions": list(reg.models[name]),
            "history": list(reg.history[name]),
            "replicas": self.server.replicas_wanted.get(name, 0),
            "spec": reg.model(name).to_dict(),
        }

    # -- ours
    def op_rollback(self, body: dict[str, Any]) -> Any:
        name = str(_need(body, "model_name"))
        v = body.get("model_version")
        return {
            "model_name": name,
            "active_version": self.server.rollback(name, None if v is None else str(v)),
        }

    def op_set_replicas(self, body: dict[str, Any]) -> Any:
        name = str(_need(body, "model_name"))
        n = _need(body, "replicas")
        if not isinstance(n, int) or isinstance(n, bool):
            raise _Bad(400, f"replicas must be an integer, got {n!r}")
        self.server.set_replicas(name, n)
        return {"model_name": name, "replicas": n}

    def op_set_policy(self, body: dict[str, Any]) -> Any:
        name = str(_need(body, "app_name"))
        changes: dict[str, Any] = {"policy": str(_need(body, "policy"))}
        if "policy_params" in body:
            changes["policy_params"] = dict(body["policy_params"])
        return {"app": self.server.update_app(name, changes).to_dict()}

    def op_update_app(self, body: dict[str, Any]) -> Any:
        name = str(_need(body, "name"))
        changes = {k: v for k, v in body.items() if k != "name"}
        return {"app": self.server.update_app(name, changes).to_dict()}

    def op_inspect(self, body: dict[str, Any]) -> Any:
        return self.server.inspect()

    def op_metrics(self, body: dict[str, Any]) -> Any:
        return self.server.engine.sync_metrics().as_dict()

    def upload(self, req: Request) -> Any:
        q = {k: v[0] for k, v in parse_qs(req.query).items()}
        name, version, ext = q.get("name", ""), q.get("version", "1"), q.get("ext", "bin")
        for field, v in (("name", name), ("version", version), ("ext", ext)):
            if not _SAFE.match(v):
                raise _Bad(400, f"upload_model: {field} {v!r} must match {_SAFE.pattern}")
        if not req.body:
            raise _Bad(400, "upload_model: the body (the serialized model) is empty")
        path = self.server.store.models_dir / f"{name}-{version}.{ext}"
        path.write_bytes(req.body)
        return {"path": str(path.resolve()), "bytes": len(req.body)}


def _pick_name(body: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if k in body:
            return body[k]
    raise _Bad(400, f"field {keys[0]!r} is required")
