"""Errors of the simulator: bad configs and bad profiles, named precisely."""

from __future__ import annotations

__all__ = ["ProfileError", "SimConfigError"]


class SimConfigError(ValueError):
    """A deployment config is wrong.  The message reads ``FILE: FIELD: what was expected,
    got VALUE`` (``FILE`` is ``<dict>`` for configs built in Python)."""


class ProfileError(SimConfigError):
    """A latency profile file is missing, unknown or malformed."""
