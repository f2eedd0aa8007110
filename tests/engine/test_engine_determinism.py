"""The same seed and the same events give the same decision log."""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np

from clipperlab.engine import (
    Application,
    BatchDone,
    BatchingConfig,
    Engine,
    Feedback,
    ModelSpec,
    Query,
    ReplicaId,
    SendBatch,
)


def run_trace(seed: int, n: int = 400) -> list[tuple[Any, ...]]:
    """A seeded trace through an Exp3 application over two AIMD models with delayed
    batching, driven by a small discrete-event loop with latency a*b + c."""
    eng = Engine(seed=seed, decision_log=True)
    eng.add_application(
        Application(
            name="a", slo_s=0.015, default_output=-1, policy="exp3", policy_params={"eta": 0.2}
        ),
        now=0.0,
    )
    for m in ("m1", "m2"):
        eng.add_model(
            ModelSpec(name=m, batching=BatchingConfig(policy="aimd", wait_timeout_s=0.001)),
            now=0.0,
        )
    eng.link("a", ["m1", "m2"], now=0.0)
    for m in ("m1", "m2"):
        for r in range(2):
            eng.on_replica_up(ReplicaId(m, "1", r), 0.0)
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / 3000, n))
    labels = rng.integers(0, 2, n)
    pending: list[tuple[float, int, SendBatch]] = []

    def carry(instrs: list[Any], now: float) -> None:
        for ins in instrs:
            if isinstance(ins, SendBatch):
                lat = 0.002 + 0.0001 * len(ins.inputs)
                heapq.heappush(pending, (now + lat, ins.batch_id, ins))

    def run_until(t: float) -> None:
        while True:
            nd = eng.next_deadline()
            td = pending[0][0] if pending else float("inf")
            nxt = min(td, nd if nd is not None else float("inf"))
            if nxt > t:
                return
            if td <= nxt:
                at, _, sb = heapq.heappop(pending)
                outs = [int(x) % 2 if sb.replica.model == "m1" else 1 for x in sb.inputs]
                carry(
                    eng.on_batch_done(
                        BatchDone(replica=sb.replica, batch_id=sb.batch_id, outputs=outs), at
                    ),
                    at,
                )
            else:
                carry(eng.on_timer(nxt), nxt)

    for i, t in enumerate(arrivals):
        run_until(float(t))
        carry(eng.on_query(Query(i, "a", int(labels[i])), float(t)), float(t))
        if i % 3 == 0:
            carry(
                eng.on_feedback(
                    Feedback(
                        feedback_id=i,
                        app="a",
                        label=int(labels[i]),
                        query_id=i - 3 if i >= 3 else None,
                        input=int(labels[i]),
                    ),
                    float(t),
                ),
                float(t),
            )
    run_until(float(arrivals[-1]) + 1.0)
    assert eng.log is not None
    return eng.log


def test_same_seed_same_decision_log() -> None:
    a, b = run_trace(7), run_trace(7)
    assert a == b
    kinds = {e[0] for e in a}
    assert {"batch", "reply", "feedback"} <= kinds
    assert sum(1 for e in a if e[0] == "reply") == 400


def test_different_seed_different_log() -> None:
    assert run_trace(7) != run_trace(8)
