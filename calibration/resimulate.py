"""Re-simulate a fidelity run: the simulator's side again over a run's stored real side.

    python -m clipperlab.calibration.fidelity --resimulate --out COPY_OF_A_RUN

Rules:
- Nothing real is measured.  For each ``OUT/<model>-<batching>/`` of ``OUT/fidelity.csv``
  the twin is rebuilt from what the run stored: its ``deploy.toml`` (a model file it
  names need not exist: the twin reads the batching and the links only), its
  ``profiles/*.json`` and its calibration: ``calibration.json`` (every twin's
  ``Calibration``, written by runs since it existed) or, for older runs, the prediction's
  (``sim+host``; ``sim+frontend`` without the host CPU model) rebuilt from
  ``fidelity.csv``'s columns and ``summary.md``'s line (the containers' cooling time);
  such a run stored the pauses' median only, so its twin draws every pause at the median
  (``Resimulated.notes`` says so).
- Refit: where the run stored what it was fitted on (``runs.npz``) the twins are fitted
  again (``validation.calibrate_twin``, today's fits); an older run's fitted numbers are
  used as they are.
- The capacity prediction is made again (``validation.twin_prediction``, the ramp's
  procedure with the run's stored ``ramps``, ``ramp_resolution`` and ``ramp_restart``;
  a run from before they were stored ramped ``repeats`` times from the start with one
  bisection step, ``LEGACY_RESOLUTION``); the measured capacity stays.
- ``resimulate`` returns the new table; ``fidelity --resimulate`` writes it over
  ``OUT/fidelity.csv`` and rebuilds the tables (``fidelity.report``): run it on a copy.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipperlab.calibration.capacity import GOOD_SHARE
from clipperlab.calibration.errors import CalibrationError
from clipperlab.calibration.fit import Calibration, ContainerCpu, CpuRun, as_run, batch_mean_ms
from clipperlab.calibration.quiet import HostSpeed, HostStalls
from clipperlab.calibration.runs import retime, sim_run, ticked
from clipperlab.calibration.server import model_specs, real_deployment
from clipperlab.calibration.twin import at_speed, sim_deployment, speed_fields
from clipperlab.calibration.validation import (
    TWIN_DRAWS,
    draw_seed,
    median_summary,
    stall_fields,
    twin_predictions,
)
from clipperlab.simulator import LatencyProfile, Simulation, load_profile
from clipperlab.simulator.capacity import attained_share
from clipperlab.workloads import Workload

__all__ = ["CALIBRATION_FILE", "GAP_S", "PROBES_FILE", "RUNS_FILE", "STEPS_FILE", "Resimulated",
           "calibration_columns", "calibration_from_json", "calibration_to_json", "load_runs",
           "replay_steps", "reply_gap_spans", "reply_gaps", "resimulate", "save_runs",
           "stored_calibrations", "stored_latencies", "stored_stalls", "ticked"]

Log = Callable[[str], None]
CALIBRATION_FILE = "calibration.json"
RUNS_FILE = "runs.npz"
# every speed probe of the setting (``quiet.save_probes``), from run 37 on
PROBES_FILE = "speed_probes.npz"
TWIN_MODES = ("sim+frontend", "sim+host")
# runs before ``ramp_resolution`` was stored: one step between the last good and the
# first bad rate of the x1.4 grid (ratio 1.18), every ramp from the start
LEGACY_RESOLUTION = 1.2


def calibration_to_json(calibs: Mapping[str, Calibration]) -> str:
    """Every twin's calibration, by mode, as JSON (``calibration.json``)."""
    return json.dumps({mode: dataclasses.asdict(c) for mode, c in calibs.items()}, indent=1)


def calibration_from_json(text: str) -> dict[str, Calibration]:
    """``calibration_to_json``'s inverse (tuples restored)."""
    out = {}
    for mode, d in json.loads(text).items():
        d["pauses_s"] = tuple(d.get("pauses_s") or ())
        d["container_cpu"] = tuple(tuple(x) for x in d.get("container_cpu") or ())
        for k in ("slow_dwells_s", "fast_dwells_s"):
            d[k] = tuple(d.get(k) or ())
        d["speed_trace"] = tuple(tuple(x) for x in d.get("speed_trace") or ())
        d["stalls_s"] = tuple(tuple(x) for x in d.get("stalls_s") or ())
        out[mode] = Calibration(**d)
    return out


