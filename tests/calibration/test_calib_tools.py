"""The calibration tools on loopback, short runs, no timing assertions: ``profile`` writes
a file the simulator loads, ``load`` sends every query of a workload's schedule and writes
one CSV row per query, ``validate`` produces its table, and bad inputs are one-line errors
with exit code 2."""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from clipperlab.calibration.loadgen import load_workload_spec, run_load
from clipperlab.calibration.profiler import ProfilerError, ProfileSpec, profile_model
from clipperlab.calibration.quiet import probe_cpus
from clipperlab.cli import main
from clipperlab.report.latency import summarise
from clipperlab.simulator import Deployment, Simulation, load_profile
from clipperlab.workloads import ConstantRate, DigitsInputs, Poisson, Workload

NOOP_DEPLOY = """
[[models]]
name = "noop"
kind = "noop"
batching = { policy = "aimd" }

[[applications]]
name = "hello"
slo_ms = 50
default_output = -1
models = ["noop"]
"""

WORKLOAD = """
[workload]
app = "hello"
n_queries = 40
arrivals = { kind = "poisson", qps = 200 }
inputs = { kind = "digits" }
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from clipperlab.real.client import AdminClient
    from clipperlab.real.config import load_config
    from clipperlab.real.server import ServerThread

    store = tmp_path_factory.mktemp("store")
    cfg = load_config(None, query_port=0, admin_port=0, rpc_port=0, store=str(store),
                      cache=False)
    st = ServerThread(cfg).start()
    admin = AdminClient(f"127.0.0.1:{st.ports['admin']}")
    admin.add_app("hello", slo_ms=50, default_output=-1)
    admin.add_model("noop", kind="noop", app="hello")
    admin.wait_ready("hello", timeout_s=60)
    yield st
    st.stop()


def test_profile_writes_a_file_the_simulator_runs(tmp_path: Path) -> None:
    """The profiler times a real no-op container over the RPC; the saved file loads with
    ``simulator.load_profile`` and drives a simulation unchanged."""
    out = tmp_path / "noop.json"
    rc = main(["profile", "--model", "noop", "--batch-sizes", "1,4", "--repeats", "5",
               "--warmup", "1", "--out", str(out)])
    assert rc == 0
    prof = load_profile(out)
    assert prof.batch_sizes == (1, 4)
    for tag in ("hardware", "software", "date", "source"):
        assert prof.tags[tag]
    assert "numpy" in prof.tags["software"]
    res = Simulation(Deployment.single(prof), Workload(ConstantRate(100), n_queries=50),
                     seed=0).run()
    assert len(res.queries) == 50


def test_profile_spec_with_synthetic_inputs() -> None:
    """Inputs of any shape go through the RPC as one array; the sample count per size is
    bounded by ``repeats``."""
    from clipperlab.workloads import SyntheticTensors

    spec = ProfileSpec(model="noop", inputs=SyntheticTensors(shape=(3, 4, 4), dtype="float32",
                                                             pool=8),
                       input_type="floats", batch_sizes=(2,), repeats=3, warmup=0)
    prof = profile_model(spec)
    assert prof.batch_sizes == (2,)
    assert "SyntheticTensors" in prof.tags["inputs"]


def test_profile_spec_passes_container_flags() -> None:
    """``container_args`` reach the container: one it refuses stops the profile with the
    container's own line."""
    spec = ProfileSpec(model="noop", batch_sizes=(1,), repeats=1, warmup=0, busy="off",
                       container_args=("--malloc-keep-mb", "999"))
    with pytest.raises(ProfilerError, match="--malloc-keep-mb 999 must be in"):
        profile_model(spec)


def test_load_sends_the_schedule(server: Any, tmp_path: Path) -> None:
    """Every query of the trace is sent once; arrival times are the workload's schedule
    and latency is counted from them (reply - scheduled)."""
    wl = Workload(Poisson(300), n_queries=60, app="hello", inputs=DigitsInputs())
    trace = wl.generate(3)
    pool = np.asarray(wl.inputs.load()[0])
    url = f"http://127.0.0.1:{server.ports['query']}"
    table = run_load(trace, pool, url, connections=3)
    assert len(table) == 60
    np.testing.assert_array_equal(table["arrival_at"].to_numpy(), trace.arrival_at)
    assert (table["status"] == 200).all()
    lat = table["latency_s"].to_numpy()
    np.testing.assert_allclose(lat, table["reply_at"] - table["arrival_at"])
    assert (table["sent_at"] >= table["arrival_at"] - 1e-9).all()
    s = summarise(table)
    assert s["queries"] == 60 and s["unanswered"] == 0
    assert s["errors"] == 0 and s["max_lag_ms"] >= 0  # the generator's own, from its columns


