"""The calibration's fits (``clipperlab.calibration.fit``) on data with known answers: the
CPU split per query and per batch, the wake-up cost recovered from runs the simulator made
with a known event loop, pauses found in latencies with known pauses, and the helpers that
turn a load run into what the simulator replays (``clipperlab.calibration.runs``)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from clipperlab.calibration.fit import (
    Calibration,
    CpuRun,
    batch_mean_ms,
    fit_container_wake,
    fit_cpu,
    fit_frontend,
    fit_frontend_rows,
    fit_overhead,
    fit_pauses,
    pause_rate_intervals,
)
from clipperlab.calibration.runs import from_send, good_share, predicted, sent_trace
from clipperlab.calibration.twin import frontend_cpu
from clipperlab.simulator import Deployment, FrontendCPU, Simulation
from clipperlab.workloads import ConstantRate, Poisson, Trace, Workload


def test_fit_cpu_splits_queries_and_batches() -> None:
    """CPU = 30 us x queries + 200 us x batches, at three batch sizes: both recovered."""
    pts = [(q, q / size, 30e-6 * q + 200e-6 * q / size)
           for q, size in ((5000, 1.0), (20000, 4.0), (60000, 12.0))]
    a, b = fit_cpu(pts)
    assert a == pytest.approx(30e-6, rel=1e-6) and b == pytest.approx(200e-6, rel=1e-6)
    # one batch size cannot separate them: all per query
    a1, b1 = fit_cpu([(1000, 1000, 0.5)])
    assert (a1, b1) == (pytest.approx(0.5e-3), 0.0)


def _twin(c: Calibration) -> Deployment:
    dep = Deployment.single("prototype-noop")
    m = dataclasses.replace(dep.models[0], wake_s=c.replica_wake_s,
                            cold_after_s=c.replica_cold_after_s)
    return dataclasses.replace(dep, models=(m,), frontend_cpu=frontend_cpu(c))


def test_fit_frontend_recovers_a_known_loop() -> None:
    """Runs made by the simulator with a known loop (30 us/query, 200 us/batch, a 300 us
    wake-up cooling in 1 ms), their CPU taken from the loop's busy time: the fit finds
    every one of them."""
    truth = Calibration(query_cpu_s=30e-6, batch_cpu_s=200e-6, wake_s=300e-6,
                        cold_after_s=1e-3)
    runs = []
    for k, rate in enumerate((50, 200, 1000, 3000, 6000, 10000, 14000)):
        tr = Workload(Poisson(rate), n_queries=max(int(rate * 0.5), 100)).generate(k)
        sim = Simulation(_twin(truth), tr, seed=0)
        res = sim.run()
        batches = float(len(res.batches))
        runs.append(CpuRun(tr, float(len(tr)), batches, sim.loop_busy_s))
    fit = fit_frontend(runs, _twin, Calibration())
    assert fit.query_cpu_s == pytest.approx(30e-6, rel=0.1)
    assert fit.batch_cpu_s == pytest.approx(200e-6, rel=0.15)
    assert fit.wake_s == pytest.approx(300e-6, rel=0.1)
    assert fit.cold_after_s == 1e-3


def test_fit_container_wake_recovers_a_known_wake_up() -> None:
    """Runs made by the twin with containers that pay 500 us after sleeping (cooling in
    2 ms), their batch latency taken from the engine's metrics: the fit finds both."""
    truth = Calibration(query_cpu_s=30e-6, batch_cpu_s=100e-6, replica_wake_s=500e-6,
                        replica_cold_after_s=2e-3)
    runs = []
    for k, rate in enumerate((50, 300, 1000, 3000, 8000)):
        tr = Workload(Poisson(rate), n_queries=max(int(rate * 0.5), 100)).generate(k)
        res = Simulation(_twin(truth), tr, seed=0).run()
        runs.append(CpuRun(tr, float(len(tr)), float(len(res.batches)), 0.0,
                           batch_ms=batch_mean_ms(res.metrics)))
    start = dataclasses.replace(truth, replica_wake_s=0.0)
    fit = fit_container_wake(runs, _twin, start)
    assert fit.replica_wake_s == pytest.approx(500e-6, rel=0.1)
    assert fit.replica_cold_after_s == 2e-3
    # the runs' replays on two processes: the same numbers
    assert fit_container_wake(runs, _twin, start, jobs=2) == fit