def save_runs(path: Path, runs: Sequence[CpuRun], low: CpuRun | None,
              low_seen: Mapping[str, float], calib_qps: float) -> Path:
    """What the calibration was fitted on, in one ``.npz``: per run its achieved send
    times, latencies from the send and which queries got a prediction (not a default;
    files before 2026-12-02: not stored), and a JSON of its counts, CPU times, each
    process's wait for a core (older files: none) and whether it was an overloaded ramp
    step (older files: none was); the
    low-load run (``low``) and what the server saw in it (``low_seen``)."""
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {"calib_qps": calib_qps, "low_seen": dict(low_seen), "runs": []}
    for k, r in enumerate([*runs, *([low] if low is not None else [])]):
        arrays[f"arrival_at_{k}"] = np.asarray(r.trace.arrival_at, dtype=np.float64)
        if r.speed_trace:
            arrays[f"speed_trace_{k}"] = np.asarray(r.speed_trace, dtype=np.float64)
        arrays[f"latency_s_{k}"] = np.asarray(
            r.latency_s if r.latency_s is not None else np.full(len(r.trace), np.nan),
            dtype=np.float64)
        if r.predicted is not None:
            arrays[f"predicted_{k}"] = np.asarray(r.predicted, dtype=bool)
        meta["runs"].append({"queries": r.queries, "batches": r.batches, "cpu_s": r.cpu_s,
                             "batch_ms": r.batch_ms, "loadgen_cpu_s": r.loadgen_cpu_s,
                             "containers": [list(c) for c in r.containers],
                             "overloaded": r.overloaded, "speed_factor": r.speed_factor,
                             "waits": [list(w) for w in r.waits],
                             "sleeps": [list(n) for n in r.sleeps],
                             "started_unix": r.started_unix})
    meta["low"] = low is not None
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez_compressed(path, allow_pickle=False, **arrays)
    return path


def load_runs(path: Path, workload: Workload
              ) -> tuple[list[CpuRun], CpuRun | None, dict[str, float], float]:
    """``save_runs``' inverse: ``(runs, low, low_seen, calib_qps)``; each run's trace is
    ``workload``'s with the stored send times (the twin needs no more of it)."""
    with np.load(path) as z:
        meta = json.loads(bytes(z["meta"]).decode())
        out = []
        for k, m in enumerate(meta["runs"]):
            at = z[f"arrival_at_{k}"]
            base = dataclasses.replace(workload, n_queries=len(at), duration_s=None).generate(0)
            out.append(CpuRun(dataclasses.replace(base, arrival_at=at), m["queries"],
                              m["batches"], m["cpu_s"], z[f"latency_s_{k}"], m["batch_ms"],
                              tuple(ContainerCpu(*c) for c in m["containers"]),
                              m["loadgen_cpu_s"], bool(m.get("overloaded", False)),
                              float(m.get("speed_factor", math.nan)),
                              tuple(tuple(float(x) for x in row)
                                    for row in z[f"speed_trace_{k}"])
                              if f"speed_trace_{k}" in z else (),
                              z.get(f"predicted_{k}"),
                              tuple((str(n), float(v)) for n, v in m.get("waits", [])),
                              float(m.get("started_unix", math.nan)),
                              tuple((str(n), float(v)) for n, v in m.get("sleeps", []))))
    low = out.pop() if meta["low"] else None
    return out, low, dict(meta["low_seen"]), float(meta["calib_qps"])


def stored_latencies(path: Path) -> np.ndarray:
    """``(rate q/s, p50 ms, p99 ms)`` rows, one per passing run stored by ``save_runs``
    (the failing ramp steps, ``overloaded``, and runs without latencies left out); a
    lighter read than ``load_runs``, which rebuilds each run's trace."""
    rows = []
    with np.load(path) as z:
        meta = json.loads(bytes(z["meta"]).decode())
        for k, m in enumerate(meta["runs"]):
            at, lat = z[f"arrival_at_{k}"], z[f"latency_s_{k}"]
            span = float(at[-1] - at[0]) if len(at) >= 2 else 0.0
            ms = lat[np.isfinite(lat)] * 1e3
            if m.get("overloaded") or span <= 0 or not ms.size:
                continue
            rows.append((len(at) / span, np.percentile(ms, 50), np.percentile(ms, 99)))
    return np.array(rows, dtype=np.float64).reshape(-1, 3)


def _num(row: Mapping[str, Any], col: str, default: float = 0.0) -> float:
    v = row.get(col, default)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return default
    return f if math.isfinite(f) else default


