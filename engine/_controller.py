"""The batching controller interface: what a replica's controller is told and may answer.

Rules (Clipper, NSDI 2017, and its research prototype; see shared/reference):
- A replica has one batch in flight.  When it is idle and its model's queue is not empty,
  its controller ``decide``s: send ``size`` queries now (with a release reason), or wait
  until an absolute time (``Dispatch`` / ``Wait``, from a ``QueueView`` of the queue).
- Delayed batching (any policy): below the cap, hold the batch until the oldest queued
  query has waited ``wait_timeout_s`` (prototype default 1 ms), unless the latency model
  predicts that waiting longer would miss the head query's deadline ("deadline pressure").
- After each batch the controller ``observe``s its size and latency; ``LatencyModel`` keeps
  the least-squares line of the last ``history_batches`` batches for deadline pressure.
- A controller implements ``cap`` (the largest batch it sends now) and may override
  ``decide``, ``observe``, ``max_queue`` and ``describe``; it is built as
  ``Class(config: BatchingConfig, latency_bound_s: float)``.  The built-in ones are in
  ``batching`` (Clipper's) and ``peers`` (the peers' shapes); one's own is named by the
  config (``engine.plugins``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, NamedTuple

from ._latency import LatencyModel
from ._types import ReleaseReason

if TYPE_CHECKING:  # the config's class; the registry checks configs with this module
    from .registry import BatchingConfig

__all__ = ["BatchController", "Dispatch", "LatencyModel", "QueueView", "Wait"]


class Dispatch(NamedTuple):
    """Decision: send ``size`` queries now; ``shed`` oldest queries are refused first;
    ``padded_size`` is what the replica will compute (>= size)."""

    size: int
    reason: str
    shed: int = 0
    padded_size: int = 0


class Wait(NamedTuple):
    """Decision: ask again at ``until_at`` (or earlier, when a query arrives)."""

    until_at: float


class QueueView(NamedTuple):
    """What a controller may know about its model's queue."""

    size: int
    oldest_arrival_at: float
    newest_arrival_at: float
    head_deadline: float


class BatchController(ABC):
    """Base class: delayed batching and deadline pressure around a policy's cap."""

    name = "base"

    def __init__(self, config: BatchingConfig, latency_bound_s: float) -> None:
        self.config = config
        self.latency_bound_s = latency_bound_s
        self.wait_timeout_s = config.wait_timeout_s
        self.latency = LatencyModel(config.history_batches)
        self.batches = 0

    @property
    @abstractmethod
    def cap(self) -> int:
        """The largest batch this controller will send now."""

    @property
    def max_queue(self) -> int | None:
        return self.config.max_queue

    def decide(self, now: float, queue: QueueView) -> Dispatch | Wait:
        cap = self.cap
        n = queue.size
        if n >= cap:
            return Dispatch(cap, ReleaseReason.CAP_REACHED)
        if self.wait_timeout_s > 0.0:
            release_at = queue.oldest_arrival_at + self.wait_timeout_s
            if now < release_at:
                est = self.latency.predict_s(n)
                if est is not None:
                    pressure_at = queue.head_deadline - est
                    if pressure_at <= now:
                        return Dispatch(n, ReleaseReason.DEADLINE_PRESSURE)
                    if pressure_at < release_at:
                        return Wait(pressure_at)
                return Wait(release_at)
            return Dispatch(n, ReleaseReason.WAIT_TIMEOUT)
        return Dispatch(n, ReleaseReason.REPLICA_IDLE)

    def observe(self, size: int, latency_s: float, now: float) -> None:
        """A batch of ``size`` took ``latency_s`` from assembly to results."""
        self.batches += 1
        self.latency.add(size, latency_s)

    def describe(self) -> dict[str, float | int | str]:
        return {"policy": self.name, "cap": self.cap, "batches": self.batches}
