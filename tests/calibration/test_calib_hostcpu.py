"""The twin with the host CPU model (issue 13, items 1 and 3, the calibration side): the
demands it is built with, the fits that find them (containers' CPU per batch and per
item, the load generator's per query), the pause term fitted on top of contention, the
capacity (in ``test_calib_resim``), and ``validate``'s flag."""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clipperlab.calibration.errors import CalibrationError
from clipperlab.calibration.fit import (
    Calibration,
    ContainerCpu,
    CpuRun,
    as_run,
    fit_container_cpu,
    fit_frontend,
    fit_frontend_on_host,
    fit_loadgen,
    fit_loadgen_cpu,
    fit_pauses,
    generator_wakes,
    send_ticks,
    tune_pause_rate,
)
from clipperlab.calibration.quiet import HostSpeed
from clipperlab.calibration.server import real_deployment, server_settings
from clipperlab.calibration.twin import (
    at_speed,
    at_trace,
    base_factor,
    divided_factor,
    frontend_cpu,
    mean_factor,
    profile_base_factor,
    sim_deployment,
)
from clipperlab.calibration.validation import host_cpu_demands
from clipperlab.cli import main
from clipperlab.commands import validate as validate_cmd
from clipperlab.engine import BatchingConfig
from clipperlab.simulator import (
    Deployment,
    FrontendCPU,
    HostCPU,
    LatencyProfile,
    Simulation,
)
from clipperlab.workloads import Poisson, Trace, Workload

NOOP_DEPLOY = """
[[models]]
name = "noop"
kind = "noop"
replicas = 1

[[applications]]
name = "hello"
slo_ms = 20
models = ["noop"]
"""


def _trace(rate: float, seconds: float, seed: int) -> Trace:
    return Workload(Poisson(rate), n_queries=int(rate * seconds)).generate(seed)


# --------------------------------------------------------------------------- the twin


def _speed(factor: float, share: float, dwell_s: float) -> HostSpeed:
    return HostSpeed(fast_ns=1000.0, slow_factor=factor, slow_share=share,
                     slow_dwell_s=dwell_s, probes=100, span_s=2.5)


