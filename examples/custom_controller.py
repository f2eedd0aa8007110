"""A batching controller of one's own: batch sizes that are powers of two.

Rules: the cap starts at 1; after a batch that filled the cap and took less than ``low``
(default 0.5) of the latency bound, the cap doubles; after one that took the bound or
more, it halves; otherwise it holds; never above ``max_batch_size`` (a power of two too).
A batch below the cap is cut to the largest power of two the queue fills (the rest waits
for the next one), so every batch has a size a GPU kernel may be tuned for.  Delayed
batching (``wait_timeout_s``) and deadline pressure come from ``BatchController``.

Run it beside Clipper's AIMD in the paper's figure 3 (from the repository root)::

    clipperlab experiment fig3 --quick \\
        --set policies=aimd+examples/custom_controller.py:PowerOfTwo

or name it in a config file (a relative path is taken from the config's folder)::

    batching = { policy = "custom_controller.py:PowerOfTwo", params = { low = 0.4 } }

With ``PYTHONPATH=examples`` the module name works too: ``custom_controller:PowerOfTwo``.
"""

from __future__ import annotations

from clipperlab.engine import (
    BatchController,
    BatchingConfig,
    ConfigError,
    Dispatch,
    QueueView,
    Wait,
)


class PowerOfTwo(BatchController):
    name = "pow2"

    def __init__(self, config: BatchingConfig, latency_bound_s: float) -> None:
        super().__init__(config, latency_bound_s)
        low = config.params.get("low", 0.5)
        if isinstance(low, bool) or not isinstance(low, int | float) or not 0 < low < 1:
            raise ConfigError(f"params.low: expected a number in (0, 1), got {low!r}")
        self.low = float(low)
        self._cap = 1

    @property
    def cap(self) -> int:
        return self._cap

    def decide(self, now: float, queue: QueueView) -> Dispatch | Wait:
        d = super().decide(now, queue)
        if isinstance(d, Dispatch) and d.size > 1:
            return d._replace(size=1 << (d.size.bit_length() - 1))
        return d

    def observe(self, size: int, latency_s: float, now: float) -> None:
        super().observe(size, latency_s, now)
        if latency_s >= self.latency_bound_s:
            self._cap = max(self._cap // 2, 1)
        elif latency_s < self.low * self.latency_bound_s and size >= self._cap:
            self._cap = min(self._cap * 2, self.config.max_batch_size)
