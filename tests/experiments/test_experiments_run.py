"""Each experiment runs on a tiny config and writes its files; the CLI refuses bad input
with one line and exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from clipperlab.cli import main
from clipperlab.experiments.config import parse_set_args, parse_value, with_overrides
from clipperlab.experiments.fig4 import Config as Fig4Config
from clipperlab.experiments.framework import EXPERIMENTS, run_experiment

# Tiny overrides on top of each --quick config: a few seconds each on 2 cores.
TINY: dict[str, dict[str, object]] = {
    "fig2": {"profiles": ("prototype-linear-svm", "measured-noop"), "max_batch": 64},
    "fig3": {"models": ("linear-svm",), "policies": ("none", "aimd", "tfserving"),
             "n_queries": 3000, "jobs": 1},
    "fig4": {"models": ("spark-svm",), "wait_ms": (0.0, 5.0), "n_queries": 3000},
    "fig5": {"replicas": (1, 2), "network_gbps": (1.0,), "n_queries": 3000, "jobs": 1},
    "fig9": {"sizes": (1, 3), "n_queries": 2000, "ramp_s": 0.02, "warmup_s": 0.02, "jobs": 1},
}


def test_batching_experiments_are_registered() -> None:
    """The batching figures are listed (other figures have tests of their own)."""
    assert set(TINY) <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", list(TINY))
def test_experiment_runs_and_writes_its_files(name: str, tmp_path: Path) -> None:
    """run -> results/NAME/: the CSV, a PNG, summary.md with the claims table, config.json."""
    rec = run_experiment(name, quick=True, out_dir=tmp_path, seed=1, overrides=TINY[name])
    names = {p.name for p in tmp_path.iterdir()}
    assert {f"{name}.csv", f"{name}.png", "summary.md", "config.json"} <= names
    table = pd.read_csv(tmp_path / f"{name}.csv")
    assert len(table) == len(rec.results.table) > 0
    png = (tmp_path / f"{name}.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (tmp_path / "summary.md").read_text()
    assert summary.startswith(f"# {name}: ")
    assert "| what | paper | ours |" in summary
    assert f"![{name}]({name}.png)" in summary
    assert json.loads((tmp_path / "config.json").read_text())["seed"] == 1
    if name != "fig2":  # fig2 reads profiles; the others keep every batch they simulated
        raw = pd.read_parquet(tmp_path / "raw" / "batches.parquet")
        assert {"size", "sent_at", "done_at", "reason"} <= set(raw.columns)
        assert len(raw) > 0


def test_same_seed_same_table(tmp_path: Path) -> None:
    """Experiments are seeded: the same seed gives the same numbers."""
    a = run_experiment("fig4", quick=True, out_dir=tmp_path / "a", seed=3,
                       overrides=TINY["fig4"]).results.table
    b = run_experiment("fig4", quick=True, out_dir=tmp_path / "b", seed=3,
                       overrides=TINY["fig4"]).results.table
    pd.testing.assert_frame_equal(a, b)


def test_fig4_longer_wait_makes_bigger_batches(tmp_path: Path) -> None:
    """Delayed batching: a wait longer than a batch takes grows the batches (Spark SVM)."""
    t = run_experiment("fig4", quick=True, out_dir=tmp_path, overrides=TINY["fig4"]).results.table
    sizes = t.set_index("wait_ms")["mean_batch"]
    assert sizes[5.0] > sizes[0.0]


def test_fig5_measured_gpu_is_network_bound_at_10_gbps(tmp_path: Path) -> None:
    """On the measured H200 profile one replica is held by its own link (a batch's
    transfer and compute do not overlap), and two reach the 10 Gbps frontend NIC's cap;
    at 100 Gbps a second replica doubles the throughput (the paper's linear scaling)."""
    from clipperlab.experiments.fig5 import nic_cap_qps

    t = run_experiment("fig5", quick=True, out_dir=tmp_path, overrides={
        "replicas": (1, 2), "network_gbps": (10.0, 100.0), "n_queries": 40_000, "jobs": 1,
    }).results.table.set_index(["network_gbps", "replicas"])["throughput_qps"]
    cap = nic_cap_qps(10.0)
    assert t[(10.0, 1)] < 0.8 * cap
    assert t[(10.0, 2)] == pytest.approx(cap, rel=0.06)
    assert t[(100.0, 2)] == pytest.approx(2 * t[(100.0, 1)], rel=0.15)
    assert t[(100.0, 1)] > 2 * t[(10.0, 1)]


def test_config_parsing() -> None:
    """Text to typed values: numbers, tuples joined with '+', booleans, None."""
    assert parse_value("x", "3", int) == 3
    assert parse_value("x", "2.5", float) == 2.5
    assert parse_value("x", "a+b", tuple[str, ...]) == ("a", "b")
    assert parse_value("x", "1+2", tuple[float, ...]) == (1.0, 2.0)
    assert parse_value("x", "no", bool) is False
    assert parse_value("x", "none", int | None) is None
    with pytest.raises(ValueError, match="x='y': expected an integer"):
        parse_value("x", "y", int)
    with pytest.raises(ValueError, match="unknown key 'nope'"):
        parse_set_args(Fig4Config, ["nope=1"])
    with pytest.raises(ValueError, match="expected key=value"):
        parse_set_args(Fig4Config, ["rate_qps"])
    with pytest.raises(ValueError, match="empty value"):
        parse_set_args(Fig4Config, ["rate_qps=1,"])
    with pytest.raises(ValueError, match="unknown config key"):
        with_overrides(Fig4Config(), {"nope": 1})


def _cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["experiment", "fig99"], "unknown experiment 'fig99'"),
        (["experiment"], "missing NAME"),
        (["experiment", "fig4", "--set", "wait_ms"], "expected key=value"),
        (["experiment", "fig4", "--set", "bogus=1"], "unknown key 'bogus'"),
        (["experiment", "fig4", "--set", "rate_qps=fast"], "expected a number"),
        (["experiment", "fig4", "--set", "rate_qps=-5"], "rate_qps must be > 0"),
        (["sweep", "fig99"], "unknown experiment 'fig99'"),
        (["sweep", "fig4", "--set", "wait_ms=1,,2"], "empty value"),
        (["sweep", "fig4", "--set", "=1"], "expected key=value"),
        (["sweep", "fig4", "--seeds", "0"], "--seeds must be >= 1"),
        (["sweep", "fig4", "--jobs", "0"], "--jobs must be >= 1"),
        (["sweep", "fig4", "--executor", "slurm"], "--executor 'slurm' is unknown"),
        (["sweep", "fig4", "--set", "seed=1,2"], "use --seeds"),
        (["sweep", "fig4", "--set", "n_queries=5"], "n_queries must be >= 100"),
    ],
)
def test_cli_errors_are_one_line_exit_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _cli_error(argv, capsys)
    assert line.startswith(f"clipperlab {argv[0]}: error: ")
    assert needle in line