def calibration_columns(c: Calibration, plain: Calibration | None = None
                        ) -> dict[str, float]:
    """A calibration's fitted numbers as ``fidelity.csv``'s columns (what a live run
    writes, and ``resimulate`` after a refit; ``stored_calibrations`` reads them back);
    ``plain``: the twin without the host CPU model, whose pause rates go beside them."""
    cols = {"overhead_ms": c.overhead_s * 1e3, "frontend_cost_us": c.frontend_cost_s * 1e6,
            "query_cpu_us": c.query_cpu_s * 1e6, "batch_cpu_us": c.batch_cpu_s * 1e6,
            "wake_us": c.wake_s * 1e6, "cold_after_ms": c.cold_after_s * 1e3,
            "pause_rate_hz": c.pause_rate_hz if c.pauses_s else 0.0,
            "pause_rate_busy_hz": c.pause_rate_busy_hz if c.pauses_s else 0.0,
            "container_wake_us": c.replica_wake_s * 1e6,
            "pause_median_ms": float(np.median(c.pauses_s)) * 1e3 if c.pauses_s else 0.0,
            "host_cpus": float(c.host_cpus),
            "container_cpu_us": sum(b for _, b, _ in c.container_cpu) * 1e6,
            "container_item_cpu_us": sum(i for _, _, i in c.container_cpu) * 1e6,
            "loadgen_cpu_us": c.loadgen_cpu_per_query_s * 1e6,
            "loadgen_wake_us": c.loadgen_wake_s * 1e6,
            "slice_ms": c.slice_s * 1e3, "tick_ms": c.tick_s * 1e3,
            "newidle": float(c.newidle),
            "slow_factor": c.slow_factor, "slow_share": c.slow_share,
            "slow_dwell_ms": c.slow_dwell_s * 1e3,
            "core_speeds": float(c.core_speeds),  # 1: each core switched on its own
            # 1: the demands are the fast speed's (each run's CPU over its speed)
            "reference_factor": c.reference_factor}
    if plain is not None and plain is not c:  # the pause term without the model
        cols["plain_pause_rate_hz"] = plain.pause_rate_hz if plain.pauses_s else 0.0
        cols["plain_pause_rate_busy_hz"] = plain.pause_rate_busy_hz if plain.pauses_s else 0.0
    return cols


def stored_calibrations(row: Mapping[str, Any], summary: str) -> dict[str, Calibration]:
    """The prediction's calibration of an older run from its ``fidelity.csv`` row and its
    ``summary.md`` (module rules): ``{"sim+host": ...}`` when the run had the host CPU
    model, else ``{"sim+frontend": ...}``."""
    cold = re.search(r"container wake-up [\d.]+ ms \(cools in ([\d.]+) ms\)", summary)
    median_s = _num(row, "pause_median_ms") / 1e3
    host = int(_num(row, "host_cpus"))
    c = Calibration(
        overhead_s=_num(row, "overhead_ms") / 1e3,
        frontend_cost_s=_num(row, "frontend_cost_us") / 1e6,
        capacity_qps=_num(row, "capacity_qps", math.nan),
        query_cpu_s=_num(row, "query_cpu_us") / 1e6,
        batch_cpu_s=_num(row, "batch_cpu_us") / 1e6,
        wake_s=_num(row, "wake_us") / 1e6,
        cold_after_s=_num(row, "cold_after_ms", 1.0) / 1e3,
        pause_rate_hz=_num(row, "pause_rate_hz"),
        pause_rate_busy_hz=_num(row, "pause_rate_busy_hz"),
        pauses_s=(median_s,) if median_s > 0 else (),
        replica_wake_s=_num(row, "container_wake_us") / 1e6,
        replica_cold_after_s=float(cold.group(1)) / 1e3 if cold else 1e-3,
        host_cpus=host,
        container_cpu=((str(row["model"]), _num(row, "container_cpu_us") / 1e6,
                        _num(row, "container_item_cpu_us") / 1e6),) if host else (),
        loadgen_cpu_per_query_s=_num(row, "loadgen_cpu_us") / 1e6 if host else 0.0,
        loadgen_wake_s=_num(row, "loadgen_wake_us") / 1e6 if host else 0.0,
        slice_s=_num(row, "slice_ms") / 1e3 if host else 0.0,
        tick_s=_num(row, "tick_ms", 4.0) / 1e3 if host else 4e-3,
        newidle=bool(_num(row, "newidle")) if host else False,
        slow_factor=_num(row, "slow_factor", 1.0) if host else 1.0,
        slow_share=_num(row, "slow_share") if host else 0.0,
        slow_dwell_s=_num(row, "slow_dwell_ms", 100.0) / 1e3 if host else 0.1,
        core_speeds=bool(_num(row, "core_speeds")) if host else False,
    )
    return {"sim+host" if host else "sim+frontend": c}


@dataclass
class Resimulated:
    """The new table (``fidelity.csv``'s shape) and what the re-simulation could not
    redo as the run did."""

    table: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def _level_s(summary: str, default: float) -> float:
    m = re.search(r"run\(s\) per level and mode, ([\d.]+) s each", summary)
    return float(m.group(1)) if m else default


