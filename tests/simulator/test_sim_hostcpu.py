"""The host CPU model (issue 13, item 1): processor sharing against its closed forms, the
simulation with it (M/G/1, contention, crashes), its config, and the default path
unchanged without it."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import simpy

from clipperlab.engine import Application, BatchingConfig, ModelSpec
from clipperlab.simulator import (
    AppDeployment,
    Crash,
    Deployment,
    FrontendCPU,
    Host,
    HostCPU,
    LatencyProfile,
    Link,
    ModelDeployment,
    SimConfigError,
    Simulation,
    config_from_dict,
    load_config,
)
from clipperlab.simulator._cpu import HostCpuState, SlicedHostCpuState
from clipperlab.workloads import Poisson, Workload

FAST = Link(bandwidth_bps=1e18, latency_s=0.0)


def run_jobs(cores: int, jobs: list[tuple[float, str, float]],
             holds: tuple[tuple[str, float, float], ...] = (),
             slice_s: float = 0.0, waits: dict[str, float] | None = None,
             newidle: bool = False) -> dict[str, list[float]]:
    """Submit ``(at, process, demand)`` jobs to one host; the finish times per process
    (processor sharing, or time slices of ``slice_s``); ``waits`` gets each process's
    time runnable without a core."""
    env = simpy.Environment()
    host: HostCpuState | SlicedHostCpuState = (
        SlicedHostCpuState(env, "h", cores, slice_s, newidle=newidle) if slice_s > 0
        else HostCpuState(env, "h", cores))
    procs = {name: host.proc(name) for _, name, _ in jobs}
    out: dict[str, list[float]] = {name: [] for name in procs}

    def feed() -> object:
        for at, name, d in sorted(jobs):
            yield env.timeout(at - env.now)
            host.submit(procs[name], d, env.now, out[name].append)

    def hold() -> object:
        for name, start, end in holds:
            yield env.timeout(start - env.now)
            host.hold(procs[name], end, env.now)

    env.process(feed())
    env.process(hold())
    env.run()
    if waits is not None:
        waits.update({name: p.wait_s for name, p in procs.items()})
    return out


@pytest.mark.parametrize(
    ("cores", "jobs", "expect"),
    [
        # two jobs of 1 s and 2 s on one core: half a core each until 2 s, then alone
        (1, [(0, "a", 1.0), (0, "b", 2.0)], {"a": [2.0], "b": [3.0]}),
        # on two cores each has its own
        (2, [(0, "a", 1.0), (0, "b", 2.0)], {"a": [1.0], "b": [2.0]}),
        # three processes on two cores: two thirds of a core each
        (2, [(0, "a", 1.0), (0, "b", 1.0), (0, "c", 1.0)], {"a": [1.5], "b": [1.5], "c": [1.5]}),
        # b joins at 1 s: a has 1 s left, both run at half speed, both end at 3 s
        (1, [(0, "a", 2.0), (1, "b", 1.0)], {"a": [3.0], "b": [3.0]}),
        # one process runs its jobs one after another (FIFO)
        (4, [(0, "a", 1.0), (0.5, "a", 1.0)], {"a": [1.0, 2.0]}),
        # a job of no demand on an idle process is done at once
        (1, [(0, "a", 1.0), (0.25, "b", 0.0)], {"a": [1.0], "b": [0.25]}),
    ],
)
def test_processor_sharing_finish_times(cores: int, jobs: list[tuple[float, str, float]],
                                        expect: dict[str, list[float]]) -> None:
    """Jobs finish when processor sharing says they do."""
    got = run_jobs(cores, jobs)
    assert got.keys() == expect.keys()
    for k, v in expect.items():
        assert got[k] == pytest.approx(v, abs=1e-12)


def test_a_held_process_resumes_where_it_was() -> None:
    """A hold stops a job (and frees the core for the other process) and resumes it."""
    got = run_jobs(1, [(0, "a", 1.0), (0, "b", 1.0)], holds=(("a", 0.5, 1.5),))
    # 0-0.5: both at half speed (a 0.25, b 0.25); 0.5-1.25: b alone finishes; a resumes
    # at 1.5 with 0.75 left
    assert got["b"] == pytest.approx([1.25])
    assert got["a"] == pytest.approx([2.25])


@pytest.mark.parametrize(
    ("cores", "slice_s", "jobs", "expect"),
    [
        # round robin on one core: a's tenth slice ends at 1.9 s, then b runs alone
        (1, 0.1, [(0, "a", 1.0), (0, "b", 2.0)], {"a": [1.9], "b": [3.0]}),
        # a short job woken while the core is taken waits out the running slice: a has
        # run alone since 0, its slices renewing every 1 s, so b waits until 1 s
        (1, 1.0, [(0, "a", 10.0), (0.25, "b", 0.01)], {"a": [10.01], "b": [1.01]}),
        # the same with 0.1 s slices: a has had its slice, so b, woken, preempts it
        (1, 0.1, [(0, "a", 10.0), (0.25, "b", 0.01)], {"a": [10.01], "b": [0.26]}),
        # a free core: no wait
        (2, 1.0, [(0, "a", 10.0), (0.25, "b", 0.01)], {"a": [10.0], "b": [0.26]}),
        # two cores taken: c waits for the first slice to end (a's at 1 s, b's at 1.5 s)
        # and takes a's core; a gets it back when c blocks
        (2, 1.0, [(0, "a", 10.0), (0.5, "b", 10.0), (0.6, "c", 0.01)],
         {"a": [10.01], "b": [10.5], "c": [1.01]}),
        # a process that blocks gives its core to the head of the queue at once
        (1, 1.0, [(0, "a", 0.2), (0.1, "b", 0.3)], {"a": [0.2], "b": [0.5]}),
        # one process runs its jobs one after another, within its slice
        (1, 1.0, [(0, "a", 0.2), (0.1, "a", 0.3), (0.15, "b", 0.1)],
         {"a": [0.2, 0.5], "b": [0.6]}),
    ],
)
def test_time_slice_finish_times(cores: int, slice_s: float,
                                 jobs: list[tuple[float, str, float]],
                                 expect: dict[str, list[float]]) -> None:
    """Jobs finish when round robin with ``slice_s`` slices says they do."""
    got = run_jobs(cores, jobs, slice_s=slice_s)
    assert got.keys() == expect.keys()
    for k, v in expect.items():
        assert got[k] == pytest.approx(v, abs=1e-9)


def test_a_waiter_waits_for_its_core_while_another_idles_until_the_tick() -> None:
    """Each core has its own run queue: x, woken while both cores are in their slices,
    waits on one of them; the other core going idle at 2 ms does not take it until the
    balance tick at 4 ms (one queue for all cores ran it at 2 ms); its wait (the
    kernel's run_delay) is counted."""
    waits: dict[str, float] = {}
    got = run_jobs(2, [(0, "a", 10e-3), (0, "b", 2e-3), (1e-3, "x", 1e-3)], slice_s=5e-3,
                   waits=waits)
    assert got["b"] == pytest.approx([2e-3])
    assert got["x"] == pytest.approx([5e-3])
    assert got["a"] == pytest.approx([10e-3])
    assert waits == pytest.approx({"a": 0.0, "b": 0.0, "x": 3e-3})


def test_with_newidle_an_idle_core_takes_the_waiter_at_once() -> None:
    """The same as above with the kernel's newidle balance: the core that goes idle at
    2 ms takes x from the other core's queue then, not at the tick."""
    waits: dict[str, float] = {}
    got = run_jobs(2, [(0, "a", 10e-3), (0, "b", 2e-3), (1e-3, "x", 1e-3)], slice_s=5e-3,
                   waits=waits, newidle=True)
    assert got["x"] == pytest.approx([3e-3])
    assert got["a"] == pytest.approx([10e-3])
    assert waits == pytest.approx({"a": 0.0, "b": 0.0, "x": 1e-3})
    with pytest.raises(SimConfigError, match=r"host_cpu\.newidle: expected true or false"):
        HostCPU(newidle=1)  # type: ignore[arg-type]


@pytest.mark.parametrize(("woken_at", "done_at"), [(0.5e-3, 4.1e-3), (2e-3, 2.1e-3)])
def test_a_wake_up_preempts_a_process_that_has_had_its_slice(woken_at: float,
                                                             done_at: float) -> None:
    """Woken while two 10 ms jobs hold both cores in 1 ms slices: before their slices
    are out x waits for a scheduling point (the tick at 4 ms, then it is the kernel's
    pick: it has had less CPU); after, it preempts one at once."""
    got = run_jobs(2, [(0, "a", 10e-3), (0, "b", 10e-3), (woken_at, "x", 0.1e-3)],
                   slice_s=1e-3)
    assert got["x"] == pytest.approx([done_at])
    assert sorted(got["a"] + got["b"]) == pytest.approx([10e-3, 10.1e-3])


@pytest.mark.parametrize("from_done", [True, False])
def test_a_wake_up_from_a_done_callback_goes_to_the_wakers_core(from_done: bool) -> None:
    """The kernel's sync wake-up: l last ran on core 0, where c now runs a 10 ms job in
    its 5 ms slice; g, on core 1, ends a job at 1.5 ms and hands l work from its done
    callback.  l joins g's core's queue and runs as g blocks: done at 1.6 ms.  Woken at
    the same moment by someone else (not from a done callback) l queues on its own
    core, behind c, until the balance tick at 4 ms."""
    env = simpy.Environment()
    host = SlicedHostCpuState(env, "h", 2, 5e-3)
    c, g, lp = host.proc("c"), host.proc("g"), host.proc("l")
    done: dict[str, list[float]] = {"c": [], "g": [], "l": []}

    def hand_on(now: float) -> None:
        done["g"].append(now)
        if from_done:
            host.submit(lp, 0.1e-3, now, done["l"].append)

    def feed() -> object:
        host.submit(lp, 0.01e-3, env.now)  # l runs first, on core 0
        yield env.timeout(0.1e-3)
        host.submit(c, 10e-3, env.now, done["c"].append)  # c takes core 0
        yield env.timeout(0.9e-3)
        host.submit(g, 0.5e-3, env.now, hand_on)  # g on core 1, ends at 1.5 ms
        if not from_done:
            yield env.timeout(0.5e-3 - 1e-9)
            host.submit(lp, 0.1e-3, env.now, done["l"].append)

    env.process(feed())
    env.run()
    assert done["g"] == pytest.approx([1.5e-3])
    assert done["l"] == pytest.approx([1.6e-3 if from_done else 4.1e-3], abs=1e-8)
    assert done["c"] == pytest.approx([10.1e-3])
    assert lp.wait_s == pytest.approx(0.0 if from_done else 4e-3 - 1.5e-3, abs=1e-8)


def test_time_slice_hold_frees_the_core() -> None:
    """A held process gives its core to the one waiting and resumes with what it had
    left when the hold ends (and the core is free)."""
    got = run_jobs(1, [(0, "a", 1.0), (0.1, "b", 0.5)], holds=(("a", 0.2, 0.4),),
                   slice_s=10.0)
    # a runs 0-0.2 (0.8 left); b takes the core at 0.2 and keeps it (a's hold ends at
    # 0.4 but b's slice runs to 10.2): b done at 0.7, a at 1.5
    assert got["b"] == pytest.approx([0.7])
    assert got["a"] == pytest.approx([1.5])


def test_time_slices_approach_processor_sharing() -> None:
    """Slices short against the jobs give processor sharing's sojourns (the limit the
    default model is); slices long against them give the waits processor sharing has
    not: with demands this variable, first come first served's longer mean sojourn."""
    rng = np.random.default_rng(1)
    n, rho, es = 3000, 0.6, 1e-3
    demand = rng.lognormal(np.log(es) - 1.125, 1.5, n)
    arrive = np.cumsum(rng.exponential(es / rho, n))

    ps = sojourns(arrive, demand).mean()
    assert sojourns(arrive, demand, es / 50).mean() == pytest.approx(ps, rel=0.03)
    assert sojourns(arrive, demand, es * 1000).mean() > 1.5 * ps


def sojourns(arrive: np.ndarray, demand: np.ndarray, slice_s: float = 0.0) -> np.ndarray:
    """Each job its own process on one core (processor sharing, or slices of
    ``slice_s``): every job's time from arrival to done."""
    n = len(arrive)
    env = simpy.Environment()
    host: HostCpuState | SlicedHostCpuState = (
        SlicedHostCpuState(env, "h", 1, slice_s) if slice_s > 0 else HostCpuState(env, "h", 1))
    out = np.full(n, np.nan)

    def feed() -> object:
        for k in range(n):
            yield env.timeout(arrive[k] - env.now)
            host.submit(host.proc(str(k)), float(demand[k]), env.now,
                        lambda t, k=k: out.__setitem__(k, t - arrive[k]))

    env.process(feed())
    env.run()
    assert not np.isnan(out).any()
    return out


def test_mg1_ps_mean_sojourn() -> None:
    """Poisson arrivals, each job its own process on one core (processor sharing between
    jobs): the mean sojourn is ``E[S] / (1 - rho)`` whatever the service distribution
    (M/G/1-PS is insensitive), here with lognormal demands at 60% load."""
    rng = np.random.default_rng(0)
    n, rho, es = 60_000, 0.6, 1e-3
    demand = rng.lognormal(np.log(es) - 0.5, 1.0, n)
    arrive = np.cumsum(rng.exponential(es / rho, n))
    assert sojourns(arrive, demand).mean() == pytest.approx(es / (1 - rho), rel=0.05)


def one_replica(cores: int | None, profile: LatencyProfile, **hc: object) -> Deployment:
    dep = Deployment.single(profile, batching=BatchingConfig(policy="none"), slo_s=100.0,
                            link=FAST)
    return dataclasses.replace(dep, host_cpu=HostCPU(cpus=cores, **hc))  # type: ignore[arg-type]


def test_mg1_through_the_simulation() -> None:
    """One CPU-bound replica alone on its core, batches of one, Poisson arrivals: the
    queue in front of it is M/G/1 (Pollaczek-Khinchine mean), the CPU model adding
    nothing when nothing competes."""
    prof = LatencyProfile(name="u", batch_sizes=(1,), levels=(0.0, 1.0),
                          latency_s=((1e-3, 3e-3),))
    es, es2 = 2e-3, (1e-6 + 3e-6 + 9e-6) / 3  # uniform on [1, 3] ms
    lam = 0.5 / es
    res = Simulation(one_replica(1, prof), Workload(Poisson(lam), n_queries=80_000),
                     seed=2).run()
    mean = float(res.queries["latency_s"].mean())
    assert mean == pytest.approx(es + lam * es2 / (2 * (1 - lam * es)), rel=0.03)


def two_models(cores: int | None, with_b: bool = True) -> tuple[Deployment, list[Workload]]:
    """Models ``a`` and ``b`` (each one replica, 2 ms a batch, batches of one) on one
    host, each with its own application and a Poisson load of 40%."""
    prof = LatencyProfile(name="c", batch_sizes=(1,), levels=(0.0, 1.0),
                          latency_s=((2e-3, 2e-3),))
    names = ("a", "b") if with_b else ("a",)
    models = tuple(ModelDeployment(spec=ModelSpec(name=m, batching=BatchingConfig(policy="none")),
                                   profile=prof, hosts=("h",)) for m in names)
    apps = tuple(AppDeployment(Application(name=m, slo_s=10.0, default_output=-1), (m,))
                 for m in names)
    dep = Deployment(apps=apps, models=models, hosts=(Host("h", cpus=2, link=FAST),),
                     host_cpu=HostCPU(cpus=cores) if cores else None)
    wls = [Workload(Poisson(200.0), n_queries=8000, app=m) for m in names]
    return dep, wls


def p99_of_a(dep: Deployment, wls: list[Workload]) -> float:
    q = Simulation(dep, wls, seed=4).run().queries
    return float(np.quantile(q.loc[q["app"] == "a", "latency_s"], 0.99))


def test_contention_raises_the_tail_on_one_core_not_on_two() -> None:
    """A second busy container on the same single core stretches the first one's batches
    (p99 up by more than half); with two cores it does not (p99 as when alone)."""
    alone = p99_of_a(*two_models(1, with_b=False))
    shared = p99_of_a(*two_models(1))
    two = p99_of_a(*two_models(2))
    assert shared > 1.5 * alone
    assert two == pytest.approx(alone, rel=1e-9)
    no_model = p99_of_a(*two_models(None))
    assert no_model == pytest.approx(alone, rel=1e-9)


def test_loadgen_and_frontend_share_the_core() -> None:
    """The generator's CPU per query and the frontend's loop take the core from the
    container: the tail grows with the generator's cost, and every process's CPU time
    is counted."""
    prof = LatencyProfile(name="c", batch_sizes=(1,), levels=(0.0, 1.0),
                          latency_s=((1e-3, 1e-3),))
    fc = FrontendCPU(query_s=50e-6, reply_s=50e-6, batch_send_s=20e-6, batch_done_s=20e-6)
    p99 = []
    for cost in (0.0, 300e-6):
        dep = dataclasses.replace(one_replica(1, prof, loadgen_cpu_per_query_s=cost),
                                  frontend_cpu=fc)
        sim = Simulation(dep, Workload(Poisson(400.0), n_queries=6000), seed=3)
        q = sim.run().queries
        p99.append(float(np.quantile(q["latency_s"], 0.99)))
        busy = sim.cpu_busy_s
        assert busy["h0/frontend"] == pytest.approx(6000 * (50e-6 * 2 + 40e-6), rel=1e-6)
        assert busy["h0/m:1#0"] == pytest.approx(6000 * 1e-3, rel=1e-6)
        assert busy.get("h0/loadgen", 0.0) == pytest.approx(6000 * cost, rel=1e-6)
        assert sim.loop_busy_s == busy["h0/frontend"]
    assert p99[1] > p99[0] + 300e-6


def test_the_generators_wake_ups_take_cpu_but_delay_no_query() -> None:
    """Each distinct send time that finds the generator idle costs it ``loadgen_wake_s``
    after its sends (one that comes while it works is no wake-up): counted in its CPU
    time; with a core to spare no query is later for it, on one core shared with a
    CPU-bound container the wake-ups take turns with the batches."""
    prof = LatencyProfile(name="c", batch_sizes=(1,), levels=(0.0, 1.0),
                          latency_s=((1e-3, 1e-3),))
    tr = Workload(Poisson(400.0), n_queries=3000).generate(3)
    ticks = len(np.unique(tr.arrival_at))
    lat = {}
    for cores, wake in ((2, 0.0), (2, 200e-6), (1, 0.0), (1, 200e-6)):
        dep = one_replica(cores, prof, loadgen_cpu_per_query_s=10e-6, loadgen_wake_s=wake)
        sim = Simulation(dep, tr, seed=3)
        lat[cores, wake] = sim.run().queries["latency_s"].to_numpy()
        woke = (sim.cpu_busy_s["h0/loadgen"] - 3000 * 10e-6) / (wake or 1.0)
        if wake:  # most sends find it idle (Poisson at 400/s; 210 us of work each)
            assert woke == pytest.approx(round(woke), abs=1e-6)
            assert 0.85 * ticks < woke < ticks
        else:
            assert woke == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(lat[2, 200e-6], lat[2, 0.0], rtol=0, atol=1e-12)
    assert lat[1, 200e-6].mean() > lat[1, 0.0].mean() + 20e-6


def test_replies_through_the_generator_are_timed_when_it_has_read_them() -> None:
    """``loadgen_replies``: the reply's share of the per-query cost moves from the send
    to the reply, and a reply that finds the generator idle pays its wake-up first.  On
    two cores at a light load (no one waits for a core) every query is later by the
    wake-up (the reply's 4 us of reading come back as the send's 4 us saved); the
    generator's CPU is the per-query cost, the send ticks' wake-ups and the replies'."""
    prof = LatencyProfile(name="c", batch_sizes=(1,), levels=(0.0, 1.0),
                          latency_s=((1e-3, 1e-3),))
    tr = Workload(Poisson(100.0), n_queries=2000).generate(5)
    out = {}
    for replies in (False, True):
        base = one_replica(2, prof, loadgen_cpu_per_query_s=10e-6, loadgen_wake_s=100e-6)
        assert base.host_cpu is not None
        dep = dataclasses.replace(base, host_cpu=dataclasses.replace(
            base.host_cpu, loadgen_replies=replies, loadgen_reply_share=0.4,
            loadgen_idle_gap_s=20e-6))
        sim = Simulation(dep, tr, seed=3)
        out[replies] = (sim.run().queries["latency_s"].to_numpy(),
                        sim.cpu_busy_s["h0/loadgen"])
    (before, busy0), (after, busy1) = out[False], out[True]
    late = after - before
    # the send 4 us sooner (6 us of it left), the reply 4 us of reading later, after a
    # wake-up of 100 us x (1 - exp(-idle / 20 us)): the generator slept ~10 ms between
    # queries at 100/s
    assert np.median(late) == pytest.approx(100e-6, rel=1e-6)
    assert late.min() > -1e-12
    # every reply woke it: 2,000 more wake-ups than the send ticks' alone
    assert busy1 - busy0 == pytest.approx(2000 * 100e-6, rel=0.05)


def test_gpu_container_uses_only_its_cpu_part() -> None:
    """A gpu container needs only ``cpu_per_batch_s + cpu_per_item_s x size`` of the
    CPU: a busy neighbour stretches that part, not the whole batch."""
    prof = LatencyProfile(name="g", batch_sizes=(1,), levels=(0.0, 1.0),
                          latency_s=((4e-3, 4e-3),), kind="gpu")
    md = ModelDeployment(spec=ModelSpec(name="g", batching=BatchingConfig(policy="none")),
                         profile=prof, cpu_per_batch_s=0.5e-3, cpu_per_item_s=0.5e-3)
    assert md.cpu_demand_s(1, 4e-3) == pytest.approx(1e-3)
    app = AppDeployment(Application(name="digits", slo_s=10.0, default_output=-1), ("g",))
    dep = Deployment(apps=(app,), models=(md,), hosts=(Host("h", cpus=1, gpus=1, link=FAST),),
                     host_cpu=HostCPU(cpus=1, loadgen_cpu_per_query_s=20e-3))
    # one query every 50 ms: the generator's 20 ms job runs alone, then the frontend's
    # (free) loop and the batch: no overlap, latency 20 ms (generator) + 4 ms
    q = Simulation(dep, Workload(Poisson(1.0), n_queries=50), seed=0).run().queries
    assert q["latency_s"].min() == pytest.approx(24e-3, rel=1e-6)


def test_a_run_counts_and_logs_each_processs_waits_for_a_core() -> None:
    """With time slices, ``cpu_wait_s`` gives each process's time runnable without a core
    and ``record_cpu_waits`` logs every such wait (summing to it): the generator and the
    replica sharing the first host's core wait, the replica alone on the second host and
    the loop (no CPU cost here) never; processor sharing has no queue: no waits."""
    def run(slice_s: float, record: bool) -> Simulation:
        dep = dataclasses.replace(
            Deployment.single("prototype-linear-svm", batching=BatchingConfig(policy="aimd"),
                              slo_s=0.02, replicas=2),
            host_cpu=HostCPU(cpus=1, loadgen_cpu_per_query_s=50e-6, slice_s=slice_s))
        sim = Simulation(dep, Workload(Poisson(2000.0), n_queries=2000), seed=3,
                         record_cpu_waits=record)
        sim.run()
        return sim

    sim = run(1.5e-3, True)
    w = sim.cpu_wait_s
    assert set(w) == set(sim.cpu_busy_s)
    assert w["h0/loadgen"] > 0 and w["h0/m:1#0"] > 0
    assert w["h1/m:1#1"] == 0 and w["h0/frontend"] == 0
    assert set(sim.cpu_wait_log) == {"h0/loadgen", "h0/m:1#0"}
    for k, waits in sim.cpu_wait_log.items():
        assert sum(waits) == pytest.approx(sim.cpu_wait_s[k]) and min(waits) >= 0
    assert run(1.5e-3, False).cpu_wait_log == {}
    assert set(run(0.0, True).cpu_wait_s.values()) == {0.0}


def test_a_containers_wake_up_is_off_the_cpu() -> None:
    """A cpu container's CPU demand follows its profile draw, not the wake-up a sleeping
    container adds to it: a 1 ms batch after a long sleep with a 5 ms wake-up takes 6 ms
    and needs 1 ms of the core (its fitted CPU at the mean draw), not 6."""
    prof = LatencyProfile(name="c", batch_sizes=(1,), levels=(0.0, 1.0),
                          latency_s=((1e-3, 1e-3),))
    app = AppDeployment(Application(name="digits", slo_s=10.0, default_output=-1), ("a",))
    md = ModelDeployment(spec=ModelSpec(name="a", batching=BatchingConfig(policy="none")),
                         profile=prof, cpu_per_batch_s=1e-3, wake_s=5e-3, cold_after_s=1e-6)
    dep = Deployment(apps=(app,), models=(md,), hosts=(Host("h", cpus=1, link=FAST),),
                     host_cpu=HostCPU(cpus=1, slice_s=1.5e-3))
    sim = Simulation(dep, Workload(Poisson(1.0), n_queries=5), seed=0)
    q = sim.run().queries
    assert q["latency_s"].to_numpy() == pytest.approx([6e-3] * 5, rel=1e-6)
    assert sim.cpu_busy_s["h/a:1#0"] == pytest.approx(5e-3)


def test_a_crash_drops_the_containers_cpu_job() -> None:
    """A replica that crashes mid-batch leaves the CPU: the run ends, every query is
    answered, and the lost batch's CPU time is not counted in full."""
    dep = dataclasses.replace(
        Deployment.single("prototype-linear-svm", batching=BatchingConfig(policy="aimd"),
                          slo_s=0.02, replicas=2,
                          faults=[Crash("m#0", at_s=0.2, restart_after_s=0.1)]),
        host_cpu=HostCPU(cpus=1))
    sim = Simulation(dep, Workload(Poisson(3000.0), n_queries=3000), seed=1)
    res = sim.run()
    assert res.queries["reply_at"].notna().all()
    b = res.batches
    assert (b["status"] == "lost").sum() == 1
    assert [c[2] for c in res.crashes] == ["crash", "restart"]


# --------------------------------------------------------------------------- config

CONFIG = """
seed = 1
[[hosts]]
name = "front"
cpus = 1
[[hosts]]
name = "box"
cpus = 2
[host_cpu]
cpus = 2
frontend_host = "front"
loadgen_host = "box"
loadgen_cpu_per_query_s = 20e-6
[frontend_cpu]
query_s = 10e-6
[[apps]]
name = "digits"
slo_s = 0.02
default_output = -1
models = ["svm"]
[[models]]
name = "svm"
profile = "prototype-linear-svm"
replicas = 2
hosts = ["box"]
cpu_per_batch_s = 1e-3
cpu_per_item_s = 2e-6
[workload]
n_queries = 500
arrivals = { kind = "poisson", qps = 1000 }
"""


def test_config_reads_host_cpu(tmp_path: Path) -> None:
    """``[host_cpu]`` and a model's ``cpu_per_batch_s`` / ``cpu_per_item_s`` are read
    and the deployment runs with them."""
    f = tmp_path / "c.toml"
    f.write_text(CONFIG)
    cfg = load_config(f)
    hc = cfg.deployment.host_cpu
    assert hc == HostCPU(cpus=2, frontend_host="front", loadgen_host="box",
                         loadgen_cpu_per_query_s=20e-6)
    m = cfg.deployment.models[0]
    assert (m.cpu_per_batch_s, m.cpu_per_item_s) == (1e-3, 2e-6)
    # a cpu container's demand follows its draw: the fitted CPU at the profile's mean
    assert m.cpu_demand_s(10, 0.5, 0.5) == pytest.approx(1e-3 + 20e-6)
    assert m.cpu_demand_s(10, 0.75, 0.5) == pytest.approx(1.5 * (1e-3 + 20e-6))
    mean = m.profile.mean_s(10)
    assert m.cpu_demand_s(10, mean) == pytest.approx(1e-3 + 20e-6)
    assert cfg.workload is not None
    sim = Simulation(cfg.deployment, cfg.workload, seed=cfg.seed)
    assert sim.run().queries["reply_at"].notna().all()
    assert set(sim.cpu_busy_s) == {"front/frontend", "box/loadgen", "box/svm:1#0",
                                   "box/svm:1#1"}
    plain = config_from_dict({k: v for k, v in _toml(CONFIG).items() if k != "host_cpu"})
    assert plain.deployment.host_cpu is None


def _toml(text: str) -> dict[str, object]:
    import tomllib

    return tomllib.loads(text)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("cpus = 2\nfrontend_host", "cpus = 0\nfrontend_host",
         r"host_cpu\.cpus: expected an integer >= 1 \(cores\), got 0"),
        ('frontend_host = "front"', 'frontend_host = "nope"',
         r"host_cpu\.frontend_host: 'nope' is not a host"),
        ("loadgen_cpu_per_query_s = 20e-6", "loadgen_cpu_per_query_s = -1",
         r"host_cpu\.loadgen_cpu_per_query_s: expected seconds >= 0, got -1"),
        ("loadgen_cpu_per_query_s = 20e-6", "loadgen_wake_s = -1",
         r"host_cpu\.loadgen_wake_s: expected seconds >= 0, got -1"),
        ("loadgen_cpu_per_query_s = 20e-6", "loadgen_replies = 1",
         r"host_cpu\.loadgen_replies: expected true or false, got 1"),
        ("loadgen_cpu_per_query_s = 20e-6", "loadgen_reply_share = 1.5",
         r"host_cpu\.loadgen_reply_share: expected a share in \[0, 1\], got 1\.5"),
        ("loadgen_cpu_per_query_s = 20e-6", "loadgen_idle_gap_s = 0",
         r"host_cpu\.loadgen_idle_gap_s: expected seconds > 0, got 0"),
        ("loadgen_cpu_per_query_s = 20e-6", "slice_s = -1e-3",
         r"host_cpu\.slice_s: expected seconds in \[0, 1\] \(0: processor sharing\), "
         r"got -0\.001"),
        ("loadgen_cpu_per_query_s = 20e-6", "tick_s = 0",
         r"host_cpu\.tick_s: expected seconds in \(0, 1\] \(the scheduler tick\), got 0"),
        ("loadgen_cpu_per_query_s = 20e-6", "steal_s = 1",
         r"host_cpu: unknown field\(s\) \['steal_s'\]"),
        ("cpu_per_item_s = 2e-6", "cpu_per_item_s = -2e-6",
         r"models\[0\]\.cpu_per_item_s: expected CPU seconds >= 0, got -2e-06"),
        ("loadgen_cpu_per_query_s = 20e-6", "slow_factor = 0.5",
         r"host_cpu\.slow_factor: expected a factor >= 1 \(1: one speed\), got 0\.5"),
        ("loadgen_cpu_per_query_s = 20e-6", "slow_share = 1",
         r"host_cpu\.slow_share: expected a share in \[0, 1\), got 1"),
        ("loadgen_cpu_per_query_s = 20e-6", "slow_dwell_s = 0",
         r"host_cpu\.slow_dwell_s: expected seconds > 0, got 0"),
        ("loadgen_cpu_per_query_s = 20e-6", "slow_dwells_s = [0.05, -1]\nfast_dwells_s = [1]",
         r"host_cpu\.slow_dwells_s: expected a list of seconds > 0, got \(0\.05, -1\)"),
        ("loadgen_cpu_per_query_s = 20e-6", "slow_dwells_s = [0.05]",
         r"host_cpu\.slow_dwells_s and fast_dwells_s: give both"),
        ("loadgen_cpu_per_query_s = 20e-6", "reference_factor = 0",
         r"host_cpu\.reference_factor: expected a mean factor > 0, got 0"),
        ("loadgen_cpu_per_query_s = 20e-6", "speed_trace = [[0.0, 1.0], [0.0, 2.0]]",
         r"host_cpu\.speed_trace: expected \[at_s, factor\] pairs or .* times >= 0 increasing"),
        ("loadgen_cpu_per_query_s = 20e-6", "speed_trace = [[0.0, 1.0, 1.8], [0.5, 1.0]]",
         r"host_cpu\.speed_trace: expected .* rows of one length"),
        ("loadgen_cpu_per_query_s = 20e-6", "core_speeds = 1",
         r"host_cpu\.core_speeds: expected true or false, got 1"),
        ("loadgen_cpu_per_query_s = 20e-6", "speed_trace = [[0.0, 0.0]]",
         r"host_cpu\.speed_trace: expected .* factors > 0, got \(\(0\.0, 0\.0\),\)"),
    ],
)
def test_config_errors_name_the_field(tmp_path: Path, old: str, new: str, message: str) -> None:
    """A bad ``[host_cpu]`` or CPU field names the file, the field and the rule."""
    assert old in CONFIG
    f = tmp_path / "c.toml"
    f.write_text(CONFIG.replace(old, new))
    with pytest.raises(SimConfigError, match=message) as e:
        load_config(f)
    assert str(f) in str(e.value)


