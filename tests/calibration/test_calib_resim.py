"""Issue 13's capacity and tail, the calibration side: one ramp procedure for the server and
the twin, the twin's profiles without the profiler's spikes, the loop's costs fitted where
the loop is busy, and ``fidelity --resimulate`` over a run's stored real side."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from clipperlab.calibration.capacity import (
    DOWN_STEPS,
    RAMP_RESOLUTION,
    RampResult,
    ramp,
    ramp_probe_twin,
    ramp_start,
    twin_capacities,
    twin_capacity,
)
from clipperlab.calibration.errors import CalibrationError
from clipperlab.calibration.fidelity import main as fidelity_main
from clipperlab.calibration.fit import (
    Calibration,
    ContainerCpu,
    CpuRun,
    frontend_intervals,
)
from clipperlab.calibration.quiet import HostStalls
from clipperlab.calibration.resimulate import (
    CALIBRATION_FILE,
    calibration_columns,
    calibration_from_json,
    calibration_to_json,
    load_runs,
    replay_steps,
    reply_gap_spans,
    reply_gaps,
    resimulate,
    save_runs,
    stored_calibrations,
    stored_speed,
    stored_stalls,
    ticked,
)
from clipperlab.calibration.twin import _host_speed, despiked
from clipperlab.calibration.validation import draw_seed
from clipperlab.simulator import (
    Deployment,
    FrontendCPU,
    LatencyProfile,
    save_profile,
)
from clipperlab.workloads import ConstantRate, Workload

# --------------------------------------------------------------------------- the ramp


def test_ramp_bisects_to_its_resolution_and_confirms_every_failure() -> None:
    """An objective that holds up to 700 q/s, ramped from 100 q/s x2: 100, 200, 400 pass,
    800 fails twice; bisection: 566 passes, 673 passes, 734 fails twice, and 734/673 is
    within x1.1: the capacity is 673 (within the resolution below 700); the default x1.05