def resimulate(out: Path, workload: Workload, *, level_s: float = 10.0, seed: int = 0,
               refit: bool = True,
               adjust: Callable[[Calibration], Calibration] | None = None,
               speed: HostSpeed | None = None,
               stalls: HostStalls | None = None,
               level_speed: bool = True,
               twin_draws: int = TWIN_DRAWS,
               loop_sleeps: bool = True,
               jobs: int = 1,
               log: Log = print) -> Resimulated:
    """The simulator's side of the fidelity run in ``out`` again (module rules); with
    ``refit`` the calibration is fitted again where the run stored what it was fitted on
    (``runs.npz``); ``adjust``, when given, is applied to every calibration (a model
    change that needs no re-measurement); ``speed``, when given, is the machine's two
    speeds the host CPU model's twin is refitted with (instead of the run's own: a run
    from before the speed probe has none), a setting without stored runs taking it
    as it is; ``stalls``, when given, are the cores' stalls every host CPU twin gets (the
    fits made with them), instead of the run's own (none before 2026-12-04).  With
    ``level_speed`` (the default), a level whose row records the
    machine's speed (``speed_level_*``, else the setting's levels' ``speed_levels_*``) is
    run by the host CPU model's twin at that speed (``twin.at_speed``), as a live run
    does, and so is each capacity ramp whose speed the row records (``speed_ramps_*``).
    Each level runs ``repeats x twin_draws`` times in each twin (``validation.draw_seed``),
    the medians taken, as a live run's levels do (``validation.TWIN_DRAWS``).
    (A live run's replay of each real run's recorded speed, ``--replay-speed``, needs
    the probes' traces and the runs' send times, which are not stored: re-simulated,
    those levels run at their two speeds.)  ``loop_sleeps``: refitted, the loop's
    wake-ups are the server's own count where every stored run has one
    (``validation.Setup.loop_sleeps``); False: the twin counts them, as before
    2026-12-05.  ``jobs``: the refit's twin replays on that many processes
    (``validation.Setup.jobs``)."""
    csv = out / "fidelity.csv"
    if not csv.exists():
        raise CalibrationError(f"{csv} does not exist: --resimulate needs a fidelity run's "
                               "OUT folder")
    table = pd.read_csv(csv)
    notes: list[str] = []
    parts = []
    for (model, batching), g in table.groupby(["model", "batching"], sort=False):
        folder = out / f"{model}-{batching}"
        g = g.copy()
        summary = (folder / "summary.md").read_text() if (folder / "summary.md").exists() \
            else ""
        profiles = {p.stem: load_profile(p) for p in sorted((folder / "profiles").glob("*.json"))}
        cal_file = folder / CALIBRATION_FILE
        if cal_file.exists():
            calibs = calibration_from_json(cal_file.read_text())
        else:
            calibs = stored_calibrations(g.iloc[0].to_dict(), summary)
            notes.append(f"{model}-{batching}: calibration rebuilt from fidelity.csv "
                         f"({', '.join(calibs)} only; pauses drawn at their median)")
        reps = int(_num(g.iloc[0].to_dict(), "repeats", 1.0)) or 1
        ls = _level_s(summary, level_s)
        with tempfile.TemporaryDirectory(prefix="clipperlab-resim-") as d:
            dep = _deployment(folder / "deploy.toml", Path(d))
        app, specs = model_specs(dep, workload.app)
        intervals: dict[str, Any] = {}
        refitted = refit and (folder / RUNS_FILE).exists()
        if refitted:
            calibs, intervals = _refit(folder / RUNS_FILE, dep, app, specs, workload,
                                       profiles, calibs, seed, reps, log, speed, stalls,
                                       loop_sleeps, jobs)
            notes.append(f"{model}-{batching}: calibration fitted again on {RUNS_FILE}")
        else:
            if speed is not None:
                calibs = {m: with_speed(c, speed) for m, c in calibs.items()}
            if stalls is not None:
                calibs = {m: with_stalls(c, stalls) for m, c in calibs.items()}
        if adjust is not None:
            calibs = {m: adjust(c) for m, c in calibs.items()}
        for mode, calib0 in calibs.items():
            twin0 = sim_deployment(dep, workload.app, profiles, calibration=calib0)
            for lv, rows in g[g["mode"] == "real"].groupby("level", sort=False):
                rate = float(rows.iloc[0]["offered_qps"])
                tr = ticked(retime(workload, rate, ls, seed + 3))
                calib, twin = calib0, twin0
                lsp = _level_speed(rows.iloc[0].to_dict()) if level_speed else None
                if lsp is not None and calib0.host_cpus > 0:
                    calib = at_speed(calib0, lsp)
                    twin = sim_deployment(dep, workload.app, profiles, calibration=calib)
                s = median_summary([sim_run(twin, tr, draw_seed(seed + k, j), calib)
                                    for k in range(reps) for j in range(twin_draws)])
                sel = (g["level"] == lv) & (g["mode"] == mode)
                for col in ("throughput_qps", "mean_ms", "p50_ms", "p90_ms", "p99_ms",
                            "default_rate"):
                    g.loc[sel, col] = s.get(col, math.nan)
                g.loc[sel, "batch_size_mean"] = s.get("mean_batch_size", math.nan)
                log(f"  {model}-{batching} {float(lv):.0%} {mode}: p50/p99 "
                    f"{s.get('p50_ms', math.nan):.2f}/{s.get('p99_ms', math.nan):.2f} ms")
        pred_mode = next(m for m in reversed(TWIN_MODES) if m in calibs)
        calib = calibs[pred_mode]
        twin = sim_deployment(dep, workload.app, profiles, calibration=calib)
        measured = float(g.iloc[0]["capacity_qps"])
        row0 = g.iloc[0].to_dict()
        n_ramps = int(_num(row0, "ramps", reps)) or reps
        sp_ramps = _ramp_speeds(row0, calib) if level_speed and calib.host_cpus > 0 else []
        twins = ([sim_deployment(dep, workload.app, profiles,
                                 calibration=at_speed(calib, sp) if sp is not None else calib)
                  for sp in sp_ramps] if len(sp_ramps) == n_ramps else [twin] * n_ramps)
        caps = twin_predictions(twins, profiles, {s.name: n for s, n, _ in specs},
                                {s.name: s.batching.max_batch_size for s, _, _ in specs},
                                calib, workload, app.slo_s, measured, seed=seed,
                                resolution=_num(row0, "ramp_resolution", LEGACY_RESOLUTION),
                                restart=_num(row0, "ramp_restart", 0.0), jobs=jobs)
        cap = float(np.median(caps))
        g["sim_capacity_qps"] = cap
        g["sim_ramp_capacities_qps"] = ";".join(f"{x:.0f}" for x in caps)
        # the table says what the twin ran with: every fitted number (and, refitted, its
        # interval and calibration.json), not the stored ones beside the new predictions
        for col, v in calibration_columns(calib, calibs.get("sim+frontend")).items():
            if col in g.columns or calib.host_cpus > 0:
                g[col] = v
        for name, iv in intervals.items():
            g[f"{name}_lo"], g[f"{name}_hi"] = iv.lo, iv.hi
        if refitted:
            (folder / CALIBRATION_FILE).write_text(calibration_to_json(calibs))
        log(f"{model}-{batching}: capacity measured {measured:,.0f} q/s, predicted "
            f"{cap:,.0f} q/s ({(cap - measured) / measured:+.0%})")
        parts.append(g)
    return Resimulated(pd.concat(parts, ignore_index=True), notes)


