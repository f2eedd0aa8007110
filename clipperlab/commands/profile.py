"""``clipperlab profile``: measure a model container's batch latency and write a profile.

Examples::

    clipperlab profile --model noop --out /tmp/noop.json
    clipperlab profile --model sklearn:svm.joblib --batch-sizes 1,2,4,8,16,32 --out svm.json
    clipperlab profile --model torch:cnn.pt --input-type floats --inputs synthetic:3x32x32 \\
        --out cnn.json
    clipperlab profile --listen 0.0.0.0:7100 --model sklearn --out remote.json   # attach:
        # then on the other host: clipperlab container --model sklearn:... --frontend HOST:7100

The file is a ``simulator`` latency profile (``clipperlab-profile/1``): use it as
``profile = "FILE.json"`` in a ``clipperlab simulate`` config.  The machine is sampled
before and after (``--busy``: warn, refuse or off); the profile's tags record the load
(``machine_load``, ``busy``).  ``--rounds`` passes over the sizes keep, per size, the
round with the median p99.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from clipperlab.calibration.errors import CalibrationError
from clipperlab.calibration.profiler import (
    DEFAULT_BATCH_SIZES,
    ProfileSpec,
    parse_batch_sizes,
    profile_model,
    summary_rows,
)
from clipperlab.calibration.quiet import (
    BUSY_POLICIES,
    MAX_LOADAVG_PER_CORE,
    MAX_OTHER_CPU_SHARE,
)
from clipperlab.errors import CLIError, json_object

__all__ = ["add_arguments", "parse_inputs", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="KIND[:PATH] as for clipperlab container")
    parser.add_argument("--name", default="", help="model name (default: the KIND)")
    parser.add_argument(
        "--batch-sizes",
        default=",".join(str(b) for b in DEFAULT_BATCH_SIZES),
        help="comma-separated batch sizes (default %(default)s)",
    )
    parser.add_argument("--input-type", default="doubles", help="doubles | floats | integers")
    parser.add_argument(
        "--inputs",
        default="digits",
        help="digits (64 features) or synthetic:SHAPE[:DTYPE], e.g. "
        "synthetic:3x224x224:float32 (default %(default)s)",
    )
    parser.add_argument("--options", default="{}",
                        help="JSON options for the model wrapper (default: none)")
    parser.add_argument("--repeats", type=int, default=200,
                        help="timed batches per size and round (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=5,
                        help="untimed batches per size and round (default %(default)s)")
    parser.add_argument(
        "--level-s", "--max-seconds", dest="level_s", type=float, default=4.0,
        help="time cap per batch size and round, in seconds (default %(default)s s)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3,
        help="passes over the batch sizes; per size the round with the median p99 is kept "
             "(default %(default)s)")
    parser.add_argument(
        "--busy", choices=BUSY_POLICIES, default="warn",
        help=f"before measuring, when other processes take over {MAX_OTHER_CPU_SHARE * 100:g}%% "
             f"of the CPU or the 1-minute load average is over {MAX_LOADAVG_PER_CORE:g} per "
             "core: warn (and tag the profile busy), refuse, or off (default %(default)s)")
    parser.add_argument(
        "--gap-ms", type=float, default=0.0,
        help="idle time before each timed batch (default 0: back to back)",
    )
    parser.add_argument("--listen", default="", help="HOST:PORT: wait for a container there")
    parser.add_argument("--profile-name", default="",
                        help="name inside the profile file (default: profiled- and the --name)")
    parser.add_argument("--out", default="", help="profile file to write (default: print only)")




def parse_inputs(text: str, input_type: str = "doubles") -> object:
    """``digits`` or ``synthetic:3x32x32[:float32]`` -> a workloads input source."""
    from clipperlab.workloads import DigitsInputs, SyntheticTensors, WorkloadError

    if text == "digits":
        return DigitsInputs()
    kind, _, rest = text.partition(":")
    if kind != "synthetic" or not rest:
        raise CLIError(f"--inputs {text!r}: expected digits or synthetic:SHAPE[:DTYPE]")
    shape_s, _, dtype = rest.partition(":")
    try:
        shape = tuple(int(s) for s in shape_s.lower().split("x"))
    except ValueError:
        raise CLIError(f"--inputs {text!r}: shape {shape_s!r} must look like 3x32x32") from None
    default_dt = {"floats": "float32", "integers": "int64"}.get(input_type, "float64")
    try:
        return SyntheticTensors(shape=shape, dtype=dtype or default_dt, pool=64)
    except WorkloadError as e:
        raise CLIError(f"--inputs {text!r}: {e}") from None


def run(args: argparse.Namespace) -> int:
    options = json_object(args.options, "--options")
    kind, _, path = args.model.partition(":")
    if kind in ("sklearn", "torch") and path and not Path(path).exists():
        raise CLIError(f"--model {args.model!r}: file {path!r} does not exist")
    if args.gap_ms < 0:
        raise CLIError(f"--gap-ms must be >= 0, got {args.gap_ms}")
    if args.out and Path(args.out).is_dir():
        raise CLIError(f"--out {args.out!r} is a directory; give a file name")
    try:
        spec = ProfileSpec(
            model=args.model,
            name=args.name,
            input_type=args.input_type,
            options=options,
            inputs=parse_inputs(args.inputs, args.input_type),  # type: ignore[arg-type]
            batch_sizes=parse_batch_sizes(args.batch_sizes),
            warmup=args.warmup,
            repeats=args.repeats,
            max_s_per_size=args.level_s,
            gap_s=args.gap_ms / 1e3,
            profile_name=args.profile_name,
            rounds=args.rounds,
            busy=args.busy,
        )
        print(f"profiling {args.model} over the container RPC ...", flush=True)
        prof = profile_model(spec, listen=args.listen or None,
                             log=lambda s: print(s, flush=True))
    except CalibrationError as e:  # ProfilerError, or BusyMachineError with --busy refuse
        raise CLIError(str(e)) from None
    print("\n".join(summary_rows(prof)))
    print(f"fit (p99 line): alpha {prof.fit[0] * 1e3:.4f} ms/item, beta {prof.fit[1] * 1e3:.4f} ms"
          if prof.fit else "")
    if args.out:
        from clipperlab.simulator import save_profile

        path_out = save_profile(prof, args.out)
        print(f"wrote {path_out} ({prof.tags.get('hardware')}; {prof.tags.get('software')}; "
              f"busy: {prof.tags.get('busy', '?')})")
    return 0