# --------------------------------------------------------------------------- default off

def _digest(dep: Deployment) -> str:
    res = Simulation(dep, Workload(Poisson(3000.0), n_queries=3000), seed=5).run()
    q, b = res.queries, res.batches
    h = hashlib.sha256()
    for a in (q["reply_at"].to_numpy(), q["default"].to_numpy(), b["done_at"].to_numpy(),
              b["size"].to_numpy()):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def test_without_host_cpu_runs_are_bit_identical_to_before() -> None:
    """Without ``host_cpu`` a seeded run is bit for bit what it was before the model was
    added (digests recorded then; with and without the frontend's eager loop).  If the
    engine's decisions change on purpose, record the new digests (the second changed
    when the loop's timers came to fire as uvloop's do: up to a millisecond early on a
    loop awake for another event)."""
    base = Deployment.single("prototype-linear-svm", batching=BatchingConfig(policy="aimd"),
                             slo_s=0.02, replicas=2,
                             faults=[Crash("m#1", at_s=0.3, restart_after_s=0.2)])
    fc = dataclasses.replace(base, frontend_cpu=FrontendCPU(
        query_s=20e-6, reply_s=10e-6, batch_send_s=30e-6, batch_done_s=30e-6, item_s=1e-6,
        wake_s=5e-6, pause_rate_hz=50, pauses_s=(1e-3, 3e-3), timer_resolution_s=1e-3))
    assert base.host_cpu is None
    assert (_digest(base), _digest(fc)) == ("25b84e7ddf1583aa", "f148c5f9442bf48a")