def test_cli_ray_executor_without_ray_says_so(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without Ray installed, --executor ray is one clear line (simulated by hiding it)."""
    import builtins

    real_import = builtins.__import__

    def no_ray(name: str, *a: object, **kw: object) -> object:
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_ray)
    line = _cli_error(["sweep", "fig2", "--executor", "ray", "--no-progress"], capsys)
    assert "needs Ray" in line and "pip install" in line


def test_cli_experiment_and_sweep_write_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The two commands end to end on tiny settings."""
    out = tmp_path / "exp"
    assert main(["experiment", "fig2", "--out", str(out), "--set", "max_batch=8"]) == 0
    assert (out / "summary.md").exists()
    sweep_out = tmp_path / "sweep"
    code = main(["sweep", "fig4", "--quick", "--set", "wait_ms=0,5", "--set", "models=spark-svm",
                 "--set", "n_queries=2000", "--seeds", "2", "--jobs", "2", "--no-progress",
                 "--out", str(sweep_out)])
    assert code == 0
    full = pd.read_csv(sweep_out / "sweep.csv")
    summary = pd.read_csv(sweep_out / "summary.csv")
    assert len(full) == 4 and sorted(full["seed"].unique()) == [0, 1]
    assert list(summary["wait_ms"]) == [0.0, 5.0] and list(summary["n"]) == [2, 2]
    printed = capsys.readouterr().out
    assert "4 job(s) (2 grid point(s) x 2 seed(s))" in printed


def test_a_run_names_its_commit_and_says_when_the_code_was_not_that_commit(
        tmp_path: Path) -> None:
    """summary.md's run line: the commit, with "and uncommitted changes" when a tracked
    file outside results/ differs from it; new results alone leave it clean."""
    import subprocess

    from clipperlab.experiments.framework import _git_commit

    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              cwd=tmp_path, check=True, capture_output=True,
                              text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "fig.csv").write_text("a\n")
    git("add", "-A")
    git("commit", "-qm", "one")
    head = git("rev-parse", "--short", "HEAD")
    assert _git_commit(tmp_path) == head
    (tmp_path / "results" / "fig.csv").write_text("b\n")  # a run's own output
    (tmp_path / "new.py").write_text("")  # untracked: not the code that ran
    assert _git_commit(tmp_path) == head
    (tmp_path / "code.py").write_text("x = 2\n")
    assert _git_commit(tmp_path) == f"{head} and uncommitted changes"
    assert _git_commit(tmp_path / "results") == f"{head} and uncommitted changes"
    assert _git_commit(tmp_path.parent / "nowhere") == "unknown"
