"""Real mode under overload (issue 11, defect 8), behaviour only: by default a query that
cannot be answered within its objective gets the explained default at once, counted by
reason, instead of waiting in a queue that serves only late queries."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from clipperlab.engine import ConfigError
from clipperlab.real.client import AdminClient, QueryClient
from clipperlab.real.config import ServerConfig
from tests.servers import start_server


def test_a_burst_beyond_capacity_is_shed_with_explained_defaults(tmp_path: Path) -> None:
    """A no-op model at 5 ms a query (no batching), 20 ms objective: of 200 queries at
    once, the few that fit are predicted, most of the rest are answered at once with
    ``shed_predicted_late`` and say why (an admitted one may still miss its deadline on a
    busy machine: the deadline default); none is refused (503)."""
    st = start_server(tmp_path / "store")
    try:
        admin = AdminClient(f"127.0.0.1:{st.ports['admin']}")
        q = QueryClient(f"127.0.0.1:{st.ports['query']}")
        admin.add_app("a", slo_ms=20, default_output=-1)
        admin.add_model("m", kind="noop", options={"delay_s": 0.005},
                        batching={"policy": "none"}, app="a")
        admin.wait_ready("a", timeout_s=60)
        for _ in range(20):  # the controller learns the model's latency
            assert q.predict("a", [1.0])["default"] is False
        rs = q.predict_batch("a", [[float(i)] for i in range(200)])
        real = [r for r in rs if not r["default"]]
        shed = [r for r in rs if r["default"]]
        assert 1 <= len(real) <= 20 and len(real) + len(shed) == 200
        for r in shed:
            assert r["output"] == -1 and r["default_explanation"]
        late = [r for r in shed if r["default_explanation"].startswith("shed: predicted wait")]
        assert len(late) > 150
        text = q.metrics()
        m = re.search(r'clipperlab_defaults_total\{[^}]*reason="shed_predicted_late"[^}]*\} (\S+)',
                      text)
        assert m is not None and float(m.group(1)) == len(late)
    finally:
        st.stop()


def test_models_take_the_server_defaults_unless_they_say(tmp_path: Path) -> None:
    st = start_server(tmp_path / "store", manage_containers=False)
    try:
        srv = st.server
        st.call(srv.add_model, {"name": "m", "kind": "noop", "replicas": 0})
        st.call(srv.add_model, {"name": "n", "kind": "noop", "replicas": 0,
                                "batching": {"admission_control": False}})
        st.call(srv.add_model, {"name": "p", "kind": "noop", "replicas": 0,
                                "batching": {"aimd_step_from": "sent"}})
        m = srv.engine.registry.model("m").batching
        n = srv.engine.registry.model("n").batching
        p = srv.engine.registry.model("p").batching
        assert m.admission_control and m.drop_hopeless and m.aimd_step_from == "filled"
        assert not n.admission_control and n.drop_hopeless and n.aimd_step_from == "filled"
        assert p.aimd_step_from == "sent" and p.admission_control
    finally:
        st.stop()
    st = start_server(tmp_path / "other", manage_containers=False, admission_control=False,
                      drop_hopeless=False, aimd_step_from="cap")
    try:
        st.call(st.server.add_model, {"name": "m", "kind": "noop", "replicas": 0})
        b = st.server.engine.registry.model("m").batching
        assert not b.admission_control and not b.drop_hopeless
        assert b.aimd_step_from == "cap"
    finally:
        st.stop()
    with pytest.raises(ConfigError, match=r"server\.aimd_step_from = 'window' must be one of "
                                          r"'sent', 'cap', 'filled'"):
        ServerConfig(aimd_step_from="window").check()
