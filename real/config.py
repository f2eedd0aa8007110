"""``deploy.toml``: the server's settings and what to deploy at start, with embedded defaults.

Layout (every key optional; see ``examples/deploy.toml``)::

    [server]            # ports (0 = ephemeral), hosts, store directory, limits
    [[applications]]    # name, slo_ms, default_output, input_type, policy, models = [...]
    [[models]]          # name, version, kind, path, replicas, input_type, [models.batching]

Rules: unknown keys are errors naming the key and the section; applications and models
from the file are added only when the store does not have them yet (the store wins after
a restart); the admin API listens beyond loopback only with ``admin_token`` set.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "ServerConfig", "load_config"]


class ConfigError(ValueError):
    """A bad configuration value; the message names the key and the rule."""


@dataclass(slots=True, kw_only=True)
class ServerConfig:
    host: str = "127.0.0.1"
    query_port: int = 1337
    admin_host: str = "127.0.0.1"
    admin_port: int = 1338
    admin_token: str = ""
    rpc_host: str = "127.0.0.1"
    rpc_port: int = 7000
    rpc_secret: str = ""
    store: str = "clipperlab-store"
    max_body_bytes: int = 16 << 20
    admin_max_body_bytes: int = 1 << 30
    heartbeat_interval_s: float = 0.5
    missed_heartbeats: int = 4
    max_queue: int = 10_000
    cache: bool = True
    cache_capacity_bytes: int = 32 << 20
    save_state_every_s: float = 5.0
    seed: int = 0
    decision_log: bool = False
    remember_queries: int = 20_000
    tune_gc: bool = True
    manage_containers: bool = True
    container_log_dir: str = ""
    applications: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)

    def check(self) -> None:
        for name in ("query_port", "admin_port", "rpc_port"):
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
        if self.max_queue < 1:
            raise ConfigError(f"server.max_queue = {self.max_queue} must be >= 1")
        if self.heartbeat_interval_s <= 0 or self.missed_heartbeats < 1:
            raise ConfigError("server.heartbeat_interval_s must be > 0, missed_heartbeats >= 1")


_SERVER_KEYS = {f.name for f in fields(ServerConfig)} - {"applications", "models"}


def load_config(path: str | Path | None = None, **overrides: Any) -> ServerConfig:
    """Defaults, then the file's values, then ``overrides`` (command-line flags)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {str(path)!r} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {e}") from None
    unknown = set(data) - {"server", "applications", "models"}
    if unknown:
        raise ConfigError(
            f"{path}: unknown section(s) {sorted(unknown)}; expected server, applications, models"
        )
    server = data.get("server", {})
    bad = set(server) - _SERVER_KEYS
    if bad:
        raise ConfigError(f"{path}: unknown key(s) {sorted(bad)} in [server]")
    kw = dict(server)
    kw.update({k: v for k, v in overrides.items() if v is not None})
    cfg = ServerConfig(**kw)
    cfg.applications = list(data.get("applications", []))
    cfg.models = list(data.get("models", []))
    for i, a in enumerate(cfg.applications):
        if not isinstance(a, dict) or "name" not in a:
            raise ConfigError(f"{path}: applications[{i}] needs a name")
    for i, m in enumerate(cfg.models):
        if not isinstance(m, dict) or "name" not in m:
            raise ConfigError(f"{path}: models[{i}] needs a name")
    cfg.check()
    return cfg
