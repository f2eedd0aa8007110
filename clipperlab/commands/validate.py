"""``clipperlab validate``: compare the simulator with the real system on one workload.

Example (no model files needed)::

    clipperlab validate --deployment examples/validate_noop.toml \\
        --workload examples/workload_poisson.toml --out results/validation/noop

Samples the machine first (``--busy``: warn, refuse or off when other processes are
busy), profiles the deployment's models, starts the real server, measures the frontend's
overhead and the capacity (``--ramps`` ramps bisecting to ``--ramp-resolution``, their
median), then runs the workload at
each ``--levels`` fraction of capacity for ``--level-s`` seconds, ``--repeats`` times on
the real server and in the simulator (medians; with ``--host-cpu``, the default, the
twin also shares the machine's cores among the loop, the containers and the generator:
``sim+host``; with ``--speed``, the default, a probe follows the machine's speed while the
real runs go and the twin's host switches between the two speeds it found); prints the
table (throughput,
mean/p50/p90/p99, relative error), the capacity measured and predicted by the twin, the
fitted numbers as ``value [lo, hi]``, and writes ``validation.csv``, ``errors.csv``,
``validation.png``, ``summary.md`` and the measured profiles to ``--out``.  See
``clipperlab.calibration.validation`` for the procedure.
"""

from __future__ import annotations

import argparse
import dataclasses