def test_fit_frontend_on_two_processes_gives_the_same_fit() -> None:
    """``fit_frontend_rows(jobs=2)`` replays the runs at every cooling time of the grid on
    two processes (each replay pickled there and back): the same costs and equations as
    one process, to the bit."""
    truth = Calibration(query_cpu_s=30e-6, batch_cpu_s=200e-6, wake_s=300e-6,
                        cold_after_s=1e-3)
    runs = []
    for k, rate in enumerate((50, 1000, 6000, 12000)):
        tr = Workload(Poisson(rate), n_queries=max(int(rate * 0.3), 100)).generate(k)
        sim = Simulation(_twin(truth), tr, seed=0)
        res = sim.run()
        runs.append(CpuRun(tr, float(len(tr)), float(len(res.batches)), sim.loop_busy_s))
    one = fit_frontend_rows(runs, _twin, Calibration())
    assert one[1] and one[0].wake_s > 0
    assert fit_frontend_rows(runs, _twin, Calibration(), jobs=2) == one


def test_wake_idle_times_give_the_wake_ups_at_every_cooling_time() -> None:
    """``Simulation(record_wake_idle=True)`` keeps each container wake-up's idle time: a
    run with a negligible wake-up gives, for every cooling time, the wake-ups a run at
    that cooling time counts (what lets ``fit_container_wake`` simulate each run once),
    and with a real wake-up its idle times give the cost the run added."""
    from clipperlab.calibration.fit import COLD_AFTER_GRID_S

    tr = Workload(Poisson(2000), n_queries=1500).generate(3)
    tiny = 1e-12
    base = Calibration(query_cpu_s=30e-6, batch_cpu_s=100e-6, replica_wake_s=tiny,
                       replica_cold_after_s=COLD_AFTER_GRID_S[0])
    once = Simulation(_twin(base), tr, seed=0, record_wake_idle=True)
    once.run()
    idle = np.asarray(once.replica_idle_s)
    assert len(idle) > 100 and (idle > 0).all()
    for tau in COLD_AFTER_GRID_S:
        each = Simulation(_twin(dataclasses.replace(base, replica_cold_after_s=tau)), tr,
                          seed=0)
        each.run()
        assert float(-np.expm1(-idle / tau).sum()) == pytest.approx(
            each.replica_wake_s / tiny, rel=1e-6)
    real = dataclasses.replace(base, replica_wake_s=400e-6, replica_cold_after_s=1e-3)
    sim = Simulation(_twin(real), tr, seed=0, record_wake_idle=True)
    sim.run()
    got = np.asarray(sim.replica_idle_s)
    assert float((400e-6 * -np.expm1(-got / 1e-3)).sum()) == pytest.approx(
        sim.replica_wake_s, rel=1e-9)
    plain = Simulation(_twin(real), tr, seed=0)
    plain.run()
    assert plain.replica_idle_s == [] and plain.replica_wake_s == sim.replica_wake_s


def test_fit_overhead_is_the_median_gap_up_to_60_percent_load() -> None:
    """Runs whose latencies are the twin's own plus 0.3 ms, except the slowest run (which
    a lone low-load run would have taken: +1.2 ms) and runs above 60% of capacity (+5
    ms, queueing the twin must explain itself): the overhead is 0.3 ms.  A server faster
    than the twin says no overhead, never a negative one."""
    truth = Calibration(query_cpu_s=30e-6, batch_cpu_s=100e-6, capacity_qps=10_000.0)

    def run(rate: float, extra_s: float, k: int) -> CpuRun:
        tr = Workload(Poisson(rate), n_queries=max(int(rate * 0.5), 150)).generate(k)
        lat = Simulation(_twin(truth), tr, seed=0).run().queries["latency_s"].to_numpy()
        return CpuRun(tr, float(len(tr)), float(len(tr)), 0.0, lat + extra_s)

    runs = [run(50, 1.2e-3, 0), *(run(r, 0.3e-3, k) for k, r in
                                  enumerate((300, 1000, 3000, 5000), 1)),
            run(8000, 5e-3, 6), run(9500, 5e-3, 7)]
    assert fit_overhead(runs, _twin, truth) == pytest.approx(0.3e-3, rel=0.02)
    faster = [run(r, -0.2e-3, k) for k, r in enumerate((300, 1000, 3000))]
    assert fit_overhead(faster, _twin, truth) == 0.0
    assert fit_overhead([], _twin, truth) == 0.0