tries 703 as well before it stops there.  With a
    resolution of 1.5 the ramp stops after the first midpoint (566), as the ramp of
    earlier runs did."""
    calls: list[tuple[float, int]] = []

    def probe(rate: float, attempt: int) -> tuple[float, float]:
        calls.append((rate, attempt))
        return (1.0 if rate <= 700 else 0.5), rate

    res = ramp(probe, 100.0, 1e6, step=2.0, resolution=1.1)
    m1 = math.sqrt(400 * 800)
    m2 = math.sqrt(m1 * 800)
    m3 = math.sqrt(m2 * 800)
    assert res.capacity_qps == pytest.approx(m2)
    assert res.last_good_qps == pytest.approx(m2)
    assert 700 / 1.1 <= res.capacity_qps <= 700
    assert calls == [(100, 0), (200, 0), (400, 0), (800, 0), (800, 1), (m1, 0), (m2, 0),
                     (m3, 0), (m3, 1)]
    calls.clear()
    # the default, x1.05 (RAMP_RESOLUTION): 734/673 is not within it, so one more
    # midpoint, 703, fails twice, and 703/673 is: the same capacity, now known to 5%
    fine = ramp(probe, 100.0, 1e6, step=2.0)
    m4 = math.sqrt(m2 * m3)
    assert fine.capacity_qps == pytest.approx(m2)
    assert 700 / RAMP_RESOLUTION <= fine.capacity_qps <= 700 < m4
    assert calls[-3:] == [(m3, 1), (m4, 0), (m4, 1)]
    calls.clear()
    coarse = ramp(probe, 100.0, 1e6, step=2.0, resolution=1.5)
    assert coarse.capacity_qps == pytest.approx(m1)
    assert calls[-1] == (m1, 0)
    with pytest.raises(ValueError, match="resolution"):
        ramp(probe, 100.0, 1e6, resolution=1.0)


def test_ramp_whose_start_fails_goes_down_then_bisects_up() -> None:
    """A ramp started above capacity (holds up to 700 q/s, started at 1,600, x2) goes
    down x1/4 to 400 (unconfirmed: nothing has passed), which passes, and bisects up
    between 400 and 1,600 to within x1.1 of 700, as a ramp from below would: a start
    that fails is no longer its capacity.  One that never passes stops after
    DOWN_STEPS steps down and reports the lowest rate tried (an upper bound)."""
    calls: list[tuple[float, int]] = []

    def probe(rate: float, attempt: int) -> tuple[float, float]:
        calls.append((rate, attempt))
        return (1.0 if rate <= 700 else 0.5), rate

    res = ramp(probe, 1600.0, 1e6, step=2.0)
    assert calls[:2] == [(1600.0, 0), (400.0, 0)]
    assert 700 / 1.1 <= res.capacity_qps <= 700
    assert res.last_good_qps == res.capacity_qps
    later_fails = [r for r, a in calls[2:] if a == 0 and r > 700]
    assert later_fails and all((r, 1) in calls for r in later_fails)  # each confirmed
    never = ramp(lambda rate, attempt: (0.0, rate), 1600.0, 1e6, step=2.0)
    assert len(never.steps) == DOWN_STEPS + 1
    assert never.capacity_qps == pytest.approx(1600.0 / 4 ** DOWN_STEPS)
    assert never.last_good_qps == 0.0


def test_ramp_start_restarts_later_ramps_below_the_first_capacity() -> None:
    """The first ramp starts at the start rate; later ones at half the first one's
    capacity when that is higher; a first ramp that found nothing, or restart 0, leaves
    every ramp at the start."""
    found = RampResult(8000.0, 8000.0, ())
    assert ramp_start(100.0, None) == 100.0
    assert ramp_start(100.0, found) == pytest.approx(4000.0)
    assert ramp_start(100.0, found, restart=0.0) == 100.0
    assert ramp_start(100.0, RampResult(100.0, 0.0, ())) == 100.0
    assert ramp_start(6000.0, found) == 6000.0


def test_ramp_takes_a_confirmed_pass_and_the_good_throughput() -> None:
    """A step that fails once and passes on its re-run counts as passing; the capacity is
    the good throughput (rate x good share, or the throughput when lower)."""
    def probe(rate: float, attempt: int) -> tuple[float, float]:
        if rate == 400 and attempt == 0:
            return 0.5, rate
        return (0.96 if rate <= 400 else 0.0), 0.9 * rate

    res = ramp(probe, 100.0, 1e6, step=2.0)
    assert res.capacity_qps == pytest.approx(0.9 * 400)
    with pytest.raises(ValueError, match="start_qps"):
        ramp(probe, 0.0, 1e6)
    with pytest.raises(ValueError, match="step"):
        ramp(probe, 100.0, 1e6, step=1.0)


def test_twin_capacity_runs_the_ramp_on_a_loop_with_a_known_limit() -> None:
    """A loop of 200 us per query saturates at 5,000 q/s; constant-rate arrivals do not
    queue below it: the twin's ramp (100 q/s x1.4) passes 4,050, fails 5,670, bisects
    to 4,792 (passes), 5,213 (fails) and 4,998 (passes): about 4,990 is the capacity,
    within 5% below the limit (the same number the ramp over the twin's probe gives).
    Three ramps: the later two start at half the first one's answer (their own grid) and
    also land within 5% below the limit; an overhead past
    the SLO leaves none."""
    dep = dataclasses.replace(Deployment.single("prototype-noop"),
                              frontend_cpu=FrontendCPU(query_s=100e-6, reply_s=100e-6))
    wl = Workload(ConstantRate(100), n_queries=100, app="digits")
    got = twin_capacity(dep, wl, 0.020, est_qps=4000.0)
    ref = ramp(ramp_probe_twin(dep, wl, 0.020), 100.0, 50 * 4000.0)
    assert got == pytest.approx(ref.capacity_qps)
    top = 100 * 1.4 ** 11  # 4,050: the last grid step under 5,000
    m1 = math.sqrt(top * top * 1.4)  # 4,792 passes
    m2 = math.sqrt(m1 * top * 1.4)  # 5,213 fails
    assert got == pytest.approx(math.sqrt(m1 * m2), rel=0.01)  # 4,998 passes; 5,213/4,998 < 1.05
    assert 5000 / RAMP_RESOLUTION <= got < 5000
    three = twin_capacity(dep, wl, 0.020, est_qps=4000.0, repeats=3)
    assert 5000 / RAMP_RESOLUTION <= three < 5000
    assert twin_capacity(dep, wl, 0.020, est_qps=4000.0, overhead_s=0.025) == 0.0
    with pytest.raises(ValueError, match="est_qps"):
        twin_capacity(dep, wl, 0.020, est_qps=float("nan"))
    with pytest.raises(ValueError, match="repeats"):
        twin_capacity(dep, wl, 0.020, est_qps=4000.0, repeats=0)
    # a twin per ramp (each at its ramp's speed): a loop twice as slow (400 us a query)
    # saturates at 2,500 q/s, and its ramp says so; the median of three is the middle one
    slow = dataclasses.replace(dep, frontend_cpu=FrontendCPU(query_s=200e-6, reply_s=200e-6))
    caps = twin_capacities([dep, slow, slow], wl, 0.020, est_qps=4000.0)
    assert 5000 / 1.1 <= caps[0] < 5000 and all(2500 / 1.1 <= c < 2500 for c in caps[1:])
    # the ramps after the first on two processes: the same capacities
    assert twin_capacities([dep, slow, slow], wl, 0.020, est_qps=4000.0, jobs=2) == caps
    with pytest.raises(ValueError, match="one twin per ramp"):
        twin_capacities([], wl, 0.020, est_qps=4000.0)


# --------------------------------------------------------------------------- despiked


def test_despiked_cuts_a_profilers_stray_sample_at_the_pause_margin() -> None:
    """Batch size 8 of 100 samples near 3.8 ms and one of 58 ms (the profiler paused):
    the twin's profile cuts it at the median + 1 ms (the IQR is tiny); the other batch
    size, without a spike, is unchanged, and a profile without spikes is returned as is."""
    rng = np.random.default_rng(0)
    ok = list(3.8e-3 + rng.uniform(0, 0.1e-3, 100))
    spiky = [*ok[:99], 58e-3]
    prof = LatencyProfile.from_samples("forest", {1: ok, 8: spiky})
    d = despiked(prof)
    med = float(np.median(spiky))
    assert max(d.latency_s[1]) <= med + 1e-3 + 0.1e-3
    assert max(d.latency_s[1]) >= med + 1e-3 - 0.1e-3
    assert d.latency_s[0] == prof.latency_s[0]
    assert "despiked" in d.tags
    clean = LatencyProfile.from_samples("forest", {1: ok})
    assert despiked(clean) is clean


# --------------------------------------------------------------------------- the fit


def test_busy_share_weights_fit_the_busy_runs_best() -> None:
    """Runs from 0.5% to 100% of the loop's capacity (batches growing, wake-ups fading
    with the load), the idle ones costing 80 us per query more than the model can say:
    weighted by the busy share (the default), the fit misses the busiest run's CPU per
    query by half as much as with every run alike."""
    rows_w, rows_1 = [], []
    for share in (0.005, 0.007, 0.01, 0.014, 0.02, 0.028, 0.04, 0.055, 0.077, 0.11, 0.15,
                  0.21, 0.3, 0.42, 0.59, 0.83, 1.0):
        inv, u = 1 / (1 + 40 * share ** 2), math.exp(-20 * share)
        y = 47e-6 + 70e-6 * inv + 200e-6 * u + (80e-6 if share < 0.25 else 0.0)
        rows_w.append((y, inv, u, share * y))
        rows_1.append((y, inv, u, 1.0))
    top = max(r[3] for r in rows_w)
    rows_w = [(y, i, u, w / top) for y, i, u, w in rows_w]

    def miss(rows: list[tuple[float, float, float, float]]) -> float:
        a, b, w = (iv.value for iv in frontend_intervals(rows))
        y, inv, u, _ = rows[-1]
        return abs(a + b * inv + w * u - y) / y

    assert miss(rows_w) < 0.6 * miss(rows_1)


# --------------------------------------------------------------------------- stored runs


def test_calibration_and_runs_round_trip(tmp_path: Path) -> None:
    """``calibration.json`` and ``runs.npz`` give back what was stored."""
    c = Calibration(query_cpu_s=30e-6, capacity_qps=900.0, pauses_s=(1e-3, 2e-3), host_cpus=2,
                    container_cpu=(("noop", 50e-6, 1e-6),), loadgen_cpu_per_query_s=6e-6,
                    slow_factor=1.8, slow_share=0.3, slow_dwells_s=(0.05, 0.4),
                    fast_dwells_s=(0.1,), speed_trace=((0.0, 1.0), (0.5, 1.8)),
                    stalls_s=((1e-3, 4e-3), ()), stalls_span_s=10.0)
    assert calibration_from_json(calibration_to_json({"sim+host": c})) == {"sim+host": c}
    # the cores' stalls go to the twin's host and come back as the run's own
    assert _host_speed(c).stalls_s == ((1e-3, 4e-3), ()) and _host_speed(c).stalls
    st = stored_stalls({"sim+frontend": Calibration(), "sim+host": c})
    assert st is not None and st.lengths_s == c.stalls_s and st.span_s == 10.0
    assert stored_stalls({"sim+host": dataclasses.replace(c, stalls_s=())}) is None
    wl = Workload(ConstantRate(200), n_queries=50, app="digits")
    tr = wl.generate(0)
    run = CpuRun(tr, 50.0, 20.0, 0.01, np.full(50, 1e-3), 0.3,
                 (ContainerCpu("noop", 20.0, 50.0, 0.002),), 0.004)
    got_one = np.arange(50) % 5 != 0  # every fifth query answered with the default
    waits = (("container:noop", 0.002), ("frontend", 0.01), ("loadgen", 0.003))
    over = dataclasses.replace(run, overloaded=True, speed_factor=1.4,
                               speed_trace=((0.0, 1.0), (0.125, 1.8)), predicted=got_one,
                               waits=waits, started_unix=1_796_400_000.5,
                               sleeps=(("container:noop", 18.0), ("frontend", 12.0)))
    path = save_runs(tmp_path / "runs.npz", [run, over], run, {"batches": 20.0}, 50.0)
    runs, low, seen, qps = load_runs(path, wl)
    assert len(runs) == 2 and low is not None and seen == {"batches": 20.0} and qps == 50.0
    assert [r.overloaded for r in (*runs, low)] == [False, True, False]
    # the speed each run went at: its mean factor and the probes' trace
    assert runs[1].speed_factor == 1.4 and runs[1].speed_trace == ((0.0, 1.0), (0.125, 1.8))
    assert math.isnan(runs[0].speed_factor) and runs[0].speed_trace == ()
    # which queries got a prediction, where the run recorded it
    assert runs[1].predicted is not None and np.array_equal(runs[1].predicted, got_one)
    assert runs[0].predicted is None and low.predicted is None
    # each process's wait for a core, where the run recorded it
    assert runs[1].waits == waits and runs[0].waits == () and low.waits == ()
    # how often each process slept, where the run recorded it: the loop's per query
    assert runs[1].sleeps == (("container:noop", 18.0), ("frontend", 12.0))
    assert runs[1].loop_sleeps_per_query == 12.0 / 50.0
    assert runs[0].sleeps == () and math.isnan(runs[0].loop_sleeps_per_query)
    # when it started, where the run recorded it
    assert runs[1].started_unix == 1_796_400_000.5 and math.isnan(runs[0].started_unix)
    for r in (*runs, low):
        assert np.array_equal(r.trace.arrival_at, tr.arrival_at)
        assert np.array_equal(np.asarray(r.latency_s), np.full(50, 1e-3))
        assert (r.queries, r.batches, r.cpu_s, r.batch_ms, r.loadgen_cpu_s) == (
            50.0, 20.0, 0.01, 0.3, 0.004)
        assert r.containers == (ContainerCpu("noop", 20.0, 50.0, 0.002),)


def test_stored_speed_keeps_the_cores_and_the_fast_level_for_a_refit() -> None:
    """``stored_speed``: the two speeds a stored host CPU twin was fitted with, with its
    probe's fast level and, when its cores switched each on its own, its core count (a
    refit with one core lost ``core_speeds``); one speed or no host model: None."""
    c = Calibration(host_cpus=2, slow_factor=1.8, slow_share=0.3, slow_dwell_s=0.2,
                    fast_ns=1500.0, core_speeds=True)
    sp = stored_speed({"sim+frontend": Calibration(), "sim+host": c})
    assert sp is not None and sp.cores == 2 and sp.fast_ns == 1500.0
    assert (sp.slow_factor, sp.slow_share, sp.slow_dwell_s) == (1.8, 0.3, 0.2)
    pooled = stored_speed({"sim+host": dataclasses.replace(c, core_speeds=False, fast_ns=0.0)})
    assert pooled is not None and pooled.cores == 1 and math.isnan(pooled.fast_ns)
    assert stored_speed({"sim+host": dataclasses.replace(c, slow_factor=1.0)}) is None
    assert stored_speed({"sim+frontend": Calibration(slow_factor=1.8, slow_share=0.3)}) is None


def test_a_real_runs_fit_record_carries_its_wall_clock_start() -> None:
    """``RealRun.cpu_run`` turns the run's monotonic start into the wall clock
    (``started_unix``, what ``--steps`` prints as ``started_utc``); NaN without one."""
    import time

    from clipperlab.calibration.runs import RealRun

    tr = Workload(ConstantRate(100), n_queries=4, app="digits").generate(0)
    table = pd.DataFrame({"arrival_at": tr.arrival_at, "sent_at": tr.arrival_at,
                          "reply_at": tr.arrival_at + 1e-3, "status": 200, "default": False})
    seen = {"queries": 4.0, "batches": 2.0}
    run = RealRun(tr, table, 1e-5, seen, started_at=time.monotonic() - 3600.0).cpu_run()
    assert abs(run.started_unix - (time.time() - 3600.0)) < 60.0  # an hour ago, not now
    assert math.isnan(RealRun(tr, table, 1e-5, seen).cpu_run().started_unix)


def _stored_run(out: Path, *, with_json: bool) -> None:
    """A fidelity run's folder at a low rate: one setting, real rows, stored twin."""
    sub = out / "noop-aimd"
    (sub / "profiles").mkdir(parents=True)
    save_profile(LatencyProfile.from_samples("noop", {1: [50e-6] * 20, 8: [60e-6] * 20}),
                 sub / "profiles" / "noop.json")
    (sub / "deploy.toml").write_text(
        '[[models]]\nname = "noop"\nkind = "noop"\npath = ""\nreplicas = 1\n'
        'batching = { policy = "aimd" }\n\n[[applications]]\nname = "digits"\n'
        'slo_ms = 20\ndefault_output = -1\nmodels = ["noop"]\n')
    (sub / "summary.md").write_text("2 run(s) per level and mode, 0.5 s each, medians; "
                                    "container wake-up 0.100 ms (cools in 10 ms)")
    # costs for a twin whose capacity is near the 1,000 q/s "measured" (about 2,000 q/s:
    # its loop at 400 us a query), so that its capacity ramps stop after a few steps of
    # a few thousand queries (at 40 us a query they ran to 25,000 q/s, 110 s a resimulate)
    calib = Calibration(overhead_s=0.2e-3, capacity_qps=1000.0, query_cpu_s=400e-6,
                        batch_cpu_s=1000e-6, host_cpus=2,
                        container_cpu=(("noop", 400e-6, 0.0),),
                        loadgen_cpu_per_query_s=100e-6)
    if with_json:
        (sub / "calibration.json").write_text(calibration_to_json({"sim+host": calib}))
    rows = []
    for lv in (0.3, 0.6):
        for mode in ("real", "real again", "sim", "sim+frontend", "sim+host"):
            rows.append({"model": "noop", "batching": "aimd", "level": lv,
                         "offered_qps": 1000.0 * lv, "mode": mode, "throughput_qps": -1.0,
                         "mean_ms": -1.0, "p50_ms": -1.0, "p90_ms": -1.0, "p99_ms": -1.0,
                         "default_rate": 0.0, "batch_size_mean": -1.0, "load_avg": 0.5,
                         "other_cpu_share": 0.0, "repeats": 2, "capacity_qps": 1000.0,
                         "sim_capacity_qps": -1.0, "overhead_ms": 0.2,
                         "query_cpu_us": 400.0, "batch_cpu_us": 1000.0, "wake_us": 0.0,
                         "cold_after_ms": 1.0, "host_cpus": 2, "container_cpu_us": 400.0,
                         "container_item_cpu_us": 0.0, "loadgen_cpu_us": 100.0,
                         "container_wake_us": 100.0, "pause_median_ms": 0.0})
    pd.DataFrame(rows).to_csv(out / "fidelity.csv", index=False)


