"""The small-batch hot path (issue 14) takes the decisions the plain code takes: the
engine's inlined ``decide`` against ``BatchController.decide`` itself, and the per-batch
builders against the dataclasses' own constructors."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clipperlab.engine import (
    BatchDone,
    BatchingConfig,
    ReplicaId,
    SendBatch,
    batch_done_of,
    send_batch_of,
)
from clipperlab.engine.batching import (
    AIMDController,
    BatchController,
    Dispatch,
    FixedController,
    LatencyModel,
    NoBatchingController,
    QuantileController,
    QueueView,
    Wait,
)
from clipperlab.engine.registry import AIMD_STEPS
from clipperlab.simulator import Deployment, LatencyProfile, Link, Simulation
from clipperlab.workloads import ConstantRate, Poisson, SyntheticTensors, Workload


class _Deciding(BatchController):
    """Calls the base's ``decide`` through an override, so the engine cannot inline it."""

    def decide(self, now: float, queue: QueueView) -> Dispatch | Wait:
        return super().decide(now, queue)


class DecidingNone(_Deciding, NoBatchingController):
    pass


class DecidingFixed(_Deciding, FixedController):
    pass


class DecidingAIMD(_Deciding, AIMDController):
    pass


class DecidingQuantile(_Deciding, QuantileController):
    pass


OVERRIDDEN = {"none": DecidingNone, "fixed": DecidingFixed, "aimd": DecidingAIMD,
              "quantile": DecidingQuantile}


def _log(policy: str, wait_s: float, qps: float, replicas: int, seed: int,
         profile: LatencyProfile | str) -> list[tuple]:  # type: ignore[type-arg]
    bc = BatchingConfig(policy=policy, wait_timeout_s=wait_s, max_batch_size=16,
                        fit_after_batches=20)
    dep = Deployment.single(profile, batching=bc, slo_s=0.010, replicas=replicas)
    res = Simulation(dep, Workload(Poisson(qps), n_queries=600), seed=seed,
                     decision_log=True).run()
    assert res.log is not None
    return res.log


@settings(max_examples=10, deadline=None)
@given(
    policy=st.sampled_from(sorted(OVERRIDDEN)),
    wait_ms=st.sampled_from([0.0, 1.0]),
    qps=st.sampled_from([300.0, 5000.0, 30000.0]),
    replicas=st.integers(1, 2),
    seed=st.integers(0, 100),
)
def test_inlined_decide_takes_the_base_decisions(policy: str, wait_ms: float, qps: float,
                                                 replicas: int, seed: int) -> None:
    """Batches, reasons and replies are the same whether the engine inlines the base
    ``decide`` (a built-in controller) or calls it (the same controller overriding it)."""
    prof = "prototype-logistic-regression"
    cls = OVERRIDDEN[policy]
    assert cls.decide is not BatchController.decide
    fast = _log(policy, wait_ms / 1e3, qps, replicas, seed, prof)
    slow = _log(f"{__name__}:{cls.__name__}", wait_ms / 1e3, qps, replicas, seed, prof)
    assert fast == slow
    assert any(e[0] == "batch" for e in fast)


RID = ReplicaId("m", "1", 3)


@given(batch_id=st.integers(0, 2**40), inputs=st.lists(st.integers(), max_size=5),
       reason=st.sampled_from(["cap_reached", "replica_idle"]), padded=st.integers(0, 64))
def test_send_batch_of_is_the_dataclass(batch_id: int, inputs: list[int], reason: str,
                                        padded: int) -> None:
    fast = send_batch_of(RID, batch_id, tuple(inputs), reason, padded)
    ref = SendBatch(replica=RID, batch_id=batch_id, inputs=tuple(inputs), reason=reason,
                    padded_size=padded)
    assert type(fast) is SendBatch
    assert (fast, hash(fast), repr(fast)) == (ref, hash(ref), repr(ref))
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.batch_id = 0  # type: ignore[misc]


@given(batch_id=st.integers(0, 2**40), outputs=st.lists(st.integers(), max_size=5))
def test_batch_done_of_is_the_dataclass(batch_id: int, outputs: list[int]) -> None:
    fast = batch_done_of(RID, batch_id, outputs)
    ref = BatchDone(replica=RID, batch_id=batch_id, outputs=outputs)
    assert type(fast) is BatchDone
    assert (fast, repr(fast)) == (ref, repr(ref))
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.outputs = []  # type: ignore[misc]


