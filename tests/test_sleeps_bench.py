"""bench/sleeps_bench.py: a run against a real server reports each process's CPU and
sleeps per request; bad arguments are refused with a usage error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "sleeps_bench.py"


def test_a_cache_hit_run_reports_cpu_and_sleeps_per_request(tmp_path: Path) -> None:
    out = tmp_path / "runs.json"
    r = subprocess.run([sys.executable, str(BENCH), "--target", "hit", "--rate", "1000",
                        "--duration-s", "2", "--repeat", "1", "--json", str(out)],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    (run,) = json.loads(out.read_text())
    assert run["target"] == "hit" and run["ok_qps"] > 500
    assert run["frontend_cpu_us"] > 0 and run["generator_cpu_us"] > 0
    assert run["generator_sleeps"] > 0  # 1,000 q/s leaves the generator idle between sends
    assert "containers_cpu_us" in run and run["containers_sleeps"] >= 0
    (row,) = [ln for ln in r.stdout.splitlines() if ln.startswith("hit ")]
    assert len(row.split()) == 8


def test_bad_arguments_are_a_usage_error() -> None:
    r = subprocess.run([sys.executable, str(BENCH), "--duration-s", "1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "--duration-s must be >= 2" in r.stderr.strip().splitlines()[-1]
