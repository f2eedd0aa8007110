"""Compile the real path's hot modules with mypyc: opt-in, ``CLIPPERLAB_COMPILE=1``.

    CLIPPERLAB_COMPILE=1 pip install .            # a compiled wheel, installed
    python3 _build/mypyc_real.py [--out DIR]      # a compiled tree to put on PYTHONPATH

mypyc (part of mypy) turns type-checked Python into C extensions: the same source, the
same behaviour, the interpreter's dispatch and boxing gone from the modules a query
crosses (HTTP in, REST/OIP decoding, the engine driver, the container RPC's frames,
reply encoding) and from the engine's core (``Engine`` and its parts, their state, the
prediction cache and the metrics).
What researchers subclass or name in a config stays Python: the selection policies, the
batching controllers (each holds a compiled ``LatencyModel``), plugins, events and
instructions (``_types``); so does the rest of the engine.  The driver base
(``engine/driver.py``) is compiled with ``allow_interpreted_subclasses``: the real
server's driver inherits it natively, the simulator's and the tests' drivers subclass it
as before.  The simulator runs the same engine, compiled where the
install is.  A compiled module shadows its ``.py`` (the import system tries
extensions first), so an editable install never compiles: edits take effect at once
there, and the compiled build is for deployments and for ``bench/real_bench.py
--compiled``.

The folders install as ``clipperlab.*`` (pyproject's package-dir), so both ways first
stage the source tree under its package names, then compile the staged copies.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = Path(__file__).resolve().parent / "mypyc.ini"
# the modules compiled, as package paths (measured: bench/frontend_bench.py --compiled;
# the engine's core: REST 8.5-9.0 -> 6.7-7.2 us a query, OIP 9.7-10.2 -> 7.5-7.8; its
# cache and metrics: a hit 4.0-4.4 -> 3.5-3.9; the driver base and the latency line,
# alternated with the tree before them: REST 7.9-8.1 -> 7.2-7.3)
MODULES = (
    "clipperlab/real/http.py",
    "clipperlab/real/frontend.py",
    "clipperlab/real/oip.py",
    "clipperlab/real/inputs.py",
    "clipperlab/real/driver.py",
    "clipperlab/real/rpc.py",
    "clipperlab/real/protocol.py",
    "clipperlab/engine/core.py",
    "clipperlab/engine/_answers.py",
    "clipperlab/engine/_batches.py",
    "clipperlab/engine/_state.py",
    "clipperlab/engine/cache.py",
    "clipperlab/engine/metrics.py",
    "clipperlab/engine/driver.py",
    "clipperlab/engine/_latency.py",
)
GROUP = "clipperlab_real"  # the shared library's name: clipperlab_real__mypyc.*.so
ENV = "CLIPPERLAB_COMPILE"


def wanted() -> bool:
    """Whether this build compiles (``CLIPPERLAB_COMPILE`` set to 1)."""
    return os.environ.get(ENV, "") == "1"


def package_dirs(root: Path = ROOT) -> dict[str, Path]:
    """pyproject's package-dir: package name -> its folder."""
    with open(root / "pyproject.toml", "rb") as f:
        cfg = tomllib.load(f)
    return {pkg: root / d for pkg, d in cfg["tool"]["setuptools"]["package-dir"].items()}


def _files(src: Path) -> list[Path]:
    """A package folder's files, its data included (``simulator/profiles``), less
    bytecode and extensions."""
    return sorted(f for f in src.rglob("*") if f.is_file() and "__pycache__" not in f.parts
                  and f.suffix not in (".pyc", ".so", ".pyd"))


def stage(dest: Path, root: Path = ROOT) -> list[Path]:
    """Copy every package's files into ``dest`` under their package names; return the
    staged paths of ``MODULES``."""
    for pkg, src in package_dirs(root).items():
        to = dest.joinpath(*pkg.split("."))
        for f in _files(src):
            target = to / f.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
    return [dest / m for m in MODULES]


def source_key(root: Path = ROOT) -> str:
    """A digest of everything a compiled tree depends on: the sources, the module list,
    mypy's and Python's versions."""
    import mypy.version

    h = hashlib.sha256()
    h.update(f"{sys.version}|{mypy.version.__version__}|{MODULES}".encode())
    h.update(CONFIG.read_bytes())
    for pkg, src in sorted(package_dirs(root).items()):
        for f in _files(src):
            h.update(f"{pkg}/{f.relative_to(src)}".encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def mypy_args(paths: list[Path]) -> list[str]:
    """mypyc's arguments: our mypy options, then the files."""
    return ["--config-file", str(CONFIG), *map(str, paths)]


def built_from(tree: Path) -> str | None:
    """The ``source_key`` a finished tree was built from; ``"building"`` for a build
    that did not finish, None where no build has been (``BUILT`` marks our trees)."""
    built = tree / "BUILT"
    return built.read_text().strip() if built.exists() else None


def build_tree(out: Path | None = None, root: Path = ROOT) -> Path:
    """A staged source tree with the compiled modules beside their sources, ready to go
    first on ``PYTHONPATH``; built once per ``source_key`` under ``build/mypyc/`` (or in
    ``out``).  Raises ``RuntimeError`` with mypyc's output when the build fails."""
    key = source_key(root)
    tree = out if out is not None else root / "build" / "mypyc" / key
    built = tree / "BUILT"
    if built_from(tree) == key:  # (an --out tree of older sources is built again)
        return tree
    if tree.exists():
        if built_from(tree) is None and any(tree.iterdir()):  # never remove what we did not build
            raise RuntimeError(f"{tree} is not empty and holds no compiled tree: choose "
                               "another --out")
        shutil.rmtree(tree)
    if out is None:  # keep the two newest older trees (17 MB each), for other checkouts' runs
        olds = sorted((d for d in tree.parent.glob("*") if d.is_dir()),
                      key=lambda d: d.stat().st_mtime, reverse=True)
        for d in olds[2:]:
            shutil.rmtree(d, ignore_errors=True)
    tree.mkdir(parents=True)
    built.write_text("building\n")  # ours from here on: a failed build is rebuilt, not kept
    paths = [p.relative_to(tree) for p in stage(tree, root)]
    # mypyc builds in place (build_ext --inplace) in its working folder, at -O3
    r = subprocess.run([sys.executable, "-m", "mypyc", *mypy_args(paths)], cwd=tree,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"mypyc failed ({r.returncode}):\n{r.stdout[-4000:]}{r.stderr[-4000:]}")
    shutil.rmtree(tree / "build", ignore_errors=True)  # the C sources and objects
    built.write_text(key + "\n")
    return tree


def env_with(tree: Path) -> dict[str, str]:
    """This process's environment with ``tree`` first on ``PYTHONPATH``: a child started
    with it (a server, its containers, a test run) imports the compiled modules."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tree), *filter(None, [os.environ.get("PYTHONPATH")])]))


def is_compiled(module: object) -> bool:
    """Whether an imported module came from an extension (compiled), not a ``.py``."""
    f = str(getattr(module, "__file__", "") or "")
    return f.endswith((".so", ".pyd"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Compile the real path with mypyc into a tree to put on PYTHONPATH.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", type=Path, default=None,
                    help="folder to build into (default: build/mypyc/<source digest>)")
    a = ap.parse_args(argv)
    try:
        tree = build_tree(a.out)
    except RuntimeError as e:
        print(f"mypyc_real: {e}", file=sys.stderr)
        return 1
    print(tree)
    return 0


if __name__ == "__main__":
    sys.exit(main())
