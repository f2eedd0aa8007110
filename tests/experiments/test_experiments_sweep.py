"""The sweep runner: grid expansion, parallel local jobs, the summary table, Ray."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
import pytest

from clipperlab.experiments.config import parse_set_args
from clipperlab.experiments.fig4 import Config as Fig4Config
from clipperlab.experiments.sweep import Job, expand_grid, run_jobs, summarize


def test_grid_expands_in_order_with_seeds() -> None:
    """The product of the --set lists, last key fastest, times consecutive seeds."""
    grid = parse_set_args(Fig4Config, ["rate_qps=1000,2000", "models=linear-svm+noop,noop"])
    assert grid == {"rate_qps": [1000.0, 2000.0], "models": [("linear-svm", "noop"), ("noop",)]}
    jobs = expand_grid("fig4", grid, seeds=2, first_seed=5, quick=True)
    assert len(jobs) == 8
    assert [j.index for j in jobs] == list(range(8))
    assert [dict(j.overrides)["rate_qps"] for j in jobs] == [1000.0] * 4 + [2000.0] * 4
    assert [dict(j.overrides)["models"] for j in jobs[:4]] == [
        ("linear-svm", "noop"), ("linear-svm", "noop"), ("noop",), ("noop",)
    ]
    assert [j.seed for j in jobs] == [5, 6] * 4
    assert all(j.quick for j in jobs)


def test_grid_without_keys_is_seeds_only() -> None:
    """No --set: one grid point, one job per seed."""
    jobs = expand_grid("fig2", {}, seeds=3)
    assert [(j.overrides, j.seed) for j in jobs] == [((), 0), ((), 1), ((), 2)]


def test_zero_seeds_refused() -> None:
    with pytest.raises(ValueError, match="seeds"):
        expand_grid("fig2", {}, seeds=0)


# A job function for the parallel test: each job writes its pid, then waits until the
# other job has written too.  Run one after the other, the first would wait in vain and
# report False; run in parallel, both see each other.
RENDEZVOUS_TIMEOUT_S = 60.0


def rendezvous_job(job: Job) -> pd.DataFrame:
    folder = Path(dict(job.overrides)["folder"])
    (folder / f"{job.index}.pid").write_text(str(os.getpid()))
    deadline = time.monotonic() + RENDEZVOUS_TIMEOUT_S
    met = False
    while time.monotonic() < deadline:
        if len(list(folder.glob("*.pid"))) >= 2:
            met = True
            break
        time.sleep(0.01)
    return pd.DataFrame({"index": [job.index], "pid": [os.getpid()], "met": [met]})


def test_two_jobs_run_in_parallel_processes(tmp_path: Path) -> None:
    """With --jobs 2 both jobs run at once, each in a worker process of its own."""
    jobs = [Job(i, "none", (("folder", str(tmp_path)),), seed=0) for i in range(2)]
    tables = run_jobs(jobs, n_workers=2, progress=False, fn=rendezvous_job)
    table = pd.concat(tables, ignore_index=True)
    assert list(table["index"]) == [0, 1]  # job order, whatever finished first
    assert table["met"].all()
    assert table["pid"].nunique() == 2
    assert os.getpid() not in set(table["pid"])


def test_summary_averages_over_seeds() -> None:
    """One row per grid point and row key; metrics averaged; n counts seeds."""
    t = pd.DataFrame({
        "wait_ms": [0, 0, 0, 0, 2, 2], "seed": [0, 1, 0, 1, 0, 1],
        "model": ["a", "a", "b", "b", "a", "a"], "p99_ms": [1.0, 3.0, 5.0, 7.0, 2.0, 2.0],
    })
    s = summarize(t, ["wait_ms"], ["model"])
    assert list(s.columns) == ["wait_ms", "model", "n", "p99_ms"]
    assert s.to_dict("list") == {
        "wait_ms": [0, 0, 2], "model": ["a", "b", "a"], "n": [2, 2, 2],
        "p99_ms": [2.0, 6.0, 2.0],
    }


def test_real_sweep_two_jobs(tmp_path: Path) -> None:
    """A tiny fig4 sweep runs two jobs on two processes and returns one tidy table."""
    grid = {"wait_ms": [(0.0,), (2.0,)], "n_queries": [3000], "models": [("linear-svm",)]}
    jobs = expand_grid("fig4", grid, seeds=1, quick=True)
    tables = run_jobs(jobs, n_workers=2, progress=False)
    table = pd.concat(tables, ignore_index=True)
    assert list(table["wait_ms"]) == [0.0, 2.0]
    assert (table["seed"] == 0).all()
    assert {"model", "mean_batch", "p99_ms", "throughput_qps"} <= set(table.columns)


def test_ray_executor_runs_a_small_grid() -> None:
    """--executor ray runs the same grid on a local Ray instance (skipped without ray)."""
    pytest.importorskip("ray")
    grid = {"profiles": [("prototype-noop",), ("prototype-linear-svm",)], "max_batch": [8]}
    jobs = expand_grid("fig2", grid, seeds=1, quick=True)
    tables = run_jobs(jobs, n_workers=2, executor="ray", progress=False)
    assert [set(t["model"]) for t in tables] == [{"noop"}, {"linear-svm"}]
    assert [list(t["profiles"].unique()) for t in tables] == [
        ["prototype-noop"], ["prototype-linear-svm"]
    ]


def test_ray_workers_run_this_checkouts_code_and_failures_carry_the_traceback() -> None:
    """--executor ray ships the installed clipperlab package to the workers (they import it
    from Ray's package, not from their own install), and a job that raises stops the sweep
    with the job and the worker's traceback (skipped without ray)."""
    pytest.importorskip("ray")
    from clipperlab.experiments.sweep import JobFailed

    def where(job: Job) -> pd.DataFrame:  # nested: Ray pickles it by value
        import clipperlab.experiments as pkg

        if job.index == 1:
            raise ValueError(f"no such point {dict(job.overrides)['point']}")
        return pd.DataFrame({"file": [pkg.__file__]})

    ok = run_jobs([Job(0, "fig2", (("point", 0),), seed=0)], n_workers=1, executor="ray",
                  progress=False, fn=where)
    import clipperlab.experiments as here

    shipped = ok[0]["file"].iloc[0]
    assert shipped != here.__file__ and "_ray_pkg_" in shipped
    with pytest.raises(JobFailed) as info:
        run_jobs([Job(1, "fig2", (("point", 7),), seed=3)], n_workers=1, executor="ray",
                 progress=False, fn=where)
    text = str(info.value)
    assert "job 1 of fig2 (point=7, seed 3) failed on Ray" in text
    assert "ValueError: no such point 7" in text and "in where" in text


def test_a_failing_local_job_carries_its_traceback() -> None:
    """The local executor reports the failing job and the worker's traceback too."""
    from clipperlab.experiments.sweep import JobFailed

    jobs = [Job(i, "none", (("folder", "/nonexistent-clipperlab"),), seed=0) for i in range(2)]
    with pytest.raises(JobFailed) as info:
        run_jobs(jobs, n_workers=2, progress=False, fn=rendezvous_job)
    text = str(info.value)
    assert "failed on a local worker process" in text
    assert "FileNotFoundError" in text and "rendezvous_job" in text


def test_ray_without_an_address_starts_its_own_instance_never_a_cluster_found_running() -> None:
    """Plain ``ray.init(num_cpus=...)`` joins a cluster another process runs on this machine
    and then refuses ``num_cpus``: the suite hit it while a benchmark ran Ray beside it."""
    from clipperlab.experiments.sweep import ray_address_kwargs

    assert ray_address_kwargs(None, 3) == {"address": "local", "num_cpus": 3}
    assert ray_address_kwargs("", 0) == {"address": "local", "num_cpus": 1}
    assert ray_address_kwargs("ray://head:10001", 3) == {"address": "ray://head:10001"}
