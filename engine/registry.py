"""Applications, models, versions and links: the engine's administrative state.

Rules:
- An application has a latency objective (``slo_s``), a default output, an input type, a
  selection policy with its parameters, a confidence threshold and the models linked to it.
- A model has versions; exactly one is active.  New queries go to the active version;
  ``rollback`` makes the previously active version active again (or any named earlier one).
- Everything here is plain data that round-trips through ``to_dict``/``from_dict`` so the
  real server's store can persist it.  Config files (both drivers', the admin API) are
  read by ``engine.schema``, the one config schema, which builds these classes.
- Policies are checked when a config is built: a batching policy or a selection policy
  that names a class of one's own is imported then, and built once from the config.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .errors import ConfigError, Conflict, NotFound
from .selection import make_policy

__all__ = ["AIMD_STEPS", "INPUT_TYPES", "Application", "BatchingConfig", "ModelSpec", "Registry"]

INPUT_TYPES = ("integers", "floats", "doubles", "bytes", "strings")
# what AIMD grows its cap from after a fast batch (``BatchingConfig.aimd_step_from``)
AIMD_STEPS = ("sent", "cap", "filled")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchingConfig:
    """How each replica of a model forms batches.

    ``policy`` is one of ``none``, ``fixed``, ``aimd``, ``quantile`` (Clipper's), or the
    peers' shapes ``tfserving``, ``triton``, ``bentoml``, or a controller of one's own:
    ``package.module:Class``, ``path/to/file.py:Class`` or an entry point of group
    ``clipperlab.batching`` (``engine.plugins``), with its parameters in ``params``.
    ``wait_timeout_s`` turns on delayed batching for any policy: a batch below its cap is
    held until its oldest query has waited that long.  ``latency_bound_s`` is the batch
    latency objective; by default it is the smallest SLO of the applications the model is
    linked to.
    """

    policy: str = "aimd"
    max_batch_size: int = 1 << 16
    wait_timeout_s: float = 0.0
    latency_bound_s: float | None = None
    # AIMD (Clipper prototype): +2 below the hold band, hold in the last 10%, x0.9 above,
    # starting at 1 and stepping from the size just sent.  ``initial_batch_size`` and
    # ``aimd_step_from`` "cap" (step from the cap when the queue ran short) and "filled"
    # (grow only after a batch that filled the cap; hold the cap over one that did not,
    # so a lull does not reset it) are ours.
    additive_increase: int = 2
    backoff: float = 0.9
    hold_band: float = 0.1
    initial_batch_size: int = 1
    aimd_step_from: str = "sent"
    # Quantile regression (prototype: fit once at q=0.99 after 500-1000 AIMD batches);
    # ``fit_after_s`` fits earlier when that much time has passed since the first batch.
    quantile: float = 0.99
    fit_after_batches: int = 500
    fit_after_s: float | None = None
    refit_every_batches: int | None = None
    # Any policy: before a batch is formed, drop queued requests that cannot make their
    # deadline even if sent now (deadline < now + predicted latency of the batch); their
    # queries get the deadline default.  Off by default, as in Clipper, which drops only
    # requests whose deadline has already passed.
    drop_hopeless: bool = False
    # Any policy: admission control by predicted wait.  A query whose predicted queueing
    # wait (the queue ahead over the replicas' throughput, from their controllers' latency
    # lines) plus its own batch's latency already passes its deadline is answered at once
    # with the ``shed_predicted_late`` default, explained, and never queued.  Off by
    # default (the paper's figures); real mode turns it on (``server.admission_control``).
    admission_control: bool = False
    # TF-Serving: pad to allowed sizes; bound the queue to max_enqueued_batches batches.
    allowed_batch_sizes: tuple[int, ...] = ()
    max_enqueued_batches: int | None = None
    # Triton: preferred sizes are sent as soon as they can be filled.
    preferred_batch_sizes: tuple[int, ...] = ()
    # BentoML: cost-model tick and history window.
    tick_s: float = 0.001
    history_batches: int = 50
    refit_interval_s: float = 5.0
    # Any policy: refuse queries beyond this many queued (None: unbounded).
    max_queue: int | None = None
    # A custom controller's own parameters (built-in policies take none).
    params: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        _require(
            self.max_batch_size >= 1, f"max_batch_size must be >= 1, got {self.max_batch_size}"
        )
        _require(
            self.wait_timeout_s >= 0 and math.isfinite(self.wait_timeout_s),
            f"wait_timeout_s must be a finite number >= 0, got {self.wait_timeout_s}",
        )
        _require(
            self.latency_bound_s is None or self.latency_bound_s > 0,
            f"latency_bound_s must be > 0, got {self.latency_bound_s}",
        )
        _require(self.additive_increase >= 1, "additive_increase must be >= 1")
        _require(0 < self.backoff < 1, f"backoff must be in (0, 1), got {self.backoff}")
        _require(0 <= self.hold_band < 1, f"hold_band must be in [0, 1), got {self.hold_band}")
        _require(0 < self.quantile < 1, f"quantile must be in (0, 1), got {self.quantile}")
        _require(self.fit_after_batches >= 2, "fit_after_batches must be >= 2")
        _require(
            self.fit_after_s is None or self.fit_after_s > 0,
            f"fit_after_s must be > 0, got {self.fit_after_s}",
        )
        _require(
            1 <= self.initial_batch_size <= self.max_batch_size,
            f"initial_batch_size must be in [1, max_batch_size], got {self.initial_batch_size}",
        )
        _require(
            self.aimd_step_from in AIMD_STEPS,
            f"aimd_step_from must be one of {', '.join(map(repr, AIMD_STEPS))}, got "
            f"{self.aimd_step_from!r}",
        )
        _require(
            self.refit_every_batches is None or self.refit_every_batches >= 1,
            "refit_every_batches must be >= 1",
        )
        for name in ("allowed_batch_sizes", "preferred_batch_sizes"):
            sizes = getattr(self, name)
            _require(
                all(isinstance(s, int) and s >= 1 for s in sizes),
                f"{name} must hold positive integers, got {sizes!r}",
            )
        _require(self.tick_s > 0, f"tick_s must be > 0, got {self.tick_s}")
        _require(self.history_batches >= 2, "history_batches must be >= 2")
        _require(
            self.max_queue is None or self.max_queue >= 1,
            f"max_queue must be >= 1, got {self.max_queue}",
        )
        _require(
            self.max_enqueued_batches is None or self.max_enqueued_batches >= 1,
            "max_enqueued_batches must be >= 1",
        )
        from .batching import check_controller  # batching imports this module

        check_controller(self)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["params"] = dict(self.params)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BatchingConfig:
        """From ``to_dict``'s fields (config files: ``engine.schema.parse_batching``, which
        also checks each field's type)."""
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        _require(
            not unknown, f"unknown batching field(s) {sorted(unknown)}; known: {sorted(known)}"
        )
        kw = dict(data)
        for name in ("allowed_batch_sizes", "preferred_batch_sizes"):
            if name in kw:
                kw[name] = tuple(kw[name])
        return cls(**kw)


@dataclass(frozen=True, slots=True, kw_only=True)
class Application:
    """An application: what clients query by name."""

    name: str
    slo_s: float = 0.020
    default_output: Any = None
    input_type: str = "doubles"
    input_shape: tuple[int, ...] | None = None
    policy: str = "static"
    policy_params: Mapping[str, Any] = field(default_factory=dict)
    confidence_threshold: float = 0.0
    loss: str = "zero_one"

    def __post_init__(self) -> None:
        _require(
            bool(self.name) and "/" not in self.name,
            f"application name {self.name!r} must be non-empty without '/'",
        )
        _require(
            self.slo_s > 0 and math.isfinite(self.slo_s),
            f"slo_s of application {self.name!r} must be a finite number > 0, got {self.slo_s}",
        )
        _require(
            self.input_type in INPUT_TYPES,
            f"input_type {self.input_type!r} is unknown; expected one of {INPUT_TYPES}",
        )
        _require(
            0.0 <= self.confidence_threshold <= 1.0,
            f"confidence_threshold must be in [0, 1], got {self.confidence_threshold}",
        )
        _require(
            self.loss in ("zero_one", "absolute"),
            f"loss {self.loss!r} must be 'zero_one' or 'absolute'",
        )
        make_policy(self.policy, self.policy_params)  # a bad name or parameters fail here

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["policy_params"] = dict(self.policy_params)
        d["input_shape"] = list(self.input_shape) if self.input_shape is not None else None
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Application:
        """From ``to_dict``'s fields (config files: ``engine.schema.parse_application``,
        which reads the aliases and the links)."""
        kw = dict(data)
        unknown = set(kw) - set(cls.__dataclass_fields__)
        _require(not unknown, f"unknown application field(s) {sorted(unknown)}")
        if kw.get("input_shape") is not None:
            kw["input_shape"] = tuple(kw["input_shape"])
        return cls(**kw)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """One version of a model: its name, version, batching and free-form metadata
    (container kind, path of the serialized model...) that drivers interpret."""

    name: str
    version: str = "1"
    input_type: str = "doubles"
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(
            bool(self.name) and ":" not in self.name and "/" not in self.name,
            f"model name {self.name!r} must be non-empty without ':' or '/'",
        )
        _require(bool(self.version), "model version must be non-empty")
        _require(
            self.input_type in INPUT_TYPES,
            f"input_type {self.input_type!r} is unknown; expected one of {INPUT_TYPES}",
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "input_type": self.input_type,
            "batching": self.batching.to_dict(),
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """From ``to_dict``'s fields (config files: ``engine.schema.parse_model``)."""
        kw = dict(data)
        if "batching" in kw and not isinstance(kw["batching"], BatchingConfig):
            kw["batching"] = BatchingConfig.from_dict(kw["batching"])
        return cls(**kw)


class Registry:
    """Applications, model versions, links, active versions and version history."""

    def __init__(self) -> None:
        self.apps: dict[str, Application] = {}
        self.links: dict[str, list[str]] = {}
        self.models: dict[str, dict[str, ModelSpec]] = {}
        self.active: dict[str, str] = {}
        self.history: dict[str, list[str]] = {}

    # -- applications
    def add_application(self, app: Application) -> None:
        if app.name in self.apps:
            raise Conflict(f"application {app.name!r} already exists")
        self.apps[app.name] = app
        self.links[app.name] = []

    def update_application(self, name: str, **changes: Any) -> Application:
        app = replace(self.app(name), **changes)
        self.apps[name] = app
        return app

    def remove_application(self, name: str) -> None:
        """Forget application ``name`` and its links; its models stay (as in Clipper)."""
        self.app(name)
        del self.apps[name]
        del self.links[name]

    def app(self, name: str) -> Application:
        try:
            return self.apps[name]
        except KeyError:
            raise NotFound(f"application {name!r} does not exist") from None

    # -- models
    def add_model(self, spec: ModelSpec) -> bool:
        """Add a model version.  Returns True when it became the active version (the
        first version of a model is activated; later ones need ``set_version``)."""
        versions = self.models.setdefault(spec.name, {})
        if spec.version in versions:
            raise Conflict(f"model {spec.name!r} already has version {spec.version!r}")
        versions[spec.version] = spec
        if spec.name not in self.active:
            self.active[spec.name] = spec.version
            self.history[spec.name] = [spec.version]
            return True
        return False

    def model(self, name: str, version: str | None = None) -> ModelSpec:
        versions = self.models.get(name)
        if versions is None:
            raise NotFound(f"model {name!r} does not exist")
        v = self.active[name] if version is None else version
        try:
            return versions[v]
        except KeyError:
            raise NotFound(
                f"model {name!r} has no version {v!r}; it has {sorted(versions)}"
            ) from None

    def set_version(self, name: str, version: str) -> None:
        self.model(name, version)
        if self.active[name] != version:
            self.active[name] = version
            self.history[name].append(version)

    def rollback(self, name: str, version: str | None = None) -> str:
        """Activate ``version``, or the version that was active before the current one."""
        self.model(name)
        if version is None:
            hist = self.history[name]
            if len(hist) < 2:
                raise Conflict(f"model {name!r} has no earlier version to roll back to")
            version = hist[-2]
        self.set_version(name, version)
        return version

    def link(self, app: str, models: list[str]) -> list[str]:
        self.app(app)
        for m in models:
            self.model(m)
        linked = self.links[app]
        for m in models:
            if m not in linked:
                linked.append(m)
        return list(linked)

    def unlink(self, app: str, models: list[str]) -> list[str]:
        self.app(app)
        self.links[app] = [m for m in self.links[app] if m not in models]
        return list(self.links[app])

    def apps_of_model(self, name: str) -> list[str]:
        return [a for a, ms in self.links.items() if name in ms]

    # -- persistence
    def to_dict(self) -> dict[str, Any]:
        return {
            "apps": [a.to_dict() for a in self.apps.values()],
            "links": {k: list(v) for k, v in self.links.items()},
            "models": [s.to_dict() for vs in self.models.values() for s in vs.values()],
            "active": dict(self.active),
            "history": {k: list(v) for k, v in self.history.items()},
        }