STEPS_FILE = "fidelity_steps.csv"
GAP_S = 3e-3  # a reply gap: this long without a reply while a query waits


def _utc(t: float) -> str:
    """A stored run's wall-clock start in UTC (``YYYY-MM-DD HH:MM:SS``), or "" when it
    has none."""
    if not math.isfinite(t):
        return ""
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def reply_gaps(send_at: np.ndarray, latency_s: np.ndarray, min_gap_s: float = GAP_S
               ) -> np.ndarray:
    """The stretches of ``min_gap_s`` or more in which no reply came while a query was
    waiting (sent before the stretch, answered after it), in seconds, from each query's
    send time and latency (unanswered ones: inf or NaN, left out of the replies but
    waiting to the end).  A server that answers in steady batches has none; one whose
    batches wait behind its loop, or whose loop stops, shows them."""
    spans = reply_gap_spans(send_at, latency_s, min_gap_s)
    return np.asarray(spans[:, 1] - spans[:, 0], dtype=np.float64)


def reply_gap_spans(send_at: np.ndarray, latency_s: np.ndarray, min_gap_s: float = GAP_S
                    ) -> np.ndarray:
    """``reply_gaps``' stretches as ``(start, end)`` rows (the replies before and
    after each)."""
    send = np.asarray(send_at, dtype=np.float64)
    rep = send + np.asarray(latency_s, dtype=np.float64)
    rep = np.where(np.isfinite(rep), rep, np.inf)
    done = np.sort(rep[np.isfinite(rep)])
    if done.size < 2:
        return np.zeros((0, 2))
    gaps = np.diff(done)
    at = np.flatnonzero(gaps >= min_gap_s)
    if at.size == 0:
        return np.zeros((0, 2))
    # waiting through a gap: sent before its start, answered after its end; by the
    # earliest send of the queries answered at or after each gap's end
    order = np.argsort(rep, kind="stable")
    first_send_after = np.minimum.accumulate(send[order][::-1])[::-1]  # per rank
    starts, ends = done[at], done[at + 1]
    rank = np.searchsorted(rep[order], ends, side="left")
    waited = first_send_after[rank] <= starts
    return np.column_stack([starts[waited], ends[waited]])