# --------------------------------------------------------------------------- two speeds

def _speed_jobs(sliced: bool, jobs: list[tuple[str, float]],
                changes: list[tuple[float, float]]) -> dict[str, float]:
    """Jobs ``(process, demand)`` submitted at 0 on one core; the host's factor set to
    ``f`` at each ``(t, f)``; each job's finish time."""
    env = simpy.Environment()
    host: HostCpuState | SlicedHostCpuState = (
        SlicedHostCpuState(env, "h", 1, 1e-3) if sliced else HostCpuState(env, "h", 1))
    out: dict[str, float] = {}
    for name, d in jobs:
        host.submit(host.proc(name), d, 0.0, lambda t, name=name: out.__setitem__(name, t))

    def speed() -> object:
        for t, f in changes:
            yield env.timeout(t - env.now)
            host.set_factor(f, env.now)

    env.process(speed())
    env.run()
    return out


@pytest.mark.parametrize("sliced", [False, True])
def test_a_change_of_speed_applies_to_what_is_left(sliced: bool) -> None:
    """A 1 s job slowed to half speed at 0.5 s ends at 0.5 + 0.5 x 2 = 1.5 s; sped up to
    twice the speed at 0.5 s, at 0.75 s.  Two 1 s jobs sharing one core at half speed
    from the start end together at 4 s (processor sharing) or, in 1 ms slices, within a
    tick (4 ms: without other scheduling points they take turns at the ticks) of each
    other around 4 s."""
    assert _speed_jobs(sliced, [("a", 1.0)], [(0.5, 2.0)]) == {"a": pytest.approx(1.5)}
    assert _speed_jobs(sliced, [("a", 1.0)], [(0.5, 0.5)]) == {"a": pytest.approx(0.75)}
    two = _speed_jobs(sliced, [("a", 1.0), ("b", 1.0)], [(0.0, 2.0)])
    assert max(two.values()) == pytest.approx(4.0)
    assert min(two.values()) == pytest.approx(4.0, abs=4e-3 + 1e-9 if sliced else 1e-9)


