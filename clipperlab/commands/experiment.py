"""``clipperlab experiment NAME [--quick] [--out DIR] [--seed N] [--set key=value ...]``.

Runs one of the paper's experiments (or ``all`` of them, each into ``results/NAME``) in the
simulator and writes ``results/NAME/``: the tidy CSV, PNG figures, ``summary.md`` with the
paper's claims beside our numbers, and raw tables under ``raw/``.  ``--list`` prints the
experiments and their config keys.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from clipperlab.errors import CLIError
from clipperlab.experiments.config import parse_set_args
from clipperlab.experiments.framework import (
    EXPERIMENTS,
    load_experiment,
    replot_experiment,
    run_experiment,
)

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "name", nargs="?", metavar="NAME",
        help=f"experiment to run: {', '.join(EXPERIMENTS)}, or 'all'",
    )
    parser.add_argument("--quick", action="store_true", help="small run (under a minute each)")
    parser.add_argument(
        "--out", type=Path, default=None,
        help="output folder (default results/NAME; with 'all', DIR/NAME)",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
        help="override one config field (tuples: items joined with '+'); repeatable",
    )
    parser.add_argument(
        "--mode", choices=("sim", "real", "both"), default=None,
        help="where to run, for experiments that run in both (fig6, fig8, fig10, cache, "
        "fig11...): the same as --set mode=MODE",
    )
    parser.add_argument("--list", action="store_true", help="list experiments and their keys")
    parser.add_argument(
        "--replot", action="store_true",
        help="redraw figures and summary.md from the run's CSV (no simulation)",
    )


def _list() -> int:
    for name in EXPERIMENTS:
        mod = load_experiment(name)
        keys = ", ".join(f.name for f in dataclasses.fields(mod.Config))
        print(f"{name}: {mod.TITLE}\n    keys: {keys}")
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
                rec = replot_experiment(name, out)
            except (FileNotFoundError, ValueError, TypeError) as e:
                raise CLIError(f"{name}: cannot replot: {e}") from None
            print(f"replotted {name}: wrote {len(rec.files)} files in {rec.out_dir}/")
            continue
        print(f"running {name}: {mod.TITLE}{' (quick)' if args.quick else ''}", flush=True)
        try:
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