def _paused_run(rate: float, pauses: list[tuple[float, float]], base: float = 1e-3,
                seconds: float = 5.0) -> CpuRun:
    sent = np.arange(int(rate * seconds)) / rate
    lat = np.full(sent.size, base)
    for start, d in pauses:
        inside = (sent >= start) & (sent < start + d)
        lat[inside] = base + (start + d - sent[inside])
    tr = Workload(ConstantRate(rate), n_queries=sent.size).generate(0)
    tr = dataclasses.replace(tr, arrival_at=sent)
    return CpuRun(tr, float(sent.size), float(sent.size), 0.0, lat)


def test_fit_pauses_finds_known_pauses() -> None:
    """Latencies held by 40 pauses of 5 ms over 4 s (10/s) at 1,000 q/s: about 40 found,
    each close to 5 ms long, at about 10 per second; runs above 30% of capacity are not
    used (queueing, not pauses)."""
    starts = np.linspace(0.05, 4.0, 40)
    run = _paused_run(1000, [(float(s), 5e-3) for s in starts])
    rate, durations = fit_pauses([run], capacity_qps=10_000)
    assert 36 <= len(durations) <= 40
    assert np.median(durations) == pytest.approx(5e-3, abs=1.1e-3)
    assert rate == pytest.approx(40 / 5.0, rel=0.25)
    assert fit_pauses([run], capacity_qps=2000) == (0.0, ())  # 1,000 q/s is 50% of it
    quiet = _paused_run(1000, [])
    assert fit_pauses([quiet], capacity_qps=10_000) == (0.0, ())


def test_pause_rate_keeps_the_busy_term_only_where_the_runs_show_it() -> None:
    """``pause_rate_intervals`` over per-run equations ``(s_k, s_k x u_k, late_k)``: runs
    whose late share grows with the loop's busy share (2 + 10 x busy pauses a second)
    give both terms back; runs at one rate each but one, a run made late by a single
    stall (its late share ten times its neighbours'), give the base alone (the busy
    term 0, its interval reaching 0), near the other runs' own rate."""
    u = np.linspace(0.05, 0.7, 14)
    s = np.full_like(u, 1e-3)
    grows = [(float(sk), float(sk * uk), float(sk * (2.0 + 10.0 * uk)))
             for sk, uk in zip(s, u, strict=True)]
    base, busy = pause_rate_intervals(grows)
    assert base.value == pytest.approx(2.0, rel=1e-6)
    assert busy.value == pytest.approx(10.0, rel=1e-6) and busy.lo > 0
    flat = [(sk, sku, sk * 3.0) for sk, sku, _ in grows]
    k = 10  # one run, at 55% busy, late ten times as often
    flat[k] = (flat[k][0], flat[k][1], flat[k][0] * 30.0)
    base, busy = pause_rate_intervals(flat)
    assert busy.value == 0.0 and busy.lo <= 0 < busy.hi
    assert base.value == pytest.approx((13 * 3.0 + 30.0) / 14, rel=1e-6)
    assert base.lo <= base.value <= base.hi


def test_load_run_helpers() -> None:
    """``from_send`` measures from the send; ``sent_trace`` replays the sends in order;
    ``good_share`` counts answered, non-default replies within the SLO."""
    t = pd.DataFrame({
        "arrival_at": [0.0, 0.001, 0.002, 0.003],
        "sent_at": [0.0005, 0.0012, 0.0021, np.nan],
        "reply_at": [0.0030, 0.0300, 0.0041, np.nan],
        "status": [200, 200, 200, 0],
        "default": [False, False, True, False],
    })
    t["latency_s"] = t["reply_at"] - t["arrival_at"]
    f = from_send(t)
    assert f["latency_s"].iloc[0] == pytest.approx(0.0025)
    assert f["arrival_at"].iloc[3] == 0.003  # never sent: the schedule stays
    assert good_share(t, 0.020) == 0.25  # one late, one default, one unanswered
    # which got a prediction (what runs.npz keeps per query): the late one did
    assert list(predicted(t)) == [True, True, False, False]
    tr: Trace = dataclasses.replace(Workload(ConstantRate(1000), n_queries=4).generate(0),
                                    arrival_at=t["arrival_at"].to_numpy())
    st = sent_trace(tr, t)
    assert list(st.arrival_at) == [0.0005, 0.0012, 0.0021, 0.0030]
    assert isinstance(frontend_cpu(Calibration(query_cpu_s=2e-5)), FrontendCPU)
