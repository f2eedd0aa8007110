"""Batching controllers: one per replica, deciding when a batch leaves and how big it is.

Rules (Clipper, NSDI 2017, and its research prototype; see shared/reference):
- A replica has one batch in flight.  When it is idle and its model's queue is not empty,
  its controller ``decide``s: send ``size`` queries now (with a release reason), or wait
  until an absolute time.
- The cap comes from the policy: ``none`` is 1, ``fixed`` is ``max_batch_size``, ``aimd``
  starts at 1 and after each batch of size ``s`` with latency ``lat`` against bound ``L``:
  ``lat < L - 0.1 L`` -> cap = s + 2; ``lat < L`` -> hold; ``lat >= L`` -> cap =
  max(floor(0.9 s), 1).  ``quantile`` runs AIMD for ``fit_after_batches`` batches, fits
  ``p99(b) = alpha*b + beta`` by linear quantile regression, and sets the cap to
  ``(L - beta) / alpha`` (optionally refitting every ``refit_every_batches``).
- Delayed batching (any policy): below the cap, hold the batch until the oldest queued
  query has waited ``wait_timeout_s`` (prototype default 1 ms), unless the latency model
  predicts that waiting longer would miss the head query's deadline ("deadline pressure").
- Any other controller is a subclass of ``BatchController`` named by the config as
  ``package.module:Class``, ``path/to/file.py:Class`` or an entry point of group
  ``clipperlab.batching`` (``engine.plugins``); it implements ``cap`` and may override
  ``decide``/``observe``; it is built as ``Class(config, latency_bound_s)`` and reads its
  own parameters from ``config.params``.
- ``lat`` is measured from when the batch's assembly started (the later of the replica
  becoming idle and the oldest query's arrival) until its results came back, so it includes
  the wait, as in the prototype.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import deque
from typing import NamedTuple

from ._types import ReleaseReason
from .errors import ConfigError
from .plugins import ENTRY_POINT_GROUPS, resolve_class
from .registry import BatchingConfig

__all__ = [
    "AIMDController",
    "BatchController",
    "Dispatch",
    "FixedController",
    "LatencyModel",
    "NoBatchingController",
    "QuantileController",
    "QueueView",
    "Wait",
    "builtin_controllers",
    "check_controller",
    "controller_class",
    "fit_linear_quantile",
    "make_controller",
]


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


class LatencyModel:
    """Least-squares line ``latency = a*size + b`` over the last ``window`` batches,
    kept with running sums so that an update costs O(1)."""

    __slots__ = ("window", "_obs", "_n", "_sx", "_sy", "_sxx", "_sxy")

    def __init__(self, window: int = 50) -> None:
        self.window = window
        self._obs: deque[tuple[int, float]] = deque()
        self._n = 0
        self._sx = self._sy = self._sxx = self._sxy = 0.0

    def add(self, size: int, latency_s: float) -> None:
        self._obs.append((size, latency_s))
        self._n += 1
        self._sx += size
        self._sy += latency_s
        self._sxx += size * size
        self._sxy += size * latency_s
        if self._n > self.window:
            s, y = self._obs.popleft()
            self._n -= 1
            self._sx -= s
            self._sy -= y
            self._sxx -= s * s
            self._sxy -= s * y

    @property
    def count(self) -> int:
        return self._n

    def coefficients(self) -> tuple[float, float] | None:
        """``(a, b)`` in seconds per item and seconds, or None before any batch."""
        n = self._n
        if n == 0:
            return None
        mean_x = self._sx / n
        mean_y = self._sy / n
        var = self._sxx / n - mean_x * mean_x
        if var <= 1e-12:  # one size only: attribute everything to the fixed cost
            return 0.0, mean_y
        a = (self._sxy / n - mean_x * mean_y) / var
        a = max(a, 0.0)
        return a, max(mean_y - a * mean_x, 0.0)

    def predict_s(self, size: int) -> float | None:
        c = self.coefficients()
        return None if c is None else c[0] * size + c[1]


def fit_linear_quantile(
    sizes: list[int], latencies_s: list[float], q: float
) -> tuple[float, float]:
    """Linear quantile regression ``latency ~ alpha*size + beta`` at quantile ``q``,
    solved as the standard linear program (pinball loss) with SciPy's HiGHS."""
    import numpy as np
    from scipy.optimize import linprog

    x = np.asarray(sizes, dtype=float)
    y = np.asarray(latencies_s, dtype=float)
    n = len(x)
    if n < 2 or np.ptp(x) == 0:
        return 0.0, float(np.quantile(y, q))
    # variables: alpha, beta (free), u+ (n), u- (n) >= 0;  y = alpha x + beta + u+ - u-
    c = np.concatenate([[0.0, 0.0], np.full(n, q), np.full(n, 1.0 - q)])
    a_eq = np.hstack([x[:, None], np.ones((n, 1)), np.eye(n), -np.eye(n)])
    bounds = [(None, None), (None, None)] + [(0, None)] * (2 * n)
    res = linprog(c, A_eq=a_eq, b_eq=y, bounds=bounds, method="highs")
    if not res.success:  # pragma: no cover - HiGHS solves this LP for any finite data
        return 0.0, float(np.quantile(y, q))
    return float(res.x[0]), float(res.x[1])


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


class NoBatchingController(BatchController):
    name = "none"

    @property
    def cap(self) -> int:
        return 1


