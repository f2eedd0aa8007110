"""The admin API (port 1338): Clipper's management paths under ``/admin/`` plus ours.

Clipper's (POST, JSON; the paths and fields of ``clipper_admin`` and Clipper's management
frontend): ``add_app``, ``delete_app`` ``{name}`` (the application, its links and
selection state go, its models stay; its queries in flight are answered), ``add_model`` (with
``batch_size``: -1 adaptive, N a cap, policy ``fixed``, and the version not activated; a
``container_name`` that is not one of our kinds is a docker image, kept as metadata, never
run here: no replicas),
``delete_versioned_model`` (the version stops serving: the active one's replicas go to 0;
it stays listed, as in Clipper), ``add_model_links``, ``delete_model_links``,
``set_model_version``, ``get_all_applications``, ``get_application`` (``{}`` when unknown),
``get_linked_models``, ``get_all_models`` (``verbose``: one row per version with
``model_name``, ``model_version``, ``is_current_version``, ``input_type``, ``labels``,
``container_name``, ``model_data_path``, ``batch_size``), ``get_model`` (with
``model_version``: that row, ``{}`` when unknown), ``get_all_containers`` (the replicas
connected: ``name:version:replica_id``, or rows), ``get_container``, ``get_state``,
``ping`` (GET too).  Success answers are JSON objects (Clipper answers text such as
``Success!``; ``clipper_admin`` reads only the status of a write).  Ours:
``get_all_apps``/``get_app`` (404 when unknown), ``remove_model_links``, ``remove_app``
and ``delete_application`` (``delete_app``), ``rollback``
``{model_name, model_version?}``, ``set_replicas`` ``{model_name, replicas}``,
``set_policy`` ``{app_name, policy, policy_params?}`` (``policy``: a built-in name,
``package.module:Class``, ``/path/to/file.py:Class`` or an entry point of group
``clipperlab.selection``; imported and checked on the server, a 400 naming the value when
it is not a ``SelectionPolicy`` that can be built from ``policy_params``), ``update_app``
``{name, ...changes}`` (fields and aliases of the one config schema,
``clipperlab.engine.schema``), ``inspect``, ``metrics`` (JSON), ``upload_model?name=N&
version=V&ext=E`` (raw body: the serialized model; returns the path to give ``add_model``).
Outside ``/admin/``: ``GET /metrics`` (Prometheus text, as on the query port) and
``GET /openapi.json`` (this port's OpenAPI document, ``real/openapi.py``).

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
  ``get_all_apps``, ``get_all_applications``, ``get_all_models``, ``get_all_containers``,
  ``inspect``, ``metrics``, else 405.  A body nests at most ``max_nesting`` deep.
- Without a token, ``add_model`` of kind ``sklearn``, ``torch`` or ``python`` takes only a
  file inside the store's model folder (what ``upload_model`` returns; a ``python``
  ``module:function`` reference needs the token too): 403 naming the folder.  Likewise a
  policy (``set_policy``, ``add_app``/``update_app`` ``policy``, ``add_model``
  ``batching.policy``) is then a built-in name or an installed entry point: a
  ``module:Class`` or ``file.py:Class`` imports code, 403.
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
from clipperlab.engine.plugins import is_reference

from .config import model_from_dict
from .http import Request, error_response, json_response, response
from .inputs import BadInput, check_nesting
from .openapi import ADMIN_READS, admin_document

if TYPE_CHECKING:
    from .server import Server

__all__ = ["AdminApi"]

log = logging.getLogger("clipperlab.admin")

_SAFE = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
# the operations a GET (or HEAD) may ask for: reads without a body
_READS = ADMIN_READS
# Clipper's add_model: batch_size -1 lets the replicas adapt (AIMD), N caps every batch;
# a container_name that is not one of our kinds is a docker image, which we never run
# (its containers connect by hand), and "NO_CONTAINER" is Clipper's containerless model
_CLIPPER_ADAPTIVE_BATCH = -1
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
            if path in ("/metrics", "/openapi.json"):
                return self._document(req, path)
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

    def _document(self, req: Request, path: str) -> bytes:
        """``GET /metrics`` (Prometheus text) and ``GET /openapi.json`` (this port's
        OpenAPI document) on the admin port."""
        if req.method not in ("GET", "HEAD"):
            raise _Bad(405, f"{path} takes GET, not {req.method}")
        if path == "/openapi.json":
            return json_response(200, admin_document())
        if self.metrics_text is None:
            raise _Bad(404, "metrics are not enabled")
        return response(200, self.metrics_text(), b"text/plain; version=0.0.4")

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
        self._check_policy(body.get("policy"), "add_app", "policy")
        return {"app": self.server.add_app(body).to_dict()}

    def op_add_model(self, body: dict[str, Any]) -> Any:
        body = _clipper_model(body)
        batching = body.get("batching")
        if isinstance(batching, dict):
            self._check_policy(batching.get("policy"), "add_model", "batching.policy")
        self._check_code_path(body)
        spec = self.server.add_model(body)
        return {"model": spec.to_dict()}

    def _check_policy(self, policy: Any, op: str, field: str) -> None:
        """Without a token, a policy is a built-in name or an installed entry point:
        ``module:Class`` and ``file.py:Class`` import code, as loading a pickle runs it."""
        if self.token or not isinstance(policy, str) or not is_reference(policy):
            return
        raise _Bad(
            403,
            f"{op}: {field} {policy!r} imports code (module:Class or file.py:Class), so it"
            " needs admin_token; without it give a built-in name or an installed entry point",
        )

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

    def op_delete_model_links(self, body: dict[str, Any]) -> Any:
        """Clipper's name for ``remove_model_links``."""
        return self.op_remove_model_links(body)

    def op_get_all_apps(self, body: dict[str, Any]) -> Any:
        reg = self.server.engine.registry
        if body.get("verbose"):
            return [self._app(n) for n in reg.apps]
        return list(reg.apps)

    def op_get_all_applications(self, body: dict[str, Any]) -> Any:
        """Clipper's name for ``get_all_apps``."""
        return self.op_get_all_apps(body)

    def op_get_app(self, body: dict[str, Any]) -> Any:
        return self._app(str(_pick_name(body, "name", "app_name")))

    def op_get_application(self, body: dict[str, Any]) -> Any:
        """Clipper's ``get_application``: ``{}`` for an unknown name (``clipper_admin``'s
        ``get_app_info`` turns that into None)."""
        name = str(_need(body, "name"))
        return self._app(name) if name in self.server.engine.registry.apps else {}

    def op_get_linked_models(self, body: dict[str, Any]) -> Any:
        name = str(_need(body, "app_name"))
        reg = self.server.engine.registry
        reg.app(name)
        return list(reg.links[name])

    def _app(self, name: str) -> dict[str, Any]:
        reg = self.server.engine.registry
        d = reg.app(name).to_dict()
        d["linked_models"] = list(reg.links[name])
        d["latency_slo_micros"] = int(round(d["slo_s"] * 1e6))
        return d

    def op_get_all_models(self, body: dict[str, Any]) -> Any:
        """Names ``name:version``, or (``verbose``) one row per version: Clipper's fields
        (``model_name``, ``model_version``, ``is_current_version``...) and ours."""
        reg = self.server.engine.registry
        if body.get("verbose"):
            return [self._model(n, v) for n, vs in reg.models.items() for v in vs]
        return [f"{n}:{v}" for n, vs in reg.models.items() for v in vs]

    def op_get_model(self, body: dict[str, Any]) -> Any:
        """With ``model_version`` (Clipper's request): that version's row, ``{}`` when it
        does not exist; without: the active version's row (404 when unknown)."""
        name = str(_pick_name(body, "model_name", "name"))
        version = body.get("model_version")
        if version is None:
            return self._model(name)
        versions = self.server.engine.registry.models.get(name, {})
        return self._model(name, str(version)) if str(version) in versions else {}

    def _model(self, name: str, version: str | None = None) -> dict[str, Any]:
        reg = self.server.engine.registry
        spec = reg.model(name, version)
        md = spec.metadata
        return {
            "model_name": name,
            "model_version": spec.version,
            "is_current_version": reg.active[name] == spec.version,
            "input_type": spec.input_type,
            "labels": list(md.get("labels", [])),
            "container_name": md.get("container_name", md.get("kind", "")),
            "model_data_path": md.get("path", ""),
            "batch_size": _clipper_batch_size(spec.batching.to_dict()),
            "active_version": reg.active[name],
            "versions": list(reg.models[name]),
            "history": list(reg.history[name]),
            "replicas": self.server.replicas_wanted.get(name, 0),
            "spec": spec.to_dict(),
        }

    def op_get_all_containers(self, body: dict[str, Any]) -> Any:
        """The replicas connected now: ``name:version:replica_id``, or (``verbose``)
        Clipper's container rows."""
        rows = [self._container(r) for r in sorted(self.server.driver.links)]
        if body.get("verbose"):
            return rows
        return [f"{r['model_id']}:{r['model_replica_id']}" for r in rows]

    def op_get_container(self, body: dict[str, Any]) -> Any:
        """One connected replica's row, ``{}`` when there is none."""
        name = str(_need(body, "model_name"))
        version = str(_need(body, "model_version"))
        rid = _need(body, "replica_id")
        if not isinstance(rid, int) or isinstance(rid, bool):
            raise _Bad(400, f"replica_id must be an integer, got {rid!r}")
        for r in self.server.driver.links:
            if (r.model, r.version, r.ordinal) == (name, version, rid):
                return self._container(r)
        return {}

    def _container(self, r: Any) -> dict[str, Any]:
        spec = self.server.engine.registry.models.get(r.model, {}).get(r.version)
        return {
            "model_id": f"{r.model}:{r.version}",
            "model_name": r.model,
            "model_version": r.version,
            "model_replica_id": r.ordinal,
            "input_type": spec.input_type if spec is not None else "",
        }

    def op_get_state(self, body: dict[str, Any]) -> Any:
        """An application's selection state for a user (``uid``, Clipper's default 0 is
        the shared state): the models' selection probabilities and the default output."""
        name = str(_need(body, "app_name"))
        uid = body.get("uid", 0)
        if uid is not None and (not isinstance(uid, int | str) or isinstance(uid, bool)):
            raise _Bad(400, f"uid must be an integer or a string, got {uid!r}")
        eng = self.server.engine
        app = eng.registry.app(name)
        ctx = None if uid in (0, None) else uid
        return {"app_name": name, "uid": uid, "default_output": app.default_output,
                "probabilities": eng.probabilities(name, ctx)}

    def op_delete_versioned_model(self, body: dict[str, Any]) -> Any:
        """Clipper's ``delete_versioned_model``: that version stops serving.  Clipper marks
        it invalid and keeps listing it; here it stays listed too, and when it is the
        active version its replicas go to 0 (``clipper_admin.stop_models`` stops its
        containers before it calls this)."""
        name = str(_need(body, "model_name"))
        version = str(_need(body, "model_version"))
        reg = self.server.engine.registry
        reg.model(name, version)
        stopped = reg.active[name] == version and self.server.replicas_wanted.get(name, 0) > 0
        if stopped:
            self.server.set_replicas(name, 0)
        return {"model_name": name, "model_version": version, "replicas_stopped": stopped}

    def op_delete_app(self, body: dict[str, Any]) -> Any:
        """Clipper's ``delete_app`` ``{name}``: the application goes (404 when unknown),
        with its links and selection state, here, in the store and on the other frontends;
        its models stay.  Its queries already admitted are still answered; later ones get
        404 as for an unknown application."""
        name = str(_need(body, "name"))
        self.server.remove_app(name)
        return {"name": name, "deleted": True}

    def op_delete_application(self, body: dict[str, Any]) -> Any:
        """The same as ``delete_app``."""
        return self.op_delete_app(body)

    def op_remove_app(self, body: dict[str, Any]) -> Any:
        """Ours (as ``remove_model_links`` beside ``delete_model_links``): ``delete_app``."""
        return self.op_delete_app(body)

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
        image = self.server.engine.registry.model(name).metadata.get("container_name")
        if image and n > 0:
            raise _Bad(
                409,
                f"model {name!r} is the docker image {image!r} (registered the Clipper way);"
                " clipperlab does not run docker images: start its containers yourself",
            )
        self.server.set_replicas(name, n)
        return {"model_name": name, "replicas": n}

    def op_set_policy(self, body: dict[str, Any]) -> Any:
        name = str(_need(body, "app_name"))
        changes: dict[str, Any] = {"policy": str(_need(body, "policy"))}
        self._check_policy(changes["policy"], "set_policy", "policy")
        if "policy_params" in body:
            changes["policy_params"] = dict(body["policy_params"])
        return {"app": self.server.update_app(name, changes).to_dict()}

    def op_update_app(self, body: dict[str, Any]) -> Any:
        name = str(_need(body, "name"))
        changes = {k: v for k, v in body.items() if k != "name"}
        self._check_policy(changes.get("policy"), "update_app", "policy")
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


