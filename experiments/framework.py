"""The experiment framework: what a figure module provides and how its outputs are laid out.

A figure module (``experiments/fig4.py``...) defines:

- ``NAME`` and ``TITLE`` (strings), and its docstring, which ``summary.md`` quotes;
- ``Config``: a frozen keyword-only dataclass with a ``seed`` field (see ``config.py``);
- ``default_config(quick: bool) -> Config``: the full run, or the ``--quick`` one (under a
  minute on the 2-core dev machine);
- ``run(config) -> Results``: runs the simulation and returns a tidy table (one row per
  point of the figure) plus optional raw tables (per batch, per query);
- ``plot(results, out_dir) -> list[Path]``: writes PNG figures;
- ``claims(results, config) -> list[Claim]``: the paper's statements beside our numbers.

``write_outputs`` lays a run out as::

    results/NAME/
        NAME.csv        the tidy table (small; committed)
        NAME*.png       figures (committed)
        summary.md      claims, figure, table, config, how it was run (committed)
        raw/            raw tables as Parquet (git-ignored: ``results/*/raw/``)

Quick runs (``quick=True``, ``--quick``) are previews, never results:
- they go to ``results/quick/NAME/`` (git-ignored), never to the full run's folder, and a
  quick run refuses any folder that holds a full run (``FullRunInTheWay``);
- every file they write says so: a ``run`` column (``quick``) first in ``NAME.csv``,
  ``clipperlab_run: quick`` in each Parquet file's metadata (``DataFrame.attrs``), a red
  stamp on each PNG (and its ``Description`` field), a banner at the top of
  ``summary.md``, and ``"run": "quick"`` in ``config.json`` (full runs: ``"full"``).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import platform
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import pandas as pd

from clipperlab.report.plots import stamped
from clipperlab.report.tables import markdown_table

from .config import config_to_dict, with_overrides

__all__ = [
    "EXPERIMENTS",
    "QUICK_ROOT",
    "RESULTS_ROOT",
    "Claim",
    "FullRunInTheWay",
    "Results",
    "RunRecord",
    "default_out_dir",
    "holds_full_run",
    "load_experiment",
    "replot_experiment",
    "run_experiment",
    "write_outputs",
]

# name -> module; the order is the README's.
EXPERIMENTS: dict[str, str] = {
    "fig2": "clipperlab.experiments.fig2",
    "fig3": "clipperlab.experiments.fig3",
    "fig4": "clipperlab.experiments.fig4",
    "fig5": "clipperlab.experiments.fig5",
    "fig9": "clipperlab.experiments.fig9",
    "fig8": "clipperlab.experiments.fig8",
    "fig6": "clipperlab.experiments.fig6",
    "fig10": "clipperlab.experiments.fig10",
    "cache": "clipperlab.experiments.cache",
    "fig11": "clipperlab.experiments.fig11",
}


# Where runs go, relative to the working directory (the CLI runs from the project root).
RESULTS_ROOT = Path("results")
QUICK_ROOT = RESULTS_ROOT / "quick"


def quick_mark(name: str) -> str:
    """The words every quick-run file carries."""
    return (f"QUICK RUN (--quick): smaller settings than the full run; a preview, not the "
            f"paper's numbers (full run: {RESULTS_ROOT / name}/)")


class FullRunInTheWay(ValueError):
    """A quick run was pointed at a folder that holds a full run."""


def default_out_dir(name: str, quick: bool) -> Path:
    """``results/NAME`` for a full run, ``results/quick/NAME`` for a quick one."""
    return (QUICK_ROOT if quick else RESULTS_ROOT) / name


def holds_full_run(out_dir: Path, name: str) -> bool:
    """Whether ``out_dir`` holds a run of ``name`` that is not marked quick."""
    cfg = out_dir / "config.json"
    if cfg.exists():
        try:
            return bool(json.loads(cfg.read_text()).get("run") != "quick")
        except (ValueError, AttributeError):
            return True  # unreadable: assume it matters
    return (out_dir / f"{name}.csv").exists() or (out_dir / "summary.md").exists()


class Claim(NamedTuple):
    """One line of ``summary.md``: what is compared, the paper's number, ours."""

    what: str
    paper: str
    ours: str