class FixedController(BatchController):
    name = "fixed"

    @property
    def cap(self) -> int:
        return self.config.max_batch_size


class AIMDController(BatchController):
    """Additive increase (+2 on the size just sent), multiplicative decrease (x0.9),
    hold within the last 10% of the latency bound; starts at 1."""

    name = "aimd"

    def __init__(self, config: BatchingConfig, latency_bound_s: float) -> None:
        super().__init__(config, latency_bound_s)
        self._cap = config.initial_batch_size

    @property
    def cap(self) -> int:
        return self._cap

    def observe(self, size: int, latency_s: float, now: float) -> None:
        super().observe(size, latency_s, now)
        self._cap = self.aimd_step(self._cap, size, latency_s)

    def aimd_step(self, cap: int, size: int, latency_s: float) -> int:
        bound = self.latency_bound_s
        cfg = self.config
        if latency_s < bound - cfg.hold_band * bound:
            # the prototype steps from the size sent; "cap" keeps a cap the queue did not fill
            base = max(size, cap) if cfg.aimd_step_from == "cap" else size
            new = base + cfg.additive_increase
        elif latency_s < bound:
            new = cap
        else:
            new = max(math.floor(size * cfg.backoff), 1)
        return min(new, cfg.max_batch_size)


class QuantileController(AIMDController):
    """AIMD until ``fit_after_batches`` observations, then the cap from a linear
    quantile regression of batch latency on batch size."""

    name = "quantile"

    def __init__(self, config: BatchingConfig, latency_bound_s: float) -> None:
        super().__init__(config, latency_bound_s)
        self._sizes: list[int] = []
        self._lats: list[float] = []
        self.fit: tuple[float, float] | None = None
        self._since_fit = 0
        self._first_at: float | None = None

    def observe(self, size: int, latency_s: float, now: float) -> None:
        cfg = self.config
        if self.fit is None:
            super().observe(size, latency_s, now)
        else:
            BatchController.observe(self, size, latency_s, now)
        if self.fit is None or cfg.refit_every_batches is not None:
            self._sizes.append(size)
            self._lats.append(latency_s)
            keep = cfg.fit_after_batches
            if len(self._sizes) > keep:
                del self._sizes[:-keep]
                del self._lats[:-keep]
            self._since_fit += 1
            if self._first_at is None:
                self._first_at = now
            if self.fit is None:
                due = len(self._sizes) >= cfg.fit_after_batches or (
                    cfg.fit_after_s is not None
                    and now - self._first_at >= cfg.fit_after_s
                    and len(self._sizes) >= 2
                )
            else:
                due = self._since_fit >= (cfg.refit_every_batches or 0)
            if due:
                self.refit()

    def refit(self) -> None:
        alpha, beta = fit_linear_quantile(self._sizes, self._lats, self.config.quantile)
        self.fit = (alpha, beta)
        self._since_fit = 0
        if alpha <= 1e-12:
            cap = self.config.max_batch_size if beta < self.latency_bound_s else 1
        else:
            cap = math.floor((self.latency_bound_s - beta) / alpha)
        self._cap = max(1, min(cap, self.config.max_batch_size))

    def describe(self) -> dict[str, float | int | str]:
        d = super().describe()
        if self.fit is not None:
            d["alpha_s_per_item"], d["beta_s"] = self.fit
        return d


def builtin_controllers() -> dict[str, type[BatchController]]:
    """The engine's own controllers by name (Clipper's and the peers' shapes)."""
    from .peers import BentoMLController, TFServingController, TritonController

    return {
        cls.name: cls
        for cls in (NoBatchingController, FixedController, AIMDController, QuantileController,
                    TFServingController, TritonController, BentoMLController)
    }


def controller_class(name: str) -> type[BatchController]:
    """The controller class ``name`` stands for: a built-in name, ``package.module:Class``,
    ``path/to/file.py:Class`` or an entry point of group ``clipperlab.batching``
    (``engine.plugins``); a ``ConfigError`` naming the value and the rule otherwise."""
    return resolve_class(name, BatchController, builtin_controllers(), "batching policy",
                         ENTRY_POINT_GROUPS["batching"])


def check_controller(config: BatchingConfig) -> None:
    """Raise ``ConfigError`` unless ``config.policy`` names a controller that can be built
    from ``config`` and whose ``cap`` is an integer >= 1 (checked once, when a config is
    read, so that a bad custom controller fails there and not on the first query)."""
    name = config.policy
    builtins = builtin_controllers()
    if name in builtins:
        if config.params:
            raise ConfigError(
                f"batching params: expected none for the built-in policy {name!r} (params "
                f"are for custom controllers), got {dict(config.params)!r}"
            )
        return
    cls = controller_class(name)
    try:
        cap = cls(config, config.latency_bound_s or 1.0).cap
    except ConfigError as e:
        raise ConfigError(f"batching policy {name!r}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a user's class may fail in any way
        raise ConfigError(
            f"batching policy {name!r}: cannot be built from the config: "
            f"{type(e).__name__}: {e} (a controller is built as Class(config: BatchingConfig, "
            "latency_bound_s: float); its own parameters come in config.params)"
        ) from None
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise ConfigError(
            f"batching policy {name!r}: cap: expected an integer >= 1, got {cap!r}"
        )


def make_controller(config: BatchingConfig, latency_bound_s: float) -> BatchController:
    """The controller for ``config.policy``, bound to ``latency_bound_s``."""
    return controller_class(config.policy)(config, latency_bound_s)
