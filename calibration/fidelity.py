"""The fidelity table: ``clipperlab validate`` over models x batching, into one table.

    python -m clipperlab.calibration.fidelity --out results/validation [--level-s 10]
        [--repeats 3] [--twin-draws 5] [--ramps 3] [--ramp-resolution 1.05]
        [--busy warn|refuse|off] [--models noop,logreg,forest] [--batchings aimd,delayed]
        [--resume] [--quick] [--no-host-cpu] [--no-speed]
    python -m clipperlab.calibration.fidelity --out COPY_OF_A_RUN --resimulate [--no-refit]
        [--slow FACTOR,SHARE,DWELL_MS]

Models (``clipperlab.calibration.torch_models``; built in a temporary directory, nothing
downloaded): the no-op container, a scikit-learn logistic regression (cheap) and a random
forest of 50 trees of depth 16 (expensive at small batches), all on digits "is it a 3?"
with a 20 ms SLO.  Batching: AIMD, and AIMD with delayed batching (a 2 ms wait timeout),
with the server's AIMD rule (``server.aimd_step_from``, "filled"); ``aimd-sent``,
``delayed-sent`` (the paper's prototype, runs 1-30), ``aimd-cap``, ``delayed-cap``,
``aimd-filled`` and ``delayed-filled`` say the rule.
Each pair runs ``clipperlab.calibration.validation.validate`` at 30%, 60% and 90% of its
measured capacity (the median of ``--ramps`` capacity ramps, ``capacity.ramp``'s rules,
each ramp's answer in ``ramp_capacities_qps``; ``--repeats`` runs of ``--level-s``
seconds per level and side,
medians; the machine sampled before each measurement, ``--busy``; the prediction is the
twin with the host CPU model, ``sim+host``, unless ``--no-host-cpu``: the twin without
it, ``sim+frontend``, is beside it in every table either way; with ``--speed``, the
default, the machine's speed is probed while each setting runs and the prediction's host
switches between the two speeds found, ``slow_factor``, ``slow_share`` and
``slow_dwell_ms`` in the table, the speed during the levels beside it as
``speed_levels_*``); outputs go to
``OUT/<model>-<batching>/`` and the combined ``OUT/fidelity.csv`` (with the load each
level ran under, the predicted capacity ``sim_capacity_qps``, the host CPU model's
demands and each fitted number's interval as ``<name>_lo``/``<name>_hi``),
``OUT/fidelity_capacity.csv`` (capacity measured against predicted), ``OUT/fidelity.md``
(the README's tables: errors of the calibrated simulator against the real run, whether
the issue's goals hold, the counts per mode, the capacities, the calibration with
intervals, the calibration floor) and ``OUT/fidelity.png``; ``OUT/fidelity_floor.csv``
(``calibration_floor``: the server's own calibration runs near each level against the
level); per setting ``calibration.json`` and ``runs.npz``
(what the calibration was fitted on), so that ``--resimulate`` can run the simulator's
side again over OUT without the real server (``clipperlab.calibration.resimulate``).
Tables and the figure come from ``clipperlab.report``.  A whole run takes about two
hours on a 2-core machine; ``--resume`` keeps the settings OUT's ``fidelity.csv``
already holds and runs the rest of ``--models`` x ``--batchings`` into the same table
(a stopped run finished, or a table built from runs of a few settings each).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from clipperlab.calibration.capacity import RAMP_RESOLUTION, RAMPS
from clipperlab.calibration.errors import CalibrationError
from clipperlab.calibration.fit import Calibration
from clipperlab.calibration.outputs import ValidationResult, format_table, write_outputs
from clipperlab.calibration.quiet import (
    BUSY_POLICIES,
    STALL_SECONDS,
    HostSpeed,
    HostStalls,
    save_probes,
)
from clipperlab.calibration.resimulate import (
    CALIBRATION_FILE,
    PROBES_FILE,
    RUNS_FILE,
    calibration_columns,
    calibration_to_json,
    replay_steps,
    resimulate,
    save_runs,
    stored_latencies,
)
from clipperlab.calibration.torch_models import save_sklearn
from clipperlab.calibration.validation import LEVEL_S, REPEATS, TWIN_DRAWS, validate
from clipperlab.engine.registry import AIMD_STEPS
from clipperlab.report.tables import markdown_table
from clipperlab.workloads import ConstantRate, DigitsInputs, Workload

__all__ = ["BATCHINGS", "MODELS", "calibration_floor", "main"]

MODELS = ("noop", "logreg", "forest")
BATCHINGS: dict[str, dict[str, object]] = {
    "aimd": {"policy": "aimd"},
    "delayed": {"policy": "aimd", "wait_timeout_s": 0.002},
}
# "aimd" and "delayed" take the server's AIMD rule (``server.aimd_step_from``: "filled"
# since 2026-12-05; runs 1-30 had the prototype's "sent", the engine's default, which a
# lull's batch of one resets); the same two with each rule said: "aimd-sent",
# "delayed-filled", ...
BATCHINGS.update({f"{name}-{step}": {**b, "aimd_step_from": step}
                  for step in AIMD_STEPS for name, b in list(BATCHINGS.items())})
DEFAULT_BATCHINGS = ("aimd", "delayed")
SLO_MS = 20.0
# the goal table's columns (``markdown``), as the README shows them
COLUMNS = ("model", "batching", "load", "real q/s", "real p50 / p99 ms", "sim q/s",
           "sim p50 / p99 ms", "err q/s", "err p50", "err p99", "goal", "within noise",
           "load avg", "others' CPU")
# the capacity table's columns (``capacity_markdown``)
# each ramp: its slow share and its fast level over the calibration's (``_per_ramp``)
PER_RAMP_COLUMN = "each ramp: measured / predicted (slow share, fast level x)"
CAPACITY_COLUMNS = ("model", "batching", "measured q/s [90% interval]", "ramps",
                    "predicted q/s", "err", "within 10%", "within the interval",
                    PER_RAMP_COLUMN)
CAPACITY_GOAL = 0.10
# fitted numbers shown as value [lo, hi] in the calibration table (``cal_table``)
INTERVAL_COLUMNS = ("capacity_qps", "query_cpu_us", "batch_cpu_us", "wake_us",
                    "pause_rate_hz", "pause_rate_busy_hz")
SIM_MODES = ("sim+host", "sim+frontend")  # the calibrated twins, the prediction first
# the calibration floor (``calibration_floor``): stored runs within this ratio of a
# level's offered rate stand for the server at that level during the calibration
FLOOR_RATIO = 1.25
FLOOR_MIN_RUNS = 2


def said_batching(name: str) -> dict[str, object]:
    """The setting ``name``'s batching with AIMD's rule said (the server's default where
    ``BATCHINGS`` leaves it out), so that the deployment a run stores says what ran
    even after the default changes (``resimulate`` reads a file without it as the rule
    of runs 1-31, "sent")."""
    from clipperlab.real.config import ServerConfig

    return {"aimd_step_from": ServerConfig().aimd_step_from, **BATCHINGS[name]}


def deploy_toml(model: str, path: str, batching: dict[str, object]) -> str:
    kind = "noop" if model == "noop" else "sklearn"
    b = ", ".join(f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"'
                  for k, v in batching.items())
    return (
        f'[[models]]\nname = "{model}"\nkind = "{kind}"\npath = "{path}"\nreplicas = 1\n'
        f"batching = {{ {b} }}\n\n[[applications]]\nname = \"digits\"\nslo_ms = {SLO_MS:g}\n"
        f'default_output = -1\nmodels = ["{model}"]\n'
    )


def workload() -> Workload:
    """The table's workload: digits at a constant rate (``validate`` re-times it)."""
    return Workload(ConstantRate(100), n_queries=100, app="digits", inputs=DigitsInputs())