def test_twin_with_the_host_cpu_model_has_the_fitted_demands(tmp_path: Path) -> None:
    """A calibration with the host CPU model gives a twin whose host shares its cores
    (``host_cpus``) among the loop, the container (its fitted CPU per batch and per item)
    and the generator (its CPU per query); without it nothing shares a CPU."""
    path = tmp_path / "deploy.toml"
    path.write_text(NOOP_DEPLOY)
    dep = real_deployment(path)
    prof = LatencyProfile.from_line("p", 10e-6, 100e-6)
    calib = Calibration(query_cpu_s=40e-6, batch_cpu_s=80e-6, host_cpus=3,
                        container_cpu=(("noop", 150e-6, 7e-6),),
                        loadgen_cpu_per_query_s=25e-6, slice_s=1.5e-3, tick_s=1e-3)
    twin = sim_deployment(dep, "hello", {"noop": prof}, calibration=calib)
    assert twin.host_cpu == HostCPU(cpus=3, loadgen_cpu_per_query_s=25e-6, slice_s=1.5e-3,
                                    tick_s=1e-3)
    (m,) = twin.models
    assert (m.cpu_per_batch_s, m.cpu_per_item_s) == (150e-6, 7e-6)
    # a calibration made since 2026-12-05 balances on newidle; its twin's host does too
    newer = dataclasses.replace(calib, newidle=True)
    assert sim_deployment(dep, "hello", {"noop": prof}, calibration=newer
                          ).host_cpu == dataclasses.replace(twin.host_cpu, newidle=True)
    assert host_cpu_demands([], Calibration(query_cpu_s=40e-6), None, None).newidle
    # at the profile's mean draw, the fitted CPU (a cpu container's follows its draw)
    assert m.cpu_demand_s(4, m.profile.mean_s(4)) == pytest.approx(150e-6 + 4 * 7e-6)
    # its loop parses in the server's turns (server.parse_turn_ms, by default 0.5 ms)
    assert twin.frontend_cpu == frontend_cpu(calib, 0.5e-3)
    assert dep.parse_turn_s == 0.5e-3
    plain = sim_deployment(dep, "hello", {"noop": prof},
                           calibration=dataclasses.replace(calib, host_cpus=0))
    assert plain.host_cpu is None and plain.models[0].cpu_per_batch_s is None
    # without the host CPU model batch results always go first: no turns there
    assert plain.frontend_cpu is not None and plain.frontend_cpu.parse_turn_s == 0.0
    path.write_text("[server]\nparse_turn_ms = 2\n" + NOOP_DEPLOY)
    turned = sim_deployment(real_deployment(path), "hello", {"noop": prof}, calibration=calib)
    assert turned.frontend_cpu is not None and turned.frontend_cpu.parse_turn_s == 2e-3
    # a profile taken at the fast speed (its samples divided by a mean factor of 1.4):
    # the host CPU model's twin draws it as it is and adds the speeds itself, a twin
    # without that model draws it scaled back by 1.4
    fast = dataclasses.replace(prof, tags={**prof.tags, "speed_factor_divided": "1.4"})
    assert divided_factor(fast) == 1.4 and divided_factor(prof) == 1.0
    on = sim_deployment(dep, "hello", {"noop": fast}, calibration=calib).models[0].profile
    off = sim_deployment(dep, "hello", {"noop": fast},
                         calibration=dataclasses.replace(calib, host_cpus=0)).models[0].profile
    assert off.latency_s[0][-1] == pytest.approx(1.4 * on.latency_s[0][-1])
    assert sim_deployment(dep, "hello", {"noop": fast}).models[0].profile.latency_s[0][0] == \
        pytest.approx(1.4 * fast.latency_s[0][0])
    # its samples divided against a fast level of 2,000 ns a probe iteration (a slow state
    # of the machine) where the calibration's runs went at 1,000: the twin reads it at
    # the calibration's, half as long; either level unknown: as it is; a twin without
    # the host CPU model has no fast level to read it at
    slow_ref = dataclasses.replace(fast, tags={**fast.tags, "speed_fast_ns": "2000.0"})
    at_1000 = dataclasses.replace(calib, fast_ns=1000.0)
    assert profile_base_factor(slow_ref, at_1000) == 0.5
    assert profile_base_factor(fast, at_1000) == 1.0
    assert profile_base_factor(slow_ref, calib) == 1.0  # calib.fast_ns: 0, unknown
    half = sim_deployment(dep, "hello", {"noop": slow_ref}, calibration=at_1000).models[0]
    assert half.profile.latency_s[0][-1] == pytest.approx(0.5 * on.latency_s[0][-1])
    assert sim_deployment(dep, "hello", {"noop": slow_ref}, calibration=calib
                          ).models[0].profile.latency_s[0][-1] == on.latency_s[0][-1]
    bare_at = dataclasses.replace(at_1000, host_cpus=0)
    assert sim_deployment(dep, "hello", {"noop": slow_ref}, calibration=bare_at
                          ).models[0].profile.latency_s[0][-1] == off.latency_s[0][-1]
    # a model the fit left out needs its whole profile draw (the simulator's default)
    bare = sim_deployment(dep, "hello", {"noop": prof},
                          calibration=dataclasses.replace(calib, container_cpu=()))
    assert bare.host_cpu is not None and bare.models[0].cpu_demand_s(4, 0.3) == 0.3
    # the machine's two speeds go to the twin's host
    swung = sim_deployment(dep, "hello", {"noop": prof}, calibration=dataclasses.replace(
        calib, slow_factor=1.8, slow_share=0.4, slow_dwell_s=0.12,
        slow_dwells_s=(0.05, 0.19), fast_dwells_s=(0.18,)))
    assert swung.host_cpu == HostCPU(cpus=3, loadgen_cpu_per_query_s=25e-6, slice_s=1.5e-3,
                                     tick_s=1e-3, slow_factor=1.8, slow_share=0.4,
                                     slow_dwell_s=0.12, slow_dwells_s=(0.05, 0.19),
                                     fast_dwells_s=(0.18,))
    assert swung.host_cpu.speed_swings and not twin.host_cpu.speed_swings
    # the same calibration run at another stretch's speed: the twin's host switches as
    # that stretch did, its demands scaled from the calibration's own mean factor
    base = dataclasses.replace(calib, slow_factor=1.8, slow_share=0.5, slow_dwell_s=0.1)
    assert mean_factor(base) == pytest.approx(1.4) and mean_factor(calib) == 1.0
    lv = at_speed(base, _speed(1.8, 0.75, 0.2))
    assert (lv.slow_share, lv.slow_dwell_s, lv.reference_factor) == (0.75, 0.2, 1.4)
    assert mean_factor(lv) == pytest.approx(1.4)
    hc = sim_deployment(dep, "hello", {"noop": prof}, calibration=lv).host_cpu
    assert hc is not None and hc.reference == pytest.approx(1.4)
    assert hc.mean_factor == pytest.approx(1.6)  # slower on average than when fitted
    flat = at_speed(base, _speed(1.0, 0.0, float("nan")))
    assert (flat.slow_factor, flat.slow_share, flat.reference_factor) == (1.0, 0.0, 1.4)
    no_host = dataclasses.replace(calib, host_cpus=0)
    assert at_speed(no_host, _speed(1.8, 0.75, 0.2)) is no_host
    # a stretch whose fast periods ran slower than the calibration's (its probe's fast
    # level 1,300 ns against 1,000): slower all through, its swings on top
    known = dataclasses.replace(base, fast_ns=1000.0)
    slower = dataclasses.replace(_speed(1.8, 0.75, 0.2), fast_ns=1300.0)
    assert base_factor(known, slower) == pytest.approx(1.3)
    assert base_factor(base, slower) == 1.0  # the calibration's level unknown: its own
    assert base_factor(known, None) == 1.0
    assert base_factor(known, dataclasses.replace(slower, fast_ns=math.nan)) == 1.0
    ls = at_speed(known, slower)
    assert ls.reference_factor == pytest.approx(1.4 / 1.3) and ls.fast_ns == 1000.0
    hs = sim_deployment(dep, "hello", {"noop": prof}, calibration=ls).host_cpu
    assert hs is not None and hs.mean_factor / hs.reference == pytest.approx(1.6 / 1.4 * 1.3)
    # one speed all along, 2.2x the calibration's fast level: work takes 2.2x its demand
    # (the reference below 1 is what says so)
    slow_all = at_speed(dataclasses.replace(calib, fast_ns=1000.0), dataclasses.replace(
        _speed(1.0, 0.0, float("nan")), fast_ns=2200.0))
    ha = sim_deployment(dep, "hello", {"noop": prof}, calibration=slow_all).host_cpu
    assert ha is not None and ha.reference == pytest.approx(1 / 2.2)
    # one real run's speed as the probe recorded it, replayed: the twin's host follows
    # the trace, its demands scaled from the calibration's own mean factor
    rec = ((0.0, 1.0), (0.3, 1.8), (0.5, 1.0))
    run = at_trace(base, rec)
    assert (run.speed_trace, run.reference_factor) == (rec, pytest.approx(1.4))
    hr = sim_deployment(dep, "hello", {"noop": prof}, calibration=run).host_cpu
    assert hr is not None and hr.speed_trace == rec and hr.reference == pytest.approx(1.4)
    assert at_trace(base, ()) is base and at_trace(no_host, rec) is no_host
    # the fits' twin replays each calibration run at its own recorded speed, once the
    # demands are the fast speed's (a known reference); else it runs the two speeds
    r = CpuRun(Workload(Poisson(100.0), n_queries=10).generate(0), 10.0, 5.0, 0.001,
               speed_trace=rec)
    fast = dataclasses.replace(base, reference_factor=1.0)
    assert as_run(fast, r).speed_trace == rec and as_run(base, r) is base
    assert as_run(fast, dataclasses.replace(r, speed_trace=())) is fast
    # a factor per core: kept for a host of as many cores, its totals for another
    cores = ((0.0, 1.0, 1.0), (0.3, 2.0, 1.0))
    two = dataclasses.replace(fast, host_cpus=2)
    assert as_run(two, dataclasses.replace(r, speed_trace=cores)).speed_trace == cores
    assert at_trace(dataclasses.replace(base, host_cpus=2), cores).speed_trace == cores
    four = dataclasses.replace(fast, host_cpus=4)
    assert as_run(four, dataclasses.replace(r, speed_trace=cores)).speed_trace == (
        (0.0, 1.0), (0.3, pytest.approx(4 / 3)))
    hp = sim_deployment(dep, "hello", {"noop": prof},
                        calibration=dataclasses.replace(two, speed_trace=cores,
                                                        core_speeds=True)).host_cpu
    assert hp is not None and hp.core_speeds and hp.speed_trace == cores


