"""The SimPy driver: conservation, one batch per replica, network, determinism, and the
same decision log as a hand-driven fake driver."""

from __future__ import annotations

import heapq

import numpy as np
import pytest

from clipperlab.engine import (
    Application,
    BatchDone,
    BatchingConfig,
    Engine,
    FeedbackApplied,
    ModelSpec,
    Query,
    ReplicaId,
    Reply,
    SendBatch,
)
from clipperlab.engine.driver import Driver
from clipperlab.simulator import (
    AppDeployment,
    Deployment,
    Host,
    LatencyProfile,
    Link,
    ModelDeployment,
    SimConfigError,
    SimResult,
    Simulation,
    load_profile,
)
from clipperlab.workloads import ConstantRate, DigitsInputs, Poisson, SyntheticTensors, Workload


def small(n: int = 3000, qps: float = 5000, **kw) -> SimResult:  # type: ignore[no-untyped-def]
    dep = Deployment.single("prototype-linear-svm", **kw)
    return Simulation(dep, Workload(Poisson(qps), n_queries=n), seed=3,
                      decision_log=True).run()


def test_every_query_answered_once() -> None:
    """Conservation: one reply per query, none before its arrival, defaults flagged."""
    res = small()
    q = res.queries
    assert len(q) == 3000 and q["reply_at"].notna().all()
    assert (q["reply_at"] >= q["arrival_at"]).all()
    replies = [e for e in res.log or [] if e[0] == "reply"]
    assert sorted(e[2] for e in replies) == list(range(3000))
    assert np.allclose(q["latency_s"], q["reply_at"] - q["arrival_at"])
    late = q[~q["default"]]
    assert (late["latency_s"] <= 0.020 + 1e-12).all()


def test_one_batch_in_flight_per_replica() -> None:
    """Per replica, a batch is sent only after the previous one finished."""
    res = small(n=5000, qps=30_000, replicas=3)
    for _, g in res.batches.groupby("replica"):
        g = g.sort_values("sent_at")
        assert (g["sent_at"].to_numpy()[1:] >= g["done_at"].to_numpy()[:-1] - 1e-12).all()
    assert set(res.batches["replica"]) == {0, 1, 2}


def test_results_and_summary_agree() -> None:
    """Summary figures come from the raw records."""
    res = small()
    s = res.summary()
    q = res.queries
    assert s["queries"] == 3000
    assert s["p99_ms"] == pytest.approx(np.percentile(q["latency_s"], 99) * 1e3)
    assert s["mean_batch_size"] == pytest.approx(res.batches["size"].mean())
    assert res.batches["size"].sum() >= (~q["default"]).sum()
    assert res.metrics.total("clipperlab_replies_total") == 3000


def test_same_seed_same_run() -> None:
    """Seeded: the same seed gives the same decision log; another seed another one."""
    a, b, c = (Simulation(Deployment.single("prototype-random-forest"),
                          Workload(Poisson(3000), n_queries=2000), seed=s,
                          decision_log=True).run() for s in (1, 1, 2))
    assert a.log == b.log and a.log != c.log


def test_network_bandwidth_matters() -> None:
    """6,272-byte inputs in batches of 512: 1 Gbps caps throughput near 20K qps, 10 Gbps
    does not (the paper's figure 5 setting)."""
    gpu = load_profile("synthetic-convnet-gpu")
    out = {}
    for bw in (1e9, 10e9):
        dep = Deployment(
            apps=(AppDeployment(Application(name="a", slo_s=10.0, default_output=-1), ("m",)),),
            models=(ModelDeployment(
                spec=ModelSpec(name="m", batching=BatchingConfig(policy="fixed",
                                                                 max_batch_size=512)),
                profile=gpu, replicas=4),),
            hosts=tuple(Host(f"g{i}", cpus=0, gpus=1, link=Link(10e9)) for i in range(4)),
            frontend_link=Link(bw, 50e-6),
        )
        wl = Workload(ConstantRate(150_000), n_queries=60_000,
                      inputs=SyntheticTensors((784,), "float64", pool=16), app="a")
        out[bw] = Simulation(dep, wl, seed=0).run().summary()["throughput_qps"]
    assert out[1e9] == pytest.approx(1e9 / 8 / 6272, rel=0.1)
    assert out[10e9] > 3 * out[1e9]


def test_transfer_time_in_batches() -> None:
    """A batch's inputs reach the replica after bytes*8/bandwidth plus the link latency."""
    dep = Deployment.single(LatencyProfile.from_line("flat", 0.0, 0.001),
                            batching=BatchingConfig(policy="none"),
                            link=Link(bandwidth_bps=1e6, latency_s=0.002))
    wl = Workload(ConstantRate(10), n_queries=5, inputs=SyntheticTensors((100,), "float64"))
    b = Simulation(dep, wl, seed=0).run().batches
    assert np.allclose(b["start_at"] - b["sent_at"], 800 * 8 / 1e6 + 0.002)


