"""``deploy.toml``: the server's settings and what to deploy at start, with embedded defaults.

Layout (every key optional; see ``examples/deploy.toml``)::

    [server]            # ports (0 = ephemeral), hosts, store directory, limits
    [[applications]]    # name, slo_ms, default_output, input_type, policy, models = [...]
    [[models]]          # name, version, kind, path, replicas, input_type, [models.batching]

Rules: unknown keys are errors naming the key and the section; applications and models
follow the one schema both drivers share (``clipperlab.engine.schema``: ``[[apps]]``,
``slo_s``, ``latency_slo_micros``, ``model_name``... are accepted; a policy may name a class
of one's own as ``module:Class`` or ``file.py:Class``, a relative file taken from this
file's folder) and are checked when the file is read, errors naming the file and the
field; the server's own model fields are ``kind`` (Clipper: ``container_name``), ``path``
(``model_data_path``), ``labels``, ``options``, ``activate`` and ``resources`` (what a
container placed by Ray asks for: ``num_cpus``, ``num_gpus``, ``memory`` and custom
resources such as a host label, each a number >= 0; the local manager ignores it).
Applications and models from the file are added only when the store does not have them
yet (the store wins after a restart); the admin API listens beyond loopback only with
``admin_token`` set.  Errors
are the engine's ``ConfigError`` (re-exported here).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from clipperlab.engine import Application, ConfigError, ModelSpec
from clipperlab.engine.registry import AIMD_STEPS
from clipperlab.engine.schema import (
    application_tables,
    parse_application,
    parse_document,
    parse_model,
)

from .gctune import MALLOC_KEEP_MB, MALLOC_KEEP_MB_MAX

__all__ = ["ConfigError", "ServerConfig", "app_from_dict", "load_config", "model_from_dict"]

# the server's own fields of a [[models]] table, canonical name first, then Clipper's
_SERVER_MODEL_FIELDS = {"kind": ("kind", "container_name"), "path": ("path", "model_data_path"),
                        "labels": ("labels",), "options": ("options",),
                        "activate": ("activate",), "resources": ("resources",)}


def app_from_dict(
    d: Mapping[str, Any], where: str = "application", base_dir: Path | None = None
) -> Application:
    """An ``Application`` from a table of the shared schema (Clipper's ``add_app`` fields
    or ours); linked ``models`` are read by the caller."""
    return parse_application(d, where, base_dir).app


# a model's batching settings the server decides where the model's table leaves them
# unsaid (``[server]`` keys of the same names): its overload settings, and AIMD's rule
MODEL_DEFAULT_KEYS = ("admission_control", "drop_hopeless", "aimd_step_from")


def with_server_defaults(spec: ModelSpec, said: Mapping[str, Any],
                         defaults: Mapping[str, Any]) -> ModelSpec:
    """``spec`` with the server's settings (``defaults``: ``admission_control``,
    ``drop_hopeless``, ``aimd_step_from``) for those its batching table (``said``) leaves
    unsaid: how the server deploys a model, and so how its simulated twin must
    (``calibration.server``)."""
    unsaid: dict[str, Any] = {k: defaults[k] for k in MODEL_DEFAULT_KEYS
                              if k in defaults and k not in said}
    if not unsaid:
        return spec
    return replace(spec, batching=replace(spec.batching, **unsaid))


def model_from_dict(
    d: Mapping[str, Any], max_queue: int, where: str = "model", base_dir: Path | None = None
) -> tuple[ModelSpec, int]:
    """A ``ModelSpec`` and its replica count from a table of the shared schema plus the
    server's own fields (Clipper's ``add_model`` fields or ours); the container kind and
    path go into the spec's metadata, ``max_queue`` bounds a queue the model leaves open."""
    from .models import MODEL_KINDS

    spec, replicas, extra = parse_model(
        d, where, [a for names in _SERVER_MODEL_FIELDS.values() for a in names], base_dir
    )
    given = {k: [a for a in names if a in extra] for k, names in _SERVER_MODEL_FIELDS.items()}
    for names in given.values():
        if len(names) > 1:
            raise ConfigError(f"{where}: expected one of {', '.join(names)}, got both")
    val = {k: extra[names[0]] for k, names in given.items() if names}
    kind = val.get("kind", "noop")
    if kind not in MODEL_KINDS:
        raise ConfigError(f"{where}.{given['kind'][0]}: expected one of "
                          f"{', '.join(MODEL_KINDS)}, got {kind!r}")
    path = val.get("path", "")
    if not isinstance(path, str):
        raise ConfigError(f"{where}.{given['path'][0]}: expected a path, got {path!r}")
    md: dict[str, Any] = {**spec.metadata, "kind": kind, "path": path}
    if val.get("options"):
        if not isinstance(val["options"], Mapping):
            raise ConfigError(f"{where}.options: expected a table, got {val['options']!r}")
        md["options"] = dict(val["options"])
    if val.get("labels"):
        if not isinstance(val["labels"], list):
            raise ConfigError(f"{where}.labels: expected a list, got {val['labels']!r}")
        md["labels"] = list(val["labels"])
    if "resources" in val:
        md["resources"] = _resources(val["resources"], f"{where}.resources")
    batching = spec.batching
    if batching.max_queue is None:
        batching = replace(batching, max_queue=max_queue)
    return replace(spec, batching=batching, metadata=md), replicas