@pytest.mark.parametrize("sliced", [False, True])
def test_work_a_handler_makes_runs_before_the_next_event(sliced: bool) -> None:
    """A job's done callback queues more work (``submit_next``: the replies and batch
    sends of the event it handled): it runs before the next event already waiting, in
    time slices too (there the process keeps its core through the callback; the work
    used to go behind the next event)."""
    env = simpy.Environment()
    host: HostCpuState | SlicedHostCpuState = (
        SlicedHostCpuState(env, "h", 1, 1e-3) if sliced else HostCpuState(env, "h", 1))
    p = host.proc("loop")
    order: list[tuple[str, float]] = []

    def handled(t: float) -> None:
        order.append(("event 1", t))
        host.submit_next(p, [(1e-3, lambda t: order.append(("its reply", t)))], t)

    host.submit(p, 1e-3, 0.0, handled)
    host.submit(p, 1e-3, 0.0, lambda t: order.append(("event 2", t)))
    env.run()
    assert [n for n, _ in order] == ["event 1", "its reply", "event 2"]
    assert [t for _, t in order] == pytest.approx([1e-3, 2e-3, 3e-3])


def test_each_core_runs_at_its_own_speed() -> None:
    """Core 1 twice as slow: on two cores in slices, the process holding core 0 finishes
    its 1 ms job at 1 ms and the one on core 1 at 2 ms; a process woken again goes back
    to the core it last ran on when that is free (b, again on core 1: 2 ms more); a
    core slowed in the middle of a job slows what is left of it (c on core 0 from 10 ms,
    at half speed from 10.5 ms: done at 11.5 ms).  Processor sharing, which has no
    cores, runs at the cores' total speed: 2 / (1 + 1/2) = 4/3 slower for a lone job."""
    env = simpy.Environment()
    host = SlicedHostCpuState(env, "h", 2, 1e-3)
    host.set_core_factor(1, 2.0, 0.0)
    assert host.factor == pytest.approx(4 / 3)
    out: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    a, b, c = (host.proc(n) for n in "abc")
    host.submit(a, 1e-3, 0.0, out["a"].append)
    host.submit(b, 1e-3, 0.0, out["b"].append)

    def later() -> object:
        yield env.timeout(5e-3)
        host.submit(b, 1e-3, env.now, out["b"].append)
        yield env.timeout(5e-3)
        host.set_core_factor(1, 1.0, env.now)
        host.submit(c, 1e-3, env.now, out["c"].append)
        yield env.timeout(0.5e-3)
        host.set_core_factor(0, 2.0, env.now)

    env.process(later())
    env.run()
    assert out == {"a": [pytest.approx(1e-3)], "b": [pytest.approx(2e-3), pytest.approx(7e-3)],
                   "c": [pytest.approx(11.5e-3)]}
    ps = HostCpuState(simpy.Environment(), "h", 2)
    ps.set_core_factor(1, 2.0, 0.0)
    assert ps.factor == pytest.approx(4 / 3)