@dataclass
class Results:
    """What ``run`` returns: the tidy table, raw tables, and free-form notes."""

    table: pd.DataFrame
    raw: dict[str, pd.DataFrame] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class RunRecord:
    """A finished experiment run and the files it wrote."""

    name: str
    config: Any
    results: Results
    wall_s: float
    out_dir: Path
    files: list[Path]


def load_experiment(name: str) -> ModuleType:
    """The module of experiment ``name``; ``KeyError`` with the known names otherwise."""
    if name not in EXPERIMENTS:
        raise KeyError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[name])


def make_config(
    mod: ModuleType, *, quick: bool, seed: int | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Any:
    cfg = mod.default_config(quick)
    changes = dict(overrides or {})
    if seed is not None:
        changes["seed"] = seed
    return with_overrides(cfg, changes)


def run_experiment(
    name: str,
    *,
    quick: bool = False,
    out_dir: Path | None = None,
    seed: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    command: str = "",
) -> RunRecord:
    """Run experiment ``name`` and write ``out_dir`` (default ``default_out_dir``).

    A quick run refuses a folder holding a full run (``FullRunInTheWay``) before it starts.
    """
    mod = load_experiment(name)
    cfg = make_config(mod, quick=quick, seed=seed, overrides=overrides)
    out = Path(out_dir) if out_dir is not None else default_out_dir(name, quick)
    if quick and holds_full_run(out, name):
        raise FullRunInTheWay(
            f"{out}/ holds a full run of {name}; a quick run never replaces it "
            f"(quick runs go to {default_out_dir(name, True)}/ unless --out names a folder "
            "without a full run)"
        )
    commit = _git_commit()  # the code that ran, not what was committed meanwhile
    t0 = time.perf_counter()
    results: Results = mod.run(cfg)
    wall_s = time.perf_counter() - t0
    files = write_outputs(mod, cfg, results, out, wall_s=wall_s, quick=quick, command=command,
                          commit=commit)
    return RunRecord(name, cfg, results, wall_s, out, files)


def replot_experiment(name: str, out_dir: Path | None = None, *, quick: bool = False) -> RunRecord:
    """Redraw the figures and ``summary.md`` of a finished run from its ``NAME.csv`` and
    ``config.json`` (no simulation; raw tables are left as they are).  The folder is
    ``out_dir``, or ``default_out_dir(name, quick)``; a quick run's marks are kept."""
    mod = load_experiment(name)
    out = Path(out_dir) if out_dir is not None else default_out_dir(name, quick)
    csv_path, cfg_path = out / f"{name}.csv", out / "config.json"
    for p in (csv_path, cfg_path):
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist; run the experiment first")
    data = json.loads(cfg_path.read_text())
    was_quick = data.get("run") == "quick"
    kw = {}
    for f in dataclasses.fields(mod.Config):
        if f.name in data:
            v = data[f.name]
            kw[f.name] = tuple(v) if isinstance(v, list) else v
    cfg = mod.Config(**kw)
    table = pd.read_csv(csv_path)
    results = Results(table=table.drop(columns="run") if "run" in table.columns else table)
    old = (out / "summary.md").read_text() if (out / "summary.md").exists() else ""
    run_line = next((ln for ln in old.splitlines() if ln.startswith("Run: ")), "")
    with stamped(quick_mark(name) if was_quick else ""):
        figures = list(mod.plot(results, out))
    claims = list(mod.claims(results, cfg))
    text = _summary_text(mod, cfg, results, claims, figures, out, 0.0, was_quick, "")
    if run_line:  # keep how and when the numbers were made
        text = "\n".join(run_line if ln.startswith("Run: ") else ln for ln in text.splitlines())
        text += "\n"
    (out / "summary.md").write_text(text)
    return RunRecord(name, cfg, results, 0.0, out, [*figures, out / "summary.md"])


def _git_commit(cwd: Path | None = None) -> str:
    """The checkout's commit, with " and uncommitted changes" when tracked files outside
    ``results/`` differ from it (the code that ran was not that commit's)."""
    where = cwd or Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
            timeout=5, cwd=where,
        )
        commit = out.stdout.strip()
        if not commit:
            return "unknown"
        dirty = subprocess.run(  # pathspecs from the top, wherever ``where`` is in it
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)",
             ":(top,exclude)results"], capture_output=True, text=True, timeout=10, cwd=where,
        ).stdout.strip()
        return f"{commit} and uncommitted changes" if dirty else commit
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_outputs(
    mod: ModuleType,
    config: Any,
    results: Results,
    out_dir: Path,
    *,
    wall_s: float,
    quick: bool,
    command: str = "",
    commit: str | None = None,
) -> list[Path]:
    """Write the table, raw tables, figures and ``summary.md``; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    name: str = mod.NAME
    mark = quick_mark(name) if quick else ""
    files: list[Path] = []
    csv_path = out_dir / f"{name}.csv"
    table = results.table
    if quick:
        table = table.copy()
        table.insert(0, "run", "quick")
    table.to_csv(csv_path, index=False, float_format="%.6g")
    files.append(csv_path)
    if results.raw:
        raw_dir = out_dir / "raw"
        raw_dir.mkdir(exist_ok=True)
        for key, df in results.raw.items():
            p = raw_dir / f"{key}.parquet"
            if quick:
                df = df.copy()
                df.attrs["clipperlab_run"] = "quick"
            df.to_parquet(p, index=False)
            files.append(p)
    with stamped(mark):
        figures = list(mod.plot(results, out_dir))
    files.extend(figures)
    claims: list[Claim] = list(mod.claims(results, config))
    summary = out_dir / "summary.md"
    summary.write_text(
        _summary_text(mod, config, results, claims, figures, out_dir, wall_s, quick, command,
                      commit)
    )
    files.append(summary)
    stored = {"run": "quick" if quick else "full", **config_to_dict(config)}
    (out_dir / "config.json").write_text(json.dumps(stored, indent=2) + "\n")
    files.append(out_dir / "config.json")
    return files


def _summary_text(
    mod: ModuleType,
    config: Any,
    results: Results,
    claims: list[Claim],
    figures: list[Path],
    out_dir: Path,
    wall_s: float,
    quick: bool,
    command: str,
    commit: str | None = None,
) -> str:
    doc = (mod.__doc__ or "").strip()
    lines = [f"# {mod.NAME}: {mod.TITLE}", ""]
    if quick:
        lines += [f"> **{quick_mark(mod.NAME)}**", ""]
    if doc:
        lines += [doc, ""]
    mode = "quick" if quick else "full"
    cmd = command or f"clipperlab experiment {mod.NAME}{' --quick' if quick else ''}"
    lines += [
        f"Run: `{cmd}` ({mode} mode, seed {config.seed}), {wall_s:.1f} s wall on "
        f"{platform.machine()} with {_cpu_count()} CPUs, commit {commit or _git_commit()}, "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}.",
        "",
        "## The paper beside ours",
        "",
        "| what | paper | ours |",
        "|---|---|---|",
    ]
    for c in claims:
        lines.append(f"| {c.what} | {c.paper} | {c.ours} |")
    lines.append("")
    if results.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in results.notes] + [""]
    if figures:
        lines += ["## Figures", ""]
        for f in figures:
            rel = f.relative_to(out_dir) if f.is_relative_to(out_dir) else f
            lines.append(f"![{f.stem}]({rel.as_posix()})")
        lines.append("")
    lines += ["## Results", "", markdown_table(results.table), ""]
    lines += ["## Config", "", "```json", json.dumps(config_to_dict(config), indent=2), "```", ""]
    return "\n".join(lines)


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