def test_multiple_workloads_and_apps() -> None:
    """Two applications with their own workloads share a run; queries keep their app."""
    p = load_profile("prototype-noop")
    dep = Deployment(
        apps=(AppDeployment(Application(name="a", default_output=-1), ("m1",)),
              AppDeployment(Application(name="b", slo_s=0.05, default_output=-1), ("m2",))),
        models=(ModelDeployment(spec=ModelSpec(name="m1"), profile=p),
                ModelDeployment(spec=ModelSpec(name="m2"), profile=p)),
    )
    res = Simulation(dep, [Workload(Poisson(1000), n_queries=500, app="a"),
                           Workload(Poisson(2000), n_queries=700, app="b")], seed=0).run()
    q = res.queries
    assert (q["app"] == "a").sum() == 500 and (q["app"] == "b").sum() == 700
    assert (np.diff(q["arrival_at"]) >= 0).all()
    assert set(res.summary_table()["app"]) == {"a", "b", "all"}


def test_record_members_for_ensembles() -> None:
    """With record_members, each (query, member) has the time its batch finished."""
    p = load_profile("prototype-random-forest")
    names = ("r0", "r1", "r2")
    dep = Deployment(
        apps=(AppDeployment(Application(name="e", policy="exp4", default_output=-1), names),),
        models=tuple(ModelDeployment(spec=ModelSpec(
            name=n, batching=BatchingConfig(wait_timeout_s=0.004)), profile=p) for n in names),
    )
    res = Simulation(dep, Workload(Poisson(2000), n_queries=1000, app="e"), seed=0,
                     record_members=True).run()
    m = res.members
    assert m is not None and set(m["model"]) == set(names)
    assert len(m) <= 3000 and m.groupby("query_id").size().max() <= 3
    assert res.summary()["missing_share"] >= 0


# --------------------------------------------------------------------------- fake driver


class HandLoop(Driver):
    """The engine's driver base run by hand: a batch finishes at the time ``done_at`` gives
    for its id; replies are only counted; the timer is the base's slot, read by the loop."""

    def __init__(self, engine: Engine, done_at: dict[int, float]) -> None:
        super().__init__(engine)
        self.done_at = done_at
        self.inflight: list[tuple[float, int, SendBatch]] = []
        self.replies = 0

    def send_batch(self, batch: SendBatch, now: float) -> None:
        heapq.heappush(self.inflight, (self.done_at[batch.batch_id], batch.batch_id, batch))

    def reply(self, reply: Reply, now: float) -> None:
        self.replies += 1

    def feedback_applied(self, applied: FeedbackApplied, now: float) -> None:
        raise AssertionError(f"no feedback in these traces: {applied}")

    def arm_timer(self, at: float) -> None:
        pass  # the loop reads timer_at

    def cancel_timer(self) -> None:
        pass


def fake_driver_log(dep: Deployment, res: SimResult, seed: int) -> list[tuple]:  # type: ignore[type-arg]
    """Replay the simulator's arrivals and batch completion times through the engine by
    hand (a batch finishes when the simulator's did: same sends, same latencies).

    Order at one instant: batch completions, then timers, then arrivals (the driver's rule).
    Outputs: every model answers the label (AccuracyOutputs(1.0)).
    """
    eng = Engine(rng=np.random.default_rng([seed, 101]), decision_log=True)
    for m in dep.models:
        eng.add_model(m.spec, now=0.0)
    for a in dep.apps:
        eng.add_application(a.app, now=0.0)
        eng.link(a.app.name, list(a.models), now=0.0)
    q = res.queries
    arrivals = q["arrival_at"].tolist()
    labels = q["label"].tolist()
    app = dep.apps[0].app.name
    d = HandLoop(eng, {int(r.batch_id): float(r.done_at) for r in res.batches.itertuples()})
    for m in dep.models:
        for rid in m.replica_ids():
            d.on_replica_up(rid, 0.0)
    i, n = 0, len(arrivals)
    inflight = d.inflight
    while True:
        t_done = inflight[0][0] if inflight else np.inf
        t_timer = np.inf if d.timer_at is None else d.timer_at
        t_arr = arrivals[i] if i < n else np.inf
        if t_done == t_timer == t_arr == np.inf:
            break
        if t_done <= t_timer and t_done <= t_arr:
            at, _, sb = heapq.heappop(inflight)
            outs = [labels[k] for k in sb.inputs]
            d.on_batch_done(BatchDone(replica=sb.replica, batch_id=sb.batch_id, outputs=outs), at)
        elif t_timer <= t_arr:
            d.on_timer(t_timer)
        else:
            d.on_query(Query(i, app, i), t_arr)
            i += 1
    assert eng.log is not None
    return eng.log


