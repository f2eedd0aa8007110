"""Sweeps: one experiment over a grid of config values and seeds, run in parallel.

Rules:
- The grid is the Cartesian product of the ``--set`` lists, in the order given (the last
  key varies fastest), times ``seeds`` consecutive seeds starting at ``first_seed``.  A job
  is one point of the grid with one seed; its index is its place in that order.
- A job runs ``run(config)`` of the experiment and returns its tidy table with the swept
  keys and the seed prepended as columns, so all jobs concatenate into one tidy table.
- Executors: ``local`` runs jobs on a pool of ``jobs`` worker processes (forked where
  the platform can, else spawned; a pool of one runs in-process); ``ray`` sends the same
  job function to a Ray cluster (``ray.init(address)``; a local one when no address is
  given), ``jobs`` tasks at a time.  Results come back in job order whatever the executor.
- Ray workers run this process's code, not whatever they have installed: the Ray job
  ships the installed ``clipperlab`` package (``ray_runtime_env``: ``py_modules``, the
  editable link tree or the wheel's folder; no results, no ``.git``), so a cluster needs
  the same Python and dependencies but not the same commit.  Workers' output reaches the
  driver (``log_to_driver``).  (Ray takes a job's code only at ``ray.init``: when the
  caller has already connected, its own runtime environment applies.)
- A job that raises stops the sweep with ``JobFailed``: the job (index, overrides, seed)
  and the worker's traceback, whatever the executor.
- The summary averages the metric columns over seeds for each grid point and each row key
  of the experiment (``KEYS`` in its module), with ``n`` the number of seeds averaged.
"""

from __future__ import annotations

import dataclasses
import itertools
import multiprocessing
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from clipperlab.simulator.parallel import _start_method

from .framework import load_experiment, make_config

__all__ = [
    "ExecutorUnavailable",
    "Job",
    "JobFailed",
    "expand_grid",
    "run_job",
    "ray_address_kwargs",
    "ray_runtime_env",
    "run_jobs",
    "summarize",
]

JobFn = Callable[["Job"], pd.DataFrame]


class ExecutorUnavailable(RuntimeError):
    """The asked-for executor cannot run here (e.g. ``ray`` is not installed)."""


class JobFailed(RuntimeError):
    """A job raised: the message names the job and carries the worker's traceback."""

    def __init__(self, job: Job, where: str, details: str) -> None:
        self.job = job
        overrides = ", ".join(f"{k}={_cell(v)}" for k, v in job.overrides) or "no overrides"
        super().__init__(
            f"job {job.index} of {job.experiment} ({overrides}, seed {job.seed}) failed on "
            f"{where}:\n{details.rstrip()}"
        )


@dataclass(frozen=True, slots=True)
class Job:
    """One point of a sweep: an experiment, config overrides and a seed."""

    index: int
    experiment: str
    overrides: tuple[tuple[str, Any], ...]
    seed: int
    quick: bool = False


def expand_grid(
    experiment: str,
    grid: Mapping[str, Sequence[Any]],
    *,
    seeds: int = 1,
    first_seed: int = 0,
    quick: bool = False,
) -> list[Job]:
    """All jobs of the grid times the seeds (see the module's rules for the order)."""
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    keys = list(grid)
    jobs: list[Job] = []
    for values in itertools.product(*(grid[k] for k in keys)):
        for s in range(first_seed, first_seed + seeds):
            jobs.append(Job(len(jobs), experiment, tuple(zip(keys, values, strict=True)), s, quick))
    return jobs


def _cell(v: Any) -> Any:
    return "+".join(str(x) for x in v) if isinstance(v, tuple) else v


def run_job(job: Job) -> pd.DataFrame:
    """Run one job in this process; the experiment's table with the grid columns first."""
    mod = load_experiment(job.experiment)
    overrides = dict(job.overrides)
    if "jobs" in {f.name for f in dataclasses.fields(mod.Config)}:
        overrides.setdefault("jobs", 1)  # the sweep is the parallel part
    cfg = make_config(mod, quick=job.quick, seed=job.seed, overrides=overrides)
    table: pd.DataFrame = mod.run(cfg).table.copy()
    # A swept key that is also a column of the table (fig4's wait_ms) keeps the table's
    # own per-row values; the others are prepended.
    front = {k: _cell(v) for k, v in job.overrides if k not in table.columns}
    if "seed" not in table.columns:
        front["seed"] = job.seed
    for i, (k, v) in enumerate(front.items()):
        table.insert(i, k, [v] * len(table))
    return table


