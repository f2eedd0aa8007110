"""Python clients for a running server: ``AdminClient`` (port 1338) and ``QueryClient``.

Deploy a model in a few lines::

    from clipperlab.real.client import AdminClient, QueryClient
    admin = AdminClient("127.0.0.1:1338")
    admin.add_app("digits", slo_ms=20, default_output=-1)
    admin.deploy_sklearn("svm", estimator, app="digits")   # saves it, starts a container
    admin.wait_ready("digits")
    print(QueryClient("127.0.0.1:1337").predict("digits", [0.0] * 64))

Errors from the server raise ``ServerError`` with the HTTP status and the server's message.
"""

from __future__ import annotations

import http.client
import io
import json
import pickle
import time
import warnings
from typing import Any

__all__ = ["AdminClient", "QueryClient", "ServerError"]


class ServerError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class _Http:
    def __init__(self, address: str, token: str = "", timeout_s: float = 30.0) -> None:
        host, _, port = address.replace("http://", "").rstrip("/").rpartition(":")
        self.host, self.port = host or "127.0.0.1", int(port)
        self.token = token
        self.timeout_s = timeout_s
        self._conn: http.client.HTTPConnection | None = None

    def request(
        self, method: str, path: str, body: bytes | None = None, ctype: str = "application/json"
    ) -> Any:
        headers = {"Content-Type": ctype}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        for attempt in range(2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(
                    self.host, self.port, timeout=self.timeout_s
                )
            try:
                self._conn.request(method, path, body=body, headers=headers)
                resp = self._conn.getresponse()
                data = resp.read()
                break
            except (ConnectionError, http.client.HTTPException):
                self._conn.close()
                self._conn = None
                if attempt:
                    raise
        try:
            doc = json.loads(data) if data else None
        except ValueError:
            doc = data.decode(errors="replace")
        if resp.status >= 400:
            msg = doc.get("error", str(doc)) if isinstance(doc, dict) else str(doc)
            raise ServerError(resp.status, msg)
        return doc

    def post(self, path: str, obj: Any = None) -> Any:
        return self.request("POST", path, json.dumps(obj if obj is not None else {}).encode())

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class QueryClient(_Http):
    """Clipper's query API."""

    def predict(self, app: str, input: Any, uid: Any = None) -> dict[str, Any]:  # noqa: A002
        body: dict[str, Any] = {"input": _jsonable(input)}
        if uid is not None:
            body["uid"] = uid
        out: dict[str, Any] = self.post(f"/{app}/predict", body)
        return out

    def predict_batch(self, app: str, inputs: list[Any]) -> list[dict[str, Any]]:
        out = self.post(f"/{app}/predict", {"input_batch": [_jsonable(x) for x in inputs]})
        return list(out["batch_predictions"])

    def update(
        self,
        app: str,
        label: Any,
        input: Any = None,  # noqa: A002
        query_id: int | None = None,
        uid: Any = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"label": label}
        if input is not None:
            body["input"] = _jsonable(input)
        if query_id is not None:
            body["query_id"] = query_id
        if uid is not None:
            body["uid"] = uid
        out: dict[str, Any] = self.post(f"/{app}/update", body)
        return out

    def metrics(self) -> str:
        self.request("GET", "/healthz")
        assert self._conn is not None
        self._conn.request("GET", "/metrics")
        return self._conn.getresponse().read().decode()


def _jsonable(x: Any) -> Any:
    return x.tolist() if hasattr(x, "tolist") else x


class AdminClient(_Http):
    """The admin API: applications, models, versions, replicas, state."""

    def ping(self) -> bool:
        return bool(self.post("/admin/ping") == "pong")

    def add_app(
        self,
        name: str,
        *,
        slo_ms: float = 20.0,
        default_output: Any = None,
        input_type: str = "doubles",
        policy: str = "static",
        policy_params: dict[str, Any] | None = None,
        confidence_threshold: float = 0.0,
        input_shape: list[int] | None = None,
        models: list[str] | None = None,
    ) -> dict[str, Any]:
        body = {
            "name": name,
            "slo_ms": slo_ms,
            "default_output": default_output,
            "input_type": input_type,
            "policy": policy,
            "policy_params": policy_params or {},
            "confidence_threshold": confidence_threshold,
            "input_shape": input_shape,
        }
        if models:
            body["models"] = models
        out: dict[str, Any] = self.post("/admin/add_app", body)
        return out

    def add_model(
        self,
        name: str,
        version: str = "1",
        *,
        kind: str = "noop",
        path: str = "",
        input_type: str = "doubles",
        replicas: int = 1,
        batching: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        app: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model_name": name,
            "model_version": str(version),
            "kind": kind,
            "path": path,
            "input_type": input_type,
            "replicas": replicas,
            "batching": batching or {},
        }
        if options:
            body["options"] = options
        out: dict[str, Any] = self.post("/admin/add_model", body)
        if app is not None:
            self.link(app, [name])
        return out

    def upload(self, name: str, version: str, data: bytes, ext: str) -> str:
        out = self.request(
            "POST",
            f"/admin/upload_model?name={name}&version={version}&ext={ext}",
            data,
            "application/octet-stream",
        )
        return str(out["path"])

    def deploy_sklearn(
        self, name: str, estimator: Any, *, app: str | None = None, version: str = "1", **kw: Any
    ) -> dict[str, Any]:
        """Save ``estimator`` (joblib) into the server's store and start its containers."""
        import joblib  # type: ignore[import-untyped]

        buf = io.BytesIO()
        joblib.dump(estimator, buf)
        path = self.upload(name, str(version), buf.getvalue(), "joblib")
        return self.add_model(name, str(version), kind="sklearn", path=path, app=app, **kw)

    def deploy_torch(
        self,
        name: str,
        module: Any,
        *,
        app: str | None = None,
        version: str = "1",
        output: str = "raw",
        **kw: Any,
    ) -> dict[str, Any]:
        """Save ``module`` as TorchScript (or pickled when scripting fails) and deploy it."""
        import torch

        buf = io.BytesIO()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.jit.save(torch.jit.script(module), buf)
        except Exception:  # noqa: BLE001 - not scriptable: pickle the module
            buf = io.BytesIO()
            torch.save(module, buf)
        path = self.upload(name, str(version), buf.getvalue(), "pt")
        return self.add_model(
            name, str(version), kind="torch", path=path, app=app, options={"output": output}, **kw
        )

    def deploy_python(
        self, name: str, fn: Any, *, app: str | None = None, version: str = "1", **kw: Any
    ) -> dict[str, Any]:
        """Deploy a batch function (pickled by reference: it must be importable)."""
        path = self.upload(name, str(version), pickle.dumps(fn), "pkl")
        return self.add_model(name, str(version), kind="python", path=path, app=app, **kw)

    def delete_app(self, name: str) -> None:
        """Delete application ``name`` (Clipper's ``delete_app``): its links and selection
        state go, its models stay; its queries in flight are still answered."""
        self.post("/admin/delete_app", {"name": name})

    def link(self, app: str, models: list[str]) -> Any:
        return self.post("/admin/add_model_links", {"app_name": app, "model_names": models})

    def set_version(self, name: str, version: str) -> Any:
        return self.post(
            "/admin/set_model_version", {"model_name": name, "model_version": str(version)}
        )

    def rollback(self, name: str, version: str | None = None) -> str:
        body: dict[str, Any] = {"model_name": name}
        if version is not None:
            body["model_version"] = str(version)
        return str(self.post("/admin/rollback", body)["active_version"])

    def set_replicas(self, name: str, replicas: int) -> Any:
        return self.post("/admin/set_replicas", {"model_name": name, "replicas": replicas})

    def set_policy(self, app: str, policy: str, params: dict[str, Any] | None = None) -> Any:
        return self.post(
            "/admin/set_policy", {"app_name": app, "policy": policy, "policy_params": params or {}}
        )

    def get_app(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = self.post("/admin/get_app", {"name": name})
        return out

    def get_all_apps(self) -> list[str]:
        return list(self.post("/admin/get_all_apps"))

    def get_model(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = self.post("/admin/get_model", {"model_name": name})
        return out

    def inspect(self) -> dict[str, Any]:
        out: dict[str, Any] = self.post("/admin/inspect")
        return out

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = self.post("/admin/metrics")
        return out

    def wait_ready(
        self,
        app: str | None = None,
        model: str | None = None,
        timeout_s: float = 60.0,
        replicas: int = 1,
    ) -> None:
        """Wait until the active version of ``model`` (or every model linked to ``app``)
        has ``replicas`` connected replicas."""
        until = time.monotonic() + timeout_s
        while True:
            st = self.inspect()
            reg = st["registry"]
            names = [model] if model else reg["links"].get(app, [])
            up = st["replicas_connected"]
            ok = bool(names) and all(
                sum(1 for r in up if r.startswith(f"{n}:{reg['active'][n]}#")) >= replicas
                for n in names
            )
            if ok:
                return
            if time.monotonic() > until:
                raise TimeoutError(f"not ready after {timeout_s} s: wanted {names}, up {up}")
            time.sleep(0.05)