def _errors(s: pd.Series, real: pd.Series, metrics: tuple[str, ...]) -> dict[str, float]:
    return {m: (s[m] - real[m]) / real[m] if real[m] else math.nan for m in metrics}


def goal_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Per (model, batching, level) and mode: errors against the real run, whether the
    issue's goal holds (throughput and p50 within 10%; p99 within 20% up to 60% load),
    and whether it holds against the noise floor (each bound widened to the error of the
    real server's second run of the same trace, ``real again``)."""
    rows = []
    metrics = ("throughput_qps", "p50_ms", "p99_ms")
    limits = {"throughput_qps": 0.10, "p50_ms": 0.10, "p99_ms": 0.20}
    for (model, batching, level), g in table.groupby(["model", "batching", "level"],
                                                     sort=False):
        real = g[g["mode"] == "real"].iloc[0]
        again = g[g["mode"] == "real again"]
        floor = (_errors(again.iloc[0], real, metrics) if len(again)
                 else dict.fromkeys(metrics, 0.0))
        checked = [m for m in metrics if m != "p99_ms" or level <= 0.6]

        def holds(e: dict[str, float], bound: dict[str, float],
                  checked: list[str] = checked) -> bool:
            return all(abs(e[m]) <= bound[m] for m in checked)

        strict = {m: limits[m] for m in metrics}
        widened = {m: max(limits[m], abs(floor[m])) for m in metrics}
        for mode in ("real again", "sim", "sim+frontend", "sim+host", "sim+in-situ"):
            if not (g["mode"] == mode).any():
                continue
            s = g[g["mode"] == mode].iloc[0]
            e = _errors(s, real, metrics)
            ok = holds(e, strict)
            rows.append({"model": model, "batching": batching, "level": level, "mode": mode,
                         "real_qps": real["throughput_qps"], "real_p50_ms": real["p50_ms"],
                         "real_p99_ms": real["p99_ms"], "sim_qps": s["throughput_qps"],
                         "sim_p50_ms": s["p50_ms"], "sim_p99_ms": s["p99_ms"],
                         "err_qps": e["throughput_qps"], "err_p50": e["p50_ms"],
                         "err_p99": e["p99_ms"], "goal_met": bool(ok),
                         "within_noise": bool(holds(e, widened)),
                         "load_avg": real["load_avg"],
                         "other_cpu_share": real.get("other_cpu_share", math.nan)})
    return pd.DataFrame(rows)


def prediction_mode(goals: pd.DataFrame) -> str:
    """The prediction's mode: ``sim+host`` when the table has it, else ``sim+frontend``."""
    modes = set(goals["mode"]) if len(goals) else set()
    return next((m for m in SIM_MODES if m in modes), SIM_MODES[-1])


def counts(goals: pd.DataFrame) -> str:
    """Per mode the README's counts: rows with throughput and p50 within 10%, p99 within
    20% up to 60% load, each with the median absolute error."""
    rows = []
    for mode in ("real again", *SIM_MODES, "sim"):
        g = goals[goals["mode"] == mode]
        if not len(g):
            continue
        low = g[g["level"] <= 0.6]

        def within(col: str, lim: float, d: pd.DataFrame) -> str:
            e = d[col].abs()
            return f"{int((e <= lim).sum())}/{len(d)} ({e.median():.0%})"

        rows.append({"mode": mode, "throughput within 10%": within("err_qps", 0.10, g),
                     "p50 within 10% (median)": within("err_p50", 0.10, g),
                     "p99 within 20% up to 60% (median)": within("err_p99", 0.20, low),
                     "p99 median error, all loads": f"{g['err_p99'].abs().median():.0%}"})
    return markdown_table(rows)


def markdown(goals: pd.DataFrame, mode: str | None = None) -> str:
    """The goal table of one mode (the prediction's by default): the real run, the
    mode's, the errors and the verdicts."""
    g = goals[goals["mode"] == (mode or prediction_mode(goals))]
    rows = [{"model": r["model"], "batching": r["batching"], "load": r["level"],
             "real q/s": r["real_qps"],
             "real p50 / p99 ms": f"{r['real_p50_ms']:.2f} / {r['real_p99_ms']:.1f}",
             "sim q/s": r["sim_qps"],
             "sim p50 / p99 ms": f"{r['sim_p50_ms']:.2f} / {r['sim_p99_ms']:.1f}",
             "err q/s": r["err_qps"], "err p50": r["err_p50"], "err p99": r["err_p99"],
             "goal": bool(r["goal_met"]), "within noise": bool(r["within_noise"]),
             "load avg": r["load_avg"], "others' CPU": r.get("other_cpu_share", math.nan)}
            for _, r in g.iterrows()]
    err = "{:+.0%}"
    return markdown_table(rows, COLUMNS, formats={
        "load": "{:.0%}", "real q/s": "{:,.0f}", "sim q/s": "{:,.0f}", "err q/s": err,
        "err p50": err, "err p99": err, "load avg": "{:.1f}", "others' CPU": "{:.0%}"})


def capacity_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Per (model, batching): the measured capacity (the median of the ramps, its
    interval when the table has one), the calibrated twin's prediction
    (``sim_capacity_qps``), the error (predicted - measured) / measured and whether it
    is within the issue's 10%; whether it is within the measured median's interval (the
    server's ramps cannot tell apart capacities inside it: where the interval is wider
    than 10% either way, the server's own spread is larger than the goal)."""
    rows: list[dict[str, object]] = []
    if "capacity_qps" not in table.columns:
        return pd.DataFrame(rows)
    for (model, batching), g in table.groupby(["model", "batching"], sort=False):
        r = g.iloc[0]
        measured = float(r["capacity_qps"])
        predicted = float(r.get("sim_capacity_qps", math.nan))
        err = (predicted - measured) / measured if measured else math.nan
        lo = float(r.get("capacity_qps_lo", measured))
        hi = float(r.get("capacity_qps_hi", measured))
        rows.append({"model": model, "batching": batching, "capacity_qps": measured,
                     "capacity_qps_lo": lo, "capacity_qps_hi": hi,
                     "ramps": _ramps(r),
                     "sim_capacity_qps": predicted, "err_capacity": err,
                     "capacity_goal_met": bool(abs(err) <= CAPACITY_GOAL),
                     "capacity_within_interval": bool(lo <= predicted <= hi),
                     "per_ramp": _per_ramp(r)})
    return pd.DataFrame(rows)


def _per_ramp(row: pd.Series) -> str:
    """Each ramp's measured and predicted capacity, the slow share while it went and its
    fast level over the calibration's (``ramp_capacities_qps``,
    ``sim_ramp_capacities_qps``, ``speed_ramps_slow_share``, ``speed_ramps_fast_ns`` over
    ``speed_calib_fast_ns``: "x1.30", runs from 36 on); empty for a run that did not
    record them."""
    cols = ("ramp_capacities_qps", "sim_ramp_capacities_qps", "speed_ramps_slow_share",
            "speed_ramps_fast_ns")
    parts = [str(row.get(c, "") or "") if pd.notna(row.get(c, "")) else "" for c in cols]
    if not parts[0] or not parts[1]:
        return ""
    meas, pred = parts[0].split(";"), parts[1].split(";")
    slow = parts[2].split(";") if parts[2] else []
    fast = parts[3].split(";") if parts[3] else []
    ref = pd.to_numeric(row.get("speed_calib_fast_ns", math.nan), errors="coerce")
    if len(meas) != len(pred):
        return ""
    out = []
    for k, (m, p) in enumerate(zip(meas, pred, strict=True)):
        s = f"{float(m):,.0f} / {float(p):,.0f}"
        notes = []
        if k < len(slow) and slow[k] != "nan":
            notes.append(f"{float(slow[k]):.0%}")
        if k < len(fast) and math.isfinite(f := float(fast[k])) and ref > 0:
            notes.append(f"x{f / ref:.2f}")
        if notes:
            s += f" ({', '.join(notes)})"
        out.append(s)
    return "; ".join(out)


def _ramps(row: pd.Series) -> int:
    """How many ramps measured a row's capacity (runs before ``ramps`` had one per
    level repeat)."""
    for col in ("ramps", "repeats"):
        v = row.get(col)
        if v is not None and pd.notna(v):
            return int(v)
    return 1


def capacity_markdown(caps: pd.DataFrame) -> str:
    """The capacity table: measured [interval], ramps, predicted, error, verdict."""
    rows = [{"model": r["model"], "batching": r["batching"],
             "measured q/s [90% interval]": f"{r['capacity_qps']:,.0f} "
                                            f"[{r['capacity_qps_lo']:,.0f}, "
                                            f"{r['capacity_qps_hi']:,.0f}]",
             "ramps": r["ramps"], "predicted q/s": r["sim_capacity_qps"],
             "err": r["err_capacity"], "within 10%": bool(r["capacity_goal_met"]),
             "within the interval": bool(r["capacity_within_interval"]),
             PER_RAMP_COLUMN: r.get("per_ramp", "")}
            for _, r in caps.iterrows()]
    return markdown_table(rows, CAPACITY_COLUMNS,
                          formats={"predicted q/s": "{:,.0f}", "err": "{:+.0%}"})


def cal_table(table: pd.DataFrame) -> pd.DataFrame:
    """The calibration per (model, batching), each fitted number with an interval in the
    table as ``value [lo, hi]``."""
    cols = [c for c in ("capacity_qps", "sim_capacity_qps", "overhead_ms", "query_cpu_us",
                        "batch_cpu_us", "wake_us", "cold_after_ms", "pause_rate_hz",
                        "pause_rate_busy_hz", "pause_median_ms", "plain_pause_rate_hz",
                        "plain_pause_rate_busy_hz", "container_wake_us", "host_cpus",
                        "container_cpu_us", "container_item_cpu_us", "loadgen_cpu_us",
                        "slow_factor", "slow_share", "slow_dwell_ms",
                        "speed_levels_factor", "speed_levels_slow_share",
                        "start_load_avg", "start_other_cpu_share")
            if c in table.columns]
    extra = [f"{c}_{e}" for c in INTERVAL_COLUMNS for e in ("lo", "hi")
             if f"{c}_{e}" in table.columns]
    cal = table.groupby(["model", "batching"], sort=False)[cols + extra].first().reset_index()
    for c in INTERVAL_COLUMNS:
        if c in cal.columns and f"{c}_lo" in cal.columns:
            cal[c] = [f"{v:.3g} [{lo:.3g}, {hi:.3g}]" for v, lo, hi in
                      zip(cal[c], cal[f"{c}_lo"], cal[f"{c}_hi"], strict=True)]
    return cal.drop(columns=extra)


def calibration_floor(table: pd.DataFrame, out: Path) -> pd.DataFrame:
    """The server during its calibration against the server at the levels: per level, the
    median p50 and p99 of the stored calibration runs (``OUT/<model>-<batching>/runs.npz``:
    the ramps' passing steps and the calibration run; the failing steps left out, as the
    twin's latency fits leave them) whose rate lies within ``FLOOR_RATIO`` of the level's
    offered rate (at least ``FLOOR_MIN_RUNS`` of them, else the level has no row), against
    the level's real p50 and p99.  A twin fitted on those runs reproduces them at best, so
    where they differ from the level (the machine changed between the calibration's
    minutes and the levels') no twin fitted on them can be closer than this; ``real
    again``, run back to back, does not see such a change.  Settings without
    ``runs.npz`` (run 1 and the run of 2026-11-23) have no rows."""
    rows: list[dict[str, object]] = []
    real = table[table["mode"] == "real"]
    for (model, batching), group in real.groupby(["model", "batching"], sort=False):
        path = out / f"{model}-{batching}" / RUNS_FILE
        if not path.exists():
            continue
        runs = stored_latencies(path)
        if not len(runs):
            continue
        rates, p50s, p99s = runs.T
        for _, lv in group.iterrows():
            rate = float(lv.get("offered_qps", lv["throughput_qps"]))
            near = np.abs(np.log(rates / rate)) <= math.log(FLOOR_RATIO)
            if near.sum() < FLOOR_MIN_RUNS:
                continue
            p50, p99 = float(np.median(p50s[near])), float(np.median(p99s[near]))
            rows.append({"model": model, "batching": batching, "level": lv["level"],
                         "real_qps": rate, "real_p50_ms": lv["p50_ms"],
                         "real_p99_ms": lv["p99_ms"], "runs": int(near.sum()),
                         "runs_qps_lo": float(rates[near].min()),
                         "runs_qps_hi": float(rates[near].max()),
                         "calib_p50_ms": p50, "calib_p99_ms": p99,
                         "err_p50": p50 / lv["p50_ms"] - 1, "err_p99": p99 / lv["p99_ms"] - 1})
    return pd.DataFrame(rows)


def floor_markdown(floor: pd.DataFrame) -> str:
    """``calibration_floor``'s rows as a table, with the p99 median error up to 60%."""
    if floor.empty:
        return "(no stored calibration runs near the levels)"
    shown = pd.DataFrame({
        "model": floor["model"], "batching": floor["batching"],
        "load": [f"{lv:.0%}" for lv in floor["level"]],
        "offered q/s": [f"{v:,.0f}" for v in floor["real_qps"]],
        "level p50 / p99 ms": [f"{a:.2f} / {b:.1f}" for a, b in
                               zip(floor["real_p50_ms"], floor["real_p99_ms"], strict=True)],
        "calibration runs (q/s)": [f"{n}: {lo:,.0f}-{hi:,.0f}" for n, lo, hi in
                                   zip(floor["runs"], floor["runs_qps_lo"],
                                       floor["runs_qps_hi"], strict=True)],
        "their p50 / p99 ms": [f"{a:.2f} / {b:.1f}" for a, b in
                               zip(floor["calib_p50_ms"], floor["calib_p99_ms"], strict=True)],
        "err p50": [f"{v:+.0%}" for v in floor["err_p50"]],
        "err p99": [f"{v:+.0%}" for v in floor["err_p99"]],
    })
    low = floor[floor["level"] <= 0.6 + 1e-9]
    med = float(low["err_p99"].abs().median()) if len(low) else math.nan
    return (markdown_table(shown) + f"\n\np99 up to 60%: median error {med:.0%} over"
            f" {len(low)} levels.")


def plot(goals: pd.DataFrame, path: Path) -> Path:
    """Per row, the calibrated simulator's error (bars: green inside the goal's band,
    red outside, grey where the goal does not apply) and the real server's second run
    (black dots: the noise floor); errors beyond +-100% are drawn at the edge."""
    from clipperlab.report.plots import grid, save, style_axis

    fig, axes = grid(3, 3, width_in=14 / 3, height_in=4.4, sharey=True)
    pred = prediction_mode(goals)
    g = goals[goals["mode"] == pred].reset_index(drop=True)
    again = goals[goals["mode"] == "real again"].reset_index(drop=True)
    labels = [f"{m} {b} {lv:.0%}" for m, b, lv in zip(g["model"], g["batching"], g["level"],
                                                     strict=True)]
    x = np.arange(len(g))
    for ax, col, lim, title in ((axes[0], "err_qps", 0.10, "throughput"),
                                (axes[1], "err_p50", 0.10, "p50"),
                                (axes[2], "err_p99", 0.20, "p99 (goal up to 60% load)")):
        vals = np.clip(g[col].to_numpy() * 100, -100, 100)
        applies = (g["level"] <= 0.6).to_numpy() if col == "err_p99" else np.ones(len(g), bool)
        colors = ["0.75" if not ok else ("C2" if abs(v) <= lim * 100 else "C3")
                  for v, ok in zip(vals, applies, strict=True)]
        ax.bar(x, vals, color=colors)
        if len(again) == len(g):
            ax.plot(x, np.clip(again[col].to_numpy() * 100, -100, 100), "k.",
                    label="real server, second run")
        ax.axhspan(-lim * 100, lim * 100, color="0.92", zorder=0)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=90, fontsize=8)
        ax.set_ylim(-105, 105)
        style_axis(ax, title=f"{title}: band = goal",
                   ylabel="error against the real run (%)" if ax is axes[0] else "")
    from matplotlib.patches import Patch  # what the colours mean, in the legend

    colours = [(Patch(color=c), what) for c, what in (
        ("C2", "simulator inside the goal's band"), ("C3", "simulator outside the band"),
        ("0.75", "goal does not apply"), ("0.92", "the goal's band"))]
    return save(fig, path, suptitle=f"simulator fidelity: calibrated simulator ({pred}, bars) "
                "and the real server's own repeat (dots) against the real run",
                legend_axes=axes[:1],
                legend_extra=colours)


class _Usage(Exception):
    """A command-line error: ``main`` prints it as one ``error:`` line and exits 2."""


class _Options(NamedTuple):
    """What ``_checked`` makes of the arguments beyond argparse's own checks."""

    models: list[str]
    batchings: list[str]
    slow: HostSpeed | None  # --slow, as the two speeds
    stalls: HostStalls | None  # --stalls FILE, read


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="results/validation")
    ap.add_argument("--level-s", "--duration-s", dest="level_s", type=float, default=LEVEL_S,
                    help="seconds per run of a load level (default %(default)s s)")
    ap.add_argument("--repeats", type=int, default=REPEATS,
                    help="runs per level on each side, medians (default %(default)s)")
    ap.add_argument("--twin-draws", type=int, default=TWIN_DRAWS,
                    help="the calibrated twins' runs per real run of a level, each with "
                         "its own seed, medians over all (default %(default)s)")
    ap.add_argument("--ramps", type=int, default=RAMPS,
                    help="capacity ramps per setting, median (default %(default)s)")
    ap.add_argument("--ramps-after", type=int, default=0,
                    help="of the --ramps, how many run after the levels (whose rates the "
                         "ones before set), so the calibration sees the machine on both "
                         "sides of them (default %(default)s)")
    ap.add_argument("--ramp-resolution", type=float, default=RAMP_RESOLUTION,
                    help="the capacity ramp bisects until first bad / last good rate is at "
                         "most this ratio (default %(default)s)")
    ap.add_argument("--busy", choices=BUSY_POLICIES, default="warn",
                    help="when the machine is busy before a measurement: warn and record it, "
                         "refuse (wait up to 90 s, then stop), or off (default %(default)s)")
    ap.add_argument("--models", default=",".join(MODELS),
                    help="comma-separated, from " + ", ".join(MODELS) + " (default: all)")
    ap.add_argument("--batchings", default=",".join(DEFAULT_BATCHINGS),
                    help="comma-separated, from " + ", ".join(BATCHINGS)
                         + " (default: %(default)s)")
    ap.add_argument("--quick", action="store_true", help="tiny run (a smoke test)")
    ap.add_argument("--host-cpu", action=argparse.BooleanOptionalAction, default=True,
                    help="predict with the twin that shares the machine's cores (sim+host; "
                         "the twin without it, sim+frontend, is in the tables either way)")
    ap.add_argument("--resimulate", action="store_true",
                    help="no real runs: the simulator's side again over OUT's stored real "
                         "runs (calibration, profiles, deployments), OUT/fidelity.csv "
                         "rewritten and the tables rebuilt; run it on a copy of a result")
    ap.add_argument("--refit", action=argparse.BooleanOptionalAction, default=True,
                    help="with --resimulate: fit the twin again where OUT stored the runs "
                         "it was fitted on (runs.npz; default %(default)s)")
    ap.add_argument("--stalls-s", type=float, default=STALL_SECONDS, metavar="SECONDS",
                    help="before each setting, run the hiccup meter on every core this "
                         "long (the machine idle) and give the host CPU model's twin the "
                         "cores' stalls (0: none; default %(default)s s)")
    ap.add_argument("--stalls", default=None, metavar="FILE",
                    help="with --resimulate: give every host CPU twin these cores' stalls "
                         "(python -m clipperlab.calibration.quiet --stalls SECONDS "
                         "--stalls-out FILE); default: each run's own (none before "
                         "2026-12-04)")
    ap.add_argument("--slice-ms", type=float, default=None,
                    help="with --resimulate: the host CPU model's time slice in ms (0: "
                         "processor sharing; default: the kernel's, as a run fits it)")
    ap.add_argument("--speed", action=argparse.BooleanOptionalAction, default=True,
                    help="probe the machine's speed while each setting runs and give the "
                         "host CPU model's twin its two speeds (default %(default)s)")
    ap.add_argument("--replay-speed", action=argparse.BooleanOptionalAction, default=True,
                    help="with --speed: probe each core on its own and replay, in the "
                         "twin, the speed each level's real run went at, instead of "
                         "drawing it from the level's two speeds (default %(default)s)")
    ap.add_argument("--slow", default=None, metavar="FACTOR,SHARE,DWELL_MS",
                    help="with --resimulate: the two speeds to refit the twin with (e.g. "
                         "1.85,0.4,100: slow x1.85, 40%% of the time, 100 ms periods on "
                         "average; default: each run's own, none before the probe)")
    ap.add_argument("--core-speeds", action=argparse.BooleanOptionalAction, default=None,
                    help="with --resimulate: each core of the twin's host switches speed on "
                         "its own (a single-threaded loop at its core's speed) or the host as "
                         "one (default: as the run was fitted; runs before run 11: as one)")
    ap.add_argument("--level-speed", action=argparse.BooleanOptionalAction, default=True,
                    help="with --resimulate: run each level at the machine's speed its row "
                         "records, as a live run does (default %(default)s)")
    ap.add_argument("--loop-sleeps", action=argparse.BooleanOptionalAction, default=True,
                    help="fit the loop's wake-up cost on the server's own count of its "
                         "sleeps (voluntary context switches, recorded per run since "
                         "2026-12-05) where every run has one; --no-loop-sleeps: on the "
                         "twin's count, as before (live runs and --resimulate's refits; "
                         "default %(default)s)")
    ap.add_argument("--jobs", type=int, default=0, metavar="N",
                    help="the twin's runs on N processes, between real runs: the fits' "
                         "replays, the capacity ramps after the first, each level's runs "
                         "and draws (0: one per CPU; the same numbers whatever N; default "
                         "%(default)s)")
    ap.add_argument("--resume", action="store_true",
                    help="keep the settings OUT/fidelity.csv already has (a stopped run's, "
                         "or one that covered some of --models x --batchings) and run only "
                         "the others, adding their rows to it")
    ap.add_argument("--report-only", action="store_true",
                    help="no runs: rebuild fidelity.md/.png and the goal table from OUT/"
                         "fidelity.csv")
    ap.add_argument("--steps", action="store_true",
                    help="no runs: replay every stored calibration run at 50%% of capacity "
                         "or more (the ramps' steps) in the prediction's twin at the speed "
                         "recorded while it went, against the server's pass or fail, into "
                         "OUT/fidelity_steps.csv (runs from before run 10 recorded none)")
    return ap


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    out = Path(a.out)
    try:
        opts = _checked(a)
        if a.resimulate:
            return _resimulate(a, out, opts)
        if a.steps:
            return _steps(out)
        if a.report_only:
            return _report_only(out)
        return _run_settings(a, out, opts)
    except _Usage as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _checked(a: argparse.Namespace) -> _Options:
    """The arguments' own rules (ranges, which flags go with --resimulate), before
    anything runs; ``_Usage`` names the flag."""
    models = [x for x in a.models.split(",") if x]
    batchings = [x for x in a.batchings.split(",") if x]
    for flag, given, known in (("--models", models, MODELS),
                               ("--batchings", batchings, tuple(BATCHINGS))):
        unknown = [x for x in given if x not in known]
        if unknown:
            raise _Usage(f"{flag}: unknown {', '.join(map(repr, unknown))}; expected some "
                         f"of {', '.join(known)}")
    if a.slice_ms is not None and not (a.resimulate and 0 <= a.slice_ms <= 1000):
        raise _Usage("--slice-ms: expected milliseconds in [0, 1000], with --resimulate")
    slow = None
    if a.slow is not None:
        try:
            f, sh, dw = (float(x) for x in a.slow.split(","))
            if not (a.resimulate and f >= 1 and 0 <= sh < 1 and dw > 0):
                raise ValueError
        except ValueError:
            raise _Usage(f"--slow {a.slow!r}: expected FACTOR,SHARE,DWELL_MS (a factor >= 1, "
                         "a share in [0, 1), milliseconds > 0), with --resimulate") from None
        slow = HostSpeed(fast_ns=math.nan, slow_factor=f, slow_share=sh,
                         slow_dwell_s=dw / 1e3, probes=0, span_s=math.nan)
    if a.twin_draws < 1:
        raise _Usage(f"--twin-draws {a.twin_draws}: expected an integer >= 1")
    if a.jobs < 0:
        raise _Usage(f"--jobs {a.jobs}: expected an integer >= 0 (0: one per CPU)")
    if a.ramps < 1 or not a.ramp_resolution > 1:
        raise _Usage(f"--ramps {a.ramps} / --ramp-resolution {a.ramp_resolution}: expected "
                     "at least 1 ramp and a ratio > 1")
    if not 0 <= a.ramps_after < a.ramps:
        raise _Usage(f"--ramps-after {a.ramps_after}: expected an integer from 0 to --ramps"
                     f" - 1 ({a.ramps - 1})")
    if a.core_speeds is not None and not a.resimulate:
        raise _Usage("--core-speeds/--no-core-speeds: only with --resimulate")
    if not (math.isfinite(a.stalls_s) and a.stalls_s >= 0):
        raise _Usage(f"--stalls-s {a.stalls_s:g}: expected seconds >= 0 (0: none)")
    stalls = None
    if a.stalls is not None:
        if not a.resimulate:
            raise _Usage("--stalls FILE: only with --resimulate (a live run measures its "
                         "own: --stalls-s)")
        try:
            stalls = HostStalls.from_json(Path(a.stalls).read_text())
        except (OSError, CalibrationError) as e:
            raise _Usage(f"--stalls {a.stalls}: {e}") from None
    return _Options(models, batchings, slow, stalls)


