"""``clipperlab plan PLAN.toml [--out DIR] [--quick] [--verify] [--executor local|ray]``.

Sizes a deployment for a latency objective with the simulator (``experiments.plan``):
searches replicas, batching and hardware per model, prints the recommendation (or, when
nothing in the space meets the objective, the closest candidate: exit code 1) and writes
``plan.md``, ``plan.csv``, ``pareto.png``, ``deploy.toml`` and its simulated twin to
``--out`` (default ``results/plan/NAME``, with ``--quick`` ``results/quick/plan/NAME``;
``NAME``: the plan file's name without ``.toml``).  ``--verify`` then runs the
recommendation and the next-cheaper candidate on the real server with replay containers
and writes ``verify.md``.  Bad input is one ``error:`` line, exit code 2.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from clipperlab.errors import CLIError, RunFailed

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("plan", nargs="?", metavar="PLAN",
                        help="the plan file, TOML or JSON (see examples/plan/)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default results/plan/NAME, with --quick "
                        "results/quick/plan/NAME)")
    parser.add_argument("--quick", action="store_true",
                        help="a preview: fewer seeds (at most 2) and 40%% of each "
                        "workload's queries (default: the full plan)")
    parser.add_argument("--verify", action="store_true",
                        help="then run the recommendation and the next-cheaper candidate "
                        "on the real server with replay containers (default: do not)")
    parser.add_argument("--margin-ms", type=float, default=None,
                        help="margin off each objective's latency, milliseconds >= 0 "
                        "(default: the plan's plan.margin_ms, else from the fidelity table)")
    parser.add_argument("--jobs", "-j", type=int, default=None,
                        help="simulations at a time, >= 1 (default: the number of CPUs)")
    parser.add_argument("--executor", default="local",
                        help="local (processes on this machine) or ray (tasks on a Ray "
                        "cluster) (default local)")
    parser.add_argument("--ray-address", default=None,
                        help="Ray cluster address (default: start a local Ray)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (default: a bar on stderr when it is a "
                        "terminal)")


def run(args: argparse.Namespace) -> int:
    from clipperlab.calibration.errors import CalibrationError
    from clipperlab.experiments.framework import FullRunInTheWay
    from clipperlab.experiments.plan import PlanError, describe, run_plan
    from clipperlab.experiments.sweep import ExecutorUnavailable, JobFailed

    if not args.plan:
        raise CLIError("missing PLAN: a plan file (see examples/plan/)")
    if args.executor not in ("local", "ray"):
        raise CLIError(f"--executor {args.executor!r} is unknown; expected 'local' or 'ray'")
    jobs = args.jobs if args.jobs is not None else (os.cpu_count() or 1)
    if jobs < 1:
        raise CLIError(f"--jobs must be >= 1, got {jobs}")
    if args.margin_ms is not None and not args.margin_ms >= 0:
        raise CLIError(f"--margin-ms must be milliseconds >= 0, got {args.margin_ms}")
    name = Path(args.plan).stem
    out = args.out or ((Path("results/quick/plan") if args.quick else Path("results/plan"))
                       / name)
    try:
        outcome = run_plan(args.plan, out_dir=out, quick=args.quick, executor=args.executor,
                           workers=jobs, ray_address=args.ray_address,
                           margin_ms=args.margin_ms, progress=not args.no_progress)
    except (PlanError, FullRunInTheWay, ExecutorUnavailable) as e:
        raise CLIError(str(e)) from None
    except JobFailed as e:
        raise RunFailed(str(e)) from None
    d = describe(outcome)
    print(f"plan {name}: {d['candidates']} candidates, {d['runs']} simulated runs, "
          f"{d['wall_s']} s on {args.executor}")
    if outcome.best is None:
        c = outcome.closest
        raise RunFailed(f"infeasible: no configuration in the search space meets the "
                        f"objective; closest: {c.candidate.label() if c else 'none'}"
                        + (f" ({c.reason})" if c else "") + f"; see {out / 'plan.md'}")
    print(f"recommended: {outcome.best.candidate.label()} (cost {outcome.best.cost:g}): "
          f"{outcome.best.reason}")
    print(f"wrote {out / 'plan.md'}, plan.csv, pareto.png, deploy.toml, deploy-sim.toml")
    if args.verify:
        from clipperlab.experiments.plan_verify import verify

        cheaper = outcome.cheaper.candidate if outcome.cheaper else None
        try:
            res = verify(outcome.spec, outcome.best.candidate, cheaper, out)
        except CalibrationError as e:
            raise RunFailed(f"verify: {e}") from None
        print(f"verify: the plan {'holds' if res.holds else 'does not hold'}: {res.why}; "
              f"wrote {out / 'verify.md'}")
        return 0 if res.holds else 1
    return 0
