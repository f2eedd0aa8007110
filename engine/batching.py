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
- The interface (``BatchController``, ``Dispatch``, ``Wait``, ``QueueView``,
  ``LatencyModel``) lives in ``_controller`` and is re-exported here; the peers' shapes
  are in ``peers``; ``make_controller`` builds any of them by name.
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
from typing import TYPE_CHECKING

from ._controller import BatchController, Dispatch, LatencyModel, QueueView, Wait
from .errors import ConfigError
from .peers import BentoMLController, TFServingController, TritonController
from .plugins import ENTRY_POINT_GROUPS, resolve_class

_LINE_FOLD_AT = LatencyModel.FOLD_AT

if TYPE_CHECKING:  # the config's class; the registry checks configs with this module
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
        # observe() may do the base's observe and aimd_step inline when they are the ones
        # this class would call (no subclass or mixin overrides them): one batch's
        # observe 1.6 -> 0.95 us (measured; the small-batch case observes every query)
        mro = type(self).__mro__
        after = mro[mro.index(AIMDController) + 1 :]
        nxt = next(c for c in after if "observe" in c.__dict__)
        self._flat = (
            nxt is BatchController
            and type(self).aimd_step is AIMDController.aimd_step
            and type(self.latency) is LatencyModel
        )

    @property
    def cap(self) -> int:
        return self._cap

    def observe(self, size: int, latency_s: float, now: float) -> None:
        if not self._flat:
            super().observe(size, latency_s, now)
            self._cap = self.aimd_step(self._cap, size, latency_s)
            return
        self.batches += 1  # BatchController.observe
        p = self.latency._pending  # LatencyModel.add, inlined (a call less per batch)
        p.append((size, latency_s))
        if len(p) >= _LINE_FOLD_AT:
            self.latency._fold()
        bound = self.latency_bound_s  # aimd_step
        cfg = self.config
        if latency_s < bound - cfg.hold_band * bound:
            step = cfg.aimd_step_from
            cap = self._cap
            if step == "sent" or size >= cap:
                new = size + cfg.additive_increase
            else:  # a batch the queue did not fill
                new = cap if step == "filled" else cap + cfg.additive_increase
        elif latency_s < bound:
            new = self._cap
        else:
            new = max(math.floor(size * cfg.backoff), 1)
        top = cfg.max_batch_size
        self._cap = new if new < top else top

    def aimd_step(self, cap: int, size: int, latency_s: float) -> int:
        bound = self.latency_bound_s
        cfg = self.config
        if latency_s < bound - cfg.hold_band * bound:
            # the prototype steps from the size sent; "cap" steps from a cap the queue did
            # not fill; "filled" grows only from a batch that filled its cap and holds the
            # cap over one that did not (a validated window, as TCP's in RFC 7661)
            step = cfg.aimd_step_from
            if step == "sent" or size >= cap:
                new = size + cfg.additive_increase
            else:
                new = cap if step == "filled" else cap + cfg.additive_increase
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
