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

Rules: when a token is configured every request must carry it (``Authorization: Bearer
TOKEN`` or ``X-Clipperlab-Token``), else 401; errors are ``{"error": msg}`` with 400 (bad
field), 404 (unknown app/model/version), 409 (already exists / nothing to roll back).
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from clipperlab.engine import ConfigError, Conflict, EngineError, NotFound

from .http import Request, error_response, json_response

if TYPE_CHECKING:
    from .server import Server

__all__ = ["AdminApi"]

log = logging.getLogger("clipperlab.admin")

_SAFE = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


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
        self.token = server.cfg.admin_token
        self.metrics_text = metrics_text

    def __call__(self, req: Request) -> bytes:
        try:
            if self.token:
                auth = req.headers.get(b"authorization", b"").decode("latin-1")
                given = auth[7:] if auth.startswith("Bearer ") else ""
                given = given or req.headers.get(b"x-clipperlab-token", b"").decode("latin-1")
                if not hmac.compare_digest(given, self.token):
                    raise _Bad(401, "the admin API needs the configured token")
            path = req.path.rstrip("/")
            if not path.startswith("/admin/"):
                raise _Bad(404, f"no route {path}; admin paths start with /admin/")
            op = path[len("/admin/") :]
            if op == "upload_model":
                return json_response(200, self.upload(req))
            body: dict[str, Any] = {}
            if req.body:
                try:
                    body = json.loads(req.body)
                except (ValueError, UnicodeDecodeError) as e:
                    raise _Bad(400, f"request body is not valid JSON: {e}") from None
                if not isinstance(body, dict):
                    raise _Bad(400, "request body must be a JSON object")
            fn = getattr(self, "op_" + op, None)
            if fn is None:
                raise _Bad(404, f"unknown admin operation {op!r}")
            return json_response(200, fn(body))
        except _Bad as e:
            return self._error(req, e.status, str(e))
        except NotFound as e:
            return self._error(req, 404, str(e))
        except Conflict as e:
            return self._error(req, 409, str(e))
        except (ConfigError, EngineError, ValueError, TypeError, KeyError) as e:
            return self._error(req, 400, str(e))

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
        spec = self.server.add_model(body)
        return {"model": spec.to_dict()}

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
