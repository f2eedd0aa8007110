"""Config tables (TOML/JSON) to dataclasses and back: the checks ``Workload.from_dict`` and
``Workload.to_dict`` (in ``spec``) are built from.

Accepted table (every key but ``arrivals`` and one of ``n_queries``/``duration_s`` is
optional)::

    [workload]
    app = "digits"
    n_queries = 100000            # or duration_s = 5.0
    cacheable = false             # the paper salts inputs: no cache hits
    arrivals = { kind = "constant", qps = 20000 }
    #   poisson: qps | gamma: qps, cv | mmpp: rates_qps, mean_dwell_s
    #   trace: csv_path, column = "timestamp", time_scale = 1.0
    inputs = { kind = "digits", binary = true, positive_digit = 3 }
    #   digits: binary, positive_digit, balanced, wire_bytes
    #   synthetic: shape = [784], dtype = "float64", pool, classes, pool_seed
    feedback = { fraction = 1.0, delay_s = 0.1 }
    contexts = { n_users = 100, zipf_a = 1.2 }

Errors are ``WorkloadError`` with the table path (``where``) and the field in the message.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

from .errors import WorkloadError

__all__ = ["build_dataclass", "check_value", "kinded", "plain"]

def check_value(where: str, tp: Any, value: Any) -> Any:
    """Coerce/validate ``value`` against a simple annotation; raise naming ``where``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and type(None) in typing.get_args(tp):
            return None
        last: WorkloadError | None = None
        for a in args:
            try:
                return check_value(where, a, value)
            except WorkloadError as e:
                last = e
        assert last is not None
        raise last
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise WorkloadError(f"{where} must be a list, got {value!r}")
        targs = typing.get_args(tp)
        inner = targs[0] if targs else Any
        return tuple(check_value(f"{where}[{i}]", inner, v) for i, v in enumerate(value))
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise WorkloadError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise WorkloadError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise WorkloadError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise WorkloadError(f"{where} must be a string, got {value!r}")
        return value
    return value


def build_dataclass(cls: type, data: Mapping[str, Any], where: str, skip: tuple[str, ...] = ()
                    ) -> Any:
    """``cls(**data)`` with unknown/missing/mistyped fields reported as
    ``"<where>.<field>: ..."``; errors raised by the class are prefixed with ``where``."""
    if not isinstance(data, Mapping):
        raise WorkloadError(f"{where} must be a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
    unknown = sorted(set(data) - set(fields) - set(skip))
    if unknown:
        raise WorkloadError(f"{where}: unknown field(s) {unknown}; expected some of "
                            f"{sorted(fields)}")
    kw: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise WorkloadError(f"{where}.{name}: missing (required)")
            continue
        kw[name] = check_value(f"{where}.{name}", hints[name], data[name])
    try:
        return cls(**kw)
    except WorkloadError as e:
        raise WorkloadError(f"{where}: {e}") from None


def kinded(data: Any, where: str, kinds: Mapping[str, type]) -> Any:
    if not isinstance(data, Mapping):
        raise WorkloadError(f"{where} must be a table with a 'kind', got {data!r}")
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in kinds:
        raise WorkloadError(f"{where}.kind must be one of {sorted(kinds)}, got {kind!r}")
    rest = {k: v for k, v in data.items() if k != "kind"}
    return build_dataclass(kinds[kind], rest, where)


def kind_of(obj: Any, kinds: Mapping[str, type]) -> str:
    """The config ``kind`` of ``obj`` in ``kinds`` (name -> class)."""
    for k, c in kinds.items():
        if type(obj) is c:
            return k
    raise WorkloadError(f"{obj!r} has no config kind")


def plain(obj: Any, kinds: Mapping[str, type] | None = None) -> dict[str, Any]:
    """A dataclass as a config table (tuples as lists; ``kind`` first when ``kinds``)."""
    d = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    d = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
    if kinds is not None:
        d = {"kind": kind_of(obj, kinds), **d}
    return d
