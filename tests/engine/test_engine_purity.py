"""The engine stays free of I/O, clocks and module-level randomness."""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "engine"
FORBIDDEN = {
    "asyncio",
    "uvloop",
    "simpy",
    "socket",
    "time",
    "threading",
    "selectors",
    "subprocess",
    "multiprocessing",
    "random",
}


def _modules() -> list[Path]:
    files = sorted(ENGINE.rglob("*.py"))
    assert files, "engine/ has no modules"
    return files


def test_engine_imports_no_io_or_clock_module() -> None:
    """No module under engine/ imports an I/O, clock, thread or global-random module."""
    bad = []
    for path in _modules():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for n in names:
                if n.split(".")[0] in FORBIDDEN:
                    bad.append(f"{path.name}:{node.lineno} imports {n}")
    assert not bad, bad


def test_engine_uses_no_global_numpy_random() -> None:
    """Randomness is injected: no np.random.<sampling function> calls on the global state."""
    bad = []
    allowed = {"default_rng", "Generator"}
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "random"
                and node.attr not in allowed
            ):
                bad.append(f"{path.name}:{node.lineno} uses random.{node.attr}")
    assert not bad, bad


def test_purity_check_catches_a_violation(tmp_path: Path) -> None:
    """The scan above is not vacuous: it flags a module that imports time."""
    src = "import time\nfrom asyncio import sleep\n"
    tree = ast.parse(src)
    found = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
    mods = [a.name for n in found if isinstance(n, ast.Import) for a in n.names]
    mods += [n.module for n in found if isinstance(n, ast.ImportFrom) and n.module]
    assert {m.split(".")[0] for m in mods} <= FORBIDDEN