class StepAIMD(AIMDController):
    """AIMD through its own ``aimd_step`` (so ``observe`` cannot inline it)."""

    def aimd_step(self, cap: int, size: int, latency_s: float) -> int:
        return super().aimd_step(cap, size, latency_s)


class _Counting(BatchController):
    """A mixin between AIMD and the base that sees every observation."""

    def observe(self, size: int, latency_s: float, now: float) -> None:
        self.seen = getattr(self, "seen", 0) + 1
        super().observe(size, latency_s, now)


class CountingAIMD(AIMDController, _Counting):
    pass


@settings(max_examples=60, deadline=None)
@given(
    step_from=st.sampled_from(AIMD_STEPS),
    inc=st.integers(1, 4),
    backoff=st.sampled_from([0.5, 0.9]),
    band=st.sampled_from([0.0, 0.1, 0.3]),
    top=st.integers(1, 40),
    obs=st.lists(st.tuples(st.integers(1, 40), st.floats(0.0, 0.05)), max_size=40),
)
def test_inlined_aimd_observe_is_the_plain_one(step_from: str, inc: int, backoff: float,
                                               band: float, top: int,
                                               obs: list[tuple[int, float]]) -> None:
    """AIMD's ``observe`` with the base's observe and ``aimd_step`` inlined gives the caps
    and latency line of the calls it stands for; a subclass that overrides ``aimd_step``
    or a mixin that overrides ``observe`` is still called."""
    cfg = BatchingConfig(policy="aimd", aimd_step_from=step_from, additive_increase=inc,
                         backoff=backoff, hold_band=band, max_batch_size=top)
    fast, slow, mixed = (AIMDController(cfg, 0.02), StepAIMD(cfg, 0.02),
                         CountingAIMD(cfg, 0.02))
    assert (fast._flat, slow._flat, mixed._flat) == (True, False, False)
    for k, (size, lat) in enumerate(obs):
        for c in (fast, slow, mixed):
            c.observe(size, lat, float(k))
        assert fast.cap == slow.cap == mixed.cap
        assert fast.latency.coefficients() == slow.latency.coefficients()
    assert fast.batches == slow.batches == mixed.batches == len(obs)
    assert getattr(mixed, "seen", 0) == len(obs)


def _run(own: bool, wl: Workload, bc: BatchingConfig, profile: LatencyProfile | str,
         until_s: float | None, seed: int) -> tuple[Simulation, object]:
    dep = Deployment.single(profile, batching=bc, slo_s=0.010)
    sim = Simulation(dep, wl, seed=seed, decision_log=True)
    sim.own_events = own
    return sim, sim.run(until_s)


@settings(max_examples=16, deadline=None)
@given(
    qps=st.sampled_from([300.0, 900.0, 5000.0, 30000.0]),
    constant=st.booleans(),
    policy=st.sampled_from(["aimd", "none", "fixed"]),
    wait_ms=st.sampled_from([0.0, 1.0]),
    until_s=st.sampled_from([None, 0.2]),
    seed=st.integers(0, 50),
)
def test_own_event_heap_runs_as_simpy(qps: float, constant: bool, policy: str,
                                      wait_ms: float, until_s: float | None,
                                      seed: int) -> None:
    """A run on the driver's own heap of events (no faults, one frontend, plain arrivals)
    gives the queries, batches, decision log and final clock of the same run on SimPy's
    event queue, bit for bit (batch completions and timers at the same instant included)."""
    # constant arrivals put deadlines (arrival + SLO) on later arrivals' instants: ties
    wl = Workload(ConstantRate(qps) if constant else Poisson(qps), n_queries=400)
    bc = BatchingConfig(policy=policy, wait_timeout_s=wait_ms / 1e3, max_batch_size=8)
    prof = LatencyProfile.from_line("one-ms", 1e-4, 1e-3, p99_over_mean=1.5)
    sim_f, fast = _run(True, wl, bc, prof, until_s, seed)
    sim_s, slow = _run(False, wl, bc, prof, until_s, seed)
    assert sim_f._events is not None and sim_s._events is None
    assert fast.log == slow.log  # type: ignore[attr-defined]
    assert fast.sim_s == slow.sim_s  # type: ignore[attr-defined]
    assert fast.queries.equals(slow.queries)  # type: ignore[attr-defined]
    assert fast.batches.equals(slow.batches)  # type: ignore[attr-defined]


