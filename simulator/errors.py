"""Errors of the simulator: bad configs and bad profiles, named precisely."""

from __future__ import annotations

from clipperlab.engine import ConfigError

__all__ = ["ProfileError", "SimConfigError"]


class SimConfigError(ConfigError):
    """A deployment config is wrong.  The message reads ``FILE: FIELD: what was expected,
    got VALUE`` (``FILE`` is ``<dict>`` for configs built in Python).  It is the engine's
    ``ConfigError`` (one name to catch for any config), raised by the simulator."""


class ProfileError(SimConfigError):
    """A latency profile file is missing, unknown or malformed."""
