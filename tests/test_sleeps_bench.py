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


def test_against_a_revision_alternates_and_compares(tmp_path: Path) -> None:
    """``--against HEAD``: each round runs both targets on HEAD's code (a staged tree) and
    on the working tree, then a verdict per target and a hit's share of a miss's; the
    temporary worktree is gone after."""
    root = BENCH.parent.parent

    def worktrees() -> str:
        return subprocess.run(["git", "-C", str(root), "worktree", "list"],
                              capture_output=True, text=True).stdout

    before = worktrees()
    out = tmp_path / "runs.json"
    r = subprocess.run([sys.executable, str(BENCH), "--target", "hit,rest", "--rate", "1000",
                        "--duration-s", "2", "--repeat", "1", "--against", "HEAD",
                        "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    runs = json.loads(out.read_text())
    assert sorted((x["target"], x["version"]) for x in runs) == [
        ("hit", "new"), ("hit", "ref"), ("rest", "new"), ("rest", "ref")]
    assert all(x["ok_qps"] > 500 for x in runs)
    lines = r.stdout.splitlines()
    assert any(ln.startswith("hit@HEAD ") for ln in lines)
    assert any(ln.startswith("rest: server us a request, median ") for ln in lines)
    assert any(ln.startswith("a hit / a miss, HEAD: ") for ln in lines)
    assert worktrees() == before  # the temporary worktree was removed


def test_an_unknown_revision_is_a_one_line_error() -> None:
    r = subprocess.run([sys.executable, str(BENCH), "--against", "no-such-rev-x1",
                        "--duration-s", "2"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip().startswith("sleeps_bench: no worktree at 'no-such-rev-x1'")
