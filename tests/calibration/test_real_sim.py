"""The real server and the simulator drive the same engine: a seeded trace of bursts through
the real server with a deterministic no-op container (50 ms a batch) gives the same
batch-size sequence as the simulator with a matching profile.  The load is light (bursts
far apart, a 50 ms batch against a 1 s objective) so that timing cannot change a decision."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from clipperlab import simulator, workloads
from clipperlab.engine import BatchingConfig
from clipperlab.real.client import AdminClient
from tests.servers import start_server

BATCH_S = 0.05
GAP_S = 0.25


def _trace(seed: int) -> tuple[list[int], object]:
    rng = np.random.default_rng(seed)
    sizes = [int(k) for k in rng.integers(1, 10, size=10)]
    arrival = np.repeat(np.arange(len(sizes)) * GAP_S, sizes)
    n = arrival.size
    trace = workloads.Trace(
        app="app",
        arrival_at=arrival,
        input_index=np.arange(n),
        label=np.zeros(n, np.int64),
        context=None,
        feedback_at=np.zeros(0),
        feedback_query=np.zeros(0, np.int64),
        input_bytes=8,
        cacheable=False,
    )
    return sizes, trace


def _read_response(f: object) -> dict[str, object]:
    line = f.readline()  # type: ignore[attr-defined]
    assert line.startswith(b"HTTP/1.1 200"), line
    n = 0
    while (h := f.readline()) != b"\r\n":  # type: ignore[attr-defined]
        if h.lower().startswith(b"content-length:"):
            n = int(h.split(b":")[1])
    return dict(json.loads(f.read(n)))  # type: ignore[attr-defined]


@pytest.mark.parametrize("rule", ["sent", "filled"])
def test_real_and_simulated_batch_sizes_agree(tmp_path: Path, rule: str) -> None:
    """The same arrivals give the same batch sizes in the simulator and the real server,
    with the prototype's AIMD rule and with the server's default (each said on both
    sides)."""
    sizes, trace = _trace(seed=7)
    # --- simulated
    prof = simulator.LatencyProfile.from_line("noop-50ms", 0.0, BATCH_S, p99_over_mean=1.01)
    dep = simulator.Deployment.single(
        prof,
        model="m",
        app="app",
        slo_s=1.0,
        batching=BatchingConfig(policy="aimd", aimd_step_from=rule),
    )
    res = simulator.Simulation(dep, trace, seed=0, decision_log=True).run()
    sim_sizes = [e[4] for e in res.log if e[0] == "batch"]
    # --- real
    st = start_server(tmp_path, cache=False, decision_log=True)
    try:
        a = AdminClient(f"127.0.0.1:{st.ports['admin']}")
        a.add_app("app", slo_ms=1000, default_output=-1)
        a.add_model(
            "m", kind="noop", options={"delay_s": BATCH_S},
            batching={"policy": "aimd", "aimd_step_from": rule}, app="app"
        )
        a.wait_ready("app")
        st.server.engine.log.clear()  # type: ignore[union-attr]
        s = socket.create_connection(("127.0.0.1", st.ports["query"]))
        f = s.makefile("rb")
        i = 0
        start = time.monotonic()
        for b, k in enumerate(sizes):
            time.sleep(max(0.0, start + b * GAP_S - time.monotonic()))
            reqs = []
            for _ in range(k):
                body = b'{"input": [%d.0]}' % i
                i += 1
                reqs.append(
                    b"POST /app/predict HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(body), body)
                )
            s.sendall(b"".join(reqs))
            outs = [_read_response(f) for _ in range(k)]
            assert all(o["default"] is False for o in outs)
        s.close()
        log = st.server.engine.log
        assert log is not None
        real_sizes = [e[4] for e in log if e[0] == "batch"]
    finally:
        st.stop()
    assert sum(real_sizes) == sum(sizes) == sum(sim_sizes)
    assert real_sizes == sim_sizes, (real_sizes, sim_sizes)
    assert len(set(real_sizes)) > 2  # not a trivial sequence of ones
