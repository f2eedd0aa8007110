"""Workloads from config tables (TOML/JSON) and back.

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

__all__ = ["build_dataclass", "workload_from_dict", "workload_to_dict"]

def _check_value(where: str, tp: Any, value: Any) -> Any:
    """Coerce/validate ``value`` against a simple annotation; raise naming ``where``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and type(None) in typing.get_args(tp):
            return None
        last: WorkloadError | None = None
        for a in args:
            try:
                return _check_value(where, a, value)
            except WorkloadError as e:
                last = e
        assert last is not None
        raise last
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise WorkloadError(f"{where} must be a list, got {value!r}")
        targs = typing.get_args(tp)
        inner = targs[0] if targs else Any
        return tuple(_check_value(f"{where}[{i}]", inner, v) for i, v in enumerate(value))
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
        kw[name] = _check_value(f"{where}.{name}", hints[name], data[name])
    try:
        return cls(**kw)
    except WorkloadError as e:
        raise WorkloadError(f"{where}: {e}") from None


def _kinded(data: Any, where: str, kinds: Mapping[str, type]) -> Any:
    if not isinstance(data, Mapping):
        raise WorkloadError(f"{where} must be a table with a 'kind', got {data!r}")
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in kinds:
        raise WorkloadError(f"{where}.kind must be one of {sorted(kinds)}, got {kind!r}")
    rest = {k: v for k, v in data.items() if k != "kind"}
    return build_dataclass(kinds[kind], rest, where)


def workload_from_dict(data: Mapping[str, Any], where: str = "workload") -> Any:
    from .spec import ARRIVAL_KINDS, INPUT_KINDS, FeedbackStream, UserContexts, Workload

    if not isinstance(data, Mapping):
        raise WorkloadError(f"{where} must be a table, got {data!r}")
    known = {f.name for f in dataclasses.fields(Workload)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise WorkloadError(f"{where}: unknown field(s) {unknown}; expected some of "
                            f"{sorted(known)}")
    if "arrivals" not in data:
        raise WorkloadError(f"{where}.arrivals: missing (required), e.g. "
                            "{ kind = \"constant\", qps = 20000 }")
    kw: dict[str, Any] = {"arrivals": _kinded(data["arrivals"], f"{where}.arrivals",
                                              ARRIVAL_KINDS)}
    if "inputs" in data:
        kw["inputs"] = _kinded(data["inputs"], f"{where}.inputs", INPUT_KINDS)
    if data.get("feedback") is not None:
        kw["feedback"] = build_dataclass(FeedbackStream, data["feedback"], f"{where}.feedback")
    if data.get("contexts") is not None:
        kw["contexts"] = build_dataclass(UserContexts, data["contexts"], f"{where}.contexts")
    hints = typing.get_type_hints(Workload)
    for name in ("n_queries", "duration_s", "app", "cacheable"):
        if name in data:
            kw[name] = _check_value(f"{where}.{name}", hints[name], data[name])
    try:
        return Workload(**kw)
    except WorkloadError as e:
        raise WorkloadError(f"{where}: {e}") from None


def _kind_of(obj: Any, kinds: Mapping[str, type]) -> str:
    for k, c in kinds.items():
        if type(obj) is c:
            return k
    raise WorkloadError(f"{obj!r} has no config kind")


def workload_to_dict(w: Any) -> dict[str, Any]:
    from .spec import ARRIVAL_KINDS, INPUT_KINDS

    def plain(obj: Any, kinds: Mapping[str, type] | None = None) -> dict[str, Any]:
        d = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
        if kinds is not None:
            d = {"kind": _kind_of(obj, kinds), **d}
        return d

    out: dict[str, Any] = {
        "app": w.app,
        "cacheable": w.cacheable,
        "arrivals": plain(w.arrivals, ARRIVAL_KINDS),
        "inputs": plain(w.inputs, INPUT_KINDS),
    }
    if w.n_queries is not None:
        out["n_queries"] = w.n_queries
    if w.duration_s is not None:
        out["duration_s"] = w.duration_s
    if w.feedback is not None:
        out["feedback"] = plain(w.feedback)
    if w.contexts is not None:
        out["contexts"] = plain(w.contexts)
    return out