def _run_local(
    jobs: Sequence[Job], n_workers: int, fn: JobFn
) -> Iterator[tuple[int, pd.DataFrame]]:
    if n_workers <= 1:
        for job in jobs:
            yield job.index, fn(job)
        return
    ctx = multiprocessing.get_context(_start_method())
    by_index = {j.index: j for j in jobs}
    with ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx) as pool:
        pending: dict[Future[pd.DataFrame], int] = {pool.submit(fn, j): j.index for j in jobs}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    index = pending.pop(fut)
                    try:
                        table = fut.result()
                    except Exception as e:
                        # The worker's traceback is the cause (_RemoteTraceback).
                        details = "".join(traceback.format_exception(e))
                        raise JobFailed(by_index[index], "a local worker process",
                                        details) from None
                    yield index, table
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def ray_address_kwargs(address: str | None, n_workers: int) -> dict[str, Any]:
    """``ray.init``'s address: the one given, else a fresh local instance of ``n_workers``
    CPUs, never another process's cluster that happens to run on this machine (plain
    ``ray.init()`` joins one, and then refuses ``num_cpus``)."""
    if address:
        return {"address": address}
    return {"address": "local", "num_cpus": max(1, n_workers)}


def ray_runtime_env() -> dict[str, Any]:
    """What every Ray task runs with: this process's ``clipperlab`` package folder (the
    install's, holding ``experiments``, ``engine``...) shipped as ``py_modules``."""
    from clipperlab import experiments

    package = Path(experiments.__file__).parent.parent  # no resolve(): keep the link tree
    return {"py_modules": [str(package)], "excludes": ["__pycache__/", "*.pyc", "raw/"]}


def _run_ray(
    jobs: Sequence[Job], n_workers: int, fn: JobFn, address: str | None
) -> Iterator[tuple[int, pd.DataFrame]]:
    try:
        import ray
    except ImportError:
        raise ExecutorUnavailable(
            "--executor ray needs Ray, which is not installed; "
            "install the optional extra: python3 -m pip install -e '.[ray]'"
        ) from None
    started = False
    if not ray.is_initialized():
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True,
                              "runtime_env": ray_runtime_env()}
        kw.update(ray_address_kwargs(address, n_workers))
        ray.init(**kw)
        started = True
    try:
        remote = ray.remote(num_cpus=1)(fn)
        queue = list(jobs)
        in_flight: dict[Any, Job] = {}
        while queue or in_flight:
            while queue and len(in_flight) < max(1, n_workers):
                job = queue.pop(0)
                in_flight[remote.remote(job)] = job
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                job = in_flight.pop(ref)
                try:
                    table = ray.get(ref)
                except ray.exceptions.RayError as e:
                    # RayTaskError's text is the task's traceback on the worker.
                    for other in in_flight:
                        ray.cancel(other)
                    raise JobFailed(job, "Ray", str(e)) from None
                yield job.index, table
    finally:
        if started:
            ray.shutdown()


def run_jobs(
    jobs: Sequence[Job],
    *,
    n_workers: int = 1,
    executor: str = "local",
    progress: bool = True,
    fn: JobFn = run_job,
    ray_address: str | None = None,
) -> list[pd.DataFrame]:
    """Run ``jobs`` and return their tables in job order."""
    if executor == "local":
        it = _run_local(jobs, n_workers, fn)
    elif executor == "ray":
        it = _run_ray(jobs, n_workers, fn, ray_address)
    else:
        raise ValueError(f"executor {executor!r} is unknown; expected 'local' or 'ray'")
    out: dict[int, pd.DataFrame] = {}
    bar: Any = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc=f"sweep ({executor})", unit="job", file=sys.stderr,
                   disable=None)  # off where stderr is not a terminal
    try:
        for index, table in it:
            out[index] = table
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return [out[j.index] for j in jobs]


def summarize(
    table: pd.DataFrame, grid_keys: Sequence[str], row_keys: Sequence[str]
) -> pd.DataFrame:
    """Mean of the numeric columns over seeds per grid point and row key, with ``n``."""
    keys = [k for k in dict.fromkeys([*grid_keys, *row_keys]) if k in table.columns]
    numeric = [
        c for c in table.select_dtypes("number").columns if c not in keys and c != "seed"
    ]
    if not keys:
        mean = table[numeric].mean().to_frame().T
        mean.insert(0, "n", table["seed"].nunique() if "seed" in table else len(table))
        return mean
    grouped = table.groupby(keys, sort=False, dropna=False)
    mean = grouped[numeric].mean().reset_index()
    mean.insert(len(keys), "n", grouped.size().to_numpy())
    return mean
