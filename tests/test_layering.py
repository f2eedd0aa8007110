"""The rooms keep to their plan: every import (module-level or inside a function) in every
package is read, and a broken rule or an import cycle between files fails the suite.

Rules (``../shared/DESIGN.md``; ``ALLOWED`` below is the whole list, with no exceptions):
- ``engine`` imports numpy/scipy and the standard library only: no driver, no workload,
  no runtime (``tests/engine/test_engine_purity.py`` bans the clocks and event loops);
- ``simulator`` and ``real`` import ``engine``, ``workloads`` and ``report``, never each
  other; ``workloads`` imports no driver; ``report`` imports no other room;
- ``calibration`` joins ``real`` and ``simulator``; ``experiments`` may use everything
  below it; nothing below the CLI (``clipperlab.cli``, ``clipperlab.commands``,
  ``clipperlab.errors``) imports it;
- every import of the project's code says ``clipperlab.*``, in tests, benches and
  examples too.

Imports under ``if TYPE_CHECKING:`` are left out: they never run.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# room -> folder at the repository root
ROOMS = {
    "engine": "engine",
    "workloads": "workloads",
    "report": "report",
    "simulator": "simulator",
    "real": "real",
    "calibration": "calibration",
    "experiments": "experiments",
    "cli": "clipperlab",
}
# room -> the rooms it may import (its own always)
ALLOWED: dict[str, set[str]] = {
    "engine": set(),
    "report": set(),
    "workloads": set(),
    "simulator": {"engine", "workloads", "report"},
    "real": {"engine", "workloads", "report"},
    "calibration": {"engine", "workloads", "report", "simulator", "real"},
    "experiments": {"engine", "workloads", "report", "simulator", "real", "calibration"},
    "cli": set(ROOMS) - {"cli"},
}
OLD_NAMES = {"engine", "simulator", "real", "workloads", "experiments", "calibration", "report"}


def module_of(path: Path) -> str:
    """``engine/core.py`` -> ``clipperlab.engine.core``; ``clipperlab/cli.py`` ->
    ``clipperlab.cli``."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    if parts[0] != "clipperlab":
        parts.insert(0, "clipperlab")
    return ".".join(parts)


def room_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "clipperlab":
        return None
    if len(parts) == 1 or parts[1] in ("cli", "commands", "errors", "__main__"):
        return "cli"
    return parts[1] if parts[1] in ROOMS else "cli"


def source_files() -> dict[str, Path]:
    out = {}
    for folder in ROOMS.values():
        for f in sorted((ROOT / folder).rglob("*.py")):
            out[module_of(f)] = f
    return out


FILES = source_files()


def imports(module: str, path: Path) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import in the file, resolved to a module that
    exists in the project when it names one (``from pkg import submodule``)."""
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    # ``if TYPE_CHECKING:`` imports never run; they name types for mypy only.
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
                   for stmt in node.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in FILES]
            if subs:
                for s in subs:
                    yield node.lineno, s
                if len(subs) < len(node.names):
                    yield node.lineno, target
            else:
                yield node.lineno, target


def project_target(name: str) -> str | None:
    """The project file an import loads (its own module, else the nearest package)."""
    while name:
        if name in FILES:
            return name
        name = name.rpartition(".")[0]
    return None


def test_rooms_import_only_what_their_rule_allows() -> None:
    """No import crosses a room boundary that DESIGN.md does not allow."""
    broken = []
    for mod, path in FILES.items():
        room = room_of(mod)
        assert room is not None
        for line, name in imports(mod, path):
            top = name.split(".")[0]
            if top in OLD_NAMES:
                broken.append(f"{path.relative_to(ROOT)}:{line}: imports {name!r} "
                              "(say clipperlab.*)")
                continue
            target_room = room_of(name)
            if target_room is None or target_room == room:
                continue
            if target_room not in ALLOWED[room]:
                broken.append(f"{path.relative_to(ROOT)}:{line}: {room} imports {name} "
                              f"({target_room})")
    assert not broken, "layering broken:\n" + "\n".join(broken)


def test_no_import_cycle_between_files() -> None:
    """The file-level import graph (module-level and function-local imports) is acyclic."""
    graph: dict[str, set[str]] = {m: set() for m in FILES}
    for mod, path in FILES.items():
        for _, name in imports(mod, path):
            t = project_target(name)
            if t is not None and t != mod:
                graph[mod].add(t)
            # importing a.b.c runs a/__init__ and a/b/__init__ first
            parts = (t or "").split(".")
            for i in range(2, len(parts)):
                pkg = ".".join(parts[:i])
                if pkg in FILES and pkg != mod and not mod.startswith(pkg + "."):
                    graph[mod].add(pkg)
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_tests_benches_and_examples_import_the_namespaced_packages() -> None:
    """Nothing outside the packages imports ``engine``, ``experiments``, ... by their old
    top-level names (they are not installed under those names)."""
    broken = []
    for folder in ("tests", "bench", "examples"):
        for f in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(f.read_text(), str(f))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom)
                         and not node.level else [])
                broken += [f"{f.relative_to(ROOT)}:{node.lineno}: {n}" for n in names
                           if n.split(".")[0] in OLD_NAMES]
    assert not broken, "old top-level imports:\n" + "\n".join(broken)


def test_the_checker_sees_a_broken_rule() -> None:
    """The rule check is not vacuous: a simulator module importing real is caught."""
    assert "real" not in ALLOWED["simulator"] and "simulator" not in ALLOWED["real"]
    assert room_of("clipperlab.commands.serve") == "cli"
    assert room_of("clipperlab.engine.core") == "engine"
    assert "clipperlab.engine.core" in FILES and "clipperlab.cli" in FILES
    n_imports = sum(1 for m, p in FILES.items() for _ in imports(m, p))
    assert n_imports > 300
