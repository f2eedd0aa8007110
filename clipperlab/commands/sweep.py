"""``clipperlab sweep NAME --set key=v1,v2 ... --seeds K --jobs J [--executor local|ray]``.

Runs experiment NAME at every point of the grid given by the ``--set`` lists, ``K`` seeds
each, ``J`` jobs at a time, with a progress bar; prints one tidy table (metrics averaged
over seeds, ``n`` seeds per row) and writes every job's rows to ``OUT/sweep.csv`` and the
averaged table to ``OUT/summary.csv`` (default ``OUT``: ``results/NAME/raw/sweep``, or
``results/quick/NAME/raw/sweep`` with ``--quick``).  A job that fails stops the sweep with
its traceback (exit code 1).  With ``--executor ray`` every task runs this checkout's code
(shipped by Ray, see ``experiments.sweep``); workers need the same dependencies only.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import pandas as pd

from clipperlab.errors import CLIError, RunFailed
from clipperlab.experiments.config import parse_set_args
from clipperlab.experiments.framework import EXPERIMENTS, default_out_dir, load_experiment
from clipperlab.experiments.sweep import (
    ExecutorUnavailable,
    JobFailed,
    expand_grid,
    run_jobs,
    summarize,
)
from clipperlab.report.tables import text_table

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", metavar="NAME", help=f"one of {', '.join(EXPERIMENTS)}")
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=V1,V2",
        help="a config key and its values (tuples: items joined with '+'; keys with types "
        "and defaults: clipperlab experiment NAME --help); repeatable (default: none)",
    )
    parser.add_argument("--seeds", type=int, default=1,
                        help="seeds per grid point, >= 1 (default 1)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="first seed, >= 0 (default 0)")
    parser.add_argument(
        "--jobs", "-j", type=int, default=None,
        help="jobs at a time, >= 1 (default: the number of CPUs)",
    )
    parser.add_argument(
        "--executor", default="local",
        help="local (processes on this machine) or ray (tasks on a Ray cluster, this "
        "checkout's code shipped to its workers) (default local)",
    )
    parser.add_argument(
        "--ray-address", default=None,
        help="Ray cluster address, e.g. ray://HOST:10001 or auto (default: start a local Ray)",
    )
    parser.add_argument("--quick", action="store_true",
                        help="start from the quick config (default: the full one)")
    parser.add_argument(
        "--out", type=Path, default=None,
        help="output folder (default results/NAME/raw/sweep, with --quick "
        "results/quick/NAME/raw/sweep)",
    )
    parser.add_argument(
        "--no-progress", action="store_true",
        help="no progress bar (default: a bar on stderr when it is a terminal)",
    )


def run(args: argparse.Namespace) -> int:
    if not args.name:
        raise CLIError(f"missing NAME; expected one of {', '.join(EXPERIMENTS)}")
    if args.name not in EXPERIMENTS:
        known = ", ".join(EXPERIMENTS)
        raise CLIError(f"unknown experiment {args.name!r}; expected one of {known}")
    if args.executor not in ("local", "ray"):
        raise CLIError(f"--executor {args.executor!r} is unknown; expected 'local' or 'ray'")
    if args.seeds < 1:
        raise CLIError(f"--seeds must be >= 1, got {args.seeds}")
    if args.first_seed < 0:
        raise CLIError(f"--first-seed must be >= 0, got {args.first_seed}")
    n_jobs = args.jobs if args.jobs is not None else (os.cpu_count() or 1)
    if n_jobs < 1:
        raise CLIError(f"--jobs must be >= 1, got {n_jobs}")
    mod = load_experiment(args.name)
    try:
        grid = parse_set_args(mod.Config, args.sets)
    except ValueError as e:
        raise CLIError(str(e)) from None
    if "seed" in grid:
        raise CLIError("--set seed=... is not allowed; use --seeds and --first-seed")
    # Check every combination builds a config before starting any job.
    jobs = expand_grid(
        args.name, grid, seeds=args.seeds, first_seed=args.first_seed, quick=args.quick
    )
    base = mod.default_config(args.quick)
    for job in jobs:
        try:
            cfg = dataclasses.replace(base, **dict(job.overrides))
            check = getattr(mod, "check_config", None)
            if check is not None:
                check(cfg)
        except (ValueError, TypeError) as e:
            raise CLIError(f"{args.name}: {e}") from None
    print(
        f"sweep {args.name}: {len(jobs)} job(s) "
        f"({len(jobs) // args.seeds} grid point(s) x {args.seeds} seed(s)), "
        f"{n_jobs} at a time on {args.executor}",
        flush=True,
    )
    try:
        tables = run_jobs(
            jobs, n_workers=n_jobs, executor=args.executor, progress=not args.no_progress,
            ray_address=args.ray_address,
        )
    except ExecutorUnavailable as e:
        raise CLIError(str(e)) from None
    except JobFailed as e:
        raise RunFailed(str(e)) from None
    table = pd.concat(tables, ignore_index=True)
    summary = summarize(table, list(grid), list(getattr(mod, "KEYS", ())))
    out = args.out if args.out is not None else (
        default_out_dir(args.name, args.quick) / "raw" / "sweep"
    )
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "sweep.csv", index=False, float_format="%.6g")
    summary.to_csv(out / "summary.csv", index=False, float_format="%.6g")
    print(text_table(summary))
    print(f"wrote {out / 'sweep.csv'} ({len(table)} rows) and {out / 'summary.csv'}")
    return 0