@pytest.mark.parametrize("with_json", [True, False])
def test_resimulate_redoes_the_twins_rows_and_the_prediction_only(
        tmp_path: Path, with_json: bool) -> None:
    """Over a stored run (with ``calibration.json``, or an older run's columns): the
    prediction's rows are simulated again, the real rows and the other modes stay as
    stored, the capacity prediction is made again and the measured one kept; older
    runs' calibration comes from the columns (the containers' cooling time from
    ``summary.md``)."""
    _stored_run(tmp_path, with_json=with_json)
    wl = Workload(ConstantRate(100), n_queries=100, app="digits")
    res = resimulate(tmp_path, wl, log=lambda s: None)
    t = res.table
    host = t[t["mode"] == "sim+host"]
    assert (host["p50_ms"] > 0).all() and (host["throughput_qps"] > 0).all()
    assert host["throughput_qps"].to_numpy() == pytest.approx([300.0, 600.0], rel=0.1)
    others = t[t["mode"] != "sim+host"]
    assert (others["p50_ms"] == -1.0).all()
    assert (t["capacity_qps"] == 1000.0).all()
    assert (t["sim_capacity_qps"] > 0).all()
    assert bool(res.notes) is not with_json
    if not with_json:
        c = stored_calibrations(t.iloc[0].to_dict(), "container wake-up 0.100 ms "
                                "(cools in 10 ms)")["sim+host"]
        assert c.replica_cold_after_s == pytest.approx(10e-3)
        assert c.container_cpu == (("noop", pytest.approx(400e-6), 0.0),)