def replay_steps(out: Path, workload: Workload, *, min_load: float = 0.5, seed: int = 0,
                 log: Log = print) -> pd.DataFrame:
    """Every stored calibration run of a fidelity run's settings (``runs.npz``: the
    ramps' steps and the calibration run) at ``min_load`` of the measured capacity or more,
    replayed by the prediction's twin (``calibration.json``'s last mode) at the speed the
    probes recorded while it went (``fit.as_run``), and at the calibration's two speeds:
    per step its rate, mean speed factor, whether it was a failing ramp step, the share
    of its queries answered within the objective from the send on the server and in each
    twin (with a prediction, not a default, where the run stored the server's per-query
    outcome: ``defaults_counted``, and each side's share of defaults; older runs: in
    time, default or not, on both sides), and whether the replaying twin passes
    (``GOOD_SHARE``) where the server did;
    beside them, where the two differ, the batch round trip as each engine saw it
    (``batch_ms``: sent to result handled, mean), the mean batch size (``batch_size``:
    the server's queries over its batches, the replaying twin's batches' mean size;
    AIMD's and delayed batching's batches grow with the load, and their per-batch costs
    spread over more queries), and the reply gaps per second
    (``reply_gaps``: stretches of ``GAP_S`` or more without a reply while a query waited),
    and each process's share of the step's time spent runnable without a core
    (``real_wait_<process>``: the kernel's schedstat, stored with the run since
    2026-12-02; ``twin_wait_<process>``: the host CPU model's time slices; ``frontend``,
    ``loadgen``, ``container:<model>``).
    Settings or runs without a recorded speed are left out.  Written to
    ``OUT/fidelity_steps.csv``."""
    rows: list[dict[str, Any]] = []
    for folder in sorted(p for p in out.iterdir() if (p / RUNS_FILE).exists()
                         and (p / CALIBRATION_FILE).exists()):
        calib, profiles, dep, runs = stored_setting(folder, workload)
        app, _ = model_specs(dep, workload.app)
        for r in sorted(runs, key=lambda r: r.rate):
            if not r.speed_trace or r.rate < min_load * calib.capacity_qps:
                continue
            lat = np.nan_to_num(np.asarray(r.latency_s, dtype=np.float64), nan=np.inf)
            send = np.asarray(r.trace.arrival_at, dtype=np.float64)
            span = float(send[-1] - send[0]) or 1.0
            # with the server's per-query outcome stored, a default is a miss on both
            # sides (the capacity ramp's test); runs stored without it count latency only,
            # on both sides (a default the server gave before the deadline then counts as
            # in time, as the twin's does)
            pred = r.predicted
            known = pred is not None
            good = {"real": float(np.mean(lat <= app.slo_s if pred is None
                                          else (lat <= app.slo_s) & pred))}
            seen: dict[str, float] = {}
            for name, c in (("replayed", as_run(calib, r)), ("two_speeds", calib)):
                sim = Simulation(sim_deployment(dep, workload.app, profiles, calibration=c),
                                 r.trace, seed=seed)
                res = sim.run()
                q = res.queries
                tl = np.nan_to_num(q["latency_s"].to_numpy(), nan=np.inf)
                if known:
                    good[name] = attained_share(q.assign(latency_s=tl + c.overhead_s),
                                                app.slo_s)
                else:
                    good[name] = float(np.mean(tl + c.overhead_s <= app.slo_s))
                if name == "replayed":
                    b = res.batches
                    seen = {"twin_batch_ms": batch_mean_ms(res.metrics),
                            "twin_batch_size": float(b["size"].mean()) if len(b) else math.nan,
                            "twin_gaps_per_s": reply_gaps(q["arrival_at"].to_numpy(),
                                                          tl).size / span,
                            "twin_defaults": float(np.mean(q["default"].to_numpy(bool))),
                            **{f"twin_wait_{k}": v / span
                               for k, v in process_waits(sim.cpu_wait_s).items()}}
            rows.append({"setting": folder.name, "started_utc": _utc(r.started_unix),
                         "rate_qps": r.rate,
                         "speed_factor": r.speed_factor, "overloaded": r.overloaded,
                         "real_good": good["real"], "replayed_good": good["replayed"],
                         "two_speeds_good": good["two_speeds"],
                         "agree": (good["real"] >= GOOD_SHARE) ==
                                  (good["replayed"] >= GOOD_SHARE),
                         "defaults_counted": known,
                         "real_defaults": float(np.mean(~pred)) if pred is not None else math.nan,
                         "real_batch_ms": r.batch_ms,
                         "real_batch_size": r.queries / r.batches if r.batches else math.nan,
                         **seen,
                         "real_gaps_per_s": reply_gaps(send, lat).size / span,
                         **{f"real_wait_{k}": v / span for k, v in r.waits}})
        got = [x for x in rows if x["setting"] == folder.name]
        if got:
            log(f"{folder.name}: the twin replaying each step at its recorded speed agrees "
                f"with the server's pass or fail in {sum(x['agree'] for x in got)} of "
                f"{len(got)} steps at {min_load:.0%} of capacity or more")
    table = pd.DataFrame(rows)
    table.to_csv(out / STEPS_FILE, index=False, float_format="%.6g")
    return table