def _resources(res: Any, where: str) -> dict[str, float]:
    """A ``[models.resources]`` table: resource names to amounts >= 0 (Ray's units)."""
    if not isinstance(res, Mapping):
        raise ConfigError(f"{where}: expected a table of resource amounts, got {res!r}")
    out: dict[str, float] = {}
    for k, v in res.items():
        if not isinstance(k, str) or not k:
            raise ConfigError(f"{where}: resource names are non-empty strings, got {k!r}")
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < 1e18:
            raise ConfigError(f"{where}.{k} = {v!r} must be a number >= 0")
        out[k] = v
    return out


def _canonical_model(d: Mapping[str, Any], spec: ModelSpec) -> dict[str, Any]:
    """The table with one spelling (``name``, ``version``, ``kind``, ``path``) and its
    batching policy as read (a relative ``file.py:Class`` made absolute)."""
    out = {k: v for k, v in d.items()
           if k not in ("model_name", "model_version", "container_name", "model_data_path")}
    out["name"], out["version"] = spec.name, spec.version
    for alias, canon in (("container_name", "kind"), ("model_data_path", "path")):
        if alias in d:
            out[canon] = d[alias]
    if "batching" in d:
        out["batching"] = {**d["batching"], "policy": spec.batching.policy}
    return out


def _canonical_app(d: Mapping[str, Any], app: Application) -> dict[str, Any]:
    out = {k: v for k, v in d.items() if k != "candidate_model_names"}
    if "candidate_model_names" in d:
        out["models"] = d["candidate_model_names"]
    if "policy" in d:
        out["policy"] = app.policy
    return out