# --------------------------------------------------------------------------- the fits


def test_twin_deploys_each_model_with_the_servers_model_defaults(tmp_path: Path) -> None:
    """The server turns admission control and dropping hopeless requests on for a model
    whose batching leaves them unsaid (``server.admission_control``,
    ``server.drop_hopeless``: on by default); the twin's model has what the server's has:
    the defaults, a [server] table's, or the model's own.  (The twin had neither, so it let
    late queries wait to the deadline where the server shed them.)  AIMD's rule,
    ``server.aimd_step_from`` ("filled" by default), goes the same way."""
    from clipperlab.real.config import load_config
    from clipperlab.real.server import Server

    prof = LatencyProfile.from_line("p", 10e-6, 100e-6)
    cases = {
        "": (True, True, "filled"),
        "[server]\nadmission_control = false\n": (False, True, "filled"),
        "[server]\ndrop_hopeless = false\nadmission_control = false\n": (False, False,
                                                                           "filled"),
        '[server]\naimd_step_from = "sent"\n': (True, True, "sent"),
    }
    for head, want in cases.items():
        path = tmp_path / "deploy.toml"
        path.write_text(head + NOOP_DEPLOY)
        (m,) = sim_deployment(real_deployment(path), "hello", {"noop": prof}).models
        b = m.spec.batching
        assert (b.admission_control, b.drop_hopeless, b.aimd_step_from) == want
        # the server's own deployment of the same table
        server_spec, _ = Server._model_from_dict(  # type: ignore[arg-type]
            argparse.Namespace(cfg=load_config(path)), load_config(path).models[0])
        assert server_spec.batching == m.spec.batching
    # the model's batching says it: that wins over the [server] table, on both sides
    path.write_text("[server]\nadmission_control = false\ndrop_hopeless = false\n"
                    'aimd_step_from = "cap"\n'
                    + NOOP_DEPLOY.replace('replicas = 1', 'replicas = 1\nbatching = '
                                          '{ policy = "aimd", admission_control = true, '
                                          'aimd_step_from = "sent" }'))
    (m,) = sim_deployment(real_deployment(path), "hello", {"noop": prof}).models
    assert m.spec.batching.admission_control and m.spec.batching.drop_hopeless is False
    assert m.spec.batching.aimd_step_from == "sent"
    # the server a validation starts takes the file's [server] overload settings too, and
    # refuses them from elsewhere (the twin would not see them)
    got = server_settings(real_deployment(path), {"max_queue": 50}, str(tmp_path), False)
    assert (got["admission_control"], got["drop_hopeless"], got["max_queue"]) == (
        False, False, 50)
    with pytest.raises(CalibrationError, match="admission_control"):
        server_settings(real_deployment(path), {"admission_control": True}, "t", False)
    with pytest.raises(CalibrationError, match="aimd_step_from"):
        server_settings(real_deployment(path), {"aimd_step_from": "sent"}, "t", False)
    server_spec, _ = Server._model_from_dict(  # type: ignore[arg-type]
        argparse.Namespace(cfg=load_config(path)), load_config(path).models[0])
    assert server_spec.batching == m.spec.batching