def stored_setting(folder: Path, workload: Workload
                   ) -> tuple[Calibration, dict[str, LatencyProfile], Any, list[CpuRun]]:
    """A fidelity run's setting folder as the steps replay it: the prediction's
    calibration (``calibration.json``'s last twin mode), the profiles, the deployment
    (model files stood in for) and the stored runs."""
    calibs = calibration_from_json((folder / CALIBRATION_FILE).read_text())
    calib = calibs[next(m for m in reversed(TWIN_MODES) if m in calibs)]
    profiles = {p.stem: load_profile(p) for p in sorted((folder / "profiles").glob("*.json"))}
    with tempfile.TemporaryDirectory(prefix="clipperlab-steps-") as d:
        dep = _deployment(folder / "deploy.toml", Path(d))
    runs, _, _, _ = load_runs(folder / RUNS_FILE, workload)
    return calib, profiles, dep, runs


def process_waits(cpu_wait_s: Mapping[str, float]) -> dict[str, float]:
    """The twin's waits for a core (``Simulation.cpu_wait_s``: ``host/process``) under
    the names a real run keeps them (``CpuRun.waits``): ``frontend``, ``loadgen`` and
    ``container:<model>`` (its replicas summed)."""
    out: dict[str, float] = {}
    for key, v in cpu_wait_s.items():
        proc = key.split("/", 1)[-1]
        if proc not in ("frontend", "loadgen"):
            proc = "container:" + proc.split("#", 1)[0].split(":", 1)[0]
        out[proc] = out.get(proc, 0.0) + v
    return out


def _deployment(toml: Path, tmp: Path) -> Any:
    """The run's deployment with a stand-in for every model file it names (the twin does
    not load models), and AIMD's rule of its day where it says none."""
    if not toml.exists():
        raise CalibrationError(f"{toml} does not exist: a fidelity run stores one per setting")
    text = toml.read_text()
    for name in re.findall(r'path\s*=\s*"([^"]+)"', text):
        f = tmp / Path(name).name
        f.touch()
        text = text.replace(f'"{name}"', f'"{f.name}"')
    dst = tmp / "deploy.toml"
    dst.write_text(text)
    dep = real_deployment(dst)
    if "aimd_step_from" not in text:
        # runs 1-31 stored no AIMD rule: they ran with the prototype's, the server's
        # default then ("filled" since)
        dep = dataclasses.replace(dep, model_defaults={**dep.model_defaults,
                                                       "aimd_step_from": "sent"})
    return dep



def _level_speed(row: Mapping[str, Any]) -> HostSpeed | None:
    """A level row's recorded speed: its own (``speed_level_*``), else its setting's
    levels' (``speed_levels_*``)."""
    for p in ("speed_level_", "speed_levels_"):
        f = _num(row, f"{p}factor", math.nan)
        sh = _num(row, f"{p}slow_share", math.nan)
        dw = _num(row, f"{p}dwell_ms", math.nan)
        if math.isfinite(f) and math.isfinite(sh):
            return HostSpeed(fast_ns=math.nan, slow_factor=f, slow_share=sh,
                             slow_dwell_s=dw / 1e3 if math.isfinite(dw) and dw > 0 else 0.1,
                             probes=0, span_s=math.nan)
    return None