@dataclass(slots=True, kw_only=True)
class ServerConfig:
    host: str = "127.0.0.1"
    query_port: int = 1337
    admin_host: str = "127.0.0.1"
    admin_port: int = 1338
    admin_token: str = ""
    # OIP v2 over gRPC (real/oip_grpc.py) on the query host: Triton's 8001 by default, 0 when
    # query_port is 0 (ephemeral like it) unless set; grpc = false turns it off
    grpc: bool = True
    grpc_port: int | None = None
    rpc_host: str = "127.0.0.1"
    rpc_port: int = 7000
    rpc_secret: str = ""
    # the container RPC (real/rpc.py): see README "Container RPC"
    rpc_secret_file: str = ""
    rpc_hello_timeout_s: float = 5.0
    rpc_max_hello_frame_bytes: int = 64 << 10
    rpc_max_frame_bytes: int = 256 << 20
    rpc_tls_cert: str = ""
    rpc_tls_key: str = ""
    rpc_tls_ca: str = ""
    rpc_tls_server_name: str = ""
    store: str = "clipperlab-store"
    # several frontends on one Redis store (real/store_redis.py, real/sync.py): see README
    # "Running on several machines"
    store_dir: str = "clipperlab-store"
    rpc_advertise: str = ""
    frontend_ttl_s: float = 5.0
    selection_sync: str = "merge"
    selection_merge_every_s: float = 1.0
    max_body_bytes: int = 16 << 20
    admin_max_body_bytes: int = 1 << 30
    # what one client may send (real/http.py, real/frontend.py): see README "Limits"
    max_batch_items: int = 1000
    max_nesting: int = 32
    max_url_bytes: int = 8 << 10
    max_header_bytes: int = 64 << 10
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    idle_timeout_s: float = 60.0
    max_connections: int = 900
    # the fair scheduler (real/http.py) once requests arrive faster than they are parsed:
    # it parses for at most parse_turn_ms before polling again (a container's batch result
    # waits for that poll), and parses small reads at once up to parse_inline_bytes_per_ms
    parse_turn_ms: float = 0.5
    parse_inline_bytes_per_ms: int = 16 << 10
    # browsers and the admin API (real/admin.py): Origins and Host names let in
    admin_allowed_origins: list[str] = field(default_factory=list)
    admin_allowed_hosts: list[str] = field(default_factory=list)
    heartbeat_interval_s: float = 0.5
    missed_heartbeats: int = 4
    max_queue: int = 10_000
    cache: bool = True
    cache_capacity_bytes: int = 32 << 20
    save_state_every_s: float = 5.0
    seed: int = 0
    decision_log: bool = False
    remember_queries: int = 20_000
    # bounded state (engine/_state.py, engine/_answers.py): see README "Overload and memory"
    remember_bytes: int = 64 << 20
    max_user_states: int = 10_000
    # overload (engine/core.py): models' defaults unless [models.batching] says otherwise
    admission_control: bool = True
    drop_hopeless: bool = True
    # AIMD's rule for models whose [models.batching] does not say (engine/batching.py):
    # "filled" holds the cap over a batch the queue did not fill, where the paper's
    # prototype ("sent", the engine's default) steps from it, so that a lull of a few
    # milliseconds does not reset the cap to 3 and shed the burst behind it
    aimd_step_from: str = "filled"
    tune_gc: bool = True
    # buffers up to this size kept in the heap, not mapped afresh (real/gctune.tune_malloc)
    malloc_keep_mb: int = MALLOC_KEEP_MB
    manage_containers: bool = True
    # who starts containers (real/manager.py): "local" processes, "ray" actors, or "none"
    containers: str = "local"
    ray_address: str = ""
    container_log_dir: str = ""
    applications: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)

    @property
    def model_defaults(self) -> dict[str, Any]:
        """The batching settings a model takes where its batching leaves them unsaid
        (``with_server_defaults``)."""
        return {k: getattr(self, k) for k in MODEL_DEFAULT_KEYS}

    def check(self) -> None:
        if self.grpc_port is None:
            self.grpc_port = 8001 if self.query_port != 0 else 0
        if not isinstance(self.grpc, bool):
            raise ConfigError(f"server.grpc = {self.grpc!r} must be true or false")
        for name in ("query_port", "admin_port", "rpc_port", "grpc_port"):
            v = getattr(self, name)
            if not isinstance(v, int) or not 0 <= v <= 65535:
                raise ConfigError(f"server.{name} = {v!r} must be a port number in [0, 65535]")
        if self.admin_host not in ("127.0.0.1", "localhost", "::1") and not self.admin_token:
            raise ConfigError(
                f"server.admin_host = {self.admin_host!r} is beyond loopback;"
                " set server.admin_token so that the admin API can refuse strangers"
            )
        if self.max_body_bytes < 1024:
            raise ConfigError(f"server.max_body_bytes = {self.max_body_bytes} must be >= 1024")
        self._check_http_limits()
        if self.max_queue < 1:
            raise ConfigError(f"server.max_queue = {self.max_queue} must be >= 1")
        keep = self.malloc_keep_mb
        if isinstance(keep, bool) or not isinstance(keep, int) or not (
                0 <= keep <= MALLOC_KEEP_MB_MAX):
            raise ConfigError(f"server.malloc_keep_mb = {keep!r} must be MiB in"
                              f" [0, {MALLOC_KEEP_MB_MAX}] (0: the C library's defaults)")
        if self.heartbeat_interval_s <= 0 or self.missed_heartbeats < 1:
            raise ConfigError("server.heartbeat_interval_s must be > 0, missed_heartbeats >= 1")
        self._check_several_frontends()
        self._check_bounded_state()
        self._check_rpc()
        if self.containers not in ("local", "ray", "none"):
            raise ConfigError(f"server.containers = {self.containers!r} must be one of"
                              " 'local', 'ray', 'none'")

    def _check_several_frontends(self) -> None:
        for name in ("frontend_ttl_s", "selection_merge_every_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= 3600:
                raise ConfigError(f"server.{name} = {v!r} must be seconds in (0, 3600]")
        if self.selection_sync not in ("merge", "partition"):
            raise ConfigError(f"server.selection_sync = {self.selection_sync!r} must be"
                              " 'merge' or 'partition'")
        host, _, port = self.rpc_advertise.rpartition(":")
        if self.rpc_advertise and not (host and port.isdigit() and 0 < int(port) < 65536):
            raise ConfigError(f"server.rpc_advertise = {self.rpc_advertise!r} must be"
                              " HOST:PORT (what containers on other hosts dial)")
        if self.store.startswith(("redis://", "rediss://", "unix://")):
            try:
                import redis  # noqa: F401
            except ImportError:
                raise ConfigError(f"server.store = {self.store!r} needs the redis package:"
                                  " pip install 'clipperlab[redis]'") from None

    def _check_rpc(self) -> None:
        v = self.rpc_hello_timeout_s
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= 3600:
            raise ConfigError(f"server.rpc_hello_timeout_s = {v!r} must be seconds in (0, 3600]")
        hi = self.rpc_max_frame_bytes
        if isinstance(hi, bool) or not isinstance(hi, int) or not 1 << 16 <= hi < 1 << 32:
            raise ConfigError(f"server.rpc_max_frame_bytes = {hi!r} must be an integer in"
                              f" [{1 << 16}, {(1 << 32) - 1}] (the frame length is 32 bits)")
        lo = self.rpc_max_hello_frame_bytes
        if isinstance(lo, bool) or not isinstance(lo, int) or not 1024 <= lo <= hi:
            raise ConfigError(f"server.rpc_max_hello_frame_bytes = {lo!r} must be an integer"
                              f" in [1024, rpc_max_frame_bytes = {hi}]")
        if self.rpc_secret and self.rpc_secret_file:
            raise ConfigError("server.rpc_secret and server.rpc_secret_file are both set;"
                              " set one (a file keeps the secret out of deploy.toml)")
        self.resolved_rpc_secret()
        if bool(self.rpc_tls_cert) != bool(self.rpc_tls_key):
            raise ConfigError("server.rpc_tls_cert and server.rpc_tls_key go together;"
                              f" got cert {self.rpc_tls_cert!r}, key {self.rpc_tls_key!r}")
        for name in ("rpc_tls_cert", "rpc_tls_key", "rpc_tls_ca"):
            f = getattr(self, name)
            if f and not Path(f).is_file():
                raise ConfigError(f"server.{name} = {f!r} is not a readable file")

    def resolved_rpc_secret(self) -> str:
        """The container RPC's shared secret: ``rpc_secret_file``'s content (trailing
        whitespace dropped), else ``rpc_secret``, else ``$CLIPPERLAB_RPC_SECRET``, else
        none (only loopback containers may connect)."""
        if self.rpc_secret_file:
            try:
                text = Path(self.rpc_secret_file).read_text().rstrip()
            except (OSError, UnicodeDecodeError) as e:
                raise ConfigError(f"server.rpc_secret_file = {self.rpc_secret_file!r}:"
                                  f" cannot read it ({e})") from None
            if not text:
                raise ConfigError(f"server.rpc_secret_file = {self.rpc_secret_file!r} is empty")
            return text
        return self.rpc_secret or os.environ.get("CLIPPERLAB_RPC_SECRET", "")

    def _check_http_limits(self) -> None:
        for name, low in (("max_batch_items", 1), ("max_nesting", 2), ("max_connections", 1),
                          ("max_url_bytes", 256), ("max_header_bytes", 8192)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"server.{name} = {v!r} must be an integer >= {low}")
        for name in ("header_timeout_s", "body_timeout_s", "idle_timeout_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < 1e9:
                raise ConfigError(f"server.{name} = {v!r} must be a number of seconds > 0")
        v = self.parse_turn_ms
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= 1000:
            raise ConfigError(f"server.parse_turn_ms = {v!r} must be milliseconds in (0, 1000]")
        v = self.parse_inline_bytes_per_ms
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 1 << 30:
            raise ConfigError(f"server.parse_inline_bytes_per_ms = {v!r} must be an integer"
                              f" in [0, {1 << 30}]")
        for name in ("admin_allowed_origins", "admin_allowed_hosts"):
            v = getattr(self, name)
            if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
                raise ConfigError(f"server.{name} = {v!r} must be a list of strings")

    def _check_bounded_state(self) -> None:
        for name, low in (("remember_queries", 0), ("remember_bytes", 0),
                          ("max_user_states", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"server.{name} = {v!r} must be an integer >= {low}")
        for name in ("admission_control", "drop_hopeless"):
            v = getattr(self, name)
            if not isinstance(v, bool):
                raise ConfigError(f"server.{name} = {v!r} must be true or false")
        if self.aimd_step_from not in AIMD_STEPS:
            raise ConfigError(f"server.aimd_step_from = {self.aimd_step_from!r} must be one "
                              f"of {', '.join(map(repr, AIMD_STEPS))}")
        v = self.save_state_every_s
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < 1e9:
            raise ConfigError(f"server.save_state_every_s = {v!r} must be seconds > 0")


_SERVER_KEYS = {f.name for f in fields(ServerConfig)} - {"applications", "models"}


def load_config(path: str | Path | None = None, **overrides: Any) -> ServerConfig:
    """Defaults, then the file's values, then ``overrides`` (command-line flags)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            raise ConfigError(f"config file {str(path)!r} does not exist") from None
        except OSError as e:
            raise ConfigError(f"config file {str(path)!r}: cannot read it ({e.strerror})"
                              ) from None
        data = parse_document(text, f"config file {str(path)!r}")
    unknown = set(data) - {"server", "applications", "apps", "models"}
    if unknown:
        raise ConfigError(
            f"{path}: unknown section(s) {sorted(unknown)}; expected server, applications "
            "(or apps), models"
        )
    server = data.get("server", {})
    bad = set(server) - _SERVER_KEYS
    if bad:
        raise ConfigError(f"{path}: unknown key(s) {sorted(bad)} in [server]")
    kw = dict(server)
    kw.update({k: v for k, v in overrides.items() if v is not None})
    cfg = ServerConfig(**kw)
    cfg.check()
    base_dir = Path(path).resolve().parent if path is not None else None
    try:
        models = data.get("models", [])
        if not isinstance(models, list):
            raise ConfigError(f"models: expected a list of tables ([[models]]), got {models!r}")
        for i, m in enumerate(models):
            spec, _ = model_from_dict(m, cfg.max_queue, f"models[{i}]", base_dir)
            cfg.models.append(_canonical_model(m, spec))
        key, apps = application_tables(data)
        for i, a in enumerate(apps):
            app = app_from_dict(a, f"{key}[{i}]", base_dir)
            cfg.applications.append(_canonical_app(a, app))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return cfg
