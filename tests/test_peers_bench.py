"""bench/peers_bench.py without the peers: the skip path, the table, the output folder, the
process-tree CPU and the closed-loop load generator (against real_bench's echo server on
loopback).  The peers' own servers run only in the opt-in smoke test at the end
(``CLIPPERLAB_PEERS_SMOKE=1`` and the peer's venv from ``scripts/peers-setup.sh``): the
default suite never needs ``.venv-peers/``."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "peers_bench.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("peers_bench", BENCH)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["peers_bench"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


pb = _load()
ps = sys.modules["peers_servers"]  # who runs and how: the targets, servers, process trees


def _level(c: int, qps: float, **kw: float) -> object:
    base = dict(concurrency=c, ok_qps=qps, p50_ms=1.0, p99_ms=2.0, errors=0, defaults=0,
                lost_connections=0, completed=int(qps), cpu_s=1.0, cpu_us_per_request=50.0)
    return pb.Level(**{**base, **kw})


def test_a_peer_without_its_venv_is_skipped_with_the_setup_command(tmp_path: Path) -> None:
    """No .venv-peers/NAME: the reason names the missing python and the command that
    installs it."""
    version, why = pb.peer_version(pb.TARGETS["bentoml"], tmp_path / ".venv-peers")
    assert version == ""
    assert ".venv-peers/bentoml/bin/python" in why
    assert "bash scripts/peers-setup.sh bentoml" in why


def test_a_venv_without_the_package_is_skipped(tmp_path: Path) -> None:
    """A venv whose python cannot import the peer is skipped too (here: this python, which
    must not have mlserver: the peers stay out of clipperlab's environment)."""
    if importlib.util.find_spec("mlserver") is not None:
        pytest.fail("mlserver is installed in clipperlab's own environment: it must live in "
                    ".venv-peers/mlserver only")
    bindir = tmp_path / "mlserver" / "bin"
    bindir.mkdir(parents=True)
    (bindir / "python").symlink_to(sys.executable)
    version, why = pb.peer_version(pb.TARGETS["mlserver"], tmp_path)
    assert version == ""
    assert "mlserver is not importable" in why


def test_clipperlab_itself_is_never_skipped() -> None:
    version, why = pb.peer_version(pb.TARGETS["rest"])
    assert why == "" and version


def test_measure_target_skips_without_starting_anything(tmp_path: Path) -> None:
    """The skip path returns a result with the note and no levels (no server started)."""
    a = pb.parse_args(["--quick", "--only", "ray"])
    res = pb.measure_target(pb.TARGETS["ray"], tmp_path, a, venvs=tmp_path / "none")
    assert res.skipped.startswith("not installed")
    assert res.levels == [] and res.processes == {}
    assert list(tmp_path.iterdir()) == []


def test_the_table_has_the_issues_columns_and_a_line_per_skipped_peer() -> None:
    """req/s at each level; p50/p99 and CPU per request at the highest; a skipped peer is
    one row with its note."""
    ok = pb.Result(key="rest", label="clipperlab, Clipper REST", version="0.2.0",
                   levels=[_level(1, 2000.0), _level(16, 8200.0),
                           _level(64, 15234.0, p50_ms=2.9, p99_ms=7.7, cpu_us_per_request=57.4,
                                  defaults=3)])
    skipped = pb.Result(key="mlserver", label="MLServer", skipped="not installed: no venv")
    md = pb.table_md([ok, skipped], [1, 16, 64])
    lines = md.strip().splitlines()
    assert lines[0] == ("| | version | req/s c=1 / 16 / 64 | p50 / p99 at c=64 "
                        "| server CPU per request at c=64 | non-200 / defaults |")
    assert lines[2] == ("| clipperlab, Clipper REST | 0.2.0 | 2,000 / 8,200 / 15,234 "
                        "| 2.90 / 7.70 ms | 57 us | 0 / 3 |")
    assert lines[3] == "| MLServer | - | skipped: not installed: no venv | | | |"
    assert all(line.count("|") == 7 for line in lines)


def test_compiled_rows_follow_their_interpreted_ones() -> None:
    """--compiled adds clipperlab's compiled REST and OIP, each right after its own row;
    only for the clipperlab targets asked for; a full run stays a full run."""
    assert pb.run_order(pb.parse_args([])) == list(pb.ALL_TARGETS)
    assert pb.run_order(pb.parse_args(["--compiled"])) == [
        "rest", "rest-mypyc", "oip", "oip-mypyc", "mlserver", "bentoml", "ray"]
    assert pb.run_order(pb.parse_args(["--compiled", "--only", "oip,ray"])) == [
        "oip", "oip-mypyc", "ray"]
    assert pb.run_order(pb.parse_args(["--compiled", "--only", "mlserver"])) == ["mlserver"]
    assert pb.output_dir(pb.parse_args(["--compiled"]))[1] is True
    for key in pb.COMPILED_TARGETS:
        t = pb.TARGETS[key]
        base = pb.TARGETS[key.removesuffix("-mypyc")]
        assert t.compiled and not base.compiled and t.venv is None
        assert (t.path, t.body, t.mark) == (base.path, base.body, base.mark)


def test_only_a_full_run_writes_results_bench() -> None:
    """--quick or a subset of the targets goes to results/quick/, marked there."""
    assert pb.output_dir(pb.parse_args([]))[0].parts[-2:] == ("results", "bench")
    assert pb.output_dir(pb.parse_args([]))[1] is True
    for argv in (["--quick"], ["--only", "rest,ray"]):
        out, full = pb.output_dir(pb.parse_args(argv))
        assert out.parts[-2:] == ("results", "quick") and full is False


def test_write_results_marks_a_preview(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pb, "ROOT", tmp_path)
    a = pb.parse_args(["--quick", "--levels", "1"])
    res = [pb.Result(key="rest", label="clipperlab", version="0", levels=[_level(1, 10.0)],
                     processes={"python3": 2})]
    meta = {"cpus": 2, "started": "now", "background_cpu_busy_share": 0.5, "loadavg": "1.0"}
    out = pb.write_results(res, meta, a)
    md = (out / "peers_bench.md").read_text()
    assert out == tmp_path / "results" / "quick"
    assert "**Not a full run**" in md and "- rest: python3 x2" in md
    assert '"full_run": false' in (out / "peers_bench.json").read_text()


@pytest.mark.parametrize("argv", [["--levels", "0,16"], ["--levels", "a"],
                                  ["--only", "rest,tfserving"], ["--duration-s", "0"]])
def test_bad_arguments_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        pb.parse_args(argv)
    assert argv[1].split(",")[-1] in capsys.readouterr().err


def test_quick_shortens_levels_unless_told_otherwise() -> None:
    a = pb.parse_args(["--quick"])
    assert (a.duration_s, a.warmup_s) == (2.0, 0.5)
    assert pb.parse_args(["--quick", "--duration-s", "3"]).duration_s == 3.0
    assert (pb.parse_args([]).duration_s, pb.parse_args([]).levels) == (8.0, [1, 16, 64])


def test_cpu_delta_counts_new_processes_whole_and_loses_gone_ones() -> None:
    before = {1: 10.0, 2: 5.0}
    after = {1: 12.5, 3: 0.75}  # 2 exited, 3 started
    assert ps.cpu_delta(before, after) == pytest.approx(3.25)


def test_the_tree_holds_grandchildren_and_stop_tree_ends_them() -> None:
    """A child that outlives its SIGTERMed parent (as Ray's raylet may) is killed too."""
    code = ("import subprocess, sys, time; "
            "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)']); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        for _ in range(600):  # until the grandchild has started (30 s at most)
            if len(ps.tree(proc.pid)) == 2:
                break
            time.sleep(0.05)
        pids = ps.tree(proc.pid)
        assert len(pids) == 2 and pids[0] == proc.pid
        assert ps.process_name(pids[1]) == "python -c ..."
        assert set(ps.tree_cpu(proc.pid)) == set(pids)
        ps.stop_tree(proc)
        assert proc.returncode is not None
        assert ps._start_time(pids[1]) is None  # killed (a zombie at most)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_closed_loop_against_an_echo_server(tmp_path: Path) -> None:
    """Every connection keeps one request outstanding; replies are counted as successes and
    the server's CPU is read from its process tree."""
    proc, port = pb.real_bench._start_echo("echo", tmp_path)
    try:
        a = pb.parse_args(["--levels", "3", "--duration-s", "0.3", "--warmup-s", "0.1"])
        t = pb.Target(key="echo", label="echo", path="/echo", body=ps.REST_BODY)
        lv = pb.measure_level(proc.pid, port, t, 3, a)
    finally:
        pb.real_bench._stop(proc)
    assert lv.concurrency == 3
    assert lv.ok_qps > 0 and lv.completed > 0
    assert lv.errors == 0 and lv.defaults == 0 and lv.lost_connections == 0
    assert lv.p50_ms <= lv.p99_ms
    assert lv.cpu_s >= 0.0


def test_clipperlab_rows_run_in_the_default_suite(tmp_path: Path) -> None:
    """clipperlab's own row needs no peer: its server starts (real_bench's helper, with
    the options that helper reads), answers 200s at c=1 and c=2 with no default, its
    frontend and container are counted, and it is stopped."""
    a = pb.parse_args(["--levels", "1,2", "--duration-s", "0.5", "--warmup-s", "0.2"])
    res = pb.measure_target(pb.TARGETS["rest"], tmp_path, a)
    assert res.skipped == "", res.skipped
    assert [lv.concurrency for lv in res.levels] == [1, 2]
    assert all(lv.ok_qps > 0 and lv.errors == 0 for lv in res.levels)
    assert any("clipperlab.real.container" in name for name in res.processes), res.processes
    assert all(lv.cpu_s > 0 for lv in res.levels)


SMOKE = os.environ.get("CLIPPERLAB_PEERS_SMOKE") == "1"


@pytest.mark.skipif(not SMOKE, reason="opt-in: CLIPPERLAB_PEERS_SMOKE=1 (needs .venv-peers/)")
@pytest.mark.parametrize("key", ["mlserver", "bentoml", "ray"])
def test_smoke_a_peer_from_its_venv(key: str, tmp_path: Path) -> None:
    """Each installed peer starts from its venv, answers the benchmark's request with 200s
    at c=1 and c=2, and its process tree is counted."""
    if pb.peer_version(pb.TARGETS[key])[1]:
        pytest.skip(f"{key}: no venv (bash scripts/peers-setup.sh {key})")
    a = pb.parse_args(["--levels", "1,2", "--duration-s", "0.5", "--warmup-s", "0.2"])
    res = pb.measure_target(pb.TARGETS[key], tmp_path, a)
    assert res.skipped == "", res.skipped
    assert [lv.concurrency for lv in res.levels] == [1, 2]
    assert all(lv.ok_qps > 0 and lv.errors == 0 for lv in res.levels)
    assert res.processes and all(lv.cpu_s > 0 for lv in res.levels)


def test_main_runs_with_every_peer_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """The whole run, peers only, none installed: a table of notes, written as a preview."""
    monkeypatch.setattr(pb, "ROOT", tmp_path)
    monkeypatch.setattr(pb, "VENVS", tmp_path / "none")
    monkeypatch.setattr(pb.real_bench, "background_busy_share", lambda: 0.0)
    orig = pb.measure_target
    monkeypatch.setattr(pb, "measure_target",
                        lambda t, tmp, a: orig(t, tmp, a, venvs=tmp_path / "none"))
    assert pb.main(["--quick", "--only", "mlserver,bentoml,ray"]) == 0
    out = capsys.readouterr().out
    assert out.count("skipped: not installed") == 6  # progress line and table row each
    md = (tmp_path / "results" / "quick" / "peers_bench.md").read_text()
    assert md.count("| skipped: not installed") == 3


def test_a_second_echo_start_in_one_folder_gets_its_own_port(tmp_path: Path) -> None:
    """real_bench starts the echo twice in one folder (its ramp, then the servers' equal
    load): the second start answers on its own port, not the first one's closed one."""
    first, port1 = pb.real_bench._start_echo("echo", tmp_path)
    pb.real_bench._stop(first)
    second, port2 = pb.real_bench._start_echo("echo", tmp_path)
    try:
        import urllib.request

        body = ps.REST_BODY
        req = urllib.request.Request(f"http://127.0.0.1:{port2}/echo", data=body)
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.read() == body
    finally:
        pb.real_bench._stop(second)


def test_serve_config_stops_a_server_whose_application_never_gets_ready(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The benches' server start (real_bench.serve_config) gives up with TimeoutError when
    the application never gets ready (its model cannot load), and stops the server."""
    cfg = tmp_path / "bench.toml"
    cfg.write_text(f"""
[server]
query_port = 0
admin_port = 0
rpc_port = 0
store = "{tmp_path / 'store'}"

[[models]]
name = "broken"
kind = "python"
path = "no_such_module_here:fn"
replicas = 1

[[applications]]
name = "bench"
slo_ms = 20
default_output = -1
models = ["broken"]
""")
    started: list[Any] = []
    real_popen = pb.real_bench.subprocess.Popen

    def popen(*args: Any, **kw: Any) -> Any:
        started.append(real_popen(*args, **kw))
        return started[-1]

    monkeypatch.setattr(pb.real_bench.subprocess, "Popen", popen)
    with pytest.raises(TimeoutError, match="'bench' was not ready within 3 s"):
        pb.real_bench.serve_config(cfg, "bench", ready_timeout_s=3.0)
    assert len(started) == 1 and started[0].poll() is not None  # stopped