def test_a_speed_trace_per_core_sets_each_core(tmp_path: Path) -> None:
    """A trace with a factor per core (TOML rows ``[at_s, core 0, core 1]``): the lone
    2 ms CPU-bound batch runs on core 0, so core 1's slowing moves nothing and core 0's
    doubles it; a row's factor counts as its cores' total speed in the mean; a host
    with another number of cores is an error that says so."""
    f = tmp_path / "c.toml"
    f.write_text(CONFIG.replace("loadgen_cpu_per_query_s = 20e-6",
                                "speed_trace = [[0, 1.0, 1.0], [1.0, 1.0, 3.0], "
                                "[2.0, 2.0, 1.0]]"))
    hc = load_config(f).deployment.host_cpu
    assert hc is not None and hc.speed_trace[1] == (1.0, 1.0, 3.0)
    assert hc.mean_factor == pytest.approx((1.0 + 1.5) / 2)
    trace = ((0.0, 1.0, 1.0), (1.0, 1.0, 3.0), (2.0, 2.0, 1.0))
    prof = LatencyProfile(name="c", batch_sizes=(1,), levels=(0.0, 1.0),
                          latency_s=((2e-3, 2e-3),))
    dep = one_replica(2, prof, speed_trace=trace, reference_factor=1.0, slice_s=1e-3)
    q = Simulation(dep, Workload(Poisson(50.0), n_queries=150), seed=3).run().queries
    early = q[q["arrival_at"] < 1.99]["latency_s"]
    late = q[q["arrival_at"] > 2.0]["latency_s"]
    assert early.median() == pytest.approx(2e-3) and late.median() == pytest.approx(4e-3)
    with pytest.raises(SimConfigError, match=r"2 factors per row, but host .* has 4 cores"):
        Simulation(one_replica(4, prof, speed_trace=trace, slice_s=1e-3),
                   Workload(Poisson(50.0), n_queries=10), seed=3).run()


