"""Calibration's one error type to catch: ``CalibrationError``.

Each tool raises its own subclass (``LoadError``, ``ProfilerError``, ``ValidationError``),
so a message says which step failed; the CLI catches ``CalibrationError``."""

from __future__ import annotations

__all__ = ["CalibrationError", "LoadError", "ProfilerError", "ValidationError"]


class CalibrationError(Exception):
    """A measurement that cannot be made: bad input, a server or container that does not
    start, a load that cannot be sent (the message says which)."""


class LoadError(CalibrationError):
    """The load generator cannot run: a bad workload spec or target."""


class ProfilerError(CalibrationError):
    """A profile cannot be measured: a bad model, input or batch size, or a container
    that does not connect."""


class ValidationError(CalibrationError):
    """The sim-vs-real validation cannot run: a bad deployment or a server that fails."""
