"""Prometheus export of the engine's metrics (names from ``engine/metrics.py``).

A custom collector copies the engine's counters and histograms at scrape time, so the
query path pays nothing for Prometheus.  A few real-mode gauges are added under
``clipperlab_real_*`` (replicas connected, container restarts, HTTP errors answered,
garbage RPC frames), and the counter ``clipperlab_real_http_refused_total{reason}``: requests
and connections refused by a limit (``body_too_large``, ``url_too_long``,
``headers_too_large``, ``header_timeout``, ``idle_timeout``, ``too_many_connections``,
``idle_evicted``, ``batch_too_large``, ``nesting_too_deep``, ``malformed``, ``upgrade``) or
answered 500 (``handler_error``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from clipperlab.engine import Counter, Engine
from clipperlab.engine.metrics import METRIC_HELP

__all__ = ["EngineCollector", "metrics_text"]


class EngineCollector(Collector):
    def __init__(
        self,
        engine: Engine,
        gauges: Callable[[], dict[str, tuple[str, float]]],
        refused: Mapping[str, int] | None = None,
    ) -> None:
        self.engine = engine
        self.gauges = gauges
        self.refused = refused

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
    gauges: Callable[[], dict[str, tuple[str, float]]],
    refused: Mapping[str, int] | None = None,
) -> Callable[[], bytes]:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(EngineCollector(engine, gauges, refused))
    return lambda: generate_latest(reg)