def test_with_core_speeds_each_core_switches_on_its_own() -> None:
    """``core_speeds``: each core of the host gets its own switching (its own draws),
    every core alternating between the two speeds, the cores' switch times apart; the
    mean and the tail keep their meaning (a lone busy process is slowed only when its
    core is)."""
    from clipperlab.simulator._hostcpu import _HostCpuDriver

    class Host:
        cores = 2
        name = "h"

        def __init__(self) -> None:
            self.calls: dict[int, list[tuple[float, float]]] = {0: [], 1: []}

        def set_core_factor(self, core: int, factor: float, now: float) -> None:
            self.calls[core].append((now, factor))

        def set_factor(self, factor: float, now: float) -> None:
            raise AssertionError("the host's speed set as one")

    hc = HostCPU(cpus=2, slow_factor=2.0, slow_share=0.5, slow_dwell_s=0.05, core_speeds=True)
    host = Host()
    fake = type("Fake", (), {"env": simpy.Environment(), "_cpus": {"h": host},
                             "arrival_at": np.array([0.0, 5.0]), "seed": 1,
                             "_speed_proc": _HostCpuDriver._speed_proc})()
    _HostCpuDriver._speed_procs(fake, hc)  # type: ignore[arg-type]
    fake.env.run()
    for core in (0, 1):
        fs = np.array([f for _, f in host.calls[core]])
        assert set(np.round(fs, 9)) == {round(1 / 1.5, 9), round(2 / 1.5, 9)}
        assert (fs[1:] != fs[:-1]).all()
    assert {t for t, _ in host.calls[0][1:]}.isdisjoint(t for t, _ in host.calls[1][1:])
    both = _swings(0.3, slow_factor=2.0, slow_share=0.5, slow_dwell_s=0.05, core_speeds=True)
    assert both["reply_at"].notna().all()
    assert both["latency_s"].mean() > 2e-3


