"""Prometheus types of the real-mode series (issue 15, item 4): events are counters named
``_total``, the standard process/platform/GC collectors are on the server's registry, and
the admin port serves the same ``/metrics`` as the query port."""

from __future__ import annotations

import http.client
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.servers import start_server


def _scrape(port: int) -> dict[str, tuple[str, list[float]]]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/metrics")
    r = c.getresponse()
    assert r.status == 200 and r.getheader("Content-Type", "").startswith("text/plain")
    text = r.read().decode()
    c.close()
    return {f.name: (f.type, [s.value for s in f.samples])
            for f in text_string_to_metric_families(text)}


def _get(port: int, path: str) -> int:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", path)
    status = c.getresponse().status
    c.close()
    return status


def test_event_counts_are_counters(tmp_path: Path) -> None:
    """Restarts, HTTP errors and refused RPC connections count events: each is a counter
    ``*_total`` that grows with the events; replicas connected stays a gauge."""
    st = start_server(tmp_path, grpc=False)
    try:
        q = st.ports["query"]
        fams = _scrape(q)
        for name in ("clipperlab_real_container_restarts", "clipperlab_real_http_errors",
                     "clipperlab_real_rpc_garbage_frames", "clipperlab_real_rpc_refused",
                     "clipperlab_real_rpc_bad_results"):
            assert fams[name][0] == "counter", name
        assert fams["clipperlab_real_replicas_connected"][0] == "gauge"
        before = fams["clipperlab_real_http_errors"][1][0]
        assert _get(q, "/no/such/route") == 404
        assert _scrape(q)["clipperlab_real_http_errors"][1][0] == before + 1
    finally:
        st.stop()


def test_process_collectors_and_admin_metrics(tmp_path: Path) -> None:
    """``process_*`` and ``python_*`` series are exported, and ``GET /metrics`` on the
    admin port answers the same families as on the query port."""
    st = start_server(tmp_path, grpc=False)
    try:
        fams = _scrape(st.ports["query"])
        assert fams["process_cpu_seconds"][0] == "counter"
        assert fams["process_resident_memory_bytes"][1][0] > 0
        assert "python_info" in fams and "python_gc_objects_collected" in fams
        admin = _scrape(st.ports["admin"])
        assert set(admin) == set(fams)
    finally:
        st.stop()