def test_fit_container_cpu_recovers_a_simulated_containers_demands() -> None:
    """Runs of a twin whose container needs 300 us per batch + 20 us per item on a host
    CPU model, the container's CPU time read from the simulated process (as ``/proc``
    gives the real one): both recovered over runs of several batch sizes (AIMD); a run
    far below the others' rates (its CPU inflated by wake-ups) does not count."""
    base = Deployment.single(LatencyProfile.from_line("p", 30e-6, 400e-6),
                             batching=BatchingConfig(policy="aimd"))
    m = dataclasses.replace(base.models[0], cpu_per_batch_s=300e-6, cpu_per_item_s=20e-6)
    dep = dataclasses.replace(base, models=(m,), host_cpu=HostCPU(cpus=2),
                              frontend_cpu=FrontendCPU(query_s=10e-6))
    runs = []
    for k, rate in enumerate((1000, 3000, 6000, 9000)):
        tr = _trace(rate, 0.5, k)
        sim = Simulation(dep, tr, seed=k)
        res = sim.run()
        cpu = sum(v for name, v in sim.cpu_busy_s.items() if name.startswith("h0/m"))
        b = float(len(res.batches))
        runs.append(CpuRun(tr, float(len(tr)), b, 0.0,
                           containers=(ContainerCpu("m", b, float(len(tr)), cpu),)))
    sizes = [r.queries / r.batches for r in runs]
    assert max(sizes) > 2 * min(sizes)  # the batch sizes differ: the split is identifiable
    slow = _trace(20, 5.0, 9)
    runs.append(CpuRun(slow, float(len(slow)), float(len(slow)), 0.0,
                       containers=(ContainerCpu("m", len(slow), len(slow), 0.9 * len(slow)),)))
    ((name, per_batch, per_item),) = fit_container_cpu(runs)
    assert name == "m"
    assert per_batch == pytest.approx(300e-6, rel=0.02)
    assert per_item == pytest.approx(20e-6, rel=0.02)
    # a model whose CPU read nothing (10 ms clock ticks) is left out
    zero = [dataclasses.replace(r, containers=(r.containers[0]._replace(cpu_s=0.0),))
            for r in runs]
    assert fit_container_cpu(zero) == ()


