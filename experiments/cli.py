"""The ``clipperlab`` command.

Each subcommand lives in its own module that defines ``add_arguments(parser)`` and
``run(args) -> int``; this file only lists them, so the modules are imported only when
their subcommand runs (``clipperlab --help`` stays fast).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "experiment": ("experiments.cmd_experiment", "run one of the paper's experiments"),
    "sweep": ("experiments.cmd_sweep", "run an experiment over a grid of parameters and seeds"),
    "simulate": ("simulator.cmd_simulate", "simulate a deployment described in a config file"),
    "serve": ("real.cmd_serve", "run the serving system (query frontend, admin API, RPC)"),
    "container": ("real.cmd_container", "run a model container that connects to a frontend"),
    "profile": ("real.cmd_profile", "measure a model's batch latency and write a profile"),
    "load": ("real.cmd_load", "drive a running server with an open-loop workload"),
    "validate": ("real.cmd_validate", "compare the simulator with the real system"),
}


class CLIError(Exception):
    """A user error: printed as one line, exit code 2, no traceback."""


def _available() -> dict[str, tuple[str, str]]:
    out = {}
    for name, (mod, help_) in SUBCOMMANDS.items():
        if importlib.util.find_spec(mod) is not None:
            out[name] = (mod, help_)
    return out


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="clipperlab",
        description="Clipper-style prediction serving: simulate it, run it, measure it.",
    )
    parser.add_argument("--version", action="version", version="clipperlab 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers = {}
    for name, (_mod, help_) in _available().items():
        subparsers[name] = sub.add_parser(name, help=help_, description=help_)
    return parser, subparsers


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, subparsers = build_parser()
    # Only the chosen subcommand's module is imported to add its arguments.
    cmd = next((a for a in argv if not a.startswith("-")), None)
    if cmd in subparsers:
        mod = importlib.import_module(_available()[cmd][0])
        mod.add_arguments(subparsers[cmd])
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    mod = importlib.import_module(_available()[args.command][0])
    try:
        return int(mod.run(args) or 0)
    except CLIError as e:
        print(f"clipperlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"clipperlab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # Run the imported module's main so that subcommands raising experiments.cli.CLIError
    # are caught (under ``python -m`` this file is also ``__main__``, a different class).
    from experiments.cli import main as _main

    sys.exit(_main())
