"""Several frontends (issue 16, item 5): each with its own engine, every one sending
batches to every container, a container computing one batch at a time over all of them;
a load balancer in front (round robin or least connections)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from clipperlab.engine import BatchingConfig
from clipperlab.simulator import (
    Crash,
    Deployment,
    FrontendCPU,
    HostCPU,
    LatencyProfile,
    SimConfigError,
    SimResult,
    Simulation,
    load_config,
)
from clipperlab.workloads import ConstantRate, Poisson, Workload

FIXED_1MS = LatencyProfile.from_line("fixed-1ms", 0.0, 1e-3, p99_over_mean=1.0)


def _run(frontends: int, qps: float, n: int = 4000, *, balancer: str = "round_robin",
         replicas: int = 1, profile: LatencyProfile | str = "prototype-linear-svm",
         constant: bool = False, seed: int = 2, **kw) -> SimResult:  # type: ignore[no-untyped-def]
    dep = Deployment.single(profile, batching=BatchingConfig(policy="aimd"), slo_s=0.020,
                            replicas=replicas, frontends=frontends, balancer=balancer, **kw)
    arrivals = ConstantRate(qps) if constant else Poisson(qps)
    return Simulation(dep, Workload(arrivals, n_queries=n), seed=seed,
                      decision_log=True).run()


def test_one_frontend_is_the_single_frontend_simulator() -> None:
    """``frontends = 1`` adds no column and takes the same decisions as before."""
    one = _run(1, 3000)
    assert "frontend" not in one.queries and "frontend" not in one.batches
    assert one.engines == [one.engine]


def test_at_low_load_every_frontend_answers_as_one_does() -> None:
    """Queries far apart never meet in a container: with two or three frontends each query
    takes exactly what it takes behind one frontend."""
    one = _run(1, 100.0, n=500, profile=FIXED_1MS, constant=True)
    for nfe in (2, 3):
        many = _run(nfe, 100.0, n=500, profile=FIXED_1MS, constant=True)
        assert np.array_equal(many.queries["latency_s"], one.queries["latency_s"])
        assert sorted(set(many.queries["frontend"])) == list(range(nfe))
        assert not many.queries["default"].any()


@pytest.mark.parametrize("balancer", ["round_robin", "least_connections"])
@pytest.mark.parametrize("nfe", [2, 3])
def test_every_query_answered_once(nfe: int, balancer: str) -> None:
    """Conservation under overload and a crash: one reply per query, from the frontend
    the balancer sent it to; every batch done or lost."""
    res = _run(nfe, 30_000, n=6000, balancer=balancer, replicas=2,
               faults=[Crash("m#1", at_s=0.05, restart_after_s=0.05)])
    q = res.queries
    assert q["reply_at"].notna().all() and (q["reply_at"] >= q["arrival_at"]).all()
    replies = [e[2] for e in res.log or [] if e[0] in ("reply", "refuse")]
    assert sorted(replies) == list(range(len(q)))
    per_engine = [sorted(e[2] for e in eng.log or [] if e[0] in ("reply", "refuse"))
                  for eng in res.engines]
    for k, ids in enumerate(per_engine):
        assert ids == sorted(np.flatnonzero(q["frontend"].to_numpy() == k).tolist())
    b = res.batches
    assert set(b["status"]) <= {"done", "lost"} and (b["status"] == "lost").any()
    assert res.metrics.total("clipperlab_batches_total") == len(b)


def test_round_robin_spreads_queries_evenly() -> None:
    res = _run(3, 2000, n=3000)
    assert np.array_equal(res.queries["frontend"], np.arange(3000) % 3)


def test_least_connections_sends_to_the_frontend_with_fewest_open_queries() -> None:
    """A frontend whose queries are answered later holds more connections and gets fewer
    queries; at a tie the balancer goes round robin (so a quiet system alternates)."""
    quiet = _run(2, 100.0, n=200, balancer="least_connections", profile=FIXED_1MS,
                 constant=True)
    assert np.array_equal(quiet.queries["frontend"], np.arange(200) % 2)
    busy = _run(2, 20_000, n=6000, balancer="least_connections", replicas=2)
    q = busy.queries
    # at each arrival, the frontend chosen had no more open queries than the other
    arr, rep, fe = (q[c].to_numpy() for c in ("arrival_at", "reply_at", "frontend"))
    for i in range(0, len(q), 97):
        t = arr[i]
        open_ = [int(((fe[:i] == k) & (rep[:i] > t)).sum()) for k in (0, 1)]
        assert open_[fe[i]] <= open_[1 - fe[i]]


def test_a_container_computes_one_batch_at_a_time_over_the_frontends() -> None:
    """Batches of different frontends on one replica never overlap in the container;
    each frontend has at most one batch at a replica."""
    res = _run(3, 20_000, n=6000, replicas=2)
    b = res.batches[res.batches["status"] == "done"]
    lat = Deployment.single("prototype-linear-svm").hosts[0].link.latency_s
    for _, g in b.groupby("replica"):
        g = g.sort_values("start_at")
        compute_end = g["done_at"].to_numpy() - lat - g["size"].to_numpy() * 64 / 10e9
        assert (g["start_at"].to_numpy()[1:] >= compute_end[:-1] - 1e-9).all()
        for _, h in g.groupby("frontend"):
            h = h.sort_values("sent_at")
            assert (h["sent_at"].to_numpy()[1:] >= h["done_at"].to_numpy()[:-1] - 1e-12).all()
    assert b.groupby("replica")["frontend"].nunique().min() == 3


def test_at_high_load_more_frontends_make_smaller_batches_and_less_throughput() -> None:
    """The direction expected: each frontend batches its own share of the queue, so
    batches shrink; a container alternating between frontends' small batches serves
    fewer queries per second, and the wait behind the other frontends' batches counts
    in each engine's batch latency, so latency grows and more queries get the default."""
    s = {nfe: _run(nfe, 20_000, n=20_000, replicas=2).summary() for nfe in (1, 2, 4)}
    assert s[1]["mean_batch_size"] > s[2]["mean_batch_size"] > s[4]["mean_batch_size"]
    assert s[1]["throughput_qps"] > s[2]["throughput_qps"] > s[4]["throughput_qps"]
    assert s[1]["p50_ms"] < s[2]["p50_ms"] < s[4]["p50_ms"]
    assert s[1]["default_rate"] < s[2]["default_rate"] < s[4]["default_rate"]