_LOOP_TRUTH = Calibration(query_cpu_s=30e-6, batch_cpu_s=100e-6, wake_s=200e-6,
                          cold_after_s=1e-3, host_cpus=1,
                          container_cpu=(("noop", 60e-6, 2e-6),),
                          loadgen_cpu_per_query_s=5e-6, reference_factor=1.0)


def _host_loop_runs(tmp_path: Path) -> tuple[Callable[[Calibration], Deployment],
                                             list[tuple[CpuRun, Simulation]]]:
    """The host twin of the no-op deployment and runs it made with ``_LOOP_TRUTH``'s loop
    on one core at x1.8, 100-9,000 q/s: each run's queries, batches and loop CPU, beside
    the simulation that made it."""
    path = tmp_path / "deploy.toml"
    path.write_text(NOOP_DEPLOY)
    dep = real_deployment(path)
    prof = LatencyProfile.from_line("p", 10e-6, 100e-6)

    def twin(c: Calibration) -> Deployment:
        return sim_deployment(dep, "hello", {"noop": prof}, calibration=c)

    out = []
    for k, rate in enumerate((100, 500, 1500, 3000, 5000, 7000, 9000)):
        tr = Workload(Poisson(rate), n_queries=max(int(rate * 0.5), 100),
                      app="hello").generate(k)
        run = CpuRun(tr, float(len(tr)), 1.0, 0.0, speed_trace=((0.0, 1.8),),
                     speed_factor=1.8)
        sim = Simulation(twin(as_run(_LOOP_TRUTH, run)), tr, seed=0)
        batches = float(len(sim.run().batches))
        out.append((dataclasses.replace(run, batches=batches, cpu_s=sim.loop_busy_s), sim))
    return twin, out


