"""Batching policies shaped like the peers' (shared/reference/peers-and-protocols.md),
behind the same interface as Clipper's, so that experiments compare them on equal terms.

- ``tfserving``: a batch closes at ``max_batch_size`` or when its oldest request has waited
  ``wait_timeout_s`` (TF Serving's ``batch_timeout_micros``); sizes are padded up to the
  next of ``allowed_batch_sizes``; the queue holds at most ``max_enqueued_batches`` batches,
  the excess is refused.
- ``triton``: when a replica is free, send the largest preferred size that the queue can
  fill (``preferred_batch_sizes``, default ``[max_batch_size]``); otherwise wait up to
  ``wait_timeout_s`` (Triton's ``max_queue_delay_microseconds``, default 0) from the oldest.
- ``bentoml``: a cost model ``a*n + b`` refit by least squares over the last
  ``history_batches`` batches at most every ``refit_interval_s``; on every ``tick_s`` it
  sheds the oldest request if ``wait_oldest + a*n + b >= latency bound`` and keeps waiting
  while ``n * (wait_newest + tick + a) <= 0.95 * mean batch latency``.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

from ._controller import BatchController, Dispatch, QueueView, Wait
from ._types import ReleaseReason

if TYPE_CHECKING:  # the config's class; the registry checks configs with these modules
    from .registry import BatchingConfig

__all__ = ["BentoMLController", "TFServingController", "TritonController"]


class TFServingController(BatchController):
    name = "tfserving"

    def __init__(self, config: BatchingConfig, latency_bound_s: float) -> None:
        super().__init__(config, latency_bound_s)
        self._allowed = sorted(config.allowed_batch_sizes)
        if self._allowed and self._allowed[-1] != config.max_batch_size:
            self._allowed.append(config.max_batch_size)

    @property
    def cap(self) -> int:
        return self.config.max_batch_size

    @property
    def max_queue(self) -> int | None:
        if self.config.max_enqueued_batches is not None:
            return self.config.max_enqueued_batches * self.config.max_batch_size
        return self.config.max_queue

    def decide(self, now: float, queue: QueueView) -> Dispatch | Wait:
        cap = self.cap
        if queue.size >= cap:
            return Dispatch(cap, ReleaseReason.CAP_REACHED, padded_size=cap)
        release_at = queue.oldest_arrival_at + self.wait_timeout_s
        if now < release_at:
            return Wait(release_at)
        n = queue.size
        padded = n
        if self._allowed:
            padded = self._allowed[bisect.bisect_left(self._allowed, n)]
        return Dispatch(
            n,
            ReleaseReason.WAIT_TIMEOUT if self.wait_timeout_s > 0 else ReleaseReason.REPLICA_IDLE,
            padded_size=padded,
        )


class TritonController(BatchController):
    name = "triton"

    def __init__(self, config: BatchingConfig, latency_bound_s: float) -> None:
        super().__init__(config, latency_bound_s)
        sizes = config.preferred_batch_sizes or (config.max_batch_size,)
        self._preferred = sorted(s for s in sizes if s <= config.max_batch_size)

    @property
    def cap(self) -> int:
        return self.config.max_batch_size

    def decide(self, now: float, queue: QueueView) -> Dispatch | Wait:
        n = queue.size
        if n >= self.cap:
            return Dispatch(self.cap, ReleaseReason.CAP_REACHED)
        i = bisect.bisect_right(self._preferred, n)
        if i > 0:
            return Dispatch(self._preferred[i - 1], ReleaseReason.PREFERRED_SIZE)
        release_at = queue.oldest_arrival_at + self.wait_timeout_s
        if now < release_at:
            return Wait(release_at)
        return Dispatch(
            n, ReleaseReason.WAIT_TIMEOUT if self.wait_timeout_s > 0 else ReleaseReason.REPLICA_IDLE
        )


class BentoMLController(BatchController):
    name = "bentoml"

    def __init__(self, config: BatchingConfig, latency_bound_s: float) -> None:
        super().__init__(config, latency_bound_s)
        self._a = 0.0
        self._b = 0.0
        self._fitted_at = -float("inf")
        self._mean_latency_s = 0.0

    @property
    def cap(self) -> int:
        return self.config.max_batch_size

    def observe(self, size: int, latency_s: float, now: float) -> None:
        super().observe(size, latency_s, now)
        n = self.batches
        self._mean_latency_s += (latency_s - self._mean_latency_s) / min(
            n, self.config.history_batches
        )
        if now - self._fitted_at >= self.config.refit_interval_s or n <= 2:
            coef = self.latency.coefficients()
            if coef is not None:
                self._a, self._b = coef
                self._fitted_at = now

    def decide(self, now: float, queue: QueueView) -> Dispatch | Wait:
        n = queue.size
        a, b = self._a, self._b
        if self.batches > 0 and (now - queue.oldest_arrival_at) + a * n + b >= self.latency_bound_s:
            return Dispatch(0, ReleaseReason.DEADLINE_PRESSURE, shed=1)
        if n >= self.cap:
            return Dispatch(self.cap, ReleaseReason.CAP_REACHED)
        tick = self.config.tick_s
        wait_newest = now - queue.newest_arrival_at
        if self.batches > 0 and n * (wait_newest + tick + a) <= 0.95 * self._mean_latency_s:
            return Wait(now + tick)
        return Dispatch(n, ReleaseReason.REPLICA_IDLE)

    def describe(self) -> dict[str, float | int | str]:
        d = super().describe()
        d["a_s_per_item"], d["b_s"] = self._a, self._b
        return d
