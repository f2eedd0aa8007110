"""The one error type of ``workloads``: a bad parameter or file, named in the message."""

from __future__ import annotations

__all__ = ["WorkloadError"]


class WorkloadError(ValueError):
    """A workload parameter or file is wrong; the message names it and the rule."""