def test_fit_frontend_on_host_counts_the_wake_ups_the_host_twin_pays(tmp_path: Path) -> None:
    """Runs made by the host CPU model's twin with a known loop (30 us/query, 100
    us/batch, a 200 us wake-up cooling in 1 ms) on one core shared with the container and
    the generator, at x1.8: ``fit_frontend``'s twin, the loop alone on a fast core,
    counts more wake-ups than these runs paid and fits the loop cheaper; fitted again with
    the wake-ups the host twin counts, every cost is found and the twin's loop costs what
    the busiest run's did."""
    twin, made = _host_loop_runs(tmp_path)
    truth = _LOOP_TRUTH
    runs = [run for run, _ in made]
    alone = fit_frontend(runs, twin, Calibration())
    start = dataclasses.replace(truth, query_cpu_s=alone.query_cpu_s,
                                batch_cpu_s=alone.batch_cpu_s, wake_s=alone.wake_s,
                                cold_after_s=alone.cold_after_s)
    fit, rows = fit_frontend_on_host(runs, twin, start)
    assert len(rows) == len(runs)
    assert fit.query_cpu_s == pytest.approx(30e-6, rel=0.03)
    assert fit.batch_cpu_s == pytest.approx(100e-6, rel=0.03)
    assert fit.wake_s == pytest.approx(200e-6, rel=0.03)
    assert fit.cold_after_s == 1e-3
    # the busiest run: the loop's CPU per query in the twin, each way fitted
    top = runs[-1]

    def loop_cpu_s(c: Calibration) -> float:
        sim = Simulation(twin(as_run(c, top)), top.trace, seed=0)
        sim.run()
        return sim.loop_busy_s / top.queries

    assert loop_cpu_s(fit) == pytest.approx(top.cpu_s / top.queries, rel=0.01)
    assert loop_cpu_s(start) < 0.98 * top.cpu_s / top.queries
    # without the host CPU model there is nothing to count again
    assert fit_frontend_on_host(runs, twin, dataclasses.replace(start, host_cpus=0)) == (
        dataclasses.replace(start, host_cpus=0), [])


def test_fit_frontend_on_host_takes_the_servers_own_wake_ups_when_counted(
        tmp_path: Path) -> None:
    """Runs made by the host twin with a known loop (30 us/query, 100 us/batch, a 200
    us wake-up cooling in 1 ms), each with the loop's sleeps the run paid (what the
    server's ``voluntary_ctxt_switches`` give a live run): every cost and the cooling
    time are found from a start that knows none of them, with the counts as the wake-up
    column (the fit's rows); without the counts, or with ``counted=False``, the fit
    counts the wake-ups with its own twin as before."""
    twin, made = _host_loop_runs(tmp_path)
    truth = _LOOP_TRUTH
    # each run with the wake-ups it paid, as the server's count would give them
    runs = [dataclasses.replace(run, sleeps=(("frontend", sim.loop_wake_s / truth.wake_s),))
            for run, sim in made]
    assert runs[0].loop_sleeps_per_query > 0.5 > runs[-1].loop_sleeps_per_query
    start = dataclasses.replace(truth, query_cpu_s=50e-6, batch_cpu_s=0.0, wake_s=0.0,
                                cold_after_s=50e-6)
    fit, rows = fit_frontend_on_host(runs, twin, start)
    assert fit.query_cpu_s == pytest.approx(30e-6, rel=0.03)
    assert fit.batch_cpu_s == pytest.approx(100e-6, rel=0.03)
    assert fit.wake_s == pytest.approx(200e-6, rel=0.03)
    assert fit.cold_after_s == 1e-3
    assert [r[2] for r in rows] == [r.loop_sleeps_per_query for r in runs]
    # one run without its count: the twin counts them all, as it does with counted=False
    partial = [dataclasses.replace(runs[0], sleeps=()), *runs[1:]]
    assert fit_frontend_on_host(partial, twin, start) == fit_frontend_on_host(
        runs, twin, start, counted=False)
    # the twin's replays on two processes: the same fit, each way
    assert fit_frontend_on_host(runs, twin, start, jobs=2) == (fit, rows)
    assert fit_frontend_on_host(runs, twin, start, counted=False, jobs=2) == (
        fit_frontend_on_host(runs, twin, start, counted=False))