def _swings(load: float, **speed: object) -> pd.DataFrame:
    """One CPU-bound replica (2 ms batches of one) at ``load`` of its capacity, the host
    switching speeds as ``speed`` says."""
    prof = LatencyProfile(name="c", batch_sizes=(1,), levels=(0.0, 1.0),
                          latency_s=((2e-3, 2e-3),))
    dep = one_replica(1, prof, **speed)
    return Simulation(dep, Workload(Poisson(load / 2e-3), n_queries=40_000), seed=3).run(
        ).queries


def test_speed_swings_keep_the_mean_and_lengthen_the_tail() -> None:
    """A host slow (2x) a third of the time in 50 ms periods: at 5% load a query's mean
    latency stays the one speed's 2 ms (the demands are time-averaged; arrivals see time
    averages), while at 70% load the slow periods, each one an overload, stretch the
    p99 to more than twice the one speed's; every query is answered either way, the
    draws repeat with the seed, and ``slow_factor = 1`` is the one speed bit for bit."""
    swing = {"slow_factor": 2.0, "slow_share": 1 / 3, "slow_dwell_s": 0.05}
    calm_low = _swings(0.05)
    low = _swings(0.05, **swing)
    assert low["latency_s"].mean() == pytest.approx(calm_low["latency_s"].mean(), rel=0.05)
    calm, swung = _swings(0.7), _swings(0.7, **swing)
    assert swung["reply_at"].notna().all() and calm["reply_at"].notna().all()
    assert swung["latency_s"].quantile(0.99) > 2 * calm["latency_s"].quantile(0.99)
    assert _swings(0.7, **swing)["reply_at"].equals(swung["reply_at"])
    off = _swings(0.7, slow_factor=1.0, slow_share=0.5)
    assert off["reply_at"].equals(calm["reply_at"])


def test_measured_periods_are_drawn_as_measured(tmp_path: Path) -> None:
    """With ``slow_dwells_s`` / ``fast_dwells_s`` (read from TOML lists) each period is
    one of the measured ones, speeds alternate, and the factors are 1/mean and
    slow_factor/mean for the share the periods imply (here 0.2 s slow of every 0.6 s:
    a third)."""
    from clipperlab.simulator._hostcpu import _HostCpuDriver

    f = tmp_path / "c.toml"
    f.write_text(CONFIG.replace("loadgen_cpu_per_query_s = 20e-6",
                                "slow_factor = 2.0\nslow_dwells_s = [0.1, 0.3]\n"
                                "fast_dwells_s = [0.4]"))
    hc = load_config(f).deployment.host_cpu
    assert hc is not None and hc.slow_dwells_s == (0.1, 0.3) and hc.speed_swings
    assert hc.share == pytest.approx(1 / 3) and hc.mean_factor == pytest.approx(4 / 3)

    class Host:
        def __init__(self) -> None:
            self.calls: list[tuple[float, float]] = []

        def set_factor(self, factor: float, now: float) -> None:
            self.calls.append((now, factor))

    fake = type("Fake", (), {"env": simpy.Environment()})()
    host = Host()
    fake.env.process(_HostCpuDriver._speed_proc(  # type: ignore[arg-type]
        fake, host, hc, np.random.default_rng(1), 30.0, host.set_factor))  # type: ignore[arg-type]
    fake.env.run()
    times = np.array([t for t, _ in host.calls])
    factors = np.array([f for _, f in host.calls])
    assert set(np.round(factors, 9)) == {round(0.75, 9), round(1.5, 9)}
    assert (factors[1:] != factors[:-1]).all()  # the speeds alternate
    lengths = np.diff(times)
    slow_lengths = lengths[factors[:-1] > 1.0]
    assert set(np.round(slow_lengths, 9)) == {0.1, 0.3}
    assert set(np.round(lengths[factors[:-1] < 1.0], 9)) == {0.4}


def test_a_reference_factor_scales_the_demands() -> None:
    """Demands fitted at a mean factor of 2 (``reference_factor``) run at one speed twice
    as fast: a lone 2 ms CPU-bound batch takes 1 ms; with the host's own speeds the
    default reference is its own mean factor, so nothing moves at one speed."""
    one = _swings(0.01)
    half = _swings(0.01, reference_factor=2.0)
    assert half["latency_s"].median() == pytest.approx(0.5 * one["latency_s"].median())
    assert _swings(0.01, reference_factor=1.0)["reply_at"].equals(one["reply_at"])


