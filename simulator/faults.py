"""Faults injected into a simulated deployment.

Rules:
- ``Crash(replica, at_s, restart_after_s)``: at ``at_s`` the replica dies (the driver tells
  the engine ``on_replica_down``; its batch in flight is lost and the engine re-queues its
  queries); after ``restart_after_s`` (None: never) it comes back (``on_replica_up``).
- ``Straggler(replica, slowdown, extra_delay_s, probability, from_s, until_s)``: batches
  sent to the replica in ``[from_s, until_s)`` take ``slowdown`` times the profile's draw,
  plus, with ``probability``, an exponential extra delay of mean ``extra_delay_s``.
- ``Degrade(model, from_query, to_query, accuracy)``: the model answers queries with ids in
  ``[from_query, to_query)`` correctly only with probability ``accuracy`` (the paper's
  figure 8 degrades the best model after about 5K queries and restores it after 10K).
- Replicas are named ``"model#ordinal"`` (ordinal from 0), as in ``str(ReplicaId)`` without
  the version.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import SimConfigError

__all__ = ["Crash", "Degrade", "Fault", "Straggler", "parse_replica"]


def parse_replica(name: str, where: str = "replica") -> tuple[str, int]:
    """``"svm#1"`` -> ``("svm", 1)``."""
    model, sep, ordinal = str(name).rpartition("#")
    if not sep or not model or not ordinal.isdigit():
        raise SimConfigError(f"{where}: expected a replica name like 'svm#0', got {name!r}")
    return model, int(ordinal)


@dataclass(frozen=True, slots=True)
class Fault:
    """Base class of faults."""


@dataclass(frozen=True, slots=True)
class Crash(Fault):
    replica: str
    at_s: float
    restart_after_s: float | None = None

    def __post_init__(self) -> None:
        parse_replica(self.replica, "crash.replica")
        if not (math.isfinite(self.at_s) and self.at_s >= 0):
            raise SimConfigError(f"crash.at_s: expected a time >= 0 in seconds, got {self.at_s!r}")
        if self.restart_after_s is not None and not (
            math.isfinite(self.restart_after_s) and self.restart_after_s > 0
        ):
            raise SimConfigError(
                f"crash.restart_after_s: expected a duration > 0 in seconds, got "
                f"{self.restart_after_s!r}"
            )


@dataclass(frozen=True, slots=True)
class Straggler(Fault):
    replica: str
    slowdown: float = 1.0
    extra_delay_s: float = 0.0
    probability: float = 1.0
    from_s: float = 0.0
    until_s: float = math.inf

    def __post_init__(self) -> None:
        parse_replica(self.replica, "straggler.replica")
        if not (math.isfinite(self.slowdown) and self.slowdown > 0):
            raise SimConfigError(f"straggler.slowdown: expected a factor > 0, got "
                                 f"{self.slowdown!r}")
        if not (math.isfinite(self.extra_delay_s) and self.extra_delay_s >= 0):
            raise SimConfigError(f"straggler.extra_delay_s: expected seconds >= 0, got "
                                 f"{self.extra_delay_s!r}")
        if not 0.0 <= self.probability <= 1.0:
            raise SimConfigError(f"straggler.probability: expected a number in [0, 1], got "
                                 f"{self.probability!r}")
        if not self.from_s < self.until_s:
            raise SimConfigError(f"straggler: from_s ({self.from_s}) must be before until_s "
                                 f"({self.until_s})")


@dataclass(frozen=True, slots=True)
class Degrade(Fault):
    model: str
    from_query: int
    to_query: int
    accuracy: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.from_query < self.to_query:
            raise SimConfigError(
                f"degrade: expected 0 <= from_query < to_query, got {self.from_query} and "
                f"{self.to_query}"
            )
        if not 0.0 <= self.accuracy <= 1.0:
            raise SimConfigError(f"degrade.accuracy: expected a number in [0, 1], got "
                                 f"{self.accuracy!r}")


FAULT_KINDS: dict[str, type[Fault]] = {"crash": Crash, "straggler": Straggler,
                                       "degrade": Degrade}
