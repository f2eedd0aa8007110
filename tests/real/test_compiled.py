"""The real path compiled with mypyc (``CLIPPERLAB_COMPILE=1 pip install .``,
``_build/mypyc_real.py``) keeps every promise the interpreted one keeps: the real-mode
tests of bad input, HTTP limits, the container RPC's hardening, the API and faults, and
the engine's own tests, run again in a process whose ``clipperlab.real`` modules and
engine core are the compiled ones.

Compiling takes about a minute (once per source digest, kept under ``build/mypyc/``); the
test is skipped only where there is no C compiler."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from _build import mypyc_real  # noqa: E402

# the tests re-run compiled: everything a stranger can send, and every answer's shape
AGAIN = (
    "tests/real/test_fuzz.py",
    "tests/real/test_bad_input.py",
    "tests/real/test_http_limits.py",
    "tests/real/test_rpc_hardening.py",
    "tests/real/test_real_api.py",
    "tests/real/test_real_faults.py",
    "tests/real/test_clipper_compat.py",
    "tests/real/test_overload_real.py",
    "tests/real/test_admin_security.py",
    "tests/engine",  # the engine's core compiled (its Prediction sharing, feedback, ...)
    # interpreted drivers over the compiled Driver base (the simulator's, frontends' peers)
    "tests/simulator/test_sim_driver.py",
    "tests/simulator/test_sim_frontends.py",
    "tests/simulator/test_sim_hot_path.py",
)


def _compiler() -> str | None:
    cc = (os.environ.get("CC") or str(sysconfig.get_config_var("CC") or "cc")).split()[0]
    return shutil.which(cc)


@pytest.fixture(scope="module")
def tree() -> Path:
    if _compiler() is None:
        pytest.skip("no C compiler: the compiled real path cannot be built here")
    return mypyc_real.build_tree()


def test_the_tree_runs_every_listed_module_compiled(tree: Path) -> None:
    """Each module in ``MODULES`` imports from its extension, the rest from source, and
    ``--version`` says so."""
    names = [m[:-3].replace("/", ".") for m in mypyc_real.MODULES]
    code = ("import importlib, json; from clipperlab.real import compiled_modules; "
            f"print(json.dumps([[n, importlib.import_module(n).__file__] for n in {names!r}]"
            " + [['clipperlab.real.server', importlib.import_module("
            "'clipperlab.real.server').__file__], ['compiled', compiled_modules()]]))")
    r = subprocess.run([sys.executable, "-c", code], env=mypyc_real.env_with(tree), cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    import json

    got = dict(json.loads(r.stdout))
    for n in names:
        assert got[n].endswith(".so") and got[n].startswith(str(tree)), (n, got[n])
    assert got["clipperlab.real.server"].endswith("server.py")
    assert got["compiled"] == sorted(n.split(".", 1)[1] for n in names)
    v = subprocess.run([sys.executable, "-m", "clipperlab", "--version"],
                       env=mypyc_real.env_with(tree), cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert f"real path compiled with mypyc ({len(names)} modules)" in v.stdout.replace(
        "\n", " "), v.stdout + v.stderr


def test_this_install_says_how_its_real_path_runs() -> None:
    """``compiled_modules`` names exactly the modules that import from an extension here
    (none in the editable install the README sets up)."""
    import importlib

    from clipperlab.real import build_description, compiled_modules

    names = [m[:-3].replace("/", ".") for m in mypyc_real.MODULES]
    here = sorted(n.split(".", 1)[1] for n in names
                  if mypyc_real.is_compiled(importlib.import_module(n)))
    assert compiled_modules() == here
    assert build_description() == ("real path interpreted" if not here else
                                   f"real path compiled with mypyc ({len(here)} modules)")


def _handlers(fn: ast.AST) -> Iterator[ast.ExceptHandler]:
    """The except clauses of one function, not of the functions inside it."""
    for node in ast.iter_child_nodes(fn):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.ExceptHandler):
            yield node
        yield from _handlers(node)


def test_no_compiled_function_binds_one_name_to_two_exception_types() -> None:
    """``except A as e: ... except B as e:`` in one function: compiled, ``e`` keeps the
    first clause's type and the second raises ``TypeError`` (a 500 where a 404 was due;
    found by ``test_fuzz.py`` run compiled).  Each type gets a name of its own."""
    bad = []
    for m in mypyc_real.MODULES:
        pkg, name = m.rsplit("/", 1)
        path = mypyc_real.package_dirs()[pkg.replace("/", ".")] / name
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            types: dict[str, set[str]] = {}
            for h in _handlers(fn):
                if h.name:
                    types.setdefault(h.name, set()).add(ast.unparse(h.type) if h.type else "")
            bad += [f"{m}:{fn.lineno} {fn.name}: {n} as {sorted(t)}"
                    for n, t in types.items() if len(t) > 1]
    assert not bad, bad


def test_the_compiled_real_path_passes_the_real_mode_tests(tree: Path) -> None:
    """The hardening and API tests, run again against the compiled modules (servers and
    containers the tests start inherit the same ``PYTHONPATH``)."""
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-x", *AGAIN],
                       env=mypyc_real.env_with(tree), cwd=ROOT, capture_output=True, text=True,
                       timeout=1200)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and " failed" not in r.stdout, r.stdout[-2000:]


def test_a_build_never_removes_a_folder_it_did_not_build(tmp_path: Path) -> None:
    """``--out`` names a folder holding something else (a typo, ``--out .``): refused
    before anything in it is touched.  A tree of older sources (its ``BUILT`` names
    another digest) or of a build that failed is not taken for this source's."""
    keep = tmp_path / "mine.txt"
    keep.write_text("not a compiled tree")
    with pytest.raises(RuntimeError, match="holds no compiled tree"):
        mypyc_real.build_tree(tmp_path)
    assert keep.read_text() == "not a compiled tree"
    assert mypyc_real.built_from(tmp_path) is None
    (tmp_path / "BUILT").write_text("0123456789abcdef\n")  # another source's digest
    assert mypyc_real.built_from(tmp_path) != mypyc_real.source_key()


# module globals the compiled modules keep replaceable: tests put their own clock there
_REPLACEABLE = {"clipperlab/real/driver.py": {"_now"}, "clipperlab/real/http.py": {"_monotonic"}}


def test_the_compiled_modules_constants_are_final() -> None:
    """Compiled, a module global that is not ``Final`` is looked up in the module's dict
    at each use (10-14 ns; a ``Final`` one is a C static, 1 ns): every module-level
    value of a compiled module is ``Final``, but ``__all__``, type variables and aliases,
    and the clocks tests replace."""
    loose = []
    for m in mypyc_real.MODULES:
        pkg, name = m.rsplit("/", 1)
        path = mypyc_real.package_dirs()[pkg.replace("/", ".")] / name
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.AnnAssign) and ast.unparse(node.annotation) != "TypeAlias" \
                    and "Final" not in ast.unparse(node.annotation):
                loose.append(f"{m}:{node.lineno} {ast.unparse(node.target)}")
            elif isinstance(node, ast.Assign):
                v = node.value
                typing_only = (ast.unparse(v).startswith(("TypeVar(", "Callable["))
                               or isinstance(v, ast.BinOp) and isinstance(v.op, ast.BitOr))
                for t in node.targets:
                    n = ast.unparse(t)
                    if not (typing_only or n == "__all__" or n in _REPLACEABLE.get(m, ())):
                        loose.append(f"{m}:{node.lineno} {n}")
    assert not loose, loose
