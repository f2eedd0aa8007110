"""The CLI's one error type."""

from __future__ import annotations

__all__ = ["CLIError"]


class CLIError(Exception):
    """A user error: printed as one line on stderr, exit code 2, no traceback.

    Commands translate the errors of the packages they drive (``ConfigError``,
    ``SimConfigError``, ``ContainerError``, ...) into this one."""