def _resimulate(a: argparse.Namespace, out: Path, opts: _Options) -> int:
    """--resimulate: the simulator's side again over OUT's stored real runs."""
    sl, cs = a.slice_ms, a.core_speeds

    def adjust(c: Calibration) -> Calibration:
        if c.host_cpus <= 0:
            return c
        if sl is not None:
            c = dataclasses.replace(c, slice_s=sl / 1e3)
        return c if cs is None else dataclasses.replace(c, core_speeds=cs)

    rs = resimulate(out, workload(), level_s=a.level_s, refit=a.refit,
                    adjust=None if sl is None and cs is None else adjust, stalls=opts.stalls,
                    speed=opts.slow, level_speed=a.level_speed, twin_draws=a.twin_draws,
                    loop_sleeps=a.loop_sleeps, jobs=a.jobs,
                    log=lambda s: print(s, flush=True))
    rs.table.to_csv(out / "fidelity.csv", index=False, float_format="%.6g")
    for note in rs.notes:
        print(f"note: {note}")
    report(rs.table, out)
    return 0


def _steps(out: Path) -> int:
    """--steps: every stored calibration run's ramp steps replayed in the twin."""
    if not out.is_dir():
        raise _Usage(f"{out} is not a fidelity run's folder")
    steps = replay_steps(out, workload(), log=lambda s: print(s, flush=True))
    if steps.empty:
        raise _Usage(f"no stored run in {out} recorded its speed (--steps needs a run "
                     "made with the per-core probes)")
    return 0


