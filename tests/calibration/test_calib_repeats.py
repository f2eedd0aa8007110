"""Calibration that holds still: medians over repeats, bootstrap intervals on fitted
numbers, the capacity the twin predicts beside the measured one, and the load a profile
records (``clipperlab.calibration``: ``intervals``, ``capacity``, ``validation``,
``profiler``, ``fidelity``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clipperlab.calibration.fidelity import (
    calibration_floor,
    capacity_markdown,
    capacity_rows,
    floor_markdown,
)
from clipperlab.calibration.fit import frontend_intervals
from clipperlab.calibration.intervals import Interval, bootstrap, bootstrap_fit
from clipperlab.calibration.profiler import ProfileSpec, median_round, profile_model
from clipperlab.calibration.quiet import BusyMachineError, LoadSample
from clipperlab.calibration.validation import median_summary
from clipperlab.simulator import load_profile, save_profile

BUSY = LoadSample(loadavg_1m=4.9, cpus=2, other_cpu_share=0.6, window_s=0.5)
QUIET = LoadSample(loadavg_1m=0.1, cpus=2, other_cpu_share=0.01, window_s=0.5)


# --------------------------------------------------------------------------- medians


def test_median_summary_takes_each_metric_over_the_repeats() -> None:
    """Per metric the median of the runs (one run's stretched p99 does not move it); a
    metric none of them has finite is NaN."""
    runs = [{"p50_ms": 1.0, "p99_ms": 5.0, "x": math.nan},
            {"p50_ms": 1.2, "p99_ms": 40.0, "x": math.nan},
            {"p50_ms": 1.1, "p99_ms": 6.0}]
    m = median_summary(runs)
    assert m["p50_ms"] == pytest.approx(1.1) and m["p99_ms"] == 6.0
    assert math.isnan(m["x"])


def test_median_round_keeps_the_middle_p99() -> None:
    """Of three rounds of one batch size, the one whose p99 is the median is kept whole:
    a round a busy spell stretched (p99 9 ms) is not."""
    quiet = [1e-3] * 99 + [2e-3]
    busy = [1e-3] * 90 + [9e-3] * 10
    middle = [1e-3] * 98 + [4e-3] * 2
    assert median_round([busy, quiet, middle]) == middle
    assert median_round([quiet]) == quiet
    # an even count: the lower of the middle two
    assert median_round([busy, middle, quiet, busy]) == middle


# --------------------------------------------------------------------------- intervals


def test_bootstrap_contains_the_estimate_and_narrows_with_data() -> None:
    """The median's interval holds the median, and 1,000 draws from the same spread give
    a much narrower one than 10."""
    rng = np.random.default_rng(1)
    small = rng.normal(100, 10, 10)
    large = rng.normal(100, 10, 1000)
    a, b = bootstrap(small), bootstrap(large)
    for iv, data in ((a, small), (b, large)):
        assert iv.lo <= iv.value <= iv.hi
        assert iv.value == pytest.approx(float(np.median(data)))
    assert (b.hi - b.lo) < 0.6 * (a.hi - a.lo)
    assert a.n == 10 and b.n == 1000


def test_one_row_has_no_spread() -> None:
    """One ramp: the interval is the value itself, and says it came from one."""
    assert bootstrap([1234.0]) == Interval(1234.0, 1234.0, 1234.0, 1)
    assert str(Interval(1.0, 0.5, 2.0, 3)) == "1 [0.5, 2]"


def test_frontend_cost_intervals_hold_the_fit_and_narrow() -> None:
    """Runs whose CPU per query is 30 us + 200 us x batches/query + 300 us x wake-ups,
    with 5% noise: the fitted costs lie in their intervals, the truth is near, and 40
    runs give narrower intervals than 6."""
    rng = np.random.default_rng(0)

    def rows(n: int) -> list[tuple[float, float, float, float]]:
        out = []
        for _ in range(n):
            inv, u = rng.uniform(0.05, 1.0), rng.uniform(0.0, 0.8)
            y = (30e-6 + 200e-6 * inv + 300e-6 * u) * rng.normal(1, 0.05)
            out.append((y, inv, u, 1.0))
        return out

    few, many = frontend_intervals(rows(6)), frontend_intervals(rows(40))
    for ivs in (few, many):
        for iv in ivs:
            assert iv.lo <= iv.value <= iv.hi
    q, b, w = many
    assert q.value == pytest.approx(30e-6, rel=0.5) and b.value == pytest.approx(200e-6, rel=0.2)
    assert w.value == pytest.approx(300e-6, rel=0.2)
    for f, m in zip(few, many, strict=True):
        assert m.hi - m.lo < f.hi - f.lo


def test_bootstrap_fit_widens_to_hold_a_bounded_estimate() -> None:
    """A non-negative fit at its bound (most resamples above it) still has it inside."""
    data = [0.0] * 3 + [1.0] * 17

    def fit(rows: list[float]) -> list[float]:
        return [max(float(np.mean(rows)) - 0.85, 0.0)]

    (iv,) = bootstrap_fit(data, fit, seed=3)
    assert iv.lo <= iv.value <= iv.hi


# --------------------------------------------------------------------------- capacity


def test_capacity_columns_from_a_fake_twin() -> None:
    """The fidelity table's capacity rows: the measured capacity with its interval, the
    prediction (here a fake twin's), the error and the 10% verdict per pair."""
    def fake(measured: float, predicted: float, model: str) -> dict[str, object]:
        return {"model": model, "batching": "aimd", "level": 0.3, "mode": "real",
                "capacity_qps": measured, "capacity_qps_lo": measured * 0.9,
                "capacity_qps_hi": measured * 1.1, "sim_capacity_qps": predicted,
                "repeats": 3}

    table = pd.DataFrame([fake(1000.0, 1050.0, "a"), fake(2000.0, 1500.0, "b")])
    caps = capacity_rows(table).set_index("model")
    assert caps.loc["a", "err_capacity"] == pytest.approx(0.05)
    assert caps.loc["a", "capacity_goal_met"] and not caps.loc["b", "capacity_goal_met"]
    assert caps.loc["b", "err_capacity"] == pytest.approx(-0.25)
    text = capacity_markdown(capacity_rows(table))
    assert "| a | aimd | 1,000 [900, 1,100] | 3 | 1,050 | +5% | yes | yes |" in text
    # b's prediction (1,500) lies outside the server's own interval [1,800, 2,200]
    assert "| b | aimd | 2,000 [1,800, 2,200] | 3 | 1,500 | -25% | no | no |" in text
    # each ramp, where the run recorded them: measured / predicted (the slow share)
    table["ramp_capacities_qps"] = "900;1000;1100"
    table["sim_ramp_capacities_qps"] = "950;1050;1200"
    table["speed_ramps_slow_share"] = "0.300;nan;0.700"
    assert capacity_rows(table).iloc[0]["per_ramp"] == \
        "900 / 950 (30%); 1,000 / 1,050; 1,100 / 1,200 (70%)"
    assert "| 900 / 950 (30%); 1,000 / 1,050; 1,100 / 1,200 (70%) |" in capacity_markdown(
        capacity_rows(table))
    # and, from run 36 on, each ramp's fast level over the calibration's
    table["speed_ramps_fast_ns"] = "1000.0;1300.0;nan"
    table["speed_calib_fast_ns"] = 1000.0
    assert capacity_rows(table).iloc[0]["per_ramp"] == \
        "900 / 950 (30%, x1.00); 1,000 / 1,050 (x1.30); 1,100 / 1,200 (70%)"


# --------------------------------------------------------------------------- profiles


def test_profile_records_the_load_it_was_measured_under(tmp_path: Path) -> None:
    """A profile measured on a busy machine (``warn``) says so in its tags, and the file
    keeps it through the simulator's loader; a quiet one says ``busy: no``."""
    spec = ProfileSpec(model="noop", batch_sizes=(1,), repeats=5, min_repeats=1, warmup=1,
                       rounds=3)
    warned: list[str] = []
    prof = profile_model(spec, sample=lambda: BUSY, log=warned.append)
    assert prof.tags["busy"].startswith("yes: before: other processes took 60%")
    assert BUSY.describe() in prof.tags["machine_load"]
    assert prof.tags["rounds"] == "3"
    assert any("busy" in w for w in warned)
    back = load_profile(save_profile(prof, tmp_path / "p.json"))
    assert back.tags["machine_load"] == prof.tags["machine_load"]
    # the machine's speed just before and just after the timing (probes for 2 s each)
    speed = back.tags["machine_speed"]
    assert speed.startswith("before: ") and "; after: " in speed and "probe iteration" in speed
    calm = profile_model(spec, sample=lambda: QUIET, log=lambda s: None)
    assert calm.tags["busy"] == "no" and QUIET.describe() in calm.tags["machine_load"]


def test_profile_refuses_a_busy_machine_before_starting() -> None:
    spec = ProfileSpec(model="noop", batch_sizes=(1,), repeats=5, busy="refuse")
    with pytest.raises(BusyMachineError, match="60%"):
        profile_model(spec, sample=lambda: BUSY)


def _store_runs(path: Path, runs: list[tuple[float, float, bool]]) -> None:
    """A ``runs.npz`` of runs at ``(rate q/s, latency ms, overloaded)``, 2 s each: every
    query takes the latency given, but the last 2% take ten times it (a tail)."""
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, object] = {"runs": [], "low": False}
    for k, (rate, ms, over) in enumerate(runs):
        n = int(rate * 2)
        arrays[f"arrival_at_{k}"] = np.arange(n) / rate
        lat = np.full(n, ms / 1e3)
        lat[-max(n // 50, 1):] = ms * 10 / 1e3
        arrays[f"latency_s_{k}"] = lat
        meta["runs"].append({"overloaded": over})  # type: ignore[attr-defined]
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    path.parent.mkdir(parents=True)
    np.savez_compressed(path, **arrays)


def test_calibration_floor_sets_the_calibration_runs_near_each_level_against_it(
        tmp_path: Path) -> None:
    """Per level: the median p50/p99 of the passing stored runs within x1.25 of the level's
    rate against the level's real p50/p99; a failing run near it is left out, and a
    level with fewer than two runs near it has no row."""
    _store_runs(tmp_path / "noop-aimd" / "runs.npz",
                [(900.0, 1.0, False), (1000.0, 2.0, False), (1200.0, 3.0, False),
                 (1000.0, 50.0, True), (2000.0, 5.0, False), (5000.0, 9.0, False)])
    table = pd.DataFrame([
        {"model": "noop", "batching": "aimd", "level": 0.3, "mode": "real",
         "offered_qps": 1000.0, "throughput_qps": 1000.0, "p50_ms": 2.0, "p99_ms": 10.0},
        {"model": "noop", "batching": "aimd", "level": 0.3, "mode": "sim+host",
         "offered_qps": 1000.0, "throughput_qps": 1000.0, "p50_ms": 9.0, "p99_ms": 90.0},
        {"model": "noop", "batching": "aimd", "level": 0.6, "mode": "real",
         "offered_qps": 2000.0, "throughput_qps": 2000.0, "p50_ms": 5.0, "p99_ms": 50.0},
        {"model": "logreg", "batching": "aimd", "level": 0.3, "mode": "real",
         "offered_qps": 1000.0, "throughput_qps": 1000.0, "p50_ms": 2.0, "p99_ms": 10.0},
    ])
    floor = calibration_floor(table, tmp_path)
    assert len(floor) == 1  # 60%: one run near it; logreg: no runs.npz
    row = floor.iloc[0]
    assert (row["model"], row["level"], row["runs"]) == ("noop", 0.3, 3)
    assert (row["runs_qps_lo"], row["runs_qps_hi"]) == pytest.approx((900.0, 1200.0), rel=0.01)
    assert row["calib_p50_ms"] == pytest.approx(2.0)
    assert row["calib_p99_ms"] == pytest.approx(20.0)  # the three runs' tails: 10, 20, 30
    assert row["err_p99"] == pytest.approx(1.0)
    text = floor_markdown(floor)
    assert "+100%" in text and "median error 100% over 1 levels" in text
    assert "no stored calibration runs" in floor_markdown(floor.iloc[:0])


def test_the_twin_runs_warm() -> None:
    """``twin_run`` replays a run's first half second before it and drops it: the same
    queries at the same times and ids as a cold run, each batch sent inside the run; the
    AIMD cap ("filled") has been found by then, so the run's first batches are as large
    as its last, where a cold twin starts from a batch of one."""
    from clipperlab.calibration.runs import retime, twin_run, warmed
    from clipperlab.engine import BatchingConfig
    from clipperlab.simulator import Deployment, LatencyProfile
    from clipperlab.workloads import ConstantRate, Workload

    wl = Workload(ConstantRate(100), n_queries=100)
    tr = retime(wl, 4000.0, 1.0, 0)
    w, k, shift = warmed(tr, 0.5)
    assert k == int(np.searchsorted(tr.arrival_at, tr.arrival_at[0] + 0.5))
    assert len(w) == len(tr) + k and shift > 0.49
    assert np.all(np.diff(w.arrival_at) >= 0)
    assert np.array_equal(w.input_index[k:], tr.input_index)
    assert warmed(tr, 0.0) == (tr, 0, 0.0)
    prof = LatencyProfile.from_line("p", 1e-3, 20e-6)
    dep = Deployment.single(prof, batching=BatchingConfig(policy="aimd",
                                                          aimd_step_from="filled"),
                            slo_s=0.020)
    cold_q, cold_b = twin_run(dep, tr, 1, warm_s=0.0)
    warm_q, warm_b = twin_run(dep, tr, 1)
    assert len(warm_q) == len(cold_q) == len(tr)
    assert np.array_equal(warm_q["query_id"], np.arange(len(tr)))
    assert np.allclose(warm_q["arrival_at"], cold_q["arrival_at"])
    assert (warm_b["sent_at"] >= 0).all() and len(warm_b) < len(cold_b) + 5
    assert cold_b["size"].iloc[0] == 1
    assert warm_b["size"].iloc[:5].mean() > 2 * cold_b["size"].iloc[:5].mean()