from clipperlab.calibration.capacity import RAMP_RESOLUTION, RAMPS
from clipperlab.calibration.errors import CalibrationError
from clipperlab.calibration.loadgen import APIS, load_workload_spec
from clipperlab.calibration.profiler import parse_batch_sizes
from clipperlab.calibration.quiet import (
    BUSY_POLICIES,
    MAX_LOADAVG_PER_CORE,
    MAX_OTHER_CPU_SHARE,
)
from clipperlab.calibration.validation import LEVEL_S, REPEATS, TWIN_DRAWS
from clipperlab.errors import CLIError, json_object

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--deployment", required=True, help="deploy.toml of the real server")
    parser.add_argument("--workload", required=True, help="workload spec (TOML/JSON)")
    parser.add_argument("--levels", default="0.3,0.6,0.9",
                        help="fractions of capacity, comma-separated (default %(default)s)")
    parser.add_argument("--level-s", "--duration-s", dest="level_s", type=float,
                        default=LEVEL_S, help="seconds per run of a level (default %(default)s s)")
    parser.add_argument("--repeats", type=int, default=REPEATS,
                        help="runs per level on each side; each number is their median "
                             "(default %(default)s)")
    parser.add_argument("--twin-draws", type=int, default=TWIN_DRAWS,
                        help="the calibrated twins' runs per real run of a level, each "
                             "with its own seed; medians over all (default %(default)s)")
    parser.add_argument("--ramps", type=int, default=RAMPS,
                        help="capacity ramps, median (default %(default)s)")
    parser.add_argument("--ramps-after", type=int, default=0,
                        help="of the --ramps, how many run after the levels (whose rates "
                             "the ones before set), so the calibration sees the machine on "
                             "both sides of them (default %(default)s)")
    parser.add_argument("--ramp-resolution", type=float, default=RAMP_RESOLUTION,
                        help="the capacity ramp bisects until first bad / last good rate is "
                             "at most this ratio (default %(default)s)")
    parser.add_argument("--busy", choices=BUSY_POLICIES, default="warn",
                        help="before each measurement, when other processes take over "
                             f"{MAX_OTHER_CPU_SHARE * 100:g}%% of the CPU or the 1-minute load "
                             f"average is over {MAX_LOADAVG_PER_CORE:g} per core: warn and "
                             "record it, refuse (wait up to 90 s, then stop), or off "
                             "(default %(default)s)")
    parser.add_argument("--capacity", type=float, default=None,
                        help="capacity in q/s (default: measured by a ramp)")
    parser.add_argument("--batching", default="",
                        help='JSON batching for every model, e.g. {"policy": "aimd"} '
                             '(default: each '
                             "model's own in the deployment)")
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32,64,128",
                        help="batch sizes to profile (default %(default)s)")
    parser.add_argument("--profile-repeats", type=int, default=100,
                        help="timed batches per size (default %(default)s)")
    parser.add_argument("--api", default="clipper", choices=APIS,
                        help="query API (default %(default)s)")
    parser.add_argument("--app", default="", help="application (default: the workload's)")
    parser.add_argument("--connections", type=int, default=8,
                        help="the load generator's connections (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="workload seed (default %(default)s)")
    parser.add_argument("--host-cpu", action=argparse.BooleanOptionalAction, default=True,
                        help="the twin shares this machine's cores among the server's loop, "
                             "the containers and the load generator (their CPU fitted from "
                             "/proc), and is fitted and predicts with it; the twin without it "
                             "stays in the table as sim+frontend (default: on)")
    parser.add_argument("--speed", action=argparse.BooleanOptionalAction, default=True,
                        help="probe this machine's speed (a fixed Python loop every 25 ms, "
                             "about 2%% of a core) while the real runs go, and give the "
                             "host CPU model's twin the two speeds found (a virtual "
                             "machine's cores can run 2x slower for seconds; default: on)")
    parser.add_argument("--replay-speed", action=argparse.BooleanOptionalAction, default=True,
                        help="with --speed: probe each core on its own (one probe per core, "
                             "at most 8) and run each level's twin at the speed the real "
                             "run went at, replayed probe by probe, instead of drawn from "
                             "the level's two speeds (default: on)")
    parser.add_argument("--jobs", type=int, default=0, metavar="N",
                        help="the twin's runs on N processes, between real runs: the "
                             "fits' replays, the capacity ramps after the first, each "
                             "level's runs and draws (0: one per CPU; the same numbers "
                             "whatever N; default %(default)s)")
    parser.add_argument("--out", default="",
                        help="directory for the outputs (default: none, the table is printed only)")




def run(args: argparse.Namespace) -> int:
    from clipperlab.calibration.outputs import format_table, write_outputs
    from clipperlab.calibration.validation import validate

    try:
        levels = tuple(float(x) for x in args.levels.split(","))
    except ValueError:
        raise CLIError(f"--levels {args.levels!r}: expected numbers like 0.3,0.6,0.9") from None
    batching = None
    if args.batching:
        batching = json_object(args.batching, "--batching")
    if not args.level_s > 0:
        raise CLIError(f"--level-s must be > 0 seconds, got {args.level_s}")
    if args.repeats < 1:
        raise CLIError(f"--repeats must be an integer >= 1, got {args.repeats}")
    if args.twin_draws < 1:
        raise CLIError(f"--twin-draws must be an integer >= 1, got {args.twin_draws}")
    if args.ramps < 1:
        raise CLIError(f"--ramps must be an integer >= 1, got {args.ramps}")
    if args.jobs < 0:
        raise CLIError(f"--jobs must be an integer >= 0 (0: one per CPU), got {args.jobs}")
    if not args.ramp_resolution > 1:
        raise CLIError(f"--ramp-resolution must be a ratio > 1, got {args.ramp_resolution}")
    if not 0 <= args.ramps_after < args.ramps:
        raise CLIError(f"--ramps-after must be an integer from 0 to --ramps - 1 "
                       f"({args.ramps - 1}), got {args.ramps_after}")
    if args.ramps_after and args.capacity is not None:
        raise CLIError("--ramps-after needs a measured capacity: no ramp runs with --capacity")
    try:
        wl = load_workload_spec(args.workload)
        if args.app:
            wl = dataclasses.replace(wl, app=args.app)
        res = validate(
            args.deployment, wl, levels=levels, duration_s=args.level_s,
            repeats=args.repeats, busy=args.busy, ramps=args.ramps,
            ramp_resolution=args.ramp_resolution, capacity_qps=args.capacity, batching=batching,
            batch_sizes=parse_batch_sizes(args.batch_sizes),
            profile_repeats=args.profile_repeats, api=args.api,
            connections=args.connections, seed=args.seed, host_cpu=args.host_cpu,
            speed=args.speed, replay_speed=args.replay_speed, twin_draws=args.twin_draws,
            ramps_after=args.ramps_after, jobs=args.jobs,
        )
    except CalibrationError as e:
        raise CLIError(str(e)) from None
    print(format_table(res))
    if args.out:
        files = write_outputs(res, args.out, f"{args.deployment} / {args.workload}")
        print("wrote " + ", ".join(str(f) for f in files if f.suffix != ".json"))
    return 0
