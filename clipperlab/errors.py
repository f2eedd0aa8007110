"""The CLI's one error type."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["CLIError", "RunFailed", "json_object"]


class CLIError(Exception):
    """A user error: printed as one line on stderr, exit code 2, no traceback.

    Commands translate the errors of the packages they drive (``ConfigError``,
    ``SimConfigError``, ``ContainerError``, ...) into this one."""


class RunFailed(CLIError):
    """The arguments were fine but the run failed (a sweep job raised, a worker died):
    printed as ``failed:`` and the message (which may carry the failing job's traceback),
    exit code 1."""


def json_object(text: str, flag: str) -> dict[str, Any]:
    """A command-line flag's JSON object, or a ``CLIError`` naming the flag."""
    try:
        value = json.loads(text)
    except ValueError as e:
        raise CLIError(f"{flag} is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise CLIError(f"{flag} must be a JSON object, got {text!r}")
    return value