def _report_only(out: Path) -> int:
    """--report-only: the tables and plot again from OUT/fidelity.csv."""
    csv = out / "fidelity.csv"
    if not csv.exists():
        raise _Usage(f"{csv} does not exist; run without --report-only first")
    report(pd.read_csv(csv), out)
    return 0


def _kept_rows(a: argparse.Namespace, out: Path) -> tuple[list[pd.DataFrame],
                                                          set[tuple[str, str]]]:
    """With --resume, OUT/fidelity.csv's rows and the settings they cover; without, none
    (and a warning when the file is there to be replaced)."""
    if a.resume and (out / "fidelity.csv").exists():
        kept = pd.read_csv(out / "fidelity.csv")
        if not {"model", "batching"} <= set(kept.columns):
            raise _Usage(f"--resume: {out / 'fidelity.csv'} has no model and batching "
                         "columns; not a fidelity run's table")
        return [kept], {(str(m), str(b))
                        for m, b in zip(kept["model"], kept["batching"], strict=True)}
    if (out / "fidelity.csv").exists():
        # another run's folder (run 28 once wrote into run 20's): say what is replaced
        print(f"warning: {out / 'fidelity.csv'} exists; without --resume this run replaces "
              "it with its own settings' rows (their folders too; other files stay)",
              file=sys.stderr, flush=True)
    return [], set()