@pytest.mark.parametrize("policy", ["aimd", "quantile", "none", "tfserving"])
def test_same_decision_log_as_a_fake_driver(policy: str) -> None:
    """A seeded trace through the simulator and through a hand-driven loop with the same
    latencies gives the same decision log (batches, replies, defaults, reasons)."""
    prof = load_profile("prototype-random-forest")
    bc = BatchingConfig(policy=policy, wait_timeout_s=0.002, fit_after_batches=50,
                        allowed_batch_sizes=(8, 16, 32) if policy == "tfserving" else ())
    dep = Deployment(
        apps=(AppDeployment(Application(name="d", slo_s=0.015, default_output=-1), ("rf",)),),
        models=(ModelDeployment(spec=ModelSpec(name="rf", batching=bc), profile=prof,
                                replicas=2),),
    )
    wl = Workload(Poisson(2500), n_queries=4000, inputs=DigitsInputs(), app="d")
    res = Simulation(dep, wl, seed=11, decision_log=True).run()
    assert res.log is not None and any(e[0] == "batch" for e in res.log)
    assert any(e[0] == "reply" and e[4] for e in res.log)  # some deadline defaults too
    assert fake_driver_log(dep, res, 11) == res.log


def test_replica_ids_in_batches() -> None:
    """Batches name the model, version and replica ordinal the engine chose."""
    res = small(replicas=2)
    logged = {(e[2], e[3]) for e in res.log or [] if e[0] == "batch"}
    table = {(str(ReplicaId("m", "1", int(r.replica))), int(r.batch_id))
             for r in res.batches.itertuples()}
    assert logged == table


# ------------------------------------------------------------------ the frontend's event loop


def _fe_run(fcpu, qps: float = 5000, n: int = 4000, policy: str = "aimd",  # type: ignore[no-untyped-def]
            profile: str = "prototype-noop") -> SimResult:
    import dataclasses

    dep = dataclasses.replace(
        Deployment.single(profile, batching=BatchingConfig(policy=policy)), frontend_cpu=fcpu)
    return Simulation(dep, Workload(Poisson(qps), n_queries=n), seed=5,
                      decision_log=True).run()


def test_free_event_loop_changes_nothing() -> None:
    """A frontend whose events cost nothing makes the same decisions as no frontend."""
    from clipperlab.simulator import FrontendCPU

    a = _fe_run(None)
    b = _fe_run(FrontendCPU())
    assert a.log == b.log
    assert np.allclose(a.queries["reply_at"], b.queries["reply_at"])


def test_event_loop_costs_delay_every_reply() -> None:
    """A lone query pays every cost on its path once (query, batch send, batch done,
    reply: 400 us here); under load the loop's queue adds more; batches still go one at a
    time per replica."""
    from clipperlab.simulator import FrontendCPU

    fc = FrontendCPU(query_s=200e-6, reply_s=100e-6, batch_send_s=50e-6, batch_done_s=50e-6)
    base = _fe_run(None, qps=20, n=300)
    slow = _fe_run(fc, qps=20, n=300)
    diff = slow.queries["latency_s"] - base.queries["latency_s"]
    assert abs(diff.median() - 400e-6) < 10e-6  # the same service draws, 400 us later
    busy = _fe_run(fc, qps=2000)
    ok = ~busy.queries["default"]
    assert (busy.queries["latency_s"][ok] >= 400e-6 - 1e-12).all()
    assert busy.queries["latency_s"].quantile(0.9) > slow.queries["latency_s"].quantile(0.9)
    b = busy.batches.sort_values("sent_at")
    assert (b["sent_at"].to_numpy()[1:] >= b["done_at"].to_numpy()[:-1]).all()


def test_event_loop_saturates_at_its_capacity() -> None:
    """Offered twice what the loop can take, the answered rate stays at the loop's
    capacity (FrontendCPU.capacity_qps) even though the model could do far more."""
    from clipperlab.simulator import FrontendCPU

    fc = FrontendCPU(query_s=60e-6, reply_s=40e-6)  # 10,000 q/s
    assert fc.capacity_qps() == pytest.approx(10_000)
    res = _fe_run(fc, qps=20_000, n=20_000, policy="aimd")
    q = res.queries
    good = q[~q["default"]]
    span = good["reply_at"].max() - good["reply_at"].min()
    assert len(good) / span == pytest.approx(10_000, rel=0.05)
    free = _fe_run(None, qps=20_000, n=20_000)
    assert (~free.queries["default"]).mean() > 0.99


