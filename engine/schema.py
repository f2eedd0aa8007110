"""One config schema for applications and models, read by both drivers.

The simulator's config (``clipperlab simulate``), the server's ``deploy.toml`` (``clipperlab
serve``), the admin API's ``add_app``/``add_model``/``update_app`` and the store all read
applications and models here, so a table written for one is read the same by the other.

Rules:
- Applications are ``[[applications]]`` tables; ``[[apps]]`` is accepted as an alias (one of
  the two per file).  Fields: ``name``; the latency objective as ``slo_ms`` (preferred),
  ``slo_s`` or Clipper's ``latency_slo_micros`` (at most one; default 20 ms);
  ``default_output``, ``input_type``, ``input_shape``, ``policy``, ``policy_params``,
  ``confidence_threshold``, ``loss``; and the linked models as ``models`` (Clipper:
  ``candidate_model_names``).
- Models are ``[[models]]`` tables: ``name`` (Clipper: ``model_name``), ``version``
  (``model_version``; a number is taken as its text), ``input_type``, ``batching`` (a
  table of ``BatchingConfig`` fields), ``metadata``, ``replicas`` (default 1); every other
  field must be one the driver names (a profile for the simulator, a container kind and
  path for the server), and the driver checks it.
- Application and model names follow one rule, ``NAME_RULE``: an ASCII letter or digit,
  then up to 127 letters, digits, ``.``, ``_`` or ``-`` (a name is a URL path segment, a
  file name in the store and a label in the metrics, so it needs no escaping anywhere).
- Every error is a ``ConfigError`` that reads ``FIELD: expected WHAT, got VALUE`` with
  ``FIELD`` the path from the table (``applications[0].slo_ms``); drivers put the file in
  front.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from .errors import ConfigError
from .plugins import rebase_reference
from .registry import INPUT_TYPES, Application, BatchingConfig, ModelSpec
from .selection import policy_class

__all__ = [
    "APP_TABLES",
    "NAME_RULE",
    "AppEntry",
    "ModelEntry",
    "SLO_FIELDS",
    "application_changes",
    "application_tables",
    "check_name",
    "parse_application",
    "parse_batching",
    "parse_document",
    "parse_model",
]

APP_TABLES = ("applications", "apps")
# spelling -> units per second (divided: 25000 us is exactly the double nearest 0.025 s)
SLO_FIELDS = {"slo_ms": 1e3, "slo_s": 1.0, "latency_slo_micros": 1e6}
_LINKS = ("models", "candidate_model_names")
_APP_FIELDS = ("name", "default_output", "input_type", "input_shape", "policy",
               "policy_params", "confidence_threshold", "loss")
_MODEL_FIELDS = {"name": ("name", "model_name"), "version": ("version", "model_version")}
NAME_RULE = "[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_NAME = re.compile(NAME_RULE)


class AppEntry(NamedTuple):
    """An application read from a config, and the models linked to it (in order)."""

    app: Application
    models: tuple[str, ...]


class ModelEntry(NamedTuple):
    """A model version read from a config, its replica count, and the fields left for the
    driver (unchecked here)."""

    spec: ModelSpec
    replicas: int
    extra: dict[str, Any]


def _bad(field: str, expected: str, got: Any) -> ConfigError:
    return ConfigError(f"{field}: expected {expected}, got {got!r}")


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def check_name(v: Any, field: str) -> str:
    """``v`` when it is a name by ``NAME_RULE``, else a ``ConfigError`` naming the rule."""
    if not isinstance(v, str) or _NAME.fullmatch(v) is None:
        raise _bad(field, f"a name matching {NAME_RULE}", v)
    return v


def _table(v: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        raise _bad(field, "a table", v)
    return v


def _names(v: Any, field: str, what: str) -> tuple[str, ...]:
    if not isinstance(v, list | tuple) or not all(isinstance(x, str) and x for x in v):
        raise _bad(field, f"a list of {what}", v)
    return tuple(v)


def _one_of(d: Mapping[str, Any], names: tuple[str, ...], where: str) -> str | None:
    given = [n for n in names if n in d]
    if len(given) > 1:
        raise ConfigError(f"{where}: expected one of {', '.join(given)}, got both")
    return given[0] if given else None


def parse_document(text: str, name: str) -> dict[str, Any]:
    """A config file's text as a table: JSON when ``name`` ends in ``.json``, else TOML.
    The driver reads the file; errors name it: ``NAME: not valid JSON (line L: ...)``,
    ``NAME: not valid TOML (...)``, ``NAME: expected a table at the top``."""
    if name.endswith(".json"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{name}: not valid JSON (line {e.lineno}: {e.msg})") from None
    else:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{name}: not valid TOML ({e})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{name}: expected a table at the top, got {type(doc).__name__}")
    return doc


def application_tables(doc: Mapping[str, Any]) -> tuple[str, list[Mapping[str, Any]]]:
    """The applications of a config file: ``(table name used, tables)`` from
    ``[[applications]]`` or its alias ``[[apps]]`` (``("applications", [])`` if neither)."""
    key = _one_of(doc, APP_TABLES, "top level") or APP_TABLES[0]
    v = doc.get(key, [])
    if not isinstance(v, list):
        raise _bad(key, f"a list of tables ([[{key}]])", v)
    return key, [_table(x, f"{key}[{i}]") for i, x in enumerate(v)]


def _app_kwargs(
    d: Mapping[str, Any], where: str, partial: bool, base_dir: Path | None = None
) -> dict[str, Any]:
    """Canonical ``Application`` keyword arguments from a table (``partial``: only those
    given, for an update)."""
    known = set(_APP_FIELDS) | set(SLO_FIELDS)
    unknown = sorted(set(d) - known - (set() if partial else set(_LINKS)))
    if unknown:
        raise ConfigError(
            f"{where}: unknown field(s) {unknown}; expected some of "
            f"{sorted(known | (set() if partial else set(_LINKS)))}"
        )
    kw: dict[str, Any] = {}
    if not partial or "name" in d:
        kw["name"] = check_name(d.get("name"), f"{where}.name")
    slo = _one_of(d, tuple(SLO_FIELDS), where)
    if slo is not None:
        v = d[slo]
        if not _is_number(v) or v <= 0:
            raise _bad(f"{where}.{slo}", "a finite number > 0", v)
        kw["slo_s"] = float(v) / SLO_FIELDS[slo]
    if "default_output" in d:
        kw["default_output"] = d["default_output"]
    if "input_type" in d:
        if d["input_type"] not in INPUT_TYPES:
            raise _bad(f"{where}.input_type", f"one of {', '.join(INPUT_TYPES)}", d["input_type"])
        kw["input_type"] = d["input_type"]
    if "input_shape" in d:
        s = d["input_shape"]
        if s is not None:
            if not isinstance(s, list | tuple) or not all(
                isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in s
            ):
                raise _bad(f"{where}.input_shape", "a list of integers >= 1", s)
            s = tuple(s)
        kw["input_shape"] = s
    if "policy" in d:
        if not isinstance(d["policy"], str) or not d["policy"]:
            raise _bad(f"{where}.policy", "a policy name or 'package.module:Class'",
                       d["policy"])
        kw["policy"] = rebase_reference(d["policy"], base_dir)
    if "policy_params" in d:
        kw["policy_params"] = dict(_table(d["policy_params"] or {}, f"{where}.policy_params"))
    if "confidence_threshold" in d:
        v = d["confidence_threshold"]
        if not _is_number(v) or not 0 <= v <= 1:
            raise _bad(f"{where}.confidence_threshold", "a number in [0, 1]", v)
        kw["confidence_threshold"] = float(v)
    if "loss" in d:
        if d["loss"] not in ("zero_one", "absolute"):
            raise _bad(f"{where}.loss", "'zero_one' or 'absolute'", d["loss"])
        kw["loss"] = d["loss"]
    return kw


def parse_application(
    d: Any, where: str = "application", base_dir: Path | None = None
) -> AppEntry:
    """An application and its linked models from a table of the schema's fields
    (``base_dir``: where a relative ``file.py:Class`` policy is taken from)."""
    d = _table(d, where)
    kw = _app_kwargs(d, where, partial=False, base_dir=base_dir)
    link = _one_of(d, _LINKS, where)
    models = _names(d[link], f"{where}.{link}", "model names") if link else ()
    if "policy" in kw:
        try:
            policy_class(kw["policy"])
        except ConfigError as e:
            raise ConfigError(f"{where}.policy: {e}") from None
    try:
        app = Application(**kw)
    except ConfigError as e:  # what is left: the policy cannot be built from its params
        raise ConfigError(f"{where}: {e}") from None
    return AppEntry(app, models)


def application_changes(d: Mapping[str, Any], where: str = "update") -> dict[str, Any]:
    """The canonical ``Application`` fields of an update (``slo_ms`` becomes ``slo_s``...),
    checked as ``parse_application`` checks them."""
    return _app_kwargs(_table(d, where), where, partial=True)


def _field_kind(annotation: str) -> tuple[str, bool]:
    optional = annotation.endswith(" | None")
    return annotation.removesuffix(" | None"), optional


def parse_batching(
    d: Any, where: str = "batching", base_dir: Path | None = None
) -> BatchingConfig:
    """A ``BatchingConfig`` from a table; each field is checked against its type
    (``base_dir``: where a relative ``file.py:Class`` policy is taken from)."""
    d = _table(d, where)
    hints = {f.name: str(f.type) for f in dataclasses.fields(BatchingConfig)}
    unknown = sorted(set(d) - set(hints))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; expected some of "
                          f"{sorted(hints)}")
    kw: dict[str, Any] = {}
    for k, v in d.items():
        kind, optional = _field_kind(hints[k])
        f = f"{where}.{k}"
        if v is None and optional:
            kw[k] = None
        elif kind == "str":
            if not isinstance(v, str) or not v:
                raise _bad(f, "a non-empty string", v)
            kw[k] = rebase_reference(v, base_dir) if k == "policy" else v
        elif kind == "int":
            if not isinstance(v, int) or isinstance(v, bool):
                raise _bad(f, "an integer", v)
            kw[k] = v
        elif kind == "float":
            if not _is_number(v):
                raise _bad(f, "a finite number", v)
            kw[k] = float(v)
        elif kind == "bool":
            if not isinstance(v, bool):
                raise _bad(f, "true or false", v)
            kw[k] = v
        elif kind.startswith("tuple"):
            if not isinstance(v, list | tuple) or not all(
                isinstance(x, int) and not isinstance(x, bool) for x in v
            ):
                raise _bad(f, "a list of integers", v)
            kw[k] = tuple(v)
        else:  # Mapping: the parameters of a custom controller
            kw[k] = dict(_table(v, f))
    try:
        return BatchingConfig(**kw)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def parse_model(
    d: Any, where: str = "model", driver_fields: Collection[str] = (),
    base_dir: Path | None = None,
) -> ModelEntry:
    """A model version from a table; ``driver_fields`` are the fields the driver reads
    itself (returned in ``extra``), any other unknown field is an error (``base_dir``:
    where a relative ``file.py:Class`` batching policy is taken from)."""
    d = _table(d, where)
    own = {a for names in _MODEL_FIELDS.values() for a in names}
    own |= {"input_type", "batching", "metadata", "replicas"}
    unknown = sorted(set(d) - own - set(driver_fields))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; expected some of "
                          f"{sorted(own | set(driver_fields))}")
    key = _one_of(d, _MODEL_FIELDS["name"], where) or "name"
    name = check_name(d.get(key), f"{where}.{key}")
    vkey = _one_of(d, _MODEL_FIELDS["version"], where) or "version"
    version = d.get(vkey, "1")
    if isinstance(version, bool) or not isinstance(version, str | int) or version == "":
        raise _bad(f"{where}.{vkey}", "a non-empty string", version)
    input_type = d.get("input_type", "doubles")
    if input_type not in INPUT_TYPES:
        raise _bad(f"{where}.input_type", f"one of {', '.join(INPUT_TYPES)}", input_type)
    batching = d.get("batching")
    bc = (batching if isinstance(batching, BatchingConfig)
          else parse_batching(batching or {}, f"{where}.batching", base_dir))
    metadata = dict(_table(d.get("metadata", {}), f"{where}.metadata"))
    replicas = d.get("replicas", 1)
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        raise _bad(f"{where}.replicas", "an integer >= 0", replicas)
    spec = ModelSpec(name=name, version=str(version), input_type=input_type, batching=bc,
                     metadata=metadata)
    return ModelEntry(spec, replicas, {k: v for k, v in d.items() if k in driver_fields})

