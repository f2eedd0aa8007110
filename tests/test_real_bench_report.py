"""bench/real_bench.py --report: a stored run's table printed again, nothing measured; the
server's CPU per query at equal load counts a miss's container beside the frontend."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "real_bench.py"
STORED = ROOT / "results" / "bench" / "real_bench.json"


def _report(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BENCH), "--report", str(path)],
                          capture_output=True, text=True, timeout=60)


def _printed(run: dict[str, Any], tmp_path: Path) -> list[str]:
    """The lines ``--report`` prints for ``run`` (stored in ``tmp_path``); it must exit 0."""
    f = tmp_path / "run.json"
    f.write_text(json.dumps(run))
    out = _report(f)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def _stored_with_equal_load() -> dict[str, Any]:
    """The stored run with known CPU figures (frontend, container: us a query) at the
    equal load: REST 20 + 4, a hit 11 + 0, OIP 21 + 4.5."""
    run: dict[str, Any] = json.loads(STORED.read_text())
    eq = {"rest": (20.0, 4.0), "hit": (11.0, 0.0), "oip": (21.0, 4.5)}
    for name, (fe, ct) in eq.items():
        run["targets"][name]["equal"].update(frontend_us_per_query=fe,
                                             container_us_per_query=ct)
    return run


def test_report_prints_the_server_cpu_of_a_hit_against_a_miss(tmp_path: Path) -> None:
    lines = _printed(_stored_with_equal_load(), tmp_path)
    fe = next(ln for ln in lines if ln.startswith("frontend CPU us/query at equal load"))
    assert "hit 11.0 = 0.55x rest" in fe
    server = next(ln for ln in lines if ln.startswith("server CPU us/query at equal load"))
    # the miss's 20 + 4 against the hit's 11 + 0: under half of the server's CPU
    assert "rest 24.0" in server and "hit 11.0 = 0.46x rest" in server
    assert "oip 25.5 = 1.06x rest" in server


def test_report_of_a_missing_file_is_one_line_and_exit_1(tmp_path: Path) -> None:
    out = _report(tmp_path / "none.json")
    assert out.returncode == 1
    assert out.stderr.startswith("real_bench: --report") and out.stderr.count("\n") == 1


def test_report_takes_the_echo_out_when_it_ran_at_the_equal_load(tmp_path: Path) -> None:
    """With the echo's run at the servers' equal load stored, a last line gives each
    server's CPU per query less the echo's, and the ratios of what is left; without it
    (older runs) the line is not printed."""
    run = _stored_with_equal_load()
    without = tmp_path / "without.json"
    without.write_text(json.dumps(run))
    assert "beyond the echo" not in _report(without).stdout
    run["targets"]["echo"]["equal"] = dict(run["targets"]["rest"]["equal"],
                                           frontend_us_per_query=6.0,
                                           container_us_per_query=0.0,
                                           speed={"fast_ns": 900.0, "slow_factor": 1.5,
                                                  "slow_share": 0.25, "slow_dwell_s": 0.1})
    lines = _printed(run, tmp_path)
    beyond = next(ln for ln in lines
                  if ln.startswith("server CPU beyond the echo's 6.0 us/query"))
    # rest 24 - 6 = 18, hit 11 - 6 = 5 (0.28x), oip 25.5 - 6 = 19.5 (1.08x); no echo entry
    assert "rest 18.0" in beyond and "hit 5.0 = 0.28x rest" in beyond
    assert "oip 19.5 = 1.08x rest" in beyond and "echo" not in beyond.split(":", 1)[1]
    # the machine's speed during that run too, as during each target's
    assert any("echo at equal load 25% x1.50 (fast 900 ns)" in ln for ln in lines)


def _bench() -> tuple[Any, Any]:
    """``real_bench`` and its report module (bench/ is not a package: loaded by path, and
    real_bench imports its siblings)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("real_bench", BENCH)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod, sys.modules["real_bench_report"]


def _echo_and_server_runs() -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """Runs where the echo costs 40 us a query one at a time, 30 at 4,000 q/s falling to
    5 at 256,000 (linear in log load), and a server costs that plus 4 us a query and 20 a
    batch, its batches growing with the load (1 query one at a time, 2 at 4,000, ... 64)."""
    loads = [4000.0 * 2**k for k in range(7)]
    echo = [{"offered": 0.0, "queries": 1000.0, "batches": 0.0, "frontend_cpu_s": 40e-6 * 1000}]
    mine = [{"offered": 0.0, "queries": 1000.0, "batches": 1000.0,
             "frontend_cpu_s": (40 + 4 + 20) * 1e-6 * 1000}]
    for k, rate in enumerate(loads):
        per = 30.0 - 25.0 * k / 6
        q = rate * 3
        echo.append({"offered": rate, "queries": q, "batches": 0.0,
                     "frontend_cpu_s": per * 1e-6 * q})
        b = q / 2 ** (k + 1)
        mine.append({"offered": rate, "queries": q, "batches": b,
                     "frontend_cpu_s": ((per + 4) * q + 20 * b) * 1e-6})
    return echo, mine