def test_same_seed_same_run() -> None:
    a, b = (_run(2, 20_000, n=3000, replicas=2, balancer="least_connections")
            for _ in range(2))
    assert a.log == b.log
    assert a.queries["reply_at"].equals(b.queries["reply_at"])


CONFIG = """
frontends = 2
balancer = "least_connections"

[[applications]]
name = "digits"
slo_ms = 20
models = ["svm"]

[[models]]
name = "svm"
profile = "prototype-linear-svm"
replicas = 2

[workload]
app = "digits"
n_queries = 2000
arrivals = { kind = "poisson", qps = 5000 }
"""


def test_frontends_in_the_config(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(CONFIG)
    cfg = load_config(f)
    assert (cfg.deployment.frontends, cfg.deployment.balancer) == (2, "least_connections")
    assert cfg.workload is not None
    res = Simulation(cfg.deployment, cfg.workload, seed=cfg.seed).run()
    assert set(res.queries["frontend"]) == {0, 1}


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("frontends = 2", "frontends = 0", r"frontends: expected an integer >= 1, got 0"),
        ("frontends = 2", "frontends = 1.5", r"frontends: expected an integer >= 1, got 1.5"),
        ("frontends = 2", "frontends = true", r"frontends: expected an integer >= 1, got True"),
        ('balancer = "least_connections"', 'balancer = "random"',
         r"balancer: expected one of \['round_robin', 'least_connections'\], got 'random'"),
        ("[workload]", "[host_cpu]\ncpus = 2\n\n[workload]",
         r"frontends = 2: several frontends run without host_cpu"),
    ],
)
def test_config_errors_name_the_field(tmp_path: Path, old: str, new: str, message: str) -> None:
    assert old in CONFIG
    f = tmp_path / "c.toml"
    f.write_text(CONFIG.replace(old, new))
    with pytest.raises(SimConfigError, match=message) as e:
        load_config(f)
    assert str(f) in str(e.value)


def test_deployment_errors() -> None:
    base = Deployment.single("prototype-linear-svm")
    with pytest.raises(SimConfigError, match=r"frontends: expected an integer >= 1, got -1"):
        dataclasses.replace(base, frontends=-1)
    with pytest.raises(SimConfigError, match=r"balancer: expected one of"):
        dataclasses.replace(base, balancer="leastconn")
    with pytest.raises(SimConfigError, match=r"several frontends run without host_cpu"):
        dataclasses.replace(base, frontends=2, host_cpu=HostCPU())


LOOP = FrontendCPU(query_s=60e-6, reply_s=20e-6, batch_send_s=30e-6, batch_done_s=30e-6,
                   item_s=1e-6, wake_s=5e-6, pause_rate_hz=50, pauses_s=(1e-3,),
                   timer_resolution_s=1e-3)


def _loop_run(nfe: int, balancer: str = "round_robin", qps: float = 15_000) -> SimResult:
    dep = dataclasses.replace(
        Deployment.single("prototype-linear-svm", batching=BatchingConfig(policy="aimd"),
                          slo_s=0.020, replicas=2, frontends=nfe, balancer=balancer,
                          faults=[Crash("m#1", at_s=0.3, restart_after_s=0.1)]),
        frontend_cpu=LOOP)
    return Simulation(dep, Workload(Poisson(qps), n_queries=12_000), seed=1,
                      decision_log=True).run()


def test_with_frontend_cpu_more_frontends_carry_what_saturates_one_loop() -> None:
    """Each frontend is its own event loop: a load past one loop's capacity waits in
    that loop (latency of hundreds of ms); spread over two loops it is served in time."""
    assert LOOP.capacity_qps(20) < 15_000
    one, two = _loop_run(1).summary(), _loop_run(2).summary()
    assert one["p50_ms"] > 100 and two["p50_ms"] < 20
    assert two["throughput_qps"] > 1.1 * one["throughput_qps"]


@pytest.mark.parametrize("balancer", ["round_robin", "least_connections"])
def test_with_frontend_cpu_every_query_answered_once(balancer: str) -> None:
    """Conservation with an event loop per frontend (pauses, a crash): one reply per
    query, never before it arrived; every loop did work."""
    res = _loop_run(3, balancer)
    q = res.queries
    assert q["reply_at"].notna().all() and (q["reply_at"] >= q["arrival_at"]).all()
    replies = [e[2] for e in res.log or [] if e[0] in ("reply", "refuse")]
    assert sorted(replies) == list(range(len(q)))
    assert set(q["frontend"]) == {0, 1, 2}
