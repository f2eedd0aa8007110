"""Errors the engine raises for bad administrative input.

Each message names the offending value and the rule it broke, so that the real server can
pass it to a client as the ``error`` of a 4xx reply unchanged.
"""

from __future__ import annotations

__all__ = ["ConfigError", "Conflict", "EngineError", "NotFound"]


class EngineError(Exception):
    """Base class of the engine's errors."""


class NotFound(EngineError, KeyError):
    """An application, model, version or replica that does not exist."""

    def __str__(self) -> str:  # KeyError would add quotes
        return str(self.args[0]) if self.args else ""


class Conflict(EngineError):
    """Something that already exists, or a state change that is not allowed now."""


class ConfigError(EngineError, ValueError):
    """A parameter outside its allowed range or of the wrong type."""