def test_the_fit_beyond_the_echo_takes_the_http_stacks_cost_off_the_batches() -> None:
    """The plain fit lays the echo's falling per-query cost on the batches (both fall as
    load rises); with the echo's cost at each load taken out first, the fit finds the
    server's own 4 us a query and 20 a batch."""
    rb, report = _bench()
    echo, mine = _echo_and_server_runs()
    t = rb.Target("rest", 0, "/", b"", b"", pid=1)
    t.samples = [{**r, "container_cpu_s": 0.0} for r in mine]
    plain = t.cpu_split()
    assert plain["frontend_us_per_batch"] > 30.0  # the HTTP stack's wake-ups on the batches
    fit = report.beyond_echo_split(mine, echo)
    assert abs(fit["frontend_us_per_query"] - 4.0) < 0.01
    assert abs(fit["frontend_us_per_batch"] - 20.0) < 0.01
    # an echo load between two of its runs is interpolated in log load: halfway, halfway
    mid = {"offered": 4000.0 * 2**0.5, "queries": 5000.0, "batches": 2500.0,
           "frontend_cpu_s": ((30.0 - 25.0 / 12 + 4) * 5000 + 20 * 2500) * 1e-6}
    fit = report.beyond_echo_split([*mine, mid], echo)
    assert abs(fit["frontend_us_per_batch"] - 20.0) < 0.01
    # no echo runs (an older stored run), or one run of ours: nothing to fit
    assert report.beyond_echo_split(mine, []) == {}
    assert report.beyond_echo_split(mine[:1], echo) == {}
    # cache hits: a miss or two in a warm-up is no batch cost to fit, per query only
    hits = [{**r, "batches": 2.0 if r["offered"] == 4000.0 else 0.0,
             "frontend_cpu_s": r["frontend_cpu_s"] + 1.5e-6 * r["queries"]} for r in echo]
    assert report.beyond_echo_split(hits, echo) == {"frontend_us_per_query": pytest.approx(1.5)}


def test_report_prints_the_split_beyond_the_echo_and_the_round_trip_floor(
        tmp_path: Path) -> None:
    run = _stored_with_equal_load()
    f = tmp_path / "old.json"
    f.write_text(json.dumps(run))
    old = _report(f).stdout
    assert "taken out first" not in old and "round trip" not in old  # older runs: no line
    echo, mine = _echo_and_server_runs()
    run["targets"]["echo"]["runs"] = echo
    run["targets"]["rest"]["runs"] = mine
    run["rtt"] = {"round_trips": 1000, "us_per_round_trip": 50.0, "sender_us": 22.5,
                  "receiver_us": 21.0}
    lines = _printed(run, tmp_path)
    split = next(ln for ln in lines if "taken out first" in ln)
    assert "rest 4.0 us/q + 20.0 us/b" in split and "oip" not in split  # oip has no runs
    floor = next(ln for ln in lines if ln.startswith("a bare round trip"))
    assert "sender 22.5 us, receiver 21.0 us" in floor
    # with no per-batch work of its own a frontend would still show, per batch, what the
    # plain fit lays on the batches of the echo's wake-ups, plus the bare trip
    share = run["targets"]["rest"]["cpu"]["frontend_us_per_batch"] - 20.0
    none_own = next(ln for ln in lines if ln.startswith("what a frontend with no per-batch"))
    assert f"rest {share:.1f} + 22.5 = {share + 22.5:.1f} us" in none_own
    assert "oip" not in none_own


def test_the_round_trip_floor_runs_a_peer_and_counts_both_sides_cpu() -> None:
    out = subprocess.run([sys.executable, str(BENCH), "--role", "rtt", "--duration-s", "0.5",
                          "--warmup-s", "0.1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["round_trips"] > 0
    assert r["sender_us"] >= 0 and r["receiver_us"] >= 0
    assert r["us_per_round_trip"] > 0


def test_compiled_rows_are_taken_apart_against_the_compiled_echo(tmp_path: Path) -> None:
    """With ``echo-mypyc`` stored (``--compiled``: our HTTP stack compiled), the -mypyc
    rows' CPU beyond the echo, at equal load and in the fit, is taken against it; the
    interpreted rows keep the interpreted echo; the echoes are never rows of the split."""
    run = _stored_with_equal_load()
    echo, mine = _echo_and_server_runs()
    base = dict(run["targets"]["rest"]["equal"], container_us_per_query=0.0)
    run["targets"]["echo"]["equal"] = dict(base, frontend_us_per_query=6.0)
    run["targets"]["echo-mypyc"] = dict(run["targets"]["echo"],
                                        equal=dict(base, frontend_us_per_query=4.0),
                                        runs=[{**r, "frontend_cpu_s": r["frontend_cpu_s"] / 2}
                                              for r in echo])
    run["targets"]["echo"]["runs"] = echo
    run["targets"]["rest-mypyc"] = dict(run["targets"]["rest"], runs=[
        {**r, "frontend_cpu_s": r["frontend_cpu_s"] - e["frontend_cpu_s"] / 2}
        for r, e in zip(mine, echo, strict=True)])
    run["targets"]["rest-mypyc"]["equal"] = dict(base, frontend_us_per_query=10.0,
                                                 container_us_per_query=2.0)
    run["targets"]["rest"]["runs"] = mine
    lines = _printed(run, tmp_path)
    beyond = next(ln for ln in lines if ln.startswith("server CPU beyond the echo's 6.0"))
    assert "(echo-mypyc's 4.0 for the -mypyc rows)" in beyond
    # rest 24 - 6; rest-mypyc 12 - 4 (against the interpreted echo it would be 6.0)
    assert "rest 18.0" in beyond and "rest-mypyc 8.0" in beyond
    assert "echo" not in beyond.split(":", 1)[1].replace("rest-mypyc", "")
    # the fit: the compiled row's runs are the compiled echo's (half the echo's) plus the
    # same 4 us a query and 20 a batch, found only against the compiled echo
    split = next(ln for ln in lines if "taken out first" in ln)
    assert "(echo-mypyc's for the -mypyc rows)" in split
    assert "rest 4.0 us/q + 20.0 us/b" in split and "rest-mypyc 4.0 us/q + 20.0 us/b" in split
    eq = next(ln for ln in lines if ln.startswith("frontend CPU us/query at equal load"))
    assert "echo-mypyc 4.0 = 0.40x rest-mypyc" in eq
