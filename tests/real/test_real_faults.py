"""Real mode under faults: a container killed under load, a silent container, a frontend
restart (the store brings everything back), who may connect, and ``clipperlab serve``
shutting down cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from clipperlab.real import protocol as p
from clipperlab.real.client import AdminClient, QueryClient, ServerError
from tests.servers import hello, start_server

ROOT = Path(__file__).resolve().parents[2]
# the clipperlab command as this interpreter runs it
CLI = [sys.executable, "-m", "clipperlab"]


def _first_frame(s: socket.socket) -> tuple[int, bytes]:
    """Read until one whole frame arrived."""
    dec = p.FrameDecoder()
    s.settimeout(10)
    while True:
        data = s.recv(4096)
        assert data, "connection closed before a frame"
        frames = dec.feed(data)
        if frames:
            return frames[0]


def test_container_killed_under_load(tmp_path: Path) -> None:
    """SIGKILL one of two replicas mid-load: every query is answered (by the other replica
    or with the flagged default), the container restarts and the server keeps serving."""
    st = start_server(tmp_path)
    try:
        a = AdminClient(f"127.0.0.1:{st.ports['admin']}")
        a.add_app("app", slo_ms=1000, default_output=-1)
        a.add_model("m", kind="noop", replicas=2, options={"delay_s": 0.01}, app="app")
        a.wait_ready("app", replicas=2)
        answers: list[dict[str, Any]] = []
        failures: list[BaseException] = []
        stop = threading.Event()

        def client(k: int) -> None:
            q = QueryClient(f"127.0.0.1:{st.ports['query']}")
            i = 0
            while not stop.is_set():
                try:
                    answers.append(q.predict("app", [float(k), float(i)]))
                except BaseException as e:  # noqa: BLE001 - counted below
                    failures.append(e)
                i += 1

        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.7)
        from clipperlab.engine import ReplicaId

        pid = st.server.manager.pid(ReplicaId("m", "1", 0))  # type: ignore[union-attr]
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        n_at_kill = len(answers)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            up = a.inspect()["replicas_connected"]
            if st.server.manager.restarts_total >= 1 and len(up) == 2:  # type: ignore[union-attr]
                break
            time.sleep(0.05)
        n_restarted = len(answers)
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        assert failures == []
        assert st.server.manager.restarts_total >= 1  # type: ignore[union-attr]
        assert len(a.inspect()["replicas_connected"]) == 2
        assert n_restarted > n_at_kill  # kept serving while one replica was down
        assert len(answers) > n_restarted  # and after it came back
        assert all(r["default"] is False or r["output"] == -1 for r in answers)
        assert st.server.driver.pending == 0
    finally:
        st.stop()


def test_silent_container_is_dropped(tmp_path: Path) -> None:
    """A container that says hello and then stays silent is dropped after the missed
    heartbeats; its connection is closed by the frontend."""
    st = start_server(tmp_path, missed_heartbeats=3)
    try:
        a = AdminClient(f"127.0.0.1:{st.ports['admin']}")
        a.add_model("m", kind="noop", replicas=0)
        s = socket.create_connection(("127.0.0.1", st.ports["rpc"]))
        s.sendall(
            hello(input_type="doubles")
        )
        s.settimeout(10)
        dec = p.FrameDecoder()
        kinds = []
        t0 = time.monotonic()
        while True:
            data = s.recv(4096)
            if not data:
                break
            kinds += [k for k, _ in dec.feed(data)]
        s.close()
        assert kinds[0] == p.WELCOME
        assert p.HEARTBEAT in kinds
        assert time.monotonic() - t0 < 9
        assert a.inspect()["replicas_connected"] == []
    finally:
        st.stop()


def test_frontend_restart_finds_applications_again(tmp_path: Path) -> None:
    """Applications, models, versions, links, replicas and selection state survive."""
    st = start_server(tmp_path)
    try:
        a = AdminClient(f"127.0.0.1:{st.ports['admin']}")
        a.add_app("app", slo_ms=2000, default_output=-1, policy="exp3", policy_params={"eta": 0.5})
        a.add_model("m1", kind="noop", options={"output": 1})
        a.add_model("m2", kind="noop", options={"output": 2})
        a.link("app", ["m1", "m2"])
        a.add_model("m1", "2", kind="noop", options={"output": 3})
        a.rollback("m1")
        a.wait_ready("app")
        q = QueryClient(f"127.0.0.1:{st.ports['query']}")
        for i in range(20):
            r = q.predict("app", [float(i)])
            q.update("app", label=2, query_id=r["query_id"])
        probs = a.inspect()["selection"]["app"]["probabilities"]
        assert probs["m2"] > probs["m1"]
    finally:
        st.stop()
    st = start_server(tmp_path)
    try:
        a = AdminClient(f"127.0.0.1:{st.ports['admin']}")
        assert a.get_all_apps() == ["app"]
        assert a.get_app("app")["linked_models"] == ["m1", "m2"]
        assert a.get_app("app")["policy"] == "exp3"
        m1 = a.get_model("m1")
        assert m1["active_version"] == "1" and m1["history"] == ["1", "2", "1"]
        assert a.inspect()["selection"]["app"]["probabilities"] == pytest.approx(probs)
        a.wait_ready("app")
        out = QueryClient(f"127.0.0.1:{st.ports['query']}").predict("app", [0.5])
        assert out["output"] in (1, 2) and out["default"] is False
    finally:
        st.stop()


def test_rpc_secret_and_admin_token(tmp_path: Path) -> None:
    """With a secret, a container without it is refused (managed ones get it); with an
    admin token, requests without it get 401."""
    st = start_server(tmp_path, rpc_secret="s3cret", admin_token="tok")
    try:
        port = st.ports["admin"]
        with pytest.raises(ServerError) as e:
            AdminClient(f"127.0.0.1:{port}").ping()
        assert e.value.status == 401 and "token" in e.value.message
        a = AdminClient(f"127.0.0.1:{port}", token="tok")
        a.add_app("app", slo_ms=2000, default_output=-1)
        a.add_model("m", kind="noop", app="app")
        a.wait_ready("app")  # the managed container presented the secret
        for secret in ("", "wrong"):
            s = socket.create_connection(("127.0.0.1", st.ports["rpc"]))
            s.sendall(
                hello(secret=secret)
            )
            kind, payload = _first_frame(s)
            s.close()
            assert kind == p.REFUSE and "secret" in p.decode_json(payload)["error"]
        s = socket.create_connection(("127.0.0.1", st.ports["rpc"]))
        s.sendall(p.encode_json(p.HELLO, {"protocol": 99, "model": "m", "version": "1"}))
        kind, payload = _first_frame(s)
        assert kind == p.REFUSE and "protocol version 99" in p.decode_json(payload)["error"]
        s.close()
    finally:
        st.stop()


def test_serve_cli_answers_and_stops_on_sigterm(tmp_path: Path) -> None:
    """``clipperlab serve --config examples/deploy.toml`` with ephemeral ports: a query as
    curl would send it, then SIGTERM: exit 0 and the containers are gone."""
    pf = tmp_path / "ports.json"
    proc = subprocess.Popen(
        [
            *CLI,
            "serve",
            "--config",
            str(ROOT / "examples" / "deploy.toml"),
            "--query-port",
            "0",
            "--admin-port",
            "0",
            "--rpc-port",
            "0",
            "--store",
            str(tmp_path / "store"),
            "--ports-file",
            str(pf),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        until = time.monotonic() + 30
        while not (pf.exists() and pf.read_text()):
            assert proc.poll() is None and time.monotonic() < until
            time.sleep(0.05)
        ports = json.loads(pf.read_text())["ports"]
        a = AdminClient(f"127.0.0.1:{ports['admin']}")
        a.wait_ready("hello")
        pids = [c["pid"] for c in a.inspect()["containers"]]
        out = QueryClient(f"127.0.0.1:{ports['query']}").predict("hello", [1.0, 2.0])
        assert out["output"] == 0 and out["default"] is False
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_cli_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nquery_prot = 1\n")
    r = subprocess.run(
        [*CLI, "serve", "--config", str(bad)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2
    assert "query_prot" in r.stderr and "Traceback" not in r.stderr


def test_shutdown_answers_in_flight_queries(tmp_path: Path) -> None:
    """Stopping the server answers the query in flight before closing."""
    st = start_server(tmp_path)
    a = AdminClient(f"127.0.0.1:{st.ports['admin']}")
    a.add_app("app", slo_ms=5000, default_output=-1)
    a.add_model("m", kind="noop", options={"delay_s": 0.5}, app="app")
    a.wait_ready("app")
    got: list[Any] = []
    t = threading.Thread(
        target=lambda: got.append(
            QueryClient(f"127.0.0.1:{st.ports['query']}").predict("app", [1.0])
        )
    )
    t.start()
    time.sleep(0.2)
    st.stop()
    t.join(timeout=30)
    assert got and got[0]["default"] is False and got[0]["output"] == 0
