"""``clipperlab load``: drive a running server with an open-loop workload.

Examples::

    clipperlab serve --config examples/deploy.toml &
    clipperlab load --workload examples/workload_poisson.toml --target http://127.0.0.1:1337 \\
        --app hello --out /tmp/load
    # the same workload through the simulator, side by side:
    clipperlab load --workload examples/workload_poisson.toml --target 127.0.0.1:1337 \\
        --app hello --simulate examples/validate_noop_sim.toml --out /tmp/load

Writes ``load.csv`` (one row per query: scheduled time, send time, reply time, latency from
the scheduled time, HTTP status, default, refused), ``latency.png`` (histogram) and
``summary.txt`` to ``--out``, and prints the summary table.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from clipperlab.calibration.loadgen import (
    APIS,
    LoadError,
    format_summary,
    load_workload_spec,
    plot_latency,
    run_workload,
)
from clipperlab.errors import CLIError
from clipperlab.report.latency import summarise

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workload", required=True, help="workload spec, TOML or JSON (required)")
    parser.add_argument("--target", required=True,
                        help="query frontend, http://HOST:PORT (required)")
    parser.add_argument("--api", default="clipper", choices=APIS,
                        help="query API (default clipper)")
    parser.add_argument("--app", default="", help="application (default: the workload's)")
    parser.add_argument("--connections", type=int, default=8,
                        help="keep-alive connections (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="workload seed, >= 0 (default 0)")
    parser.add_argument("--drain-s", type=float, default=5.0,
                        help="seconds to wait for answers after the last send (default 5)")
    parser.add_argument(
        "--simulate", default="",
        help="also run the workload in this simulator config, TOML or JSON (default: not)"
    )
    parser.add_argument("--out", default="",
                        help="folder for load.csv and latency.png (default: print only)")




def run(args: argparse.Namespace) -> int:
    try:
        wl = load_workload_spec(args.workload)
        if args.app:
            wl = dataclasses.replace(wl, app=args.app)
        if args.connections < 1:
            raise LoadError(f"--connections must be >= 1, got {args.connections}")
        sim_cfg = None
        if args.simulate:
            from clipperlab.simulator import SimConfigError, load_config

            try:
                sim_cfg = load_config(args.simulate)
            except SimConfigError as e:
                raise LoadError(str(e)) from None
        trace, table = run_workload(
            wl, args.target, seed=args.seed, api=args.api, connections=args.connections,
            drain_s=args.drain_s,
        )
    except LoadError as e:
        raise CLIError(str(e)) from None
    rows = {"real": summarise(table)}
    tables = {"real": table}
    if sim_cfg is not None:
        from clipperlab.simulator import Simulation

        res = Simulation(sim_cfg.deployment, trace, seed=args.seed).run()
        rows["simulated"] = res.summary(wl.app)
        tables["simulated"] = res.queries
    text = format_summary(rows)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "load.csv", index=False, float_format="%.9g")
        plot_latency(tables, str(out / "latency.png"), f"{args.workload} -> {args.target}")
        (out / "summary.txt").write_text(text + "\n")
        print(f"wrote {out / 'load.csv'}, {out / 'latency.png'}, {out / 'summary.txt'}")
    return 0
