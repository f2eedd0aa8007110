"""Experiment configurations: frozen dataclasses, and how text on the command line sets them.

Rules:
- Every experiment has one ``Config`` dataclass (frozen, keyword-only) with a ``seed`` field.
  Its fields are the only keys ``--set`` accepts; their annotations say how text is parsed.
- Scalar fields take one value: ``int``, ``float``, ``str``, ``bool`` (``true``/``false``,
  ``1``/``0``, ``yes``/``no``), or ``None`` where the annotation allows it (``none``).
- Tuple fields take items joined with ``+`` (``models=linear_svm+noop``); one item is a
  one-item tuple.  ``,`` is kept for the sweep's list of values (``wait_ms=0,2,4``).
- Bad text raises ``ValueError`` with a one-line message naming the key, the value and
  the rule; the CLI turns it into exit code 2.
- Every field says what it means, with its unit: declare it as
  ``rate_qps: float = knob(20_000.0, "offered load (queries/s)")``.  ``describe_fields``
  turns the class into the key table of ``clipperlab experiment --list`` and ``NAME --help``
  (key, type, default, quick default, meaning); a test checks that no field lacks a doc.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

__all__ = [
    "TUPLE_SEP",
    "VALUE_SEP",
    "config_fields",
    "config_to_dict",
    "describe_fields",
    "field_doc",
    "knob",
    "parse_set_args",
    "parse_value",
    "with_overrides",
]

TUPLE_SEP = "+"
VALUE_SEP = ","

C = TypeVar("C")
T = TypeVar("T")

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def knob(default: T, doc: str) -> T:
    """A config field with its default and what it means (unit included)."""
    return dataclasses.field(default=default, metadata={"doc": doc})


def field_doc(cls: type, name: str) -> str:
    """The doc of field ``name`` of config class ``cls`` ("" when it has none)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return str(f.metadata.get("doc", ""))
    raise KeyError(name)


def type_text(tp: Any) -> str:
    """How a field's value is written on the command line, e.g. ``float+...``."""
    inner, optional = _split_optional(tp)
    if typing.get_origin(inner) is tuple:
        args = typing.get_args(inner)
        item = getattr(args[0], "__name__", str(args[0])) if args else "str"
        text = f"{item}{TUPLE_SEP}..."
    else:
        text = getattr(inner, "__name__", str(inner))
    return f"{text} or none" if optional else text


def value_text(value: Any) -> str:
    """A value as ``--set`` takes it (tuples joined with ``+``; () is empty)."""
    if isinstance(value, tuple):
        return TUPLE_SEP.join(value_text(v) for v in value) if value else "(empty)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, float) and value.is_integer():
        return f"{value:g}" if abs(value) < 1e15 else repr(value)
    return str(value)


def describe_fields(full: Any, quick: Any | None = None, *, indent: str = "  ") -> list[str]:
    """Lines describing every field of config ``full`` (its class's docs and types), with
    ``quick``'s value where it differs: two lines per key, the key line and its meaning."""
    hints = config_fields(type(full))
    lines = []
    for f in dataclasses.fields(full):
        v = getattr(full, f.name)
        default = f"default {value_text(v)}"
        if quick is not None and getattr(quick, f.name) != v:
            default += f", --quick {value_text(getattr(quick, f.name))}"
        lines.append(f"{indent}{f.name} ({type_text(hints[f.name])}; {default})")
        doc = str(f.metadata.get("doc", "")) or "(undocumented)"
        lines.append(f"{indent}    {doc}")
    return lines


def config_fields(cls: type) -> dict[str, Any]:
    """Field name -> resolved type annotation of a config dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _split_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (tp, False)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _parse_scalar(key: str, text: str, tp: Any) -> Any:
    if tp is bool:
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"{key}={text!r}: expected a boolean (true/false)")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{key}={text!r}: expected an integer") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{key}={text!r}: expected a number") from None
    if tp is str:
        if not text:
            raise ValueError(f"{key}: expected a non-empty string")
        return text
    raise ValueError(f"{key}: fields of type {tp!r} cannot be set from the command line")


def parse_value(key: str, text: str, tp: Any) -> Any:
    """Parse one value of field ``key`` with annotation ``tp`` from ``text``."""
    inner, optional = _split_optional(tp)
    if optional and text.strip().lower() == "none":
        return None
    origin = typing.get_origin(inner)
    if origin is tuple:
        args = typing.get_args(inner)
        item_tp = args[0] if args else str
        items = [t for t in text.split(TUPLE_SEP)]
        if any(not t for t in items):
            raise ValueError(
                f"{key}={text!r}: expected items joined with {TUPLE_SEP!r}, found an empty item"
            )
        return tuple(_parse_scalar(key, t, item_tp) for t in items)
    return _parse_scalar(key, text, inner)


def parse_set_args(
    cls: type, sets: Sequence[str], *, allow_lists: bool = True
) -> dict[str, list[Any]]:
    """Parse ``key=v1,v2`` strings into ``{key: [values]}`` for config class ``cls``.

    With ``allow_lists=False`` each key takes exactly one value.
    """
    fields = config_fields(cls)
    out: dict[str, list[Any]] = {}
    for item in sets:
        key, sep, rest = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected key=value[,value...]")
        if key not in fields:
            raise ValueError(f"--set {item!r}: unknown key {key!r}; known: {', '.join(fields)}")
        if key in out:
            raise ValueError(f"--set {item!r}: key {key!r} given twice")
        texts = rest.split(VALUE_SEP)
        if any(not t.strip() for t in texts):
            raise ValueError(f"--set {item!r}: empty value; expected key=value[,value...]")
        if not allow_lists and len(texts) > 1:
            raise ValueError(f"--set {item!r}: one value expected here")
        out[key] = [parse_value(key, t.strip(), fields[key]) for t in texts]
    return out


def with_overrides(config: C, overrides: Mapping[str, Any]) -> C:
    """A copy of ``config`` with fields replaced; unknown names raise ``ValueError``."""
    names = {f.name for f in dataclasses.fields(config)}  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}; known: {', '.join(sorted(names))}")
    return dataclasses.replace(config, **overrides)  # type: ignore[type-var]


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain dict of a config (tuples become lists), for JSON and summaries."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out