@pytest.mark.parametrize("variant", ["plain", "frontend_link", "two_input_sizes", "wake"])
def test_own_heap_senders_run_as_simpy(variant: str) -> None:
    """Each sender of a run on the driver's own heap (the closure without a frontend link
    and with one input size, ``_send_own`` otherwise; a container's wake-up in both) gives
    the queries, batches and clock of ``send_batch`` on SimPy's queue, bit for bit."""
    prof = LatencyProfile.from_line("one-ms", 1e-4, 1e-3, p99_over_mean=1.5)
    bc = BatchingConfig(policy="aimd", max_batch_size=8)
    wl: list[Workload] = [Workload(Poisson(3000.0), n_queries=600)]
    if variant == "two_input_sizes":
        wl.append(Workload(Poisson(1000.0), n_queries=200,
                           inputs=SyntheticTensors(shape=(100,), pool=8)))
    dep = Deployment.single(prof, batching=bc, slo_s=0.010, replicas=2, frontend_link=(
        Link(bandwidth_bps=1e8, latency_s=20e-6) if variant == "frontend_link" else None))
    if variant == "wake":
        dep = dataclasses.replace(dep, models=(
            dataclasses.replace(dep.models[0], wake_s=3e-4, cold_after_s=2e-3),))
    runs, sims = [], []
    for own in (True, False):
        sim = Simulation(dep, wl, seed=3, decision_log=True)
        sim.own_events = own
        runs.append(sim.run())
        sims.append(sim)
    fast, slow = runs
    closure = variant in ("plain", "wake")
    assert sims[0]._events is not None
    assert (getattr(sims[0].send_batch, "__func__", None) is None) == closure
    assert fast.log == slow.log  # type: ignore[attr-defined]
    assert fast.sim_s == slow.sim_s  # type: ignore[attr-defined]
    assert fast.queries.equals(slow.queries)  # type: ignore[attr-defined]
    assert fast.batches.equals(slow.batches)  # type: ignore[attr-defined]
    assert sims[0].replica_wake_s == sims[1].replica_wake_s
    assert (sims[0].replica_wake_s > 0) == (variant == "wake")


class _RefLine:
    """``LatencyModel.add`` as it was written before its sums moved to locals."""

    def __init__(self, window: int) -> None:
        self.window, self.obs, self.n = window, [], 0
        self.sx = self.sy = self.sxx = self.sxy = 0.0

    def add(self, size: int, lat: float) -> None:
        self.obs.append((size, lat))
        self.n += 1
        self.sx += size
        self.sy += lat
        self.sxx += size * size
        self.sxy += size * lat
        if self.n > self.window:
            s, y = self.obs.pop(0)
            self.n -= 1
            self.sx -= s
            self.sy -= y
            self.sxx -= s * s
            self.sxy -= s * y


@given(window=st.integers(0, 6),
       obs=st.lists(st.tuples(st.integers(1, 64), st.floats(0.0, 1.0)), max_size=30))
def test_latency_line_sums_are_the_running_sums(window: int,
                                                obs: list[tuple[int, float]]) -> None:
    """The latency line keeps the same running sums, bit for bit, as adding then
    dropping the oldest beyond the window (deadline pressure and admission read them)."""
    line, ref = LatencyModel(window), _RefLine(window)
    for size, lat in obs:
        line.add(size, lat)
        ref.add(size, lat)
        assert (line.count, line._sx, line._sy, line._sxx, line._sxy) == (
            ref.n, ref.sx, ref.sy, ref.sxx, ref.sxy)


@settings(max_examples=30, deadline=None)
@given(window=st.integers(0, 60),
       obs=st.lists(st.tuples(st.integers(1, 64), st.floats(0.0, 1.0)), max_size=700),
       reads=st.sets(st.integers(0, 700), max_size=5))
