"""Policies of one's own: a batching controller or a selection policy named by a config.

Rules:
- A policy name is one of:
  - a built-in name (``aimd``, ``exp4``...): the engine's own classes, looked up first;
  - ``package.module:Class``: the module is imported with ``importlib`` (it must be
    importable: installed, or on ``PYTHONPATH``) and ``Class`` taken from it;
  - ``path/to/file.py:Class``: that file is loaded as a module (once per path; a relative
    path is taken from the current directory, and config files rebase it to their own
    folder, as they do profile paths);
  - any other bare name: an entry point of that name in the group ``clipperlab.batching``
    (controllers) or ``clipperlab.selection`` (policies) of an installed distribution.
- The class must be a subclass of the interface's abstract base (``BatchController``,
  ``SelectionPolicy``) that implements its abstract methods; the caller then builds it once
  from the config to check that it can be.  Anything else is a ``ConfigError`` naming the
  value and the rule it broke.
- Nothing is imported when this module is; a user's module is imported when a config that
  names it is read (the engine itself does no I/O beyond that import).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

from .errors import ConfigError

__all__ = ["ENTRY_POINT_GROUPS", "is_reference", "rebase_reference", "resolve_class"]

T = TypeVar("T")

ENTRY_POINT_GROUPS = {"batching": "clipperlab.batching", "selection": "clipperlab.selection"}

_FILE_MODULES: dict[Path, object] = {}


def is_reference(name: str) -> bool:
    """Whether ``name`` names a class by ``module:Class`` or ``file.py:Class``."""
    return ":" in name


def _is_file(where: str) -> bool:
    return where.endswith(".py") or "/" in where or "\\" in where


def rebase_reference(name: str, base_dir: Path | None) -> str:
    """``name`` with a relative ``file.py:Class`` path taken from ``base_dir`` (a config
    file's folder); any other name unchanged."""
    where, colon, attr = name.rpartition(":")
    if base_dir is None or not colon or not _is_file(where) or Path(where).is_absolute():
        return name
    return f"{base_dir / where}:{attr}"


def resolve_class(
    name: object, base: type[Any], builtins: Mapping[str, type[T]], what: str, group: str
) -> type[T]:
    """The class ``name`` stands for (see the module's rules), checked against ``base``.

    ``what`` is how errors call the value (``"batching policy"``); ``group`` is the entry
    point group searched for bare names."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{what} {name!r}: expected a non-empty string")
    cls = builtins.get(name)
    if cls is not None:
        return cls
    if is_reference(name):
        obj = _load_reference(name, what)
    else:
        obj = _load_entry_point(name, builtins, what, group)
    return cast("type[T]", _check_class(name, obj, base, what))


def _load_reference(name: str, what: str) -> object:
    where, _, attr = name.rpartition(":")
    if not where or not attr or not all(p.isidentifier() for p in attr.split(".")):
        raise ConfigError(
            f"{what} {name!r}: expected 'package.module:Class' or 'path/to/file.py:Class' "
            "(one colon, a class name after it)"
        )
    if _is_file(where):
        module = _load_file(where, name, what)
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as e:
            if e.name is not None and (where == e.name or where.startswith(e.name + ".")):
                raise ConfigError(
                    f"{what} {name!r}: no module named {where!r} can be imported; the module "
                    "must be installed or on PYTHONPATH (or give 'path/to/file.py:Class')"
                ) from None
            raise ConfigError(f"{what} {name!r}: importing {where!r} failed: {e}") from None
        except Exception as e:  # noqa: BLE001 - a user's module may fail in any way
            raise ConfigError(
                f"{what} {name!r}: importing {where!r} failed: {type(e).__name__}: {e}"
            ) from None
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(
                f"{what} {name!r}: module {where!r} has no attribute {attr!r}"
            ) from None
    return obj


def _load_file(where: str, name: str, what: str) -> object:
    path = Path(where).resolve()
    module = _FILE_MODULES.get(path)
    if module is not None:
        return module
    if not path.is_file():
        raise ConfigError(f"{what} {name!r}: file {str(path)!r} does not exist")
    # a name of its own per path, so that two files called policies.py do not collide
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    mod_name = f"clipperlab_user_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{what} {name!r}: {where!r} cannot be loaded as a Python module")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = mod  # dataclasses and pickling look their module up here
    try:
        spec.loader.exec_module(mod)
    except Exception as e:  # noqa: BLE001 - a user's module may fail in any way
        del sys.modules[mod_name]
        raise ConfigError(
            f"{what} {name!r}: loading {where!r} failed: {type(e).__name__}: {e}"
        ) from None
    _FILE_MODULES[path] = mod
    return mod


def _load_entry_point(
    name: str, builtins: Mapping[str, type[Any]], what: str, group: str
) -> object:
    found = [ep for ep in importlib.metadata.entry_points(group=group) if ep.name == name]
    if not found:
        hint = ""
        if "." in name:
            mod, _, cls = name.rpartition(".")
            hint = f" (did you mean '{mod}:{cls}'?)"
        raise ConfigError(
            f"{what} {name!r} is unknown{hint}; expected a built-in name "
            f"({', '.join(sorted(builtins))}), an entry point of group {group!r}, "
            "'package.module:Class' or 'path/to/file.py:Class'"
        )
    try:
        return found[0].load()
    except Exception as e:  # noqa: BLE001 - a user's module may fail in any way
        raise ConfigError(
            f"{what} {name!r}: loading entry point {found[0].value!r} of group {group!r} "
            f"failed: {type(e).__name__}: {e}"
        ) from None


def _check_class(name: str, obj: object, base: type[Any], what: str) -> type[Any]:
    if not isinstance(obj, type) or not issubclass(obj, base):
        got = f"the class {obj.__name__}" if isinstance(obj, type) else f"a {type(obj).__name__}"
        package = base.__module__.rpartition(".")[0]  # clipperlab.engine exports it
        raise ConfigError(
            f"{what} {name!r}: expected a subclass of {package}.{base.__qualname__}, got {got}"
        )
    missing = sorted(getattr(obj, "__abstractmethods__", ()))
    if inspect.isabstract(obj) or missing:
        raise ConfigError(
            f"{what} {name!r}: the class {obj.__name__} does not implement "
            f"{base.__qualname__}'s abstract method(s) {', '.join(missing)}"
        )
    return obj
