"""``clipperlab container``: run one model replica that connects to a frontend.

Example::

    clipperlab container --model sklearn:store/models/svm-1.joblib --name svm --version 1 \\
        --frontend 127.0.0.1:7000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from .container import ContainerConfig, ContainerRefused, run_container
from .models import MODEL_KINDS

__all__ = ["add_arguments", "main", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help=f"KIND[:PATH], KIND one of {', '.join(MODEL_KINDS)}"
        " (python:package.module:function also works)",
    )
    parser.add_argument("--name", help="model name (default: the KIND)")
    parser.add_argument("--version", default="1", help="model version (default 1)")
    parser.add_argument("--input-type", default="doubles", help="input type (default doubles)")
    parser.add_argument("--frontend", default="127.0.0.1:7000", help="HOST:PORT of the RPC port")
    parser.add_argument(
        "--secret",
        default=os.environ.get("CLIPPERLAB_RPC_SECRET", ""),
        help="shared secret, if the frontend has one (default: $CLIPPERLAB_RPC_SECRET)",
    )
    parser.add_argument("--ordinal", type=int, default=None, help="replica number (optional)")
    parser.add_argument("--options", default="{}", help="JSON options for the wrapper")
    parser.add_argument(
        "--reconnect-s", type=float, default=0.0, help="keep retrying this long if disconnected"
    )


def _error(msg: str) -> BaseException:
    try:
        from experiments.cli import CLIError
    except ImportError:  # pragma: no cover - cli is always there when installed
        return SystemExit(f"clipperlab container: error: {msg}")
    return CLIError(msg)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s container %(message)s")
    kind, _, path = args.model.partition(":")
    if kind not in MODEL_KINDS:
        raise _error(f"--model {args.model!r}: kind {kind!r} is not one of {MODEL_KINDS}")
    host, _, port = args.frontend.rpartition(":")
    if not host or not port.isdigit():
        raise _error(f"--frontend {args.frontend!r} must be HOST:PORT")
    try:
        options = json.loads(args.options)
    except ValueError as e:
        raise _error(f"--options is not JSON: {e}") from None
    cfg = ContainerConfig(
        name=args.name or kind,
        version=args.version,
        kind=kind,
        path=path,
        options=options,
        input_type=args.input_type,
        host=host,
        port=int(port),
        secret=args.secret,
        ordinal=args.ordinal,
        reconnect_s=args.reconnect_s,
    )
    try:
        return run_container(cfg)
    except ContainerRefused as e:
        raise _error(f"the frontend refused this container: {e}") from None
    except (OSError, ValueError, ImportError) as e:
        raise _error(f"cannot load model {args.model!r}: {e}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clipperlab container")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # CLIError and friends: one line
        if type(e).__name__ == "CLIError":
            print(f"clipperlab container: error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