def _run_settings(a: argparse.Namespace, out: Path, opts: _Options) -> int:
    """The live run: each model x batching setting validated in turn, its folder written
    and its rows added to OUT/fidelity.csv as soon as it is done."""
    out.mkdir(parents=True, exist_ok=True)
    tables, done = _kept_rows(a, out)
    with tempfile.TemporaryDirectory(prefix="clipperlab-fidelity-") as d:
        for model in opts.models:
            path: str | None = None  # the model's file, made when a setting needs it
            for bname in opts.batchings:
                if (model, bname) in done:
                    print(f"=== {model} / {bname}: kept from {out / 'fidelity.csv'} "
                          "(--resume)", flush=True)
                    continue
                if path is None:
                    path = "" if model == "noop" else str(save_sklearn(model, d))
                res = _validate_setting(a, Path(d), model, path, bname)
                _write_setting(res, out / f"{model}-{bname}", model, path, bname)
                tables.append(_setting_rows(res, model, bname))
                pd.concat(tables).to_csv(out / "fidelity.csv", index=False, float_format="%.6g")
    if not tables:
        raise _Usage("nothing ran (no --models or --batchings)")
    report(pd.concat(tables, ignore_index=True), out)
    return 0


def _validate_setting(a: argparse.Namespace, d: Path, model: str, path: str,
                      bname: str) -> ValidationResult:
    """``validate`` on one setting's deployment (written into ``d``), as the flags say."""
    dep = d / f"{model}-{bname}.toml"
    dep.write_text(deploy_toml(model, path, said_batching(bname)))
    wl = workload()
    print(f"=== {model} / {bname} (load average {os.getloadavg()[0]:.2f})", flush=True)
    kw = {}
    if a.quick:
        kw = {"batch_sizes": (1, 8), "profile_repeats": 10, "calib_s": 1.0,
              "ramp_s": 0.5, "capacity_qps": 200.0}
    res = validate(dep, wl, duration_s=0.5 if a.quick else a.level_s,
                   repeats=1 if a.quick else a.repeats, busy=a.busy,
                   ramps=a.ramps, ramp_resolution=a.ramp_resolution,
                   ramps_after=0 if a.quick else a.ramps_after,
                   host_cpu=a.host_cpu, speed=a.speed,
                   replay_speed=a.replay_speed, twin_draws=a.twin_draws,
                   stalls_s=0.5 if a.quick else a.stalls_s,
                   loop_sleeps=a.loop_sleeps, jobs=a.jobs,
                   log=lambda s: print(s, flush=True), **kw)  # type: ignore[arg-type]
    print(format_table(res), flush=True)
    return res