def test_a_speed_trace_is_replayed_as_recorded(tmp_path: Path) -> None:
    """``speed_trace`` (read from TOML pairs) sets the host's speed at the recorded times:
    a lone 2 ms CPU-bound batch takes 2 ms before 1 s and 4 ms after, where the trace says
    twice as slow (``reference_factor`` 1: the demands were measured at the fast speed);
    without a reference the factors are divided by the trace's time-weighted mean (here
    1.5 over 0-2 s), so the same batch takes 2/1.5 and 4/1.5 ms; a short slow stretch
    changes a Poisson run's latencies and loses no query."""
    f = tmp_path / "c.toml"
    f.write_text(CONFIG.replace("loadgen_cpu_per_query_s = 20e-6",
                                "speed_trace = [[0, 1.0], [1.0, 2.0], [2.0, 2.0]]"))
    hc = load_config(f).deployment.host_cpu
    assert hc is not None and hc.speed_trace == ((0, 1.0), (1.0, 2.0), (2.0, 2.0))
    assert hc.mean_factor == pytest.approx(1.5)
    one = _swings(0.01, speed_trace=((0.0, 1.0), (1.0, 2.0)), reference_factor=1.0)
    before = one[one["arrival_at"] < 0.99]["latency_s"]
    after = one[one["arrival_at"] > 1.0]["latency_s"]
    assert before.median() == pytest.approx(2e-3) and after.median() == pytest.approx(4e-3)
    own = _swings(0.01, speed_trace=((0.0, 1.0), (1.0, 2.0), (2.0, 2.0)))
    assert own[own["arrival_at"] < 0.99]["latency_s"].median() == pytest.approx(2e-3 / 1.5)
    assert own[own["arrival_at"] > 1.0]["latency_s"].median() == pytest.approx(4e-3 / 1.5)
    prof = LatencyProfile(name="c", batch_sizes=(1,), levels=(0.0, 1.0),
                          latency_s=((2e-3, 2e-3),))
    dep = one_replica(1, prof, speed_trace=((0.0, 1.0), (0.5, 1.8), (0.7, 1.0)))
    wl = Workload(Poisson(300.0), n_queries=600)
    a = Simulation(dep, wl, seed=3).run().queries
    c = Simulation(one_replica(1, prof), wl, seed=3).run().queries["latency_s"].to_numpy()
    assert a["reply_at"].notna().all() and not np.array_equal(a["latency_s"].to_numpy(), c)


# --------------------------------------------------------------------------- parse turns

def _backlogged(turn_s: float) -> pd.DataFrame:
    """Twice what the loop can parse (100 us a query, 20K q/s for 0.1 s) at one replica
    of a 1 ms model taking whatever is queued (up to 1,000): the batches."""
    prof = LatencyProfile(name="c", batch_sizes=(1, 1000), levels=(0.0, 1.0),
                          latency_s=((1e-3, 1e-3), (1e-3, 1e-3)))
    dep = Deployment.single(prof, batching=BatchingConfig(policy="fixed", max_batch_size=1000),
                            slo_s=100.0, link=FAST)
    dep = dataclasses.replace(dep, host_cpu=HostCPU(cpus=2), frontend_cpu=FrontendCPU(
        query_s=100e-6, batch_done_s=50e-6, parse_turn_s=turn_s))
    res = Simulation(dep, Workload(Poisson(20_000.0), n_queries=2000), seed=1).run()
    assert res.queries["reply_at"].notna().all()  # every query answered either way
    assert not res.queries["default"].any()
    return res.batches


def test_parse_turns_let_a_batch_result_pass_the_backlog() -> None:
    """One FIFO: a batch result waits behind every arrival queued before it, and the next
    batch takes them all (hundreds).  In turns of 0.5 ms (the real server's fair
    scheduler): it waits for the turn, and each batch holds what was parsed during one
    round trip (1 ms + a turn, at 100 us a parse: about 15)."""
    fifo = _backlogged(0.0)["size"]
    turns = _backlogged(0.5e-3)["size"]
    assert fifo.max() > 200
    assert turns.max() <= 25
    assert len(turns) > 5 * len(fifo)
    assert fifo.sum() == turns.sum() == 2000


def test_parse_turns_need_the_host_cpu_model() -> None:
    """Without ``host_cpu`` batch results and timers always go first: turns there are
    refused, not ignored."""
    prof = LatencyProfile(name="c", batch_sizes=(1,), levels=(0.0, 1.0),
                          latency_s=((1e-3, 1e-3),))
    dep = Deployment.single(prof, link=FAST)
    with pytest.raises(SimConfigError, match=r"frontend_cpu\.parse_turn_s: .* needs host_cpu"):
        dataclasses.replace(dep, frontend_cpu=FrontendCPU(query_s=1e-5, parse_turn_s=5e-4))


def test_config_reads_parse_turns(tmp_path: Path) -> None:
    """``[frontend_cpu]``'s ``parse_turn_s`` is read, and a negative one names the field."""
    f = tmp_path / "c.toml"
    f.write_text(CONFIG.replace("query_s = 10e-6", "query_s = 10e-6\nparse_turn_s = 5e-4"))
    fc = load_config(f).deployment.frontend_cpu
    assert fc is not None and fc.parse_turn_s == 5e-4
    f.write_text(CONFIG.replace("query_s = 10e-6", "query_s = 10e-6\nparse_turn_s = -1"))
    with pytest.raises(SimConfigError, match=r"frontend_cpu\.parse_turn_s: expected seconds "
                                             r">= 0, got -1"):
        load_config(f)


def test_stalls_stop_a_core_for_their_length() -> None:
    """``stalls_s``: a core stalls at the measured rate (count over ``stalls_span_s``) for
    one of the measured lengths at a time, and the process holding it makes no progress
    meanwhile.  A lone 2 ms CPU-bound replica at 5% load on one core with 10 ms stalls 5
    times a second: about 5% of its queries overlap a stall and take over 5 ms (without
    stalls almost none do, two queued ahead being rare at 5% load); every query is still
    answered, the draws repeat with the seed, and bad stalls are errors that say so."""
    stalls = {"stalls_s": ((0.01,) * 50,), "stalls_span_s": 10.0}
    calm, stalled = _swings(0.05), _swings(0.05, **stalls)
    assert stalled["reply_at"].notna().all()
    assert (calm["latency_s"] > 5e-3).mean() < 0.01
    share = float((stalled["latency_s"] > 5e-3).mean())
    assert 0.02 < share < 0.09
    assert 10e-3 < stalled["latency_s"].max() < 35e-3  # a stall or two back to back
    pd.testing.assert_frame_equal(stalled, _swings(0.05, **stalls))
    for bad, match in (({"stalls_s": ((-0.01,),), "stalls_span_s": 1.0}, "stalls_s"),
                       ({"stalls_s": ((0.01,),)}, "stalls_span_s")):
        with pytest.raises(SimConfigError, match=match):
            HostCPU(cpus=1, **bad)  # type: ignore[arg-type]