def test_latency_line_folded_late_is_the_running_line(window: int,
                                                      obs: list[tuple[int, float]],
                                                      reads: set[int]) -> None:
    """Batches pending in the line (read rarely, past ``FOLD_AT``) give the sums, count
    and coefficients of adding each at once, bit for bit, whenever the line is read."""
    line, ref, every = LatencyModel(window), _RefLine(window), LatencyModel(window)
    for k, (size, lat) in enumerate(obs):
        line.add(size, lat)
        ref.add(size, lat)
        every.add(size, lat)
        every.coefficients()  # folded at once
        assert len(line._pending) < LatencyModel.FOLD_AT
        if k in reads:
            assert line.coefficients() == every.coefficients()
    assert (line.count, line._sx, line._sy, line._sxx, line._sxy) == (
        ref.n, ref.sx, ref.sy, ref.sxx, ref.sxy)
    assert line.coefficients() == every.coefficients()
    assert line.predict_s(3) == every.predict_s(3)


def _metric_values(res: object) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for s in res.metrics.samples():  # type: ignore[attr-defined]
        m = s.metric
        if hasattr(m, "counts"):
            out.append((s.name, s.labels, tuple(m.counts), repr(m.sum), m.count))
        else:
            out.append((s.name, s.labels, m.value))
    return out


@settings(max_examples=12, deadline=None)
@given(
    policy=st.sampled_from(["aimd", "none", "fixed"]),
    qps=st.sampled_from([300.0, 900.0, 5000.0]),
    replicas=st.integers(1, 2),
    slo_ms=st.sampled_from([2.0, 10.0]),
    seed=st.integers(0, 50),
)
def test_fused_small_batch_paths_are_the_general_ones(policy: str, qps: float,
                                                      replicas: int, slo_ms: float,
                                                      seed: int) -> None:
    """The small-batch fast paths (the engine's direct send and one-query answer, the
    driver's own dispatch of one SendBatch or one Reply) give the queries, batches and
    metrics (histogram sums bit for bit) of the general paths, which a run takes when a
    controller overrides ``decide``, the engine remembers queries (every answer goes
    through ``_finish``) and the driver runs on SimPy's queue (``Driver.carry_out``)."""
    prof = LatencyProfile.from_line("one-ms", 1e-4, 1e-3, p99_over_mean=1.5)
    wl = Workload(Poisson(qps), n_queries=1500)
    ress, sims = [], []
    for general in (False, True):
        name = f"{__name__}:{OVERRIDDEN[policy].__name__}" if general else policy
        bc = BatchingConfig(policy=name, max_batch_size=8)
        dep = Deployment.single(prof, batching=bc, slo_s=slo_ms / 1e3, replicas=replicas)
        sim = Simulation(dep, wl, seed=seed,
                         engine_options={"remember_queries": 10} if general else None)
        sim.own_events = not general
        ress.append(sim.run())
        sims.append(sim)
    fast, slow = ress
    assert sims[0]._r_reply == sims[1]._r_reply  # every Reply, field by field
    assert sims[0]._r_at == sims[1]._r_at
    assert fast.queries.equals(slow.queries)  # type: ignore[attr-defined]
    assert fast.batches.equals(slow.batches)  # type: ignore[attr-defined]
    assert _metric_values(fast) == _metric_values(slow)
    assert fast.sim_s == slow.sim_s  # type: ignore[attr-defined]


@pytest.mark.parametrize("window", [0, 1, 7, 50, 255, 256, 257, 600])
def test_latency_line_numpy_fold_is_the_loop(window: int) -> None:
    """Many batches folded at once (numpy) give the count, sums, window and line of
    folding each as it comes (the loop), bit for bit, as the window fills and slides."""
    import numpy as np

    rng = np.random.default_rng(window)
    bulk, each = LatencyModel(window), LatencyModel(window)
    for chunk in (40, 300, 1, 33, 700, 256):
        for _ in range(chunk):
            size, lat = int(rng.integers(1, 65)), float(rng.lognormal(-6, 1))
            bulk._pending.append((size, lat))
            each.add(size, lat)
            each._fold()  # one pending: the loop
        bulk._fold()
        assert (bulk.count, bulk._sx, bulk._sy, bulk._sxx, bulk._sxy) == (
            each.count, each._sx, each._sy, each._sxx, each._sxy)
        assert list(bulk._obs) == list(each._obs)
        assert bulk.coefficients() == each.coefficients()
