"""``clipperlab container``: run one model replica that connects to a frontend.

Example::

    clipperlab container --model sklearn:store/models/svm-1.joblib --name svm --version 1 \\
        --frontend 127.0.0.1:7000

The process itself is ``clipperlab.real.container`` (what the container manager starts);
this command gives it the CLI's error handling.
"""

from __future__ import annotations

import argparse

from clipperlab.errors import CLIError
from clipperlab.real.container import ContainerError, run_from_args
from clipperlab.real.container import add_arguments as add_arguments

__all__ = ["add_arguments", "run"]


def run(args: argparse.Namespace) -> int:
    try:
        return run_from_args(args)
    except ContainerError as e:
        raise CLIError(str(e)) from None