def _write_setting(res: ValidationResult, sub: Path, model: str, path: str, bname: str) -> None:
    """One setting's folder: its outputs, deployment, calibration, runs and probes."""
    write_outputs(res, sub, f"{model}, {bname} batching, digits, SLO 20 ms")
    (sub / "deploy.toml").write_text(
        "# model file regenerated by python -m clipperlab.calibration.fidelity\n"
        + deploy_toml(model, Path(path).name if path else "", said_batching(bname)))
    (sub / CALIBRATION_FILE).write_text(calibration_to_json(res.calibrations))
    save_runs(sub / RUNS_FILE, res.runs, res.low_run, res.low_seen, res.calib_qps)
    if res.speed_probes:
        save_probes(sub / PROBES_FILE, res.speed_probes)


def _setting_rows(res: ValidationResult, model: str, bname: str) -> pd.DataFrame:
    """One setting's rows of ``fidelity.csv``: its table, the calibration's numbers, the
    capacities, the machine's speeds and load, and the fitted numbers' intervals."""
    t = res.table.copy()
    t.insert(0, "batching", bname)
    t.insert(0, "model", model)
    t["capacity_qps"] = res.calibration.capacity_qps
    c = res.calibration
    for col, v in calibration_columns(c, res.calibrations.get("sim+frontend")).items():
        t[col] = v
    t["sim_capacity_qps"] = res.predicted_capacity_qps
    t["ramp_capacities_qps"] = ";".join(f"{x:.0f}" for x in res.ramp_capacities)
    t["sim_ramp_capacities_qps"] = ";".join(f"{x:.0f}" for x in res.sim_ramp_capacities)
    if res.speed_ramps:  # the slow share and factor while each ramp went
        t["speed_ramps_slow_share"] = ";".join(
            f"{sp.slow_share:.3f}" if sp is not None else "nan" for sp in res.speed_ramps)
        t["speed_ramps_factor"] = ";".join(
            f"{sp.slow_factor:.3f}" if sp is not None else "nan" for sp in res.speed_ramps)
        t["speed_ramps_fast_ns"] = ";".join(
            f"{sp.fast_ns:.1f}" if sp is not None else "nan" for sp in res.speed_ramps)
    for when, sp in (("calib", res.speed_calib), ("levels", res.speed_levels)):
        if sp is not None:  # as measured, also where the twin kept one speed
            t[f"speed_{when}_fast_ns"] = sp.fast_ns
            t[f"speed_{when}_factor"] = sp.slow_factor
            t[f"speed_{when}_slow_share"] = sp.slow_share
            t[f"speed_{when}_dwell_ms"] = sp.slow_dwell_s * 1e3
    for name, iv in res.intervals.items():
        t[f"{name}_lo"], t[f"{name}_hi"] = iv.lo, iv.hi
    if res.load is not None:
        t["start_load_avg"] = res.load.loadavg_1m
        t["start_other_cpu_share"] = res.load.other_cpu_share
    return t


