"""bench/real_bench.py --report: a stored run's table printed again, nothing measured; the
server's CPU per query at equal load counts a miss's container beside the frontend."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "real_bench.py"
STORED = ROOT / "results" / "bench" / "real_bench.json"


def _report(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BENCH), "--report", str(path)],
                          capture_output=True, text=True, timeout=60)


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
    run = _stored_with_equal_load()
    f = tmp_path / "run.json"
    f.write_text(json.dumps(run))
    out = _report(f)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
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
    f = tmp_path / "run.json"
    f.write_text(json.dumps(run))
    out = _report(f)
    assert out.returncode == 0, out.stderr
    beyond = next(ln for ln in out.stdout.splitlines()
                  if ln.startswith("server CPU beyond the echo's 6.0 us/query"))
    # rest 24 - 6 = 18, hit 11 - 6 = 5 (0.28x), oip 25.5 - 6 = 19.5 (1.08x); no echo entry
    assert "rest 18.0" in beyond and "hit 5.0 = 0.28x rest" in beyond
    assert "oip 19.5 = 1.08x rest" in beyond and "echo" not in beyond.split(":", 1)[1]
    # the machine's speed during that run too, as during each target's
    assert "echo at equal load 25% x1.50 (fast 900 ns)" in out.stdout
