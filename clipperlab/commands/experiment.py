"""``clipperlab experiment NAME [--quick] [--out DIR] [--seed N] [--set key=value ...]``.

Runs one of the paper's experiments (or ``all`` of them, each into ``results/NAME``) in the
simulator and writes ``results/NAME/``: the tidy CSV, PNG figures, ``summary.md`` with the
paper's claims beside our numbers, and raw tables under ``raw/``.

- ``--quick`` runs a preview into ``results/quick/NAME/`` (git-ignored), every file marked
  as quick; it never writes into a folder holding a full run (exit 2 if ``--out`` names one).
- ``--list`` prints the experiments and every config key with its type, default (and quick
  default) and meaning; ``NAME --help`` prints the same for one experiment.
- ``--replot`` redraws a finished run's figures and ``summary.md`` from its CSV.
- A progress bar on stderr while it runs (only on a terminal; ``--no-progress``: none).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipperlab.errors import CLIError
from clipperlab.experiments.config import describe_fields, parse_set_args
from clipperlab.experiments.framework import (
    EXPERIMENTS,
    default_out_dir,
    load_experiment,
    replot_experiment,
    run_experiment,
)
from clipperlab.report import progress

__all__ = ["add_arguments", "run"]


def describe(name: str) -> str:
    """Experiment ``name``: its title and every config key (type, defaults, meaning)."""
    mod = load_experiment(name)
    lines = [f"{name}: {mod.TITLE}", "  config keys (--set KEY=VALUE):"]
    lines += describe_fields(mod.default_config(False), mod.default_config(True), indent="    ")
    return "\n".join(lines)


class _Help(argparse.Action):
    """``-h/--help``: the usage, then the keys of the experiment named before it."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: Any = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        parser.print_help()
        name = getattr(namespace, "name", None)
        if name in EXPERIMENTS:
            print("\n" + describe(name))
        else:
            print("\nconfig keys: clipperlab experiment NAME --help, or --list for all")
        parser.exit()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Our --help replaces argparse's (the group holding it resolves the clash once).
    group = parser._optionals
    group.conflict_handler = "resolve"
    group.add_argument(
        "-h", "--help", action=_Help,
        help="show this help; after NAME, also the experiment's config keys, and exit",
    )
    group.conflict_handler = "error"
    parser.add_argument(
        "name", nargs="?", metavar="NAME",
        help=f"experiment to run: {', '.join(EXPERIMENTS)}, or 'all'",
    )
    parser.add_argument(
        "--quick", action="store_true",
        help="a preview on smaller settings (about a minute each) into results/quick/NAME/, "
        "every file marked quick; never replaces a full run (default: the full run)",
    )
    parser.add_argument(
        "--out", type=Path, default=None,
        help="output folder (default results/NAME, or results/quick/NAME with --quick; "
        "with 'all', DIR/NAME)",
    )
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed, >= 0 (default: the config's, 0)")
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
        help="override one config key (tuples: items joined with '+'; keys: NAME --help); "
        "repeatable (default: none)",
    )
    parser.add_argument(
        "--mode", choices=("sim", "real", "both"), default=None,
        help="where to run, for experiments that run in both (fig6, fig8, fig10, cache, "
        "fig11): the same as --set mode=MODE (default: the config's, sim)",
    )
    parser.add_argument(
        "--list", action="store_true",
        help="list the experiments and every config key with its type, default and meaning",
    )
    parser.add_argument(
        "--replot", action="store_true",
        help="redraw figures and summary.md from the run's CSV and config.json, no "
        "simulation (folder: --out, or the default folder of the run, quick with --quick)",
    )
    parser.add_argument(
        "--no-progress", action="store_true",
        help="no progress bar (default: a bar on stderr when it is a terminal)",
    )


def _list() -> int:
    print("\n\n".join(describe(name) for name in EXPERIMENTS))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.list:
        return _list()
    if not args.name:
        raise CLIError(f"missing NAME; expected one of {', '.join(EXPERIMENTS)}, or 'all'")
    names = list(EXPERIMENTS) if args.name == "all" else [args.name]
    if names[0] not in EXPERIMENTS:
        raise CLIError(
            f"unknown experiment {args.name!r}; expected one of {', '.join(EXPERIMENTS)}, or 'all'"
        )
    if args.seed is not None and args.seed < 0:
        raise CLIError(f"--seed must be >= 0, got {args.seed}")
    if args.mode is not None:
        if len(names) > 1:
            raise CLIError("--mode applies to one experiment; name it instead of 'all'")
        fields = {f.name for f in dataclasses.fields(load_experiment(names[0]).Config)}
        if "mode" not in fields:
            raise CLIError(f"{names[0]} runs in the simulator only; it has no --mode")
        args.sets = [*args.sets, f"mode={args.mode}"]
    if args.sets and len(names) > 1:
        raise CLIError("--set applies to one experiment; name it instead of 'all'")
    for name in names:
        mod = load_experiment(name)
        try:
            overrides = {k: v[0] for k, v in
                         parse_set_args(mod.Config, args.sets, allow_lists=False).items()}
        except ValueError as e:
            raise CLIError(str(e)) from None
        out = args.out
        if out is not None and len(names) > 1:
            out = out / name
        cmd = "clipperlab experiment " + name + (" --quick" if args.quick else "")
        if args.seed is not None:
            cmd += f" --seed {args.seed}"
        for s in args.sets:
            cmd += f" --set {s}"
        if args.replot:
            try:
                rec = replot_experiment(name, out, quick=args.quick)
            except (FileNotFoundError, ValueError, TypeError) as e:
                raise CLIError(f"{name}: cannot replot: {e}") from None
            print(f"replotted {name}: wrote {len(rec.files)} files in {rec.out_dir}/")
            continue
        dest = out if out is not None else default_out_dir(name, args.quick)
        print(f"running {name}: {mod.TITLE}{' (quick)' if args.quick else ''} -> {dest}/",
              flush=True)
        try:
            with progress.bars(not args.no_progress):
                rec = run_experiment(
                    name, quick=args.quick, out_dir=out, seed=args.seed, overrides=overrides,
                    command=cmd,
                )
        except ValueError as e:
            # Config values the experiment refuses (checked in its run()).
            raise CLIError(f"{name}: {e}") from None
        claims = mod.claims(rec.results, rec.config)
        width = max((len(c.what) for c in claims), default=0)
        for c in claims:
            print(f"  {c.what:<{width}}  paper: {c.paper}  |  ours: {c.ours}")
        print(f"  wrote {rec.out_dir}/ ({len(rec.files)} files) in {rec.wall_s:.1f} s", flush=True)
    return 0
