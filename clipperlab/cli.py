"""The ``clipperlab`` command.

Each subcommand lives in its own module that defines ``add_arguments(parser)`` and
``run(args) -> int``; this file only lists them, so the modules are imported only when
their subcommand runs (``clipperlab --help`` stays fast).

Rules:
- Exit codes: 0 done, 1 the run failed (``RunFailed``: a sweep job raised, a worker died),
  2 a usage error (argparse, or ``CLIError`` from a command), 130 interrupted.
- A usage error of a subcommand (an unknown flag, a bad choice) is reported by that
  subcommand's parser: its usage line, then one ``error:`` line.
- A ``--log-level`` flag of any subcommand takes one of ``LOG_LEVELS`` (any case); anything
  else is a usage error, never a silent fallback.
- ``main`` returns the exit code instead of raising ``SystemExit`` (``--help`` returns 0).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from clipperlab import __version__
from clipperlab.errors import CLIError, RunFailed

# name -> one-line help; the command's module is ``clipperlab.commands.<name>``
SUBCOMMANDS: dict[str, str] = {
    "experiment": "run one of the paper's experiments",
    "sweep": "run an experiment over a grid of parameters and seeds",
    "simulate": "simulate a deployment described in a config file",
    "serve": "run the serving system (query frontend, admin API, RPC)",
    "container": "run a model container that connects to a frontend",
    "profile": "measure a model's batch latency and write a profile",
    "load": "drive a running server with an open-loop workload",
    "validate": "compare the simulator with the real system",
    "plan": "size a deployment for a latency objective (and verify it)",
}


LOG_LEVELS: tuple[str, ...] = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"invalid level {text!r}; expected one of {', '.join(LOG_LEVELS)} (any case)"
        )
    return level


def _strict_log_level(parser: argparse.ArgumentParser) -> None:
    """Make a subcommand's ``--log-level`` refuse unknown levels (see the rules)."""
    for action in parser._actions:
        if action.dest == "log_level" and action.choices is None:
            action.type = _log_level
            action.metavar = action.metavar or "LEVEL"


def _command(name: str) -> Any:
    return importlib.import_module(f"clipperlab.commands.{name}")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="clipperlab",
        description="Clipper-style prediction serving: simulate it, run it, measure it.",
    )
    from clipperlab.real import build_description

    parser.add_argument("--version", action="version",
                        version=f"clipperlab {__version__} ({build_description()})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers = {}
    for name, help_ in SUBCOMMANDS.items():
        subparsers[name] = sub.add_parser(name, help=help_, description=help_)
    return parser, subparsers


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # `clipperlab experiment --list | head`: the reader left
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (no flush error at exit)
        return 0


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, subparsers = build_parser()
    # Only the chosen subcommand's module is imported to add its arguments.
    cmd = next((a for a in argv if not a.startswith("-")), None)
    if cmd in subparsers:
        mod = _command(cmd)
        mod.add_arguments(subparsers[cmd])
        _strict_log_level(subparsers[cmd])
    try:
        args, extras = parser.parse_known_args(argv)
        if extras:
            # Unknown flags after a subcommand are that subcommand's error, with its usage.
            owner = subparsers.get(args.command) if args.command else None
            (owner or parser).error(f"unrecognized arguments: {' '.join(extras)}")
    except SystemExit as e:  # argparse: --help/--version (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else 2
    if args.command is None:
        parser.print_help()
        return 2
    mod = _command(args.command)
    try:
        return int(mod.run(args) or 0)
    except RunFailed as e:
        print(f"clipperlab {args.command}: failed: {e}", file=sys.stderr)
        return 1
    except CLIError as e:
        print(f"clipperlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"clipperlab {args.command}: interrupted", file=sys.stderr)
        return 130