def report(table: pd.DataFrame, out: Path) -> None:
    """``fidelity_goals.csv``, ``fidelity.png`` and ``fidelity.md`` from the table."""
    goals = goal_rows(table)
    goals.to_csv(out / "fidelity_goals.csv", index=False, float_format="%.4f")
    plot(goals, out / "fidelity.png")
    caps = capacity_rows(table)
    caps.to_csv(out / "fidelity_capacity.csv", index=False, float_format="%.4f")
    cal = cal_table(table)
    floor = calibration_floor(table, out)
    if len(floor):
        floor.to_csv(out / "fidelity_floor.csv", index=False, float_format="%.4f")
    pred = prediction_mode(goals)
    text = ["# Simulator fidelity", "",
            "Latency is measured from the moment the load generator sent each query, and the"
            " simulator replays those send times (the generator's own lateness, its"
            " millisecond timer, is reported apart: `sched_p50_ms`, `mean_lag_ms` in"
            " `fidelity.csv`).", "",
            "Calibrated simulator (measured profiles + the frontend as one event loop with"
            " fitted CPU costs per query, per batch and per wake-up, pauses seen at low load,"
            " and a cooling overhead outside the loop"
            + ("; the host CPU model: the loop, the container and the load generator sharing"
               " the machine's cores, their CPU demands fitted from /proc, the pauses fitted"
               " on top of it" if pred == "sim+host" else "")
            + ("; the host switching between the two speeds the probe saw while the"
               " calibration's runs ran (`slow_factor`, `slow_share`, `slow_dwell_ms`; the"
               " levels' own as `speed_levels_*`)"
               if pred == "sim+host" and "slow_share" in table.columns
               and (table["slow_share"].fillna(0) > 0).any() else "")
            + f"; `{pred}`) against the real server:", "",
            markdown(goals, pred), "",
            "Counts per mode (\"median\": the median absolute error; p99's goal applies up"
            " to 60% load):", "", counts(goals), "",
            *(["The same calibration without the host CPU model (`sim+frontend`), over the"
               " same real runs:", "", markdown(goals, "sim+frontend"), ""]
              if pred == "sim+host" else []),
            "The noise floor: the same trace run a second time on the same real server,"
            " against the first run (no simulator can be closer to a run than the server is"
            " to itself):", "", markdown(goals, "real again"), "",
            "Plain simulator (measured profiles only):", "", markdown(goals, "sim"), "",
            "Diagnostic: the calibrated simulator told each run's in-situ slowdown (CPU"
            " contention measured by the server; not a prediction):", "",
            markdown(goals, "sim+in-situ"), "",
            "Capacity (the highest rate at which 95% of the queries get a prediction within"
            " the SLO): measured on the real server (the median of the ramps, with a 90%"
            " bootstrap interval over them) against the calibrated simulator's prediction"
            " (the same ramp run on the twin, as many times: same steps, same confirmation;"
            " the measured capacity is not told to it).  The issue's goal: within 10%; \"within"
            " the interval\": the prediction lies inside the measured median's interval, the"
            " range the server's own ramps cannot tell apart.", "",
            capacity_markdown(caps) if len(caps) else "(no capacities in the table)", "",
            "The calibration floor: the server during its own calibration (the stored"
            " passing runs within x1.25 of each level's rate, their median p50 and p99)"
            " against the server at the levels.  The twin is fitted on those runs, so it"
            " cannot be closer to a level than they are where the machine changed between"
            " the calibration's minutes and the levels' (which `real again`, run back to"
            " back, does not see):", "", floor_markdown(floor), "",
            "Calibration per run (fitted numbers as value [90% bootstrap interval over the"
            " runs]; the load each run started under):", "", markdown_table(cal), ""]
    (out / "fidelity.md").write_text("\n".join(text))
    print("\n".join(text))


def cli(argv: list[str] | None = None) -> int:
    """``main`` as a command: Ctrl-C ends it with one line and exit status 130, not a
    traceback (the settings finished before it stay in OUT's ``fidelity.csv``)."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("fidelity: interrupted; the settings finished before it are in the --out "
              "folder's fidelity.csv (--resume goes on from them)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(cli())