def test_fit_loadgen_separates_queries_wake_ups_and_a_runs_set_up() -> None:
    """Generator CPU = 30 us x queries + 110 us x wake-ups (distinct milliseconds with
    sends) + 20 ms per run (bodies, connections), over runs from 50 to 8,000 q/s: the
    per-query and per-wake-up costs recovered."""
    runs = []
    for k, (rate, secs) in enumerate(((50, 2.0), (300, 1.0), (1000, 1.0), (2000, 1.0),
                                      (4000, 1.0), (8000, 1.0))):
        tr = _trace(rate, secs, k)
        cpu = 30e-6 * len(tr) + 110e-6 * send_ticks(tr.arrival_at) + 0.020
        runs.append(CpuRun(tr, float(len(tr)), float(len(tr)), 0.0, loadgen_cpu_s=cpu))
    assert send_ticks(runs[-1].trace.arrival_at) < len(runs[-1].trace)  # 8/ms share ticks
    got = fit_loadgen(runs)
    assert got.per_query_s == pytest.approx(30e-6, rel=0.02)
    assert got.per_wake_s == pytest.approx(110e-6, rel=0.02)
    assert fit_loadgen_cpu(runs) == got.per_query_s
    assert fit_loadgen([]) == (0.0, 0.0)
    # too few runs to tell the two apart: the CPU over the queries, no wake-up cost
    few = fit_loadgen(runs[3:5])
    assert few.per_wake_s == 0.0 and few.per_query_s > 30e-6


def test_generator_wakes_merges_send_ticks_and_replies() -> None:
    """A reply 50 us or more after the event before it (a send tick or a reply) is a
    wake-up of its own; replies together are one; unanswered queries are no reply."""
    at = np.array([0.0001, 0.0004, 0.0021, 0.0100])  # ticks 0, 2 and 10 ms
    lat = np.array([0.0009, 0.00061, np.nan, 0.00002])
    # events: sends at 0.1, 2.1 and 10 ms (a tick's first send), replies at 1.0 and
    # 1.01 ms (together) and 10.02 ms (with the send before it)
    assert generator_wakes(at, lat) == 4
    assert generator_wakes(at, lat, gap_s=5e-6) == 6
    assert generator_wakes(at, None) == send_ticks(at) == 3


def test_fit_loadgen_counts_the_replies_wake_ups() -> None:
    """Generator CPU = 5 us x queries + 60 us x wake-ups over sends and replies +
    20 ms per run: with the replies' times the costs come back; over the send ticks
    alone (``gap_s=None``) the wake-up cost reads higher."""
    runs = []
    for k, (rate, secs) in enumerate(((50, 2.0), (300, 1.0), (1000, 1.0), (2000, 1.0),
                                      (4000, 1.0), (8000, 1.0))):
        tr = _trace(rate, secs, k)
        lat = np.random.default_rng(k).uniform(0.5e-3, 3e-3, len(tr))
        cpu = 5e-6 * len(tr) + 60e-6 * generator_wakes(tr.arrival_at, lat) + 0.020
        runs.append(CpuRun(tr, float(len(tr)), float(len(tr)), 0.0, latency_s=lat,
                           loadgen_cpu_s=cpu))
    got = fit_loadgen(runs)
    assert got.per_query_s == pytest.approx(5e-6, rel=0.02)
    assert got.per_wake_s == pytest.approx(60e-6, rel=0.02)
    assert fit_loadgen(runs, gap_s=None).per_wake_s > 80e-6


def test_send_ticks_counts_the_milliseconds_with_sends() -> None:
    assert send_ticks(np.array([0.0001, 0.0009, 0.0012, 0.0051, 0.00511, np.nan])) == 3
    assert send_ticks(np.array([])) == 0


# --------------------------------------------------------------------------- pauses

PAUSE_PROFILE = LatencyProfile.from_line("cpu-model", 0.0, 0.42e-3, p99_over_mean=1.05)