def _ramp_speeds(row: Mapping[str, Any], calib: Calibration) -> list[HostSpeed | None]:
    """The two speeds a row records for each capacity ramp (``speed_ramps_*``: the slow
    share and factor while each went, and from run 36 on its fast level; their periods'
    mean is the calibration's), else none."""
    shares, factors, fast = (str(v) if pd.notna(v := row.get(f"speed_ramps_{k}", "")) and v
                             else "" for k in ("slow_share", "factor", "fast_ns"))
    if not shares or shares == "nan" or not factors:
        return []
    levels = [float(v) for v in fast.split(";")] if fast else []
    out: list[HostSpeed | None] = []
    for k, (sh, f) in enumerate(zip(shares.split(";"), factors.split(";"), strict=False)):
        s, x = float(sh), float(f)
        out.append(HostSpeed(fast_ns=levels[k] if k < len(levels) else math.nan,
                             slow_factor=x, slow_share=s,
                             slow_dwell_s=calib.slow_dwell_s, probes=0, span_s=math.nan)
                   if math.isfinite(s) and math.isfinite(x) else None)
    return out


def stored_speed(calibs: Mapping[str, Calibration]) -> HostSpeed | None:
    """The two speeds a run's host CPU model twin was fitted with (None: one speed), its
    probe's fast level and, when its cores switched each on its own
    (``Calibration.core_speeds``), as many cores, so a refit keeps both."""
    for c in calibs.values():
        if c.host_cpus > 0 and c.slow_factor > 1.0 and c.slow_share > 0.0:
            return HostSpeed(fast_ns=c.fast_ns if c.fast_ns > 0 else math.nan,
                             slow_factor=c.slow_factor,
                             slow_share=c.slow_share, slow_dwell_s=c.slow_dwell_s,
                             probes=0, span_s=math.nan, slow_dwells_s=c.slow_dwells_s,
                             fast_dwells_s=c.fast_dwells_s,
                             cores=c.host_cpus if c.core_speeds else 1)
    return None


def stored_stalls(stored: Mapping[str, Calibration]) -> HostStalls | None:
    """The cores' stalls a run's host CPU twin was given (``HostStalls`` of its
    ``stalls_s``, core k measured as the twin's core k); ``None`` without."""
    for c in stored.values():
        if c.host_cpus > 0 and any(c.stalls_s):
            return HostStalls.of_fields(c.stalls_s, c.stalls_span_s)
    return None


def with_speed(c: Calibration, speed: HostSpeed) -> Calibration:
    """``c`` with ``speed``'s two speeds when it has the host CPU model (else as it is)."""
    return dataclasses.replace(c, **speed_fields(speed)) if c.host_cpus > 0 else c


def with_stalls(c: Calibration, stalls: HostStalls) -> Calibration:
    """``c`` with the cores' ``stalls`` when it has the host CPU model (else as it is)."""
    return dataclasses.replace(c, **stall_fields(stalls)) if c.host_cpus > 0 else c


def _refit(path: Path, dep: Any, app: Any, specs: Any, workload: Workload,
           profiles: dict[str, Any], stored: Mapping[str, Calibration], seed: int,
           repeats: int, log: Log, speed: HostSpeed | None = None,
           stalls: HostStalls | None = None, loop_sleeps: bool = True, jobs: int = 1
           ) -> tuple[dict[str, Calibration], dict[str, Any]]:
    """Every twin's calibration fitted again on the stored runs (``validation``'s step 5,
    ``calibrate_twin``), the measured capacity and the ramp's CPU per query as stored;
    the two speeds ``speed``, else the run's own; the cores' ``stalls``, else the run's
    own; with the fitted numbers' intervals."""
    from clipperlab.calibration.validation import Setup, calibrate_twin

    runs, low, low_seen, calib_qps = load_runs(path, workload)
    if low is None:
        raise CalibrationError(f"{path}: no low-load run stored: nothing to refit on")
    ref = next(iter(stored.values()))
    setup = Setup(dep, app, [s for s, _, _ in specs], {s.name: n for s, n, _ in specs},
                  workload, dict(profiles), seed, log, "off", repeats,
                  stalls=stalls if stalls is not None else stored_stalls(stored),
                  loop_sleeps=loop_sleeps, jobs=jobs)
    calibs, intervals = calibrate_twin(
        runs, setup, low, low_seen, ref.capacity_qps, ref.frontend_cost_s, calib_qps,
        host_cpu=any(c.host_cpus > 0 for c in stored.values()),
        speed=speed if speed is not None else stored_speed(stored))
    # the fast level the stored runs were measured at (what each ramp's is read
    # against: ``twin.base_factor``) is the run's, whatever speeds the refit is given
    fast_ns = max(c.fast_ns for c in stored.values())
    return ({m: dataclasses.replace(c, fast_ns=fast_ns) if c.host_cpus > 0 else c
             for m, c in calibs}, dict(intervals))