def test_frontend_cpu_in_config(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``[frontend_cpu]`` in a config file; bad values are named."""
    from clipperlab.simulator import config_from_dict

    base = {"models": [{"name": "m", "profile": "prototype-noop"}],
            "apps": [{"name": "a", "models": ["m"]}],
            "workload": {"app": "a", "n_queries": 10, "arrivals": {"kind": "poisson",
                                                                    "qps": 100}}}
    cfg = config_from_dict({**base, "frontend_cpu": {"query_s": 3e-5, "reply_s": 1e-5}})
    assert cfg.deployment.frontend_cpu is not None
    assert cfg.deployment.frontend_cpu.query_s == 3e-5
    with pytest.raises(SimConfigError, match="frontend_cpu.*query_s"):
        config_from_dict({**base, "frontend_cpu": {"query_s": -1}})
    with pytest.raises(SimConfigError, match="unknown field.*bogus"):
        config_from_dict({**base, "frontend_cpu": {"bogus": 1}})


def test_wake_cost_when_the_loop_was_idle() -> None:
    """An event that finds the loop idle pays the wake-up cost: a lone query wakes the loop
    twice on its path (its request, its batch result), so it takes 2 x wake_s longer; the
    loop's busy time counts every cost, including wake-ups for the deadline timers."""
    from clipperlab.simulator import FrontendCPU

    warm = FrontendCPU(query_s=50e-6, reply_s=50e-6)
    cold = FrontendCPU(query_s=50e-6, reply_s=50e-6, wake_s=1e-3, cold_after_s=1e-9)

    def run(fc: FrontendCPU) -> tuple[SimResult, Simulation]:
        import dataclasses

        dep = dataclasses.replace(Deployment.single("prototype-noop"), frontend_cpu=fc)
        sim = Simulation(dep, Workload(ConstantRate(20), n_queries=200), seed=5)
        return sim.run(), sim

    (a, sa), (b, sb) = run(warm), run(cold)
    diff = b.queries["latency_s"] - a.queries["latency_s"]
    assert abs(diff.median() - 2e-3) < 10e-6
    assert sa.loop_busy_s == pytest.approx(200 * 100e-6)
    wakes = (sb.loop_busy_s - sa.loop_busy_s) / 1e-3
    assert wakes == pytest.approx(round(wakes)) and 400 <= round(wakes) <= 600


def test_pauses_hold_the_loop() -> None:
    """A query that arrives while the loop is paused is not answered before the pause
    ends; pauses come at about the configured rate; the same seed gives the same pauses."""
    import dataclasses

    from clipperlab.simulator import FrontendCPU

    fc = FrontendCPU(query_s=20e-6, reply_s=20e-6, pause_rate_hz=20.0, pauses_s=(3e-3, 6e-3))
    dep = dataclasses.replace(Deployment.single("prototype-noop"), frontend_cpu=fc)
    wl = Workload(Poisson(2000), n_queries=10_000)
    sim = Simulation(dep, wl, seed=1)
    q = sim.run().queries
    assert 60 <= len(sim.pauses) <= 140  # 20 Hz over ~5 s
    hit = 0
    for start, d in sim.pauses:
        inside = q[(q["arrival_at"] >= start) & (q["arrival_at"] < start + d)]
        hit += len(inside)
        assert (inside["reply_at"] >= start + d).all()
    assert hit > 0
    again = Simulation(dep, wl, seed=1)
    again.run()
    assert again.pauses == sim.pauses
    with pytest.raises(SimConfigError, match="pauses_s"):
        FrontendCPU(pause_rate_hz=1.0)


@pytest.mark.parametrize("event_loop", [False, True])
def test_unknown_instruction_raises(event_loop: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The simulator carries out instructions through the driver base: one of an unknown
    type stops the run with a TypeError naming it (with and without the event loop)."""
    import dataclasses

    from clipperlab.engine.core import Engine as CoreEngine
    from clipperlab.simulator import FrontendCPU

    @dataclasses.dataclass(frozen=True)
    class Bogus:
        what: str = "?"

    monkeypatch.setattr(CoreEngine, "on_query", lambda self, q, now: [Bogus()])
    dep = Deployment.single("prototype-noop")
    if event_loop:
        dep = dataclasses.replace(dep, frontend_cpu=FrontendCPU())
    sim = Simulation(dep, Workload(ConstantRate(10), n_queries=3), seed=0)
    with pytest.raises(TypeError, match="Simulation cannot carry out .*Bogus"):
        sim.run()
