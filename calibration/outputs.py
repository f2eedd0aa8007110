"""A validation's result and how it is shown: errors, tables, a figure and files.

Rules:
- ``ValidationResult.table`` has one row per (level, mode); ``relative_errors`` gives
  ``(sim - real) / real`` of every metric in ``METRICS`` per level and mode other than
  ``real`` (the real server's second run, ``real again``, included: the noise floor).
- Tables come from ``clipperlab.report.tables`` (``format_table`` as plain text for a
  terminal, ``markdown`` for ``summary.md``), the figure from ``clipperlab.report.plots``.
- ``write_outputs`` writes ``validation.csv``, ``errors.csv``, ``profiles/*.json``,
  ``validation.png`` and ``summary.md``; the CSV columns are the table's (with the load
  each level ran under: ``load_avg``, ``other_cpu_share``).  ``summary.md`` and the text
  table also give the capacity, measured (with its interval over the ramps) and predicted
  by the calibrated twin, the fitted numbers as ``value [lo, hi]``, and the load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipperlab.calibration.fit import Calibration, CpuRun
from clipperlab.calibration.intervals import Interval
from clipperlab.calibration.quiet import HostSpeed, HostStalls, LoadSample
from clipperlab.report.tables import markdown_table, text_table
from clipperlab.simulator import LatencyProfile, save_profile

__all__ = [
    "METRICS",
    "ValidationResult",
    "capacity_line",
    "describe",
    "describe_intervals",
    "format_table",
    "markdown",
    "plot",
    "relative_errors",
    "write_outputs",
]

METRICS = ("throughput_qps", "mean_ms", "p50_ms", "p90_ms", "p99_ms")
# how each mode is drawn: colour, line style, marker
MODE_STYLES = {"real": ("k", "-", "o"), "real again": ("0.6", "-", "o"),
               "sim": ("C1", ":", "x"), "sim+frontend": ("C0", "--", "s"),
               "sim+host": ("C3", "--", "D"),
               "sim+in-situ": ("C2", "-.", "^")}
# column -> header in both tables; each metric's format (``_err``: its relative error)
HEADERS = {"level": "load", "throughput_qps": "throughput q/s", "mean_ms": "mean ms",
           "p50_ms": "p50 ms", "p90_ms": "p90 ms", "p99_ms": "p99 ms",
           **{f"{m}_err": "err " + ("thr" if m == "throughput_qps" else m.removesuffix("_ms"))
              for m in METRICS}}
FORMATS = {"level": "{:.0%}", "throughput_qps": "{:,.0f}", **{m: "{:,.2f}" for m in METRICS[1:]}}


@dataclass
class ValidationResult:
    table: pd.DataFrame  # one row per (level, mode)
    errors: pd.DataFrame  # one row per (level, mode != real): relative errors
    calibration: Calibration  # the prediction's (with the host CPU model when asked)
    profiles: dict[str, LatencyProfile]
    notes: list[str] = field(default_factory=list)
    # fitted numbers with their bootstrap intervals, the unit in the name
    # (capacity_qps, query_cpu_us, batch_cpu_us, wake_us, pause_rate_hz, pause_rate_busy_hz)
    intervals: dict[str, Interval] = field(default_factory=dict)
    predicted_capacity_qps: float = math.nan  # the calibrated twin's (``capacity``)
    load: LoadSample | None = None  # the machine before the runs (``quiet``)
    # every calibrated twin's, by mode (sim+frontend; sim+host with the host CPU model)
    calibrations: dict[str, Calibration] = field(default_factory=dict)
    # what the calibration was fitted on (``resimulate.save_runs`` stores it): the kept
    # runs, the low-load run and what the server saw in it, its rate
    runs: list[CpuRun] = field(default_factory=list)
    low_run: CpuRun | None = None
    low_seen: dict[str, float] = field(default_factory=dict)
    calib_qps: float = math.nan
    ramp_capacities: list[float] = field(default_factory=list)  # each ramp's, in order
    sim_ramp_capacities: list[float] = field(default_factory=list)  # the twin's, likewise
    speed_ramps: list[HostSpeed | None] = field(default_factory=list)  # while each went
    # the machine's two speeds (``quiet.fit_speed``) while the calibration's runs ran and
    # while the levels ran; None when not probed
    speed_calib: HostSpeed | None = None
    speed_levels: HostSpeed | None = None
    # kept runs taken after the levels (``ramps_after``'s ramps): the calibration saw
    # the machine on both sides of them; 0 when every kept run came first
    runs_after_levels: int = 0
    # every speed probe of the setting, per core (``SpeedMonitor.probes``; saved as
    # ``speed_probes.npz``, ``quiet.save_probes``); empty when not probed
    speed_probes: dict[int, tuple[list[float], list[float]]] = field(default_factory=dict)

    @property
    def capacity_error(self) -> float:
        """(predicted - measured) / measured capacity."""
        m = self.calibration.capacity_qps
        return (self.predicted_capacity_qps - m) / m if m else math.nan


def relative_errors(table: pd.DataFrame) -> pd.DataFrame:
    """(sim - real) / real per level, metric and simulated mode."""
    out = []
    for lv, g in table.groupby("level", sort=True):
        real = g[g["mode"] == "real"].iloc[0]
        for _, r in g[g["mode"] != "real"].iterrows():
            row: dict[str, Any] = {"level": lv, "mode": r["mode"]}
            for m in METRICS:
                rv = float(real[m])
                row[f"{m}_err"] = (float(r[m]) - rv) / rv if rv else math.nan
            out.append(row)
    return pd.DataFrame(out)


def _rows(res: ValidationResult) -> pd.DataFrame:
    """The table's metrics with each row's errors beside them (NaN for ``real``)."""
    errs = [f"{m}_err" for m in METRICS]
    t = res.table[["level", "mode", *METRICS]]
    if not len(res.errors):
        return t.assign(**dict.fromkeys(errs, math.nan))
    return t.merge(res.errors[["level", "mode", *errs]], on=["level", "mode"], how="left")


def format_table(res: ValidationResult) -> str:
    """Plain text: per level and mode, the metrics and their errors; the capacity, measured
    and predicted; the calibration and its intervals."""
    formats = {**FORMATS, **{f"{m}_err": "{:+.1%}" for m in METRICS}}
    rows = _rows(res).rename(columns=HEADERS)
    return (text_table(rows, formats={HEADERS[c]: f for c, f in formats.items()})
            + "\n" + capacity_line(res)
            + ("\nintervals: " + describe_intervals(res.intervals) if res.intervals else "")
            + "\ncalibration: " + describe(res.calibration))


def capacity_line(res: ValidationResult) -> str:
    """``capacity: measured 1,234 [1,100, 1,300] q/s, predicted 1,200 q/s (-3%)``."""
    iv = res.intervals.get("capacity_qps")
    measured = (iv.format("{:,.0f}") if iv is not None
                else f"{res.calibration.capacity_qps:,.0f}")
    after = (f"; {res.runs_after_levels} of the {len(res.runs)} runs fitted came after the"
             " levels" if res.runs_after_levels else "")
    return (f"capacity: measured {measured} q/s, predicted by the calibrated twin "
            f"{res.predicted_capacity_qps:,.0f} q/s ({res.capacity_error:+.0%}){after}")


def describe_intervals(intervals: dict[str, Interval]) -> str:
    """Each fitted number as ``name value [lo, hi]`` (90%, bootstrap over the runs)."""
    return ", ".join(f"{k} {v.format('{:,.3g}')}" for k, v in intervals.items()) + (
        " (90% bootstrap intervals over the runs or ramps)")


def _stalls_text(c: Calibration) -> str:
    """``, core stalls R/s (share), ...`` per core, or nothing without stalls."""
    if not any(c.stalls_s):
        return ""
    st = HostStalls.of_fields(c.stalls_s, c.stalls_span_s)
    return ", core stalls " + ", ".join(f"{st.rate_hz(k):.2g}/s ({st.share(k):.2%})"
                                        for k in range(len(st.cpus)))


def describe(c: Calibration) -> str:
    """The calibration in one line."""
    pauses = (f"pauses {c.pause_rate_hz:.1f}/s + {c.pause_rate_busy_hz:.1f}/s x busy share, "
              f"median {np.median(c.pauses_s) * 1e3:.1f} ms" if c.pauses_s else "no pauses")
    host = ("no host CPU model" if c.host_cpus <= 0 else
            f"the host CPU model: {c.host_cpus} cores shared with the containers ("
            + (", ".join(f"{m} {b * 1e6:.0f} us/batch + {i * 1e6:.1f} us/item"
                         for m, b, i in c.container_cpu) or "their profile draws")
            + f") and the generator ({c.loadgen_cpu_per_query_s * 1e6:.1f} us/query + "
              f"{c.loadgen_wake_s * 1e6:.0f} us/wake-up), time slices of "
              f"{c.slice_s * 1e3:g} ms" + _stalls_text(c))
    return (f"capacity {c.capacity_qps:,.0f} q/s; {host}; the frontend's loop: "
            f"{c.query_cpu_s * 1e6:.1f} us/query + {c.batch_cpu_s * 1e6:.1f} us/batch + wake-up "
            f"{c.wake_s * 1e6:.0f} us (cools in {c.cold_after_s * 1e3:g} ms), {pauses}; outside "
            f"the loop {c.overhead_s * 1e3:.3f} ms/query; container wake-up "
            f"{c.replica_wake_s * 1e3:.3f} ms (cools in {c.replica_cold_after_s * 1e3:g} ms); "
            f"in-situ batch latency at "
            f"low load +{c.batch_extra_s * 1e3:.3f} ms (x{c.slowdown:.2f}) over the profile")


def markdown(res: ValidationResult, title: str = "") -> str:
    """``summary.md``: the table (errors of throughput, p50 and p99), the calibration and
    the notes."""
    cols = ["level", "mode", *METRICS, "throughput_qps_err", "p50_ms_err", "p99_ms_err"]
    formats = {**FORMATS, **{f"{m}_err": "{:+.0%}" for m in METRICS}}
    load = (f"Measured under: {res.load.describe()} before the runs."
            if res.load is not None else "Measured under: load not sampled (--busy off).")
    return "\n".join([f"## {title}" if title else "## validation", "",
                      markdown_table(_rows(res), cols, formats=formats, headers=HEADERS), "",
                      "C" + capacity_line(res)[1:] + ".", "",
                      *(["Intervals: " + describe_intervals(res.intervals) + ".", ""]
                        if res.intervals else []),
                      load, "",
                      "Calibration: " + describe(res.calibration) + ". " + " ".join(res.notes),
                      *[f"\nThe other twin ({mode}): {describe(c)}."
                        for mode, c in res.calibrations.items() if c is not res.calibration]])


def plot(res: ValidationResult, path: Path, title: str = "") -> Path:
    """Throughput and latency (p50 faint, p99) against the offered load, one line per
    mode."""
    from clipperlab.report.plots import grid, save, style_axis

    fig, axes = grid(2, 2, width_in=5.0, height_in=4.0)
    t = res.table
    for mode, (color, ls, mk) in MODE_STYLES.items():
        g = t[t["mode"] == mode]
        if not len(g):
            continue
        axes[0].plot(g["offered_qps"], g["throughput_qps"], color=color, ls=ls, marker=mk,
                     label=mode)
        for m, alpha in (("p50_ms", 0.6), ("p99_ms", 1.0)):
            axes[1].plot(g["offered_qps"], g[m], color=color, ls=ls, marker=mk, alpha=alpha,
                         label=f"{mode} {m[:3]}")
    style_axis(axes[0], xlabel="offered load (q/s)", ylabel="throughput (q/s)")
    style_axis(axes[1], xlabel="offered load (q/s)", ylabel="latency (ms)")
    axes[1].set_yscale("log")
    return save(fig, path, suptitle=title or "real vs simulated", legend_axes=axes)


def write_outputs(res: ValidationResult, out_dir: str | Path, title: str = "") -> list[Path]:
    """``validation.csv``, ``errors.csv``, ``profiles/*.json``, ``validation.png`` and
    ``summary.md`` (the table in markdown) under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "validation.csv", out / "errors.csv"]
    res.table.to_csv(files[0], index=False, float_format="%.6g")
    res.errors.to_csv(files[1], index=False, float_format="%.4f")
    for name, prof in res.profiles.items():
        files.append(save_profile(prof, out / "profiles" / f"{name}.json"))
    files.append(plot(res, out / "validation.png", title))
    (out / "summary.md").write_text(markdown(res, title) + "\n")
    files.append(out / "summary.md")
    return files