def _pause_twin(c: Calibration) -> Deployment:
    dep = Deployment.single(PAUSE_PROFILE, batching=BatchingConfig(policy="none"))
    m = dep.models[0]
    hc = None
    if c.host_cpus:
        hc = HostCPU(cpus=c.host_cpus, loadgen_cpu_per_query_s=c.loadgen_cpu_per_query_s)
        cpu = {n: (b, i) for n, b, i in c.container_cpu}
        if m.name in cpu:
            m = dataclasses.replace(m, cpu_per_batch_s=cpu[m.name][0],
                                    cpu_per_item_s=cpu[m.name][1])
    return dataclasses.replace(dep, models=(m,), frontend_cpu=frontend_cpu(c), host_cpu=hc)


def test_pauses_fitted_on_top_of_contention_are_smaller() -> None:
    """The "real" runs come from a simulated host with contention and no pauses (one core
    shared by the loop, the container and the generator).  Their late queries look like
    pauses (``fit_pauses`` finds them); the twin without the host CPU model needs a pause
    rate to be as late, the twin with it explains them by contention and needs (almost)
    none."""
    truth = Calibration(query_cpu_s=100e-6, batch_cpu_s=100e-6, host_cpus=1,
                        loadgen_cpu_per_query_s=100e-6, capacity_qps=10_000.0)
    runs = []
    for k, rate in enumerate((500, 650, 800)):
        tr = _trace(rate, 5.0, k)
        lat = Simulation(_pause_twin(truth), tr, seed=k).run().queries["latency_s"]
        runs.append(CpuRun(tr, float(len(tr)), float(len(tr)), 0.0, lat.to_numpy()))
    rate_hz, pauses = fit_pauses(runs, truth.capacity_qps)
    assert rate_hz > 0 and len(pauses) >= 5  # contention looks like pauses
    seen = dataclasses.replace(truth, pause_rate_hz=rate_hz, pauses_s=pauses)

    def pause_term(c: Calibration) -> float:
        """Pauses per second at the loop's busy share over the runs, times their mean."""
        f = tune_pause_rate(runs, _pause_twin, c)
        busy = np.mean([r.queries * 200e-6 / (r.trace.arrival_at[-1]) for r in runs])
        return (f.pause_rate_hz + f.pause_rate_busy_hz * busy) * float(np.mean(pauses))

    plain = pause_term(dataclasses.replace(seen, host_cpus=0, loadgen_cpu_per_query_s=0.0))
    host = pause_term(seen)
    assert plain > 0
    assert host < 0.25 * plain


# --------------------------------------------------------------------------- the flag


@pytest.mark.parametrize("argv, expected", [([], True), (["--host-cpu"], True),
                                            (["--no-host-cpu"], False)])
def test_validate_flag_reaches_validate(argv: list[str], expected: bool,
                                        monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    """``clipperlab validate --host-cpu/--no-host-cpu`` (default on) is what ``validate``
    is called with."""
    seen: dict[str, Any] = {}

    def fake(*args: Any, **kw: Any) -> Any:
        seen.update(kw)
        raise CalibrationError("stop here")

    monkeypatch.setattr("clipperlab.calibration.validation.validate", fake)
    wl = tmp_path / "w.toml"
    wl.write_text('[workload]\napp = "hello"\nn_queries = 10\n'
                  'arrivals = { kind = "constant", qps = 100 }\n')
    dep = tmp_path / "deploy.toml"
    dep.write_text(NOOP_DEPLOY)
    rc = main(["validate", "--deployment", str(dep), "--workload", str(wl), *argv])
    assert rc == 2 and seen["host_cpu"] is expected and seen["speed"] is True
    rc = main(["validate", "--deployment", str(dep), "--workload", str(wl), *argv,
               "--no-speed"])
    assert rc == 2 and seen["speed"] is False
    parser = argparse.ArgumentParser()
    validate_cmd.add_arguments(parser)
    ns = parser.parse_args(["--deployment", "d", "--workload", "w", *argv])
    assert ns.host_cpu is expected