def _clipper_model(body: dict[str, Any]) -> dict[str, Any]:
    """``add_model`` as ``clipper_admin.register_model`` sends it, in our fields: with
    ``batch_size`` the version is not activated (Clipper's ``set_model_version`` does that;
    a model's first version is active anyway); ``batch_size`` -1 is adaptive (the default
    AIMD), N >= 1 batches of at most N (policy ``fixed``); a ``container_name`` that is a
    docker image is kept as metadata, and the model is ``noop`` with no replicas started
    here (its containers connect by hand)."""
    from .models import MODEL_KINDS

    out = dict(body)
    if "batch_size" in out:
        # Clipper's add_model registers a version; set_model_version makes it current
        out.setdefault("activate", False)
        n = out.pop("batch_size")
        if isinstance(n, bool) or not isinstance(n, int) or (n < 1 and n != -1):
            raise _Bad(400, f"add_model: batch_size must be -1 (adaptive) or an integer >= 1,"
                            f" got {n!r}")
        if n != _CLIPPER_ADAPTIVE_BATCH:
            if "batching" in out:
                raise _Bad(400, "add_model: give batch_size or batching, not both")
            out["batching"] = {"policy": "fixed", "max_batch_size": n}
    image = out.get("container_name")
    if isinstance(image, str) and image not in MODEL_KINDS:
        out.pop("container_name")
        out["kind"] = "noop"
        out.setdefault("replicas", 0)
        md = out.get("metadata")
        out["metadata"] = {**(md if isinstance(md, dict) else {}), "container_name": image}
    return out


def _clipper_batch_size(batching: dict[str, Any]) -> int:
    """Clipper's ``batch_size`` of a model: its cap under ``fixed``, else -1 (adaptive)."""
    return int(batching["max_batch_size"]) if batching["policy"] == "fixed" else -1


def _pick_name(body: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if k in body:
            return body[k]
    raise _Bad(400, f"field {keys[0]!r} is required")