def test_resimulate_draws_each_level_twin_draws_times(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Each level runs ``repeats x twin_draws`` times in the twin, each with a seed of its
    own (``draw_seed``), the medians taken; ``--twin-draws 0`` is a usage error."""
    import clipperlab.calibration.resimulate as rs

    _stored_run(tmp_path, with_json=True)
    seeds: list[int] = []
    real = rs.sim_run

    def counted(dep: Deployment, trace: Any, seed: int, calib: Any = None) -> Any:
        seeds.append(seed)
        return real(dep, trace, seed, calib)

    monkeypatch.setattr(rs, "sim_run", counted)
    wl = Workload(ConstantRate(100), n_queries=100, app="digits")
    resimulate(tmp_path, wl, twin_draws=3, log=lambda s: None)
    # two levels, two repeats stored, three draws each
    assert sorted(seeds) == sorted(draw_seed(k, j) for _ in range(2) for k in range(2)
                                   for j in range(3))
    assert len(set(draw_seed(k, j) for k in range(3) for j in range(5))) == 15
    capsys.readouterr()
    assert fidelity_main(["--resimulate", "--out", str(tmp_path), "--twin-draws", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: --twin-draws")
    assert fidelity_main(["--resimulate", "--out", str(tmp_path), "--jobs", "-1"]) == 2
    assert capsys.readouterr().err.startswith("error: --jobs")


class _Ran(Exception):
    """Raised by the stand-in for ``validate``: which setting a fidelity run started."""


def test_fidelity_resume_runs_only_the_settings_the_table_lacks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``--resume`` keeps the settings ``fidelity.csv`` holds and starts the first one it
    lacks; with nothing left to run it rebuilds the tables from the kept rows; without
    ``--resume`` a stored setting is run again, with a warning that the table is replaced;
    a table that is not a fidelity table is
    refused with a one-line error."""
    from clipperlab.calibration import fidelity

    _stored_run(tmp_path, with_json=True)
    started: list[str] = []

    def fake_validate(dep: Path, *args: Any, **kw: Any) -> Any:
        started.append(dep.stem)
        raise _Ran(dep.stem)

    monkeypatch.setattr(fidelity, "validate", fake_validate)
    with pytest.raises(_Ran, match="noop-delayed"):
        fidelity_main(["--out", str(tmp_path), "--resume", "--models", "noop",
                       "--batchings", "aimd,delayed"])
    assert started == ["noop-delayed"]
    assert "noop / aimd: kept from" in capsys.readouterr().out
    assert fidelity_main(["--out", str(tmp_path), "--resume", "--models", "noop",
                          "--batchings", "aimd"]) == 0
    assert started == ["noop-delayed"]
    assert (tmp_path / "fidelity.md").exists()
    assert len(pd.read_csv(tmp_path / "fidelity.csv")) == 10  # the kept rows, untouched
    with pytest.raises(_Ran, match="noop-aimd"):
        fidelity_main(["--out", str(tmp_path), "--models", "noop", "--batchings", "aimd"])
    assert "fidelity.csv exists; without --resume this run replaces" in capsys.readouterr().err
    pd.DataFrame({"x": [1]}).to_csv(tmp_path / "fidelity.csv", index=False)
    assert fidelity_main(["--out", str(tmp_path), "--resume"]) == 2
    assert "not a fidelity run's table" in capsys.readouterr().err


def test_fidelity_command_interrupted_says_one_line_and_exits_130(
        tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
    """Ctrl-C in ``python -m clipperlab.calibration.fidelity`` (``fidelity.cli``): one
    line naming what is kept, exit status 130, no traceback."""
    from clipperlab.calibration import fidelity

    def interrupted(dep: Path, *args: Any, **kw: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(fidelity, "validate", interrupted)
    assert fidelity.cli(["--out", str(tmp_path), "--models", "noop",
                         "--batchings", "aimd"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("fidelity: interrupted;") and "Traceback" not in "".join(err)


def test_fidelity_cap_settings_and_unknown_names(tmp_path: Path, monkeypatch: Any,
                                                capsys: Any) -> None:
    """``--batchings aimd-cap`` deploys AIMD stepping from its cap; an unknown model or
    batching is a usage error naming it, before anything runs."""
    import tomllib

    from clipperlab.calibration import fidelity
    from clipperlab.engine.registry import BatchingConfig

    deployed: list[str] = []

    def fake_validate(dep: Path, *args: Any, **kw: Any) -> Any:
        deployed.append(dep.read_text())
        raise _Ran(dep.stem)

    monkeypatch.setattr(fidelity, "validate", fake_validate)
    with pytest.raises(_Ran, match="noop-delayed-cap"):
        fidelity_main(["--out", str(tmp_path), "--models", "noop",
                       "--batchings", "delayed-cap"])
    bc = BatchingConfig(**tomllib.loads(deployed[0])["models"][0]["batching"])
    assert (bc.policy, bc.aimd_step_from, bc.wait_timeout_s) == ("aimd", "cap", 0.002)
    for argv, named in ((["--batchings", "aimd,fifo"], "'fifo'"),
                        (["--models", "svm"], "'svm'")):
        assert fidelity_main(["--out", str(tmp_path), *argv]) == 2
        err = capsys.readouterr().err
        assert named in err and err.startswith("error: --")
    assert len(deployed) == 1


def test_stored_deployments_keep_the_aimd_rule_they_ran_with(tmp_path: Path) -> None:
    """A stored run's deploy.toml that says no AIMD rule is from before the server's
    default became "filled" (runs 1-31): re-simulated, it runs the prototype's "sent";
    one that says its rule (every run since: ``said_batching``) keeps it."""
    from clipperlab.calibration.fidelity import deploy_toml, said_batching
    from clipperlab.calibration.resimulate import _deployment
    from clipperlab.calibration.server import model_specs

    assert said_batching("aimd")["aimd_step_from"] == "filled"
    assert said_batching("delayed-sent")["aimd_step_from"] == "sent"
    cases = (({"policy": "aimd"}, "sent"), (said_batching("aimd"), "filled"),
             (said_batching("delayed-cap"), "cap"))
    for k, (batching, want) in enumerate(cases):
        d = tmp_path / str(k)
        d.mkdir()
        (d / "deploy.toml").write_text(deploy_toml("noop", "", batching))
        _, specs = model_specs(_deployment(d / "deploy.toml", d), "digits")
        assert specs[0][0].batching.aimd_step_from == want
    (tmp_path / "s.toml").write_text("[server]\nmax_queue = 7\n"
                                     + deploy_toml("noop", "", {"policy": "aimd"}))
    dep = _deployment(tmp_path / "s.toml", tmp_path)
    assert model_specs(dep, "digits")[1][0][0].batching.aimd_step_from == "sent"
    assert dep.max_queue == 7


def test_fidelity_resimulate_rewrites_the_tables(tmp_path: Path) -> None:
    """``fidelity --resimulate --out OUT`` rewrites ``fidelity.csv`` and rebuilds the
    tables; an OUT without a run is an error that names the file."""
    _stored_run(tmp_path, with_json=True)
    assert fidelity_main(["--resimulate", "--out", str(tmp_path)]) == 0
    t = pd.read_csv(tmp_path / "fidelity.csv")
    assert (t[t["mode"] == "sim+host"]["p50_ms"] > 0).all()
    assert (tmp_path / "fidelity.md").exists()
    assert (tmp_path / "fidelity_capacity.csv").exists()
    with pytest.raises(CalibrationError, match="fidelity.csv"):
        resimulate(tmp_path / "none", Workload(ConstantRate(1), n_queries=2, app="digits"))


def test_resimulate_with_two_speeds(tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """``--resimulate --slow FACTOR,SHARE,DWELL_MS`` gives the host CPU model's twin those
    speeds (in ``fidelity.csv``'s ``slow_*`` columns; a run stored without them has one
    speed); a bad triple, or one without --resimulate, is a one-line usage error."""
    _stored_run(tmp_path, with_json=True)
    assert fidelity_main(["--resimulate", "--out", str(tmp_path), "--slow", "1.8,0.3,120"]) == 0
    t = pd.read_csv(tmp_path / "fidelity.csv")
    assert (t["slow_factor"] == 1.8).all() and (t["slow_share"] == 0.3).all()
    assert t["slow_dwell_ms"].to_numpy() == pytest.approx(120.0)
    assert "two speeds the probe saw" in (tmp_path / "fidelity.md").read_text()
    # a level recorded as slow 90% of the time by x2 runs slower than at the stored speed
    t = pd.read_csv(tmp_path / "fidelity.csv")
    t["speed_level_factor"], t["speed_level_slow_share"] = 2.0, 0.9
    t["speed_level_dwell_ms"] = 200.0
    t.to_csv(tmp_path / "fidelity.csv", index=False)
    wl = Workload(ConstantRate(100), n_queries=100, app="digits")
    at_level = resimulate(tmp_path, wl, log=lambda s: None).table
    stored = resimulate(tmp_path, wl, level_speed=False, log=lambda s: None).table

    def host_p50(x: pd.DataFrame) -> float:
        return float(x.loc[x["mode"] == "sim+host", "p50_ms"].mean())

    assert host_p50(at_level) > host_p50(stored)
    # capacity ramps recorded as slow 90% of the time by x2: each twin ramp at that speed
    # finds less than at the stored speed
    n = int(t["ramps"].iloc[0]) if "ramps" in t else int(t["repeats"].iloc[0])
    t["speed_ramps_slow_share"], t["speed_ramps_factor"] = ";".join(["0.9"] * n), \
        ";".join(["2.0"] * n)
    t.to_csv(tmp_path / "fidelity.csv", index=False)
    slow_ramps = resimulate(tmp_path, wl, log=lambda s: None).table
    assert (slow_ramps["sim_capacity_qps"] < stored["sim_capacity_qps"]).all()
    assert slow_ramps["sim_ramp_capacities_qps"].astype(str).str.count(";").eq(n - 1).all()
    # one speed on every ramp, but the last ramp's fast level twice the calibration's
    # (the stored run's ``fast_ns``): that ramp alone finds less
    calibs = calibration_from_json((tmp_path / "noop-aimd" / CALIBRATION_FILE).read_text())
    (tmp_path / "noop-aimd" / CALIBRATION_FILE).write_text(calibration_to_json(
        {m: dataclasses.replace(c, fast_ns=1000.0) for m, c in calibs.items()}))
    t["speed_ramps_slow_share"], t["speed_ramps_factor"] = ";".join(["0.0"] * n), \
        ";".join(["1.0"] * n)
    t["speed_ramps_fast_ns"] = ";".join(["1000.0"] * (n - 1) + ["2000.0"])
    t.to_csv(tmp_path / "fidelity.csv", index=False)
    per = [float(x) for x in str(resimulate(tmp_path, wl, log=lambda s: None).table[
        "sim_ramp_capacities_qps"].iloc[0]).split(";")]
    assert per[-1] < 0.8 * min(per[:-1])
    t = t.drop(columns=["speed_ramps_fast_ns"])
    # --core-speeds: each core of the twin's host switches on its own (recorded)
    t.drop(columns=["speed_ramps_slow_share", "speed_ramps_factor"]).to_csv(
        tmp_path / "fidelity.csv", index=False)
    assert fidelity_main(["--resimulate", "--out", str(tmp_path), "--slow", "1.8,0.3,120",
                          "--core-speeds"]) == 0
    assert (pd.read_csv(tmp_path / "fidelity.csv")["core_speeds"] == 1.0).all()
    capsys.readouterr()
    assert fidelity_main(["--out", str(tmp_path), "--core-speeds"]) == 2
    assert capsys.readouterr().err.startswith("error: --core-speeds")
    for argv in (["--resimulate", "--slow", "0.5,0.3,120"], ["--resimulate", "--slow", "2,1,5"],
                 ["--resimulate", "--slow", "2,0.3"], ["--slow", "2,0.3,100"]):
        assert fidelity_main(["--out", str(tmp_path), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --slow") and err.count("\n") == 1




def test_resimulate_with_the_cores_stalls(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """``--resimulate --stalls FILE`` gives the host CPU model's twins those stalls: both
    cores frozen 10 ms at a time, 20 times a second, each on its own, lengthen the
    prediction's tail; a
    file that is not a stalls file, ``--stalls`` without ``--resimulate`` and a negative
    ``--stalls-s`` are one-line usage errors."""
    _stored_run(tmp_path, with_json=True)
    wl = Workload(ConstantRate(100), n_queries=300, app="digits")
    st = HostStalls(span_s=1.0, cpus=(0, 1), lengths_s=((0.01,) * 20, (0.01,) * 20))
    calm = resimulate(tmp_path, wl, log=lambda s: None).table
    stalled = resimulate(tmp_path, wl, stalls=st, log=lambda s: None).table

    def host_p99(x: pd.DataFrame) -> float:
        return float(x.loc[x["mode"] == "sim+host", "p99_ms"].mean())

    assert host_p99(stalled) > host_p99(calm) + 1.0  # 0.4 -> 2.3 ms when written
    f = tmp_path / "stalls.json"
    f.write_text(st.to_json())
    assert fidelity_main(["--resimulate", "--out", str(tmp_path), "--stalls", str(f)]) == 0
    capsys.readouterr()
    (tmp_path / "bad.json").write_text("{}")
    for argv in (["--resimulate", "--stalls", str(tmp_path / "bad.json")],
                 ["--stalls", str(f)], ["--stalls-s", "-1"]):
        assert fidelity_main(["--out", str(tmp_path), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --stalls") and err.count("\n") == 1

def test_steps_replayed_at_their_speed_against_the_servers_pass_or_fail(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--steps``: each stored run at half the capacity or more, with a recorded speed, is
    replayed by the prediction's twin at that speed and at the two speeds; a step the
    server passed (every query in 1 ms) and the light twin passes agrees, one the server
    failed (every query 50 ms late) does not; a step under half the capacity or without
    a recorded speed is left out; a run that recorded none is an error."""
    _stored_run(tmp_path, with_json=True)
    cal = tmp_path / "noop-aimd" / "calibration.json"
    c = calibration_from_json(cal.read_text())["sim+host"]
    cal.write_text(calibration_to_json({"sim+host": dataclasses.replace(
        c, reference_factor=1.0, slice_s=1.5e-3, query_cpu_s=40e-6, batch_cpu_s=100e-6,
        container_cpu=(("noop", 40e-6, 0.0),), loadgen_cpu_per_query_s=10e-6)}))
    # demands at the fast speed: the steps are replayed; time slices: the twin counts each
    # process's wait for a core; a light twin (a tenth of _stored_run's costs)
    wl = Workload(ConstantRate(100), n_queries=100, app="digits")

    def step(rate: float, late_s: float, rec: tuple[tuple[float, float], ...]) -> CpuRun:
        tr = dataclasses.replace(wl, arrivals=ConstantRate(rate), n_queries=int(rate)
                                 ).generate(0)
        return CpuRun(tr, rate, rate / 4, rate * 50e-6, np.full(int(rate), late_s), 0.1,
                      speed_factor=1.4 if rec else math.nan, speed_trace=rec)

    rec = ((0.0, 1.0), (0.5, 1.8))
    runs = [step(200, 1e-3, rec), step(700, 1e-3, rec), step(800, 0.05, rec),
            step(900, 1e-3, ())]
    save_runs(tmp_path / "noop-aimd" / "runs.npz", runs, runs[0], {}, 50.0)
    got = replay_steps(tmp_path, wl, log=lambda s: None)
    assert list(got["rate_qps"]) == pytest.approx([700, 800], rel=0.01)
    assert list(got["real_good"]) == [1.0, 0.0] and (got["replayed_good"] == 1.0).all()
    assert list(got["agree"]) == [True, False]
    assert (got["started_utc"] == "").all()  # stored without their starts
    # beside them: the batch round trip each engine saw, and the reply gaps (none here:
    # the server's queries all took the same time, the twin's came in steady batches)
    assert list(got["real_batch_ms"]) == [0.1, 0.1] and (got["twin_batch_ms"] > 0).all()
    # and the mean batch size: the server's queries over its batches (rate / 4 batches
    # here), the twin's batches' own
    assert list(got["real_batch_size"]) == [4.0, 4.0] and (got["twin_batch_size"] >= 1).all()
    assert (got[["real_gaps_per_s", "twin_gaps_per_s"]] == 0).all().all()
    assert not got["defaults_counted"].any() and got["real_defaults"].isna().all()
    assert (tmp_path / "fidelity_steps.csv").exists()
    # the server's per-query outcome stored: a default answered in time is a miss, as in
    # the capacity ramp (one in ten here: the step fails), and the twin's are counted
    # alike (none: it passes)
    defaulted = dataclasses.replace(runs[1], predicted=np.arange(700) % 10 != 0,
                                    waits=(("frontend", 0.0999), ("loadgen", 0.0)),
                                    started_unix=1_796_400_000.0)
    save_runs(tmp_path / "noop-aimd" / "runs.npz", [defaulted], runs[0], {}, 50.0)
    got = replay_steps(tmp_path, wl, log=lambda s: None)
    assert list(got["real_good"]) == pytest.approx([0.9]) and list(got["agree"]) == [False]
    # each process's share of the step spent waiting for a core: the server's as stored
    # (over the step's span, first send to last: 699/700 s), the twin's per process, its
    # container's by model
    assert list(got["real_wait_frontend"]) == pytest.approx([0.0999 / (699 / 700)])
    assert list(got["real_wait_loadgen"]) == [0.0]
    twin = [c for c in got.columns if c.startswith("twin_wait_")]
    assert sorted(twin) == ["twin_wait_container:noop", "twin_wait_frontend",
                            "twin_wait_loadgen"]
    assert (got[twin] >= 0).all().all() and (got[twin] < 1).all().all()
    assert list(got["real_defaults"]) == pytest.approx([0.1])
    assert got["defaults_counted"].all() and list(got["twin_defaults"]) == [0.0]
    assert list(got["replayed_good"]) == [1.0]
    assert list(got["started_utc"]) == ["2026-12-04 16:00:00"]  # when the step began
    save_runs(tmp_path / "noop-aimd" / "runs.npz", runs, runs[0], {}, 50.0)
    assert fidelity_main(["--steps", "--out", str(tmp_path)]) == 0
    assert "agrees with the server's pass or fail in 1 of 2 steps" in capsys.readouterr().out
    save_runs(tmp_path / "noop-aimd" / "runs.npz", [runs[3]], runs[3], {}, 50.0)
    assert fidelity_main(["--steps", "--out", str(tmp_path)]) == 2
    assert "recorded its speed" in capsys.readouterr().err


def test_reply_gaps_are_stretches_without_a_reply_while_a_query_waits() -> None:
    """Replies every millisecond, then 5 ms without one while the query sent at 3.5 ms
    waits (a gap), then 4 ms without one while nobody waits (the next query is sent
    inside it: no gap); an unanswered query waits to the end; below the threshold
    nothing counts."""
    send = np.array([0, 1, 2, 3, 3.5, 9, 13, 14]) * 1e-3
    lat = np.array([0.5, 0.5, 0.5, 0.5, 5.0, 0.5, 0.5, np.inf]) * 1e-3
    assert reply_gaps(send, lat) == pytest.approx([5e-3])
    assert reply_gap_spans(send, lat) == pytest.approx(np.array([[3.5e-3, 8.5e-3]]))
    assert reply_gaps(send, lat, min_gap_s=6e-3).size == 0
    # the query sent at 2 ms unanswered: it waits through 9.5-13.5 ms too
    lat2 = lat.copy()
    lat2[2] = np.nan
    assert reply_gaps(send, lat2) == pytest.approx([5e-3, 4e-3])
    assert reply_gaps(send[:1], lat[:1]).size == 0


def test_ticked_sends_each_query_at_the_generators_next_millisecond() -> None:
    """Arrivals 0.3 ms apart come out on whole milliseconds, each at the first tick at or
    after it: four queries share the 2 ms tick (1.2, 1.5, 1.8 -> 2 ms; 2.1 -> 3 ms)."""
    wl = Workload(ConstantRate(1), n_queries=8, app="digits")
    tr = dataclasses.replace(wl.generate(0), arrival_at=np.arange(8) * 0.3e-3)
    got = ticked(tr).arrival_at * 1e3
    assert got == pytest.approx([0, 1, 1, 1, 2, 2, 2, 3])


def test_overloaded_ramp_steps_count_for_the_cpu_fits_only(tmp_path: Path) -> None:
    """A capacity ramp's step that missed the SLO (``CpuRun.overloaded``) pins the loop's
    cost per query at the large batches only overload reaches (here 80 us per query at
    batch 50, against 40 us + 100 us per batch below it), and the containers' CPU; it
    says nothing about pauses, the generator or the fixed overhead (its queries were all
    late): those come out the same as without it."""
    from clipperlab.calibration.server import model_specs, real_deployment
    from clipperlab.calibration.validation import Setup, calibrate_twin
    from clipperlab.simulator import load_profile

    _stored_run(tmp_path, with_json=True)
    sub = tmp_path / "noop-aimd"
    dep = real_deployment(sub / "deploy.toml")
    wl = Workload(ConstantRate(100), n_queries=100, app="digits")
    app, specs = model_specs(dep, "digits")
    setup = Setup(dep, app, [s for s, _, _ in specs], {s.name: n for s, n, _ in specs}, wl,
                  {"noop": load_profile(sub / "profiles" / "noop.json")}, 0, lambda m: None,
                  "off", 1)

    def run(rate: float, batch: float, q_us: float, late_s: float,
            overloaded: bool = False, gen_us: float = 8.0) -> CpuRun:
        n = int(rate)  # one second
        tr = dataclasses.replace(wl, arrivals=ConstantRate(rate), n_queries=n).generate(0)
        b = n / batch
        lat = np.full(n, late_s)
        lat[::7] += 2e-3  # a few late queries: pauses to fit
        return CpuRun(tr, float(n), b, n * q_us * 1e-6 + b * 100e-6, lat, 0.1,
                      (ContainerCpu("noop", b, float(n), b * 40e-6 + n * 0.5e-6),),
                      n * gen_us * 1e-6, overloaded)

    good = [run(r, 1 + r / 400, 40.0, 0.6e-3) for r in (100, 200, 400, 800)]
    low, seen = good[0], {"batch_mean_ms": 0.1, "batch_size_mean": 1.25, "batches": 80.0,
                          "server_mean_ms": 0.2, "queries": 100.0}
    # the generator fell behind too: its CPU per query there is not its cost
    over = run(3000, 50, 80.0, 0.5, overloaded=True, gen_us=30.0)
    without, _ = calibrate_twin(good, setup, low, seen, 1000.0, 40e-6, 100.0, host_cpu=True)
    with_it, _ = calibrate_twin([*good, over], setup, low, seen, 1000.0, 40e-6, 100.0,
                                host_cpu=True)
    (_, a), (_, b) = without[-1], with_it[-1]
    assert b.query_cpu_s > a.query_cpu_s * 1.3  # the large batches' cost is in the loop
    assert b.container_cpu != a.container_cpu
    for f in ("pause_rate_hz", "pause_rate_busy_hz", "pauses_s", "loadgen_cpu_per_query_s",
              "loadgen_wake_s"):
        assert getattr(b, f) == getattr(a, f), f
    # the same runs gone at two speeds (every CPU time x1.8 in two of them), each run's
    # mean speed factor recorded: over their factors they are one demand at the fast
    # speed, the one fitted without the slowdown, which the host's speeds then stretch
    # (reference factor 1); without the factors the fit is the mixture's
    from clipperlab.calibration.quiet import HostSpeed

    sp = HostSpeed(fast_ns=1000.0, slow_factor=1.8, slow_share=0.5, slow_dwell_s=0.1,
                   probes=100, span_s=5.0)

    def slowed(r: CpuRun, f: float) -> CpuRun:
        return dataclasses.replace(
            r, cpu_s=r.cpu_s * f, loadgen_cpu_s=r.loadgen_cpu_s * f, speed_factor=f,
            containers=tuple(c._replace(cpu_s=c.cpu_s * f) for c in r.containers))

    mixed = [slowed(r, f) for r, f in zip(good, (1.0, 1.8, 1.0, 1.8), strict=True)]
    (_, c), = calibrate_twin(mixed, setup, mixed[0], seen, 1000.0, 40e-6, 100.0,
                             host_cpu=True, speed=sp)[0][1:]
    assert c.reference_factor == 1.0 and c.slow_factor == 1.8
    assert c.query_cpu_s == pytest.approx(a.query_cpu_s, rel=0.02)
    assert c.loadgen_cpu_per_query_s == pytest.approx(a.loadgen_cpu_per_query_s, rel=0.02)
    assert c.container_cpu[0][1] == pytest.approx(a.container_cpu[0][1], rel=0.02)
    unknown = [dataclasses.replace(r, speed_factor=math.nan) for r in mixed]
    (_, u), = calibrate_twin(unknown, setup, unknown[0], seen, 1000.0, 40e-6, 100.0,
                             host_cpu=True, speed=sp)[0][1:]
    assert u.reference_factor == 0.0
    assert u.loadgen_cpu_per_query_s > 1.2 * a.loadgen_cpu_per_query_s


def test_a_refit_rewrites_every_fitted_number_its_interval_and_calibration_json(
        tmp_path: Path) -> None:
    """After ``resimulate`` refits a setting on its stored runs, ``fidelity.csv`` carries
    the twin it ran with: every fitted number (``calibration_columns`` of the refitted
    prediction, the pauses and the containers' wake-up included, not the stored ones),
    each number's interval from the refit, and ``calibration.json`` the refitted twins."""
    _stored_run(tmp_path, with_json=True)
    sub = tmp_path / "noop-aimd"
    wl = Workload(ConstantRate(100), n_queries=100, app="digits")

    def run(rate: float) -> CpuRun:
        n = int(rate)  # one second
        tr = dataclasses.replace(wl, arrivals=ConstantRate(rate), n_queries=n).generate(0)
        b = n / (1 + rate / 400)
        lat = np.full(n, 0.6e-3)
        lat[::7] += 4e-3  # late queries: pauses to fit
        # _stored_run's costs: the refitted twin's capacity near the stored 1,000 q/s
        return CpuRun(tr, float(n), b, n * 400e-6 + b * 1000e-6, lat, 0.1,
                      (ContainerCpu("noop", b, float(n), b * 400e-6 + n * 5e-6),),
                      n * 80e-6)

    runs = [run(r) for r in (100, 200, 400, 800)]
    save_runs(sub / "runs.npz", runs, runs[0],
              {"batch_mean_ms": 0.1, "batch_size_mean": 1.25, "batches": 80.0,
               "server_mean_ms": 0.2, "queries": 100.0}, 100.0)
    stored_json = (sub / "calibration.json").read_text()
    res = resimulate(tmp_path, wl, log=lambda s: None)
    assert any("fitted again" in n for n in res.notes)
    refitted = calibration_from_json((sub / "calibration.json").read_text())
    assert (sub / "calibration.json").read_text() != stored_json
    pred = refitted["sim+host"]
    assert pred.overhead_s != pytest.approx(0.2e-3)  # the stored twin's: 0.2 ms
    t = res.table
    for col, v in calibration_columns(pred, refitted.get("sim+frontend")).items():
        assert t[col].to_numpy() == pytest.approx(v), col
    assert not (t["overhead_ms"] == 0.2).any()
    assert (t["query_cpu_us_lo"] <= t["query_cpu_us"] + 1e-9).all()
    assert (t["query_cpu_us"] <= t["query_cpu_us_hi"] + 1e-9).all()
