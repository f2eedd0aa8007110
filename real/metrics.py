"""Prometheus export of the engine's metrics (names from ``engine/metrics.py``).

A custom collector copies the engine's counters and histograms at scrape time, so the
query path pays nothing for Prometheus.  Real-mode series are added under
``clipperlab_real_*``: a gauge for what is (``replicas_connected``), counters for what
happened (``container_restarts_total``, ``http_errors_total``, ``rpc_garbage_frames_total``,
``rpc_refused_total``, ``rpc_bad_results_total``), and the counter
``clipperlab_real_http_refused_total{reason}``: requests and connections refused by a
limit (``body_too_large``, ``url_too_long``, ``headers_too_large``, ``header_timeout``,
``idle_timeout``, ``too_many_connections``, ``idle_evicted``, ``batch_too_large``,
``nesting_too_deep``, ``malformed``, ``upgrade``) or answered 500 (``handler_error``).

The registry also carries prometheus_client's standard collectors of the process
(``process_*``: CPU seconds, resident memory, open file descriptors, start time), the
platform (``python_info``) and the garbage collector (``python_gc_*``).  The same text is
served at ``/metrics`` on the query port and on the admin port.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from clipperlab.engine import Counter, Engine
from clipperlab.engine.metrics import METRIC_HELP

__all__ = ["EngineCollector", "Series", "metrics_text"]

# name -> (help, value): what a gauge or counter callable returns at scrape time
Series = dict[str, tuple[str, float]]


class EngineCollector(Collector):
    def __init__(
        self,
        engine: Engine,
        gauges: Callable[[], Series],
        refused: Mapping[str, int] | None = None,
        counters: Callable[[], Series] | None = None,
    ) -> None:
        self.engine = engine
        self.gauges = gauges
        self.refused = refused
        self.counters = counters

    def collect(self) -> Iterator[Metric]:
        fams: dict[str, Any] = {}
        for s in self.engine.sync_metrics().samples():
            labels = [k for k, _ in s.labels]
            values = [v for _, v in s.labels]
            fam = fams.get(s.name)
            if isinstance(s.metric, Counter):
                if fam is None:
                    base = s.name[: -len("_total")] if s.name.endswith("_total") else s.name
                    fam = fams[s.name] = CounterMetricFamily(
                        base, METRIC_HELP.get(s.name, s.name), labels=labels
                    )
                fam.add_metric(values, s.metric.value)
            else:
                if fam is None:
                    fam = fams[s.name] = HistogramMetricFamily(
                        s.name, METRIC_HELP.get(s.name, s.name), labels=labels
                    )
                buckets = [
                    ("+Inf" if b == float("inf") else repr(float(b)), float(c))
                    for b, c in s.metric.cumulative()
                ]
                fam.add_metric(values, buckets, s.metric.sum)
        yield from fams.values()
        for name, (help_, value) in self.gauges().items():
            g = GaugeMetricFamily(name, help_)
            g.add_metric([], value)
            yield g
        for name, (help_, value) in (self.counters() if self.counters else {}).items():
            # named without _total: prometheus_client adds it to a counter's sample
            c = CounterMetricFamily(name.removesuffix("_total"), help_)
            c.add_metric([], value)
            yield c
        if self.refused is not None:
            c = CounterMetricFamily(
                "clipperlab_real_http_refused",
                "HTTP requests and connections refused by a limit, or answered 500, by reason",
                labels=["reason"],
            )
            for reason, n in sorted(self.refused.items()):
                c.add_metric([reason], float(n))
            yield c


def metrics_text(
    engine: Engine,
    gauges: Callable[[], Series],
    refused: Mapping[str, int] | None = None,
    counters: Callable[[], Series] | None = None,
) -> Callable[[], bytes]:
    """The Prometheus text of one server: the engine's series, the real-mode gauges and
    counters, and the standard process, platform and GC collectors (on this registry,
    not the global one, so two servers in one process do not collide)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(EngineCollector(engine, gauges, refused, counters))
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    GCCollector(registry=reg)
    return lambda: generate_latest(reg)
