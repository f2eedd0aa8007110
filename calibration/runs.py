"""One run on each side: a workload re-timed to a rate, sent to the real server or replayed
in the twin.

Rules:
- ``retime``: ``n = rate x duration`` queries of the workload, arrival times scaled so the
  mean rate is the one asked for (any arrival process keeps its shape).
- A real run (``real_run``) is one ``loadgen.run_load`` with the server's CPU time (less
  its idle CPU over the run's wall time), its containers' (per model, less their idle
  CPU), the generator's own (this process's CPU time over the run, the generator runs in
  it, less its idle rate: ``loadgen_idle_rate``, its millisecond timer ticking through a
  run of two queries a second apart), the seconds each of them waited runnable for a
  core (``ServerProcess.wait_s``; the generator's: this process's) and what the server
  saw (``scrape.in_situ``) around it;
  latency is measured from the schedule in the raw table, from the send after
  ``from_send`` (the generator's own lateness, ``lag_s``, kept apart).
- The twin replays the send times the generator achieved (``sent_trace``);
  ``sim_run`` adds the calibration's constant overhead outside the loop to every answered
  query.  Both sides are summarised by ``clipperlab.report.latency.summarise``.
- ``good_share``: the share of queries answered with a prediction within the SLO of their
  scheduled time, as the client saw it (the capacity ramp's test).
- The twin runs warm (``twin_run``): the real server a run measures has been serving
  (the warm-up, the ramp's step before, the level before), and AIMD keeps what it
  learned between runs, while a new ``Simulation`` starts cold, its caps at
  ``initial_batch_size``.  Since the server's AIMD holds its cap over a batch the queue
  did not fill (``aimd_step_from = "filled"``), a cold twin climbs from a batch of one
  at the start of every run, +2 a batch, where the server starts where the last run
  left it: the forest at 40,000 q/s, 2.3 ms a batch, needs 50 batches to reach the
  cap of 100 the rate asks for, and sheds thousands of queries on the way
  (``results/validation/quiet-2026-12-05-b``).  So the twin replays the run's first
  ``WARM_S`` seconds before it (the same arrivals, moved back), then the run; the
  warm-up's queries and batches are dropped and the rest moved back to the run's own
  times.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import pandas as pd

from clipperlab.calibration.fit import Calibration, ContainerCpu, CpuRun
from clipperlab.calibration.loadgen import run_load
from clipperlab.calibration.scrape import in_situ, scrape
from clipperlab.calibration.server import ServerProcess, proc_wait_s
from clipperlab.report.latency import summarise
from clipperlab.simulator import Deployment, Simulation
from clipperlab.workloads import Trace, Workload

__all__ = [
    "RealRun",
    "from_send",
    "good_share",
    "loadgen_idle_rate",
    "predicted",
    "real_run",
    "retime",
    "sent_trace",
    "sim_run",
    "ticked",
    "twin_run",
    "warmed",
]

WARM_S = 0.5  # seconds of the run's own arrivals replayed before it (``twin_run``)


class RealRun(NamedTuple):
    """One load run on the real server."""

    trace: Trace  # as scheduled
    table: pd.DataFrame  # the generator's raw per-query table
    cpu_s_per_query: float  # the server's, idle CPU subtracted
    seen: dict[str, float]  # what the server saw (``scrape.in_situ``)
    # per model: its containers' CPU seconds over the run, idle CPU subtracted
    container_cpu_s: Mapping[str, float] = {}
    loadgen_cpu_s: float = math.nan  # the generator's CPU seconds over the run
    # time.monotonic() at the schedule's zero and at the last reply (or the drain's end)
    started_at: float = math.nan
    ended_at: float = math.nan
    # seconds each process waited runnable for a core over the run (``CpuRun.waits``)
    waits_s: Mapping[str, float] = {}
    # how often each process went to sleep over the run (``CpuRun.sleeps``)
    sleeps: Mapping[str, float] = {}

    def cpu_run(self, overloaded: bool = False, speed_factor: float = math.nan,
                speed_trace: tuple[tuple[float, ...], ...] = ()) -> CpuRun:
        """The run as the fits see it (achieved send times, latency from the send);
        ``overloaded``: a ramp step that missed the SLO (``CpuRun.overloaded``);
        ``speed_factor``, ``speed_trace``: the machine's mean speed factor while it went,
        and its speed as the probes recorded it."""
        seen = self.seen
        models = {k.split(":", 1)[1] for k in seen if k.startswith("batches:")}
        return CpuRun(sent_trace(self.trace, self.table), seen["queries"],
                      seen["batches"], self.cpu_s_per_query * len(self.trace),
                      from_send(self.table)["latency_s"].to_numpy(),
                      seen.get("batch_mean_ms", math.nan),
                      containers=tuple(
                          ContainerCpu(m, seen[f"batches:{m}"], seen.get(f"items:{m}", 0.0),
                                       self.container_cpu_s[m])
                          for m in sorted(models) if m in self.container_cpu_s),
                      loadgen_cpu_s=self.loadgen_cpu_s, overloaded=overloaded,
                      speed_factor=speed_factor, speed_trace=speed_trace,
                      predicted=predicted(self.table),
                      waits=tuple(sorted(self.waits_s.items())),
                      sleeps=tuple(sorted(self.sleeps.items())),
                      started_unix=time.time() - (time.monotonic() - self.started_at)
                      if math.isfinite(self.started_at) else math.nan)


def retime(workload: Workload, rate_qps: float, duration_s: float, seed: int) -> Trace:
    """The workload's trace with ``rate_qps x duration_s`` queries, its arrival times
    scaled so the mean rate is ``rate_qps`` (the arrival process keeps its shape)."""
    n = max(int(round(rate_qps * duration_s)), 2)
    wl = dataclasses.replace(workload, n_queries=n, duration_s=None)
    tr = wl.generate(seed)
    mean = float(tr.arrival_at[-1]) / len(tr) if tr.arrival_at[-1] > 0 else 1.0 / rate_qps
    scale = (1.0 / rate_qps) / mean
    return dataclasses.replace(tr, arrival_at=tr.arrival_at * scale)


def ticked(trace: Trace, tick_s: float = 1e-3) -> Trace:
    """``trace`` as the load generator sends it: every arrival moved to the next multiple
    of ``tick_s`` (its timer's resolution) at or after it."""
    at = np.ceil(np.asarray(trace.arrival_at, dtype=np.float64) / tick_s - 1e-9) * tick_s
    return dataclasses.replace(trace, arrival_at=at)


def loadgen_idle_rate(srv: ServerProcess, workload: Workload, pool: np.ndarray, api: str,
                      connections: int, seconds: float = 1.0, seed: int = 0) -> float:
    """The generator's CPU seconds per second when it has (almost) nothing to send: a run
    of two queries ``seconds`` apart, its CPU time over its wall time."""
    trace = retime(workload, 2.0 / seconds, seconds, seed)
    g0, t0 = time.process_time(), time.monotonic()
    run_load(trace, pool, srv.url, api=api, connections=connections, drain_s=1.0)
    return max(time.process_time() - g0, 0.0) / (time.monotonic() - t0)


def real_run(srv: ServerProcess, trace: Trace, pool: np.ndarray, api: str,
             connections: int, idle_cpu: float = 0.0,
             idle_containers: Mapping[str, float] | None = None,
             idle_loadgen: float = 0.0) -> RealRun:
    """The load run, the server's CPU seconds per query (less its idle CPU rate over the
    run's wall time), its containers' and the generator's CPU seconds, and what the
    server saw (``in_situ``)."""
    idle_c = idle_containers or {}
    m0 = scrape(srv.url)
    k0 = srv.container_cpu_s()
    w0 = {**srv.wait_s(), "loadgen": proc_wait_s(os.getpid())}
    s0 = srv.sleeps()
    c0, t0, g0 = srv.cpu_s(), time.monotonic(), time.process_time()
    table = run_load(trace, pool, srv.url, api=api, connections=connections, drain_s=5.0)
    g1, wall = time.process_time(), time.monotonic() - t0
    cpu = srv.cpu_s() - c0 - idle_cpu * wall
    k1 = srv.container_cpu_s()
    w1 = {**srv.wait_s(), "loadgen": proc_wait_s(os.getpid())}
    s1 = srv.sleeps()
    seen = in_situ(m0, scrape(srv.url))
    containers = {m: max(k1[m] - k0[m] - idle_c.get(m, 0.0) * wall, 0.0)
                  for m in k1 if m in k0}  # a container that restarted says nothing
    start = float(table.attrs.get("started_at", t0))
    waits = {k: max(w1[k] - w0[k], 0.0) for k in w1
             if k in w0 and math.isfinite(w1[k] - w0[k])}
    sleeps = {k: s1[k] - s0[k] for k in s1 if k in s0 and s1[k] >= s0[k]}
    return RealRun(trace, table, max(cpu, 0.0) / max(len(trace), 1), seen, containers,
                   max(g1 - g0 - idle_loadgen * wall, 0.0), start, t0 + wall, waits,
                   sleeps)


def sim_run(dep: Deployment, trace: Trace, seed: int, calib: Calibration | None = None
            ) -> dict[str, float]:
    """The twin's summary of ``trace`` (with the calibration's overhead when given)."""
    q, batches = twin_run(dep, trace, seed)
    if calib is not None and calib.overhead_s:
        # outside the loop (client, kernel): a constant per query, measured at low load
        q = q.copy()
        q["reply_at"] = q["reply_at"] + calib.overhead_s
        q["latency_s"] = q["latency_s"] + calib.overhead_s
    return summarise(q, batches)


def warmed(trace: Trace, warm_s: float = WARM_S) -> tuple[Trace, int, float]:
    """``trace`` after a warm-up: its arrivals of the first ``warm_s`` seconds (at least
    one, all when it is shorter), then the whole trace moved ``shift`` seconds later
    (the first arrival after the warm-up's span, so the rate carries on); with the
    number ``k`` of warm-up queries (the trace's query ``i`` is the new one's ``k + i``)
    and ``shift``.  Feedback is the trace's own, moved with it."""
    at = np.asarray(trace.arrival_at, dtype=np.float64)
    n = at.size
    if n == 0 or warm_s <= 0:
        return trace, 0, 0.0
    k = max(int(np.searchsorted(at, at[0] + warm_s, side="left")), 1)
    shift = float(at[k] - at[0]) if k < n else float(at[-1] - at[0]) + (
        float(at[-1] - at[0]) / (n - 1) if n > 1 else warm_s)
    if shift <= 0:
        shift = warm_s
    ctx = trace.context
    return dataclasses.replace(
        trace,
        arrival_at=np.concatenate([at[:k], at + shift]),
        input_index=np.concatenate([trace.input_index[:k], trace.input_index]),
        label=np.concatenate([trace.label[:k], trace.label]),
        context=None if ctx is None else np.concatenate([ctx[:k], ctx]),
        feedback_at=np.asarray(trace.feedback_at, dtype=np.float64) + shift,
        feedback_query=np.asarray(trace.feedback_query) + k,
    ), k, shift


def twin_run(dep: Deployment, trace: Trace, seed: int, warm_s: float = WARM_S
             ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The twin's queries and batches for ``trace``, run warm (module rules): the
    warm-up's rows dropped, the rest at the trace's own times and query ids."""
    tr, k, shift = warmed(trace, warm_s)
    res = Simulation(dep, tr, seed=seed).run()
    q, b = res.queries, res.batches
    if k == 0:
        return q, b
    q = q.iloc[k:].copy()
    for col in ("arrival_at", "reply_at"):
        q[col] = q[col].to_numpy() - shift
    q["query_id"] = q["query_id"].to_numpy() - k
    q.index = pd.RangeIndex(len(q))
    if len(b):
        b = b[b["sent_at"].to_numpy() >= shift].copy()
        for col in ("sent_at", "start_at", "done_at"):
            b[col] = b[col].to_numpy() - shift
        b.index = pd.RangeIndex(len(b))
    return q, b


def from_send(table: pd.DataFrame) -> pd.DataFrame:
    """A load run's table with every latency measured from the moment the generator sent
    the query (``sent_at``) instead of its scheduled time: the server's share, without the
    generator's own lateness (its millisecond timer; ``lag_s``)."""
    t = table.copy()
    sent = t["sent_at"].to_numpy()
    ok = np.isfinite(sent)
    t.loc[ok, "arrival_at"] = sent[ok]
    t["latency_s"] = t["reply_at"] - t["arrival_at"]
    return t


def sent_trace(trace: Trace, table: pd.DataFrame) -> Trace:
    """``trace`` with the arrival times the generator achieved (``sent_at``), so the
    simulator sees the same arrivals the server saw (trace-driven validation)."""
    sent = table["sent_at"].to_numpy(dtype=np.float64)
    at = np.where(np.isfinite(sent), sent, trace.arrival_at)
    return dataclasses.replace(trace, arrival_at=np.maximum.accumulate(at))


def predicted(table: pd.DataFrame) -> np.ndarray:
    """Per query of a load run's table: answered with a prediction (HTTP 200, not the
    server's default, not refused)."""
    ok: np.ndarray = (table["status"].to_numpy() == 200) & ~table["default"].to_numpy(dtype=bool)
    return ok


def good_share(table: pd.DataFrame, slo_s: float) -> float:
    """The share of a load run's queries answered with a prediction (not a default, not
    refused) within ``slo_s`` of their scheduled time, as the client saw it."""
    if not len(table):
        return 0.0
    lat = table["latency_s"].to_numpy()
    return float((predicted(table) & (np.nan_to_num(lat, nan=np.inf) <= slo_s)).mean())