def test_load_pauses_the_collector_while_it_runs(server: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The generator's event loop runs with the cyclic collector off (a pass over the
    process's heap would stall the sends and the reading of replies, counted as the
    server's latency); the collector is on again after."""
    import gc

    import uvloop

    during: list[bool] = []
    loop_run = uvloop.run

    def run(main: Any, **kw: Any) -> Any:
        during.append(gc.isenabled())
        return loop_run(main, **kw)

    monkeypatch.setattr(uvloop, "run", run)
    wl = Workload(ConstantRate(400), n_queries=40, app="hello")
    table = run_load(wl.generate(0), np.asarray(wl.inputs.load()[0]),
                     f"127.0.0.1:{server.ports['query']}", connections=2)
    assert (table["status"] == 200).all()
    assert during == [False]
    assert gc.isenabled()


def test_load_oip_api(server: Any) -> None:
    """The OIP v2 path (binary tensor) answers every query too."""
    wl = Workload(ConstantRate(200), n_queries=20, app="hello")
    trace = wl.generate(0)
    table = run_load(trace, np.asarray(wl.inputs.load()[0]),
                     f"127.0.0.1:{server.ports['query']}", api="oip", connections=2)
    assert (table["status"] == 200).all()
    assert not table["default"].any()


def test_load_cli_writes_csv_and_plot(server: Any, tmp_path: Path) -> None:
    """``clipperlab load`` writes one CSV row per query, the histogram and the summary."""
    spec = tmp_path / "w.toml"
    spec.write_text(WORKLOAD)
    out = tmp_path / "out"
    rc = main(["load", "--workload", str(spec), "--target",
               f"http://127.0.0.1:{server.ports['query']}", "--connections", "2",
               "--out", str(out)])
    assert rc == 0
    with open(out / "load.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 40
    assert {"arrival_at", "sent_at", "reply_at", "latency_s", "status", "default"} <= set(rows[0])
    assert (out / "latency.png").stat().st_size > 0
    assert "throughput_qps" in (out / "summary.txt").read_text()


def test_workload_spec_is_the_simulators(tmp_path: Path) -> None:
    """A ``[workload]`` table reads the same as in a simulator config."""
    spec = tmp_path / "w.toml"
    spec.write_text(WORKLOAD)
    wl = load_workload_spec(str(spec))
    assert wl.n_queries == 40 and wl.app == "hello"
    assert np.array_equal(wl.generate(1).arrival_at, wl.generate(1).arrival_at)


def test_validate_tiny(tmp_path: Path) -> None:
    """``validate`` on a no-op deployment and a short workload: a table with the real run,
    the plain and the calibrated simulation at each level, and its files."""
    from clipperlab.calibration.outputs import format_table, write_outputs
    from clipperlab.calibration.validation import TWIN_DRAWS, validate

    dep = tmp_path / "deploy.toml"
    dep.write_text(NOOP_DEPLOY)
    wl = Workload(ConstantRate(100), n_queries=10, app="hello")
    # one short twin ramp for the capacity prediction (the no-op twin's ramp runs to
    # tens of thousands of q/s: four of 2 s steps took most of this test's 30 s)
    res = validate(dep, wl, levels=(0.5,), duration_s=0.5, capacity_qps=100.0,
                   batch_sizes=(1, 2), profile_repeats=5, calib_qps=50.0, calib_s=0.4,
                   connections=2, stalls_s=0.3, ramps=1, ramp_s=0.5, log=lambda s: None)
    assert list(res.table["mode"]) == ["real", "real again", "sim", "sim+frontend",
                                       "sim+host", "sim+in-situ"]
    assert set(res.errors["mode"]) == {"real again", "sim", "sim+frontend", "sim+host",
                                       "sim+in-situ"}
    assert res.calibration.capacity_qps == 100.0
    # the prediction is the twin with the host CPU model (the default): this machine's
    # cores, the generator's CPU per query read from its own process
    assert res.calibration.host_cpus == os.cpu_count()
    assert res.calibration.loadgen_cpu_per_query_s > 0
    assert res.calibrations["sim+frontend"].host_cpus == 0
    assert res.calibrations["sim+host"] is res.calibration
    # the speed probe ran beside the runs (the default): fits for the calibration's runs
    # and for the levels, and the twin's host got the calibration's when it saw two
    assert res.speed_calib is not None and res.speed_levels is not None
    assert res.speed_calib.probes >= 20 and res.speed_calib.fast_ns > 0
    two = res.speed_calib.slow_factor > 1.0 and res.speed_calib.slow_share > 0.0
    assert (res.calibration.slow_share > 0.0) is two
    # the profile was taken with the probes on: its samples are the fast speed's
    assert "machine_speed_divided" in res.profiles["noop"].tags
    # one probe per core, pooled: the twin's cores switch each on its own
    assert res.speed_calib.cores == len(probe_cpus())
    assert res.calibration.core_speeds is (res.speed_calib.cores > 1)
    # the hiccup meter ran before the setting (0.3 s on every core): the twin's host has
    # its span and a list of stall lengths per core, the other twins none
    assert res.calibration.stalls_span_s == 0.3
    assert len(res.calibration.stalls_s) == len(probe_cpus())
    assert res.calibrations["sim+frontend"].stalls_span_s == 0.0
    # each kept run records how long each process waited runnable for a core (the
    # kernel's schedstat): the server's loop, its container and the generator
    assert res.runs and all(
        {n for n, _ in r.waits} == {"frontend", "container:noop", "loadgen"}
        and all(v >= 0.0 for _, v in r.waits) for r in res.runs)
    # ... and how often the loop and the container slept (voluntary context switches):
    # the loop's count per query is what its wake-up cost is fitted on
    assert all({n for n, _ in r.sleeps} == {"frontend", "container:noop"}
               and all(v >= 0.0 for _, v in r.sleeps) for r in res.runs)
    assert all(r.loop_sleeps_per_query >= 0.0 for r in res.runs)
    # each real run of a level ran TWIN_DRAWS times in each calibrated twin (recorded)
    assert (res.table["twin_draws"] == TWIN_DRAWS).all()
    # each level's rows record the machine's speed during its real runs
    assert res.table["speed_level_factor"].notna().all()
    assert res.table["speed_level_slow_share"].between(0, 1).all()
    # ... and the host CPU model's twin replayed each real run at the speed the probes
    # (one per core) recorded while it went (the default, ``replay_speed``)
    assert (res.table["speed_replayed_runs"] >= 1).all()
    # ... at a mean factor recorded beside the level's own fit, never below the fast one
    assert (res.table["speed_level_replay_factor"] >= 1.0).all()
    # every probe of the setting is kept (``speed_probes.npz`` in a fidelity run), one
    # trace per core, in time order
    assert sorted(res.speed_probes) == sorted(probe_cpus())
    t0, ns0 = res.speed_probes[probe_cpus()[0]]
    assert len(t0) == len(ns0) >= 20 and t0 == sorted(t0) and min(ns0) > 0
    files = write_outputs(res, tmp_path / "v")
    assert (tmp_path / "v" / "validation.png") in files
    assert "| 50% | real |" in (tmp_path / "v" / "summary.md").read_text()
    text = format_table(res)
    assert "sim+frontend" in text and text.splitlines()[-1].startswith("calibration: ")


def test_validate_with_a_ramp_after_the_levels(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``ramps_after``: of two capacity ramps, the second runs after the levels, whose
    rate the first one set; the calibration is fitted on runs from both sides (counted in
    ``runs_after_levels``), the capacity is the median of both ramps, the table records
    it; a ramp after the levels needs one before them and a measured capacity.  With
    ``jobs=2`` the fits' and the levels' twin runs go on two processes: each level's rows
    are the ones one process gives on the same real runs."""
    import clipperlab.calibration.validation as validation
    from clipperlab.calibration.errors import ValidationError
    from clipperlab.calibration.outputs import format_table
    from clipperlab.calibration.validation import validate

    one_process: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]] = []
    predict = validation.predict_level

    def both(setup: Any, calibs: Any, m: Any, mon: Any = None) -> list[dict[str, Any]]:
        rows = predict(setup, calibs, m, mon)
        one_process.append((rows, predict(dataclasses.replace(setup, jobs=1), calibs, m,
                                          mon)))
        return rows

    monkeypatch.setattr(validation, "predict_level", both)

    dep = tmp_path / "deploy.toml"
    # a slow no-op (2 ms a batch + 1 ms an item): a capacity under 1,000 q/s, short ramps
    dep.write_text(NOOP_DEPLOY.replace(
        'kind = "noop"', 'kind = "noop"\noptions = { delay_s = 0.002, per_item_s = 0.001 }'))
    wl = Workload(ConstantRate(100), n_queries=10, app="hello")
    lines: list[str] = []
    res = validate(dep, wl, levels=(0.3,), duration_s=0.4, batch_sizes=(1, 4, 16),
                   profile_repeats=3, calib_qps=50.0, calib_s=0.4, ramp_s=0.4,
                   ramp_step=3.0, ramp_start_qps=100.0, ramp_resolution=1.5, ramps=2,
                   ramps_after=1, repeats=1, twin_draws=2, connections=4,
                   stalls_s=0.0, jobs=2, log=lines.append)
    assert len(one_process) == 1
    got, alone = one_process[0]
    assert pd.DataFrame(got).equals(pd.DataFrame(alone))
    assert len(res.ramp_capacities) == 2
    first = res.ramp_capacities[0]
    real = res.table[res.table["mode"] == "real"].iloc[0]
    assert real["offered_qps"] == pytest.approx(0.3 * first)
    assert res.calibration.capacity_qps == pytest.approx(float(np.median(res.ramp_capacities)))
    assert 0 < res.runs_after_levels < len(res.runs)
    assert (res.table["ramps_after"] == 1).all()
    # the order, as the log tells it: ramp 1, the level's real runs, ramp 2, the twins
    at = {key: next(i for i, ln in enumerate(lines) if key in ln)
          for key in ("capacity ramp 1/2", "level 30% (", "capacity ramp 2/2", "sim+host ")}
    assert at["capacity ramp 1/2"] < at["level 30% ("] < at["capacity ramp 2/2"]
    assert at["capacity ramp 2/2"] < at["sim+host "]
    assert "came after the levels" in format_table(res)
    with pytest.raises(ValidationError, match="ramps_after"):
        validate(dep, wl, ramps=2, ramps_after=2, log=lambda s: None)
    with pytest.raises(ValidationError, match="measured capacity"):
        validate(dep, wl, ramps=2, ramps_after=1, capacity_qps=100.0, log=lambda s: None)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["profile", "--model", "sklearn:/no/such.joblib"], "does not exist"),
        (["profile", "--model", "noop", "--batch-sizes", "1,x"], "'x'"),
        (["profile", "--model", "noop", "--inputs", "synthetic:3xA"], "shape"),
        (["load", "--workload", "/no/such.toml", "--target", "127.0.0.1:9"], "cannot read"),
        (["load", "--workload", "{bad}", "--target", "127.0.0.1:1"], "qps"),
        (["load", "--workload", "{good}", "--target", "127.0.0.1:1"], "cannot connect"),
        (["load", "--workload", "{good}", "--target", "ftp://x"], "http://HOST:PORT"),
        (["validate", "--deployment", "/no/such.toml", "--workload", "{good}"], "does not"),
        (["validate", "--deployment", "{deploy}", "--workload", "{good}", "--levels", "a"],
         "--levels"),
        (["validate", "--deployment", "{deploy}", "--workload", "{otherapp}"], "not deployed"),
        (["validate", "--deployment", "{deploy}", "--workload", "{good}", "--ramps", "0"],
         "--ramps"),
        (["validate", "--deployment", "{deploy}", "--workload", "{good}", "--twin-draws",
          "0"], "--twin-draws"),
        (["validate", "--deployment", "{deploy}", "--workload", "{good}", "--jobs", "-1"],
         "--jobs"),
        (["validate", "--deployment", "{deploy}", "--workload", "{good}", "--ramps-after",
          "3"], "--ramps-after"),
        (["validate", "--deployment", "{deploy}", "--workload", "{good}",
          "--ramp-resolution", "1"], "--ramp-resolution"),
    ],
)
def test_bad_inputs_are_one_line_errors(
    argv: list[str], words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad files, fields and targets: exit 2 and one line naming the problem."""
    good = tmp_path / "good.toml"
    good.write_text(WORKLOAD)
    bad = tmp_path / "bad.toml"
    bad.write_text(WORKLOAD.replace("qps = 200", "qps = -5"))
    other = tmp_path / "other.toml"
    other.write_text(WORKLOAD.replace('app = "hello"', 'app = "nope"'))
    deploy = tmp_path / "deploy.toml"
    deploy.write_text(NOOP_DEPLOY)
    subs = {"{good}": str(good), "{bad}": str(bad), "{deploy}": str(deploy),
            "{otherapp}": str(other)}
    argv = [subs.get(a, a) for a in argv]
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    assert words in err
