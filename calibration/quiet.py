"""Is the machine quiet enough to measure?  The load before a measurement, and a guard.

A latency measured while other processes want the CPU holds their time slices too: the
shipped ``measured-*`` profiles, taken at a load average near 5 on 2 CPUs, have a p99 of
about 4 ms at every batch size (one scheduler tick lost in 1-2% of the calls), where a
quiet machine gives 0.3-1 ms.  So every measurement samples the machine first, records
the sample in its result, and refuses or warns when the machine is busy.

Rules:
- ``machine_load(window_s)`` reads ``/proc`` (Linux only; psutil is not a dependency):
  the 1-minute load average (``/proc/loadavg``) and, over ``window_s``, the share of the
  machine's CPU time (all cores, ``/proc/stat``; the hypervisor's steal counted as busy)
  taken by processes other than the caller and its descendants (``/proc/<pid>/stat``),
  so a validation's own server and containers never count against it.
- A sample is busy when its other-CPU share is above ``max_other_cpu_share`` (default
  0.2: a fifth of the machine) or its load average per core above
  ``max_loadavg_per_core`` (default 1.0: more runnable tasks than cores over the last
  minute).  ``None`` turns a check off; the load average includes the caller's own
  recent work, so checks taken while a measurement runs pass ``None`` for it.
- ``guard(policy)``: ``"off"`` samples nothing; ``"warn"`` logs the load and goes on;
  ``"refuse"`` first waits up to ``settle_s`` (re-sampling every ``SETTLE_STEP_S``) for
  the machine to quiet down, then raises ``BusyMachineError`` (a ``CalibrationError``)
  naming the load and the limit.  It returns the sample (``None`` when off) for the
  result to record.
- ``kernel_slice_s()``: the time slice Linux hands a task when the cores are contended
  (what the host CPU model's ``HostCPU.slice_s`` stands for): the scheduler's
  ``base_slice_ns`` where debugfs shows it, else the kernel's own default, 0.75 ms x (1 +
  log2 of the cores, at most 8), scaled as ``sysctl_sched_tunable_scaling`` does by
  default (1.5 ms on 2 cores; before EEVDF, 6.6, the same number was CFS's minimum
  granularity, the slice with more runnable tasks than its 6 ms period allows).
- ``python -m clipperlab.calibration.quiet --busy refuse`` prints the sample and exits 3
  when the machine is busy (the gate of ``scripts/remeasure.sh``).

The machine's speed.  A virtual machine's core is not always as fast: measured on this
project's 2-core VM (Firecracker, KVM), the same Python loop took 1.0-1.15 us an
iteration or 1.85-2.3 us, switching every few tens of milliseconds to seconds with the VM
itself idle (1-4% busy, no steal): other tenants on the physical core.  Load average and
CPU shares cannot see it; a loop timed in the thread's own CPU time can.
- ``speed_probe_ns(n)``: nanoseconds of this thread's CPU time per iteration of a fixed
  loop of Python work (objects, a dict, string formatting, a list: what a server's
  request path does), over ``n`` iterations (``PROBE_ITERATIONS``: about 0.3 ms on the
  fast state, 0.5 ms on the slow one).
- ``speed_sample(seconds)``: a fit over probes taken here, one every ``SPEED_INTERVAL_S``
  for that long (what ``--speed`` and the profiler's tags use).
- ``SpeedMonitor``: a process (``--speed-trace FILE``) that takes one probe every
  ``interval_s`` (``SPEED_INTERVAL_S``, 25 ms: 1-2% of a core) while a measurement
  runs (it ends with the block, or by itself once its parent is gone), and
  ``trace(since, until)`` reads what it wrote between two ``time.monotonic`` moments:
  ``(time, ns)`` pairs; ``fit(since, until)`` fits them.  With ``cpus`` it runs one
  such process pinned to each of those cores instead (``os.sched_setaffinity``): this
  VM's two cores switch speed nearly independently (their slow states correlate at
  0.26), so one floating probe sees one core at a time.  ``fit`` then fits each core
  and pools them (``pool_speeds``: the mean share and factor, every core's periods);
  ``replay(since, until)`` gives the speed as it was, for the twin to replay
  (``HostCPU.speed_trace``): one row per change from ``since``, each core's latest
  probe as 1 (fast) or, slow, its time over the core's fast level (to a tenth: the
  slow state is not one level; stretches of minutes ran at x2.1-2.2 where it is usually
  x1.8), one factor per core (a single-threaded event
  loop runs at its own core's speed: the twin sets each core's, ``HostCPU``'s
  per-core rows); ``mean_factor(since, until)`` averages over the stretch the factor
  the cores' total speed runs at (``total_factor``, the harmonic mean of the factors:
  two cores at x1 and x2 do the work of two at x1.33; a run's CPU over it is what the
  run would have taken at the fast speed).  ``for_cores(trace, cores)``: a trace for a
  host of ``cores`` (the rows as they are when they have a factor per core, else each
  row's total).
- ``fit_speed(t, ns)`` turns a trace into ``HostSpeed``: the fast level (the 10th
  percentile), a probe slower than ``SLOW_THRESHOLD`` (1.4) times it is slow; the slow
  factor is the median slow probe over the median fast one, the slow share the share of
  slow probes, the mean slow period the slow probes' time over their runs (a run: slow
  probes in a row), and every whole period of each speed (the runs' lengths, the two cut
  by the trace's ends left out), which the twin draws its periods from.  Fewer than
  ``MIN_PROBES`` probes: ``None``.  A machine slow all along shows one speed (its fast
  level is the slow one): factor 1, which is right for the twin, whose demands were
  measured at that speed.
- ``python -m clipperlab.calibration.quiet --speed SECONDS`` prints a fit over that many
  seconds of probes.

The cores' stalls.  A core can also stop running our work altogether for a few
milliseconds: a kernel thread that does not yield (on this VM ``kdamond``, pinned to core
0), the hypervisor taking the core.  The speed probe (0.2 ms of work every 25 ms) almost
never lands in one; a spinning loop sees every one.
- ``host_stalls(seconds, cpus)``: a hiccup meter (as jHiccup is): one process pinned to
  each core (``probe_cpus``), all at once, reads the monotonic clock in a tight loop for
  ``seconds`` and records every jump of at least ``STALL_MIN_S`` (0.5 ms) between two
  reads: ``HostStalls``, per core the stall lengths, the span, each core's rate and share
  of the time.  It keeps every core busy while it runs, so it runs on an idle machine
  (before a setting's server starts), and what it measures stands for the stalls under
  load too (a kernel thread's work does not follow ours).  The twin replays them
  (``HostCPU.stalls_s``).
- ``python -m clipperlab.calibration.quiet --stalls SECONDS [--stalls-out FILE]`` prints
  them (and writes them as JSON: ``HostStalls.to_json``, what ``fidelity --resimulate
  --stalls FILE`` reads).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import gzip
import json
import logging
import math
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from .errors import CalibrationError

__all__ = [
    "BUSY_POLICIES",
    "MAX_LOADAVG_PER_CORE",
    "MAX_OTHER_CPU_SHARE",
    "BusyMachineError",
    "HostSpeed",
    "HostStalls",
    "LoadSample",
    "SpeedMonitor",
    "fit_speed",
    "load_probes",
    "for_cores",
    "pool_speeds",
    "probe_cpus",
    "replay_mean",
    "save_probes",
    "slow_cut",
    "guard",
    "host_stalls",
    "machine_load",
    "speed_probe_ns",
    "speed_probes",
    "speed_sample",
]

BUSY_POLICIES = ("warn", "refuse", "off")
MAX_OTHER_CPU_SHARE = 0.2
MAX_LOADAVG_PER_CORE = 1.0
WINDOW_S = 0.5
SETTLE_STEP_S = 5.0
PROBE_ITERATIONS = 200
SPEED_INTERVAL_S = 0.025
STALL_MIN_S = 0.5e-3  # the shortest clock jump the hiccup meter counts as a stall
STALL_SECONDS = 10.0  # a setting's hiccup meter (fidelity --stalls-s)
SLOW_THRESHOLD = 1.4
MIN_PROBES = 20
# A slow probe replays at its own time over the fast level, rounded to this many decimals
# (one: a row only when the speed moves by 10% or so), not at the one slow factor of the
# fit: this VM has stretches of minutes slow all along at x2.1-2.2, beside its usual x1.8
REPLAY_DIGITS = 1
_LOG = logging.getLogger(__name__)


class BusyMachineError(CalibrationError):
    """The machine was busy before a measurement and the policy was ``refuse``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadSample:
    """The machine's load before a measurement."""

    loadavg_1m: float
    cpus: int
    other_cpu_share: float  # of all cores' CPU time over the window, others' processes
    window_s: float

    @property
    def loadavg_per_core(self) -> float:
        return self.loadavg_1m / max(self.cpus, 1)

    def busy_reasons(self, max_other_cpu_share: float | None = MAX_OTHER_CPU_SHARE,
                     max_loadavg_per_core: float | None = MAX_LOADAVG_PER_CORE) -> list[str]:
        """Why this sample is busy (empty when quiet), each reason naming value and limit."""
        out = []
        if max_other_cpu_share is not None and self.other_cpu_share > max_other_cpu_share:
            out.append(f"other processes took {self.other_cpu_share:.0%} of the CPU "
                       f"(limit {max_other_cpu_share:.0%})")
        if max_loadavg_per_core is not None and self.loadavg_per_core > max_loadavg_per_core:
            out.append(f"load average {self.loadavg_1m:.2f} on {self.cpus} CPUs is "
                       f"{self.loadavg_per_core:.2f} per core (limit {max_loadavg_per_core:g})")
        return out

    def describe(self) -> str:
        """One line: ``load average 0.42 on 2 CPUs, others 3% of the CPU over 0.5 s``."""
        return (f"load average {self.loadavg_1m:.2f} on {self.cpus} CPUs, others "
                f"{self.other_cpu_share:.0%} of the CPU over {self.window_s:g} s")

    def columns(self, prefix: str = "") -> dict[str, float]:
        """The sample as table columns (``load_avg``, ``other_cpu_share``, ``cpus``)."""
        return {f"{prefix}load_avg": self.loadavg_1m,
                f"{prefix}other_cpu_share": self.other_cpu_share,
                f"{prefix}cpus": float(self.cpus)}


# --------------------------------------------------------------------------- /proc


def _machine_jiffies(proc: Path) -> tuple[int, int]:
    """(busy, total) clock ticks over all cores since boot, from ``/proc/stat``'s
    ``cpu`` line (user nice system idle iowait irq softirq steal; guest time is already
    inside user).  Steal counts as busy: another guest had the core."""
    with open(proc / "stat") as f:
        for line in f:
            if line.startswith("cpu "):
                v = [int(x) for x in line.split()[1:9]]
                v += [0] * (8 - len(v))
                total = sum(v)
                return total - v[3] - v[4], total
    raise CalibrationError(f"{proc / 'stat'}: no 'cpu' line")


def _process_table(proc: Path) -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, utime + stime in ticks) of every process in ``proc``."""
    out: dict[int, tuple[int, int]] = {}
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            text = (d / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        fields = text.rsplit(")", 1)[1].split()
        try:
            out[int(d.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
        except (IndexError, ValueError):
            continue
    return out


def _tree_ticks(table: Mapping[int, tuple[int, int]], roots: Iterable[int]) -> int:
    """CPU ticks of ``roots`` and all their descendants in ``table``."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    seen: set[int] = set()
    todo = [r for r in roots if r in table]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(children.get(pid, ()))
    return sum(table[p][1] for p in seen)


def kernel_slice_s(proc: Path = Path("/proc"),
                   debugfs: Path = Path("/sys/kernel/debug/sched")) -> float:
    """Linux's time slice on this machine, in seconds (see the module's rules)."""
    try:
        return int((debugfs / "base_slice_ns").read_text().strip()) / 1e9
    except (OSError, ValueError):
        pass
    cpus = min(_cpus(proc), 8)
    return 0.75e-3 * (1 + (cpus.bit_length() - 1))


def kernel_tick_s(proc: Path = Path("/proc"), boot: Path = Path("/boot")) -> float:
    """Linux's scheduler tick on this machine, in seconds: 1 / ``CONFIG_HZ`` from the
    kernel's config (``/proc/config.gz``, else ``/boot/config-<release>``), else 4 ms
    (HZ = 250, the common default)."""
    texts: list[str] = []
    try:
        with gzip.open(proc / "config.gz", "rt") as f:
            texts.append(f.read())
    except (OSError, EOFError):
        pass
    with contextlib.suppress(OSError):
        texts.append((boot / f"config-{os.uname().release}").read_text())
    for text in texts:
        m = re.search(r"^CONFIG_HZ=(\d+)$", text, re.M)
        if m and int(m.group(1)) > 0:
            return 1.0 / int(m.group(1))
    return 4e-3


def _cpus(proc: Path) -> int:
    """Cores this process may run on (the affinity mask on the real ``/proc``)."""
    if proc == Path("/proc") and hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    with open(proc / "stat") as f:
        n = sum(1 for line in f if line.startswith("cpu") and line[3:4].isdigit())
    return n or (os.cpu_count() or 1)


def machine_load(window_s: float = WINDOW_S, *, own_pids: Iterable[int] | None = None,
                 proc: str | Path = "/proc",
                 sleep: Callable[[float], None] = time.sleep) -> LoadSample:
    """The machine's load now: the 1-minute load average and, over ``window_s``, the
    share of all cores' CPU time taken by processes outside ``own_pids`` (default: this
    process) and their descendants.  ``proc`` and ``sleep`` are for tests (a fake
    ``/proc`` whose files ``sleep`` rewrites)."""
    root = Path(proc)
    roots = [os.getpid()] if own_pids is None else list(own_pids)
    try:
        busy0, total0 = _machine_jiffies(root)
        own0 = _tree_ticks(_process_table(root), roots)
        sleep(window_s)
        busy1, total1 = _machine_jiffies(root)
        own1 = _tree_ticks(_process_table(root), roots)
        loadavg = float((root / "loadavg").read_text().split()[0])
        cpus = _cpus(root)
    except (OSError, ValueError, IndexError) as e:
        raise CalibrationError(f"cannot read the machine's load from {root}: {e}") from None
    dt = total1 - total0
    other = (busy1 - busy0) - max(own1 - own0, 0)
    share = min(max(other / dt, 0.0), 1.0) if dt > 0 else 0.0
    return LoadSample(loadavg_1m=loadavg, cpus=cpus, other_cpu_share=share, window_s=window_s)


# --------------------------------------------------------------------------- speed


class _Item:
    __slots__ = ("a", "b")

    def __init__(self, a: int, b: float) -> None:
        self.a = a
        self.b = b


def _probe_work(n: int) -> int:
    d: dict[int, _Item] = {}
    acc = 0
    for i in range(n):
        p = _Item(i, i * 0.5)
        d[i & 63] = p
        k = (i * 7) & 63
        if k in d:
            acc += d[k].a
        acc += len(f"{i}:{p.b}")
        acc += sum([i, i + 1, i + 2])
    return acc


def speed_probe_ns(n: int = PROBE_ITERATIONS) -> float:
    """Nanoseconds of this thread's CPU time per iteration of the fixed loop."""
    t0 = time.thread_time_ns()
    _probe_work(n)
    return (time.thread_time_ns() - t0) / n


@dataclass(frozen=True, slots=True, kw_only=True)
class HostSpeed:
    """The machine's two speeds, fitted from a probe trace (``fit_speed``)."""

    fast_ns: float  # a probe iteration on the fast state
    slow_factor: float  # the slow state's probe over the fast one's (1: one speed)
    slow_share: float  # of the probes
    slow_dwell_s: float  # mean slow period (s); NaN without one
    probes: int
    span_s: float
    # every whole period seen (s; the first and the last, cut by the trace's ends, left
    # out when there are others): what the twin draws its periods from
    slow_dwells_s: tuple[float, ...] = ()
    fast_dwells_s: tuple[float, ...] = ()
    # the cores probed one by one and pooled (``pool_speeds``); above 1 each core
    # switched on its own, as the twin's cores then do (``HostCPU.core_speeds``)
    cores: int = 1

    def describe(self) -> str:
        if self.slow_factor <= 1.0 or self.slow_share <= 0.0:
            return (f"one speed ({self.fast_ns:.0f} ns a probe iteration; {self.probes} "
                    f"probes over {self.span_s:.0f} s)")
        return (f"slow {self.slow_share:.0%} of the time, by x{self.slow_factor:.2f} "
                f"(fast: {self.fast_ns:.0f} ns a probe iteration), in periods of "
                f"{self.slow_dwell_s * 1e3:.0f} ms on average ({self.probes} probes over "
                f"{self.span_s:.0f} s)")


def slow_cut(ns: Sequence[float], threshold: float = SLOW_THRESHOLD) -> float:
    """The probe time above which a probe is slow: ``threshold`` times the fast level
    (the 10th percentile)."""
    return threshold * sorted(ns)[len(ns) // 10]


def replay_mean(rec: Sequence[tuple[float, ...]], span_s: float) -> float:
    """The time-averaged factor of a replayed speed (``SpeedMonitor.replay``) over
    ``span_s`` seconds from its start, a row's factor being its cores' total speed
    (``total_factor``); NaN when it is empty."""
    from clipperlab.simulator import total_factor  # here: the probe's process needs none

    if not rec:
        return float("nan")
    ends = [r[0] for r in rec[1:]] + [max(span_s, rec[-1][0])]
    total = sum((b - r[0]) * total_factor(r[1:]) for r, b in zip(rec, ends, strict=True))
    return total / span_s if span_s > 0 else total_factor(rec[-1][1:])


def for_cores(trace: Sequence[tuple[float, ...]], cores: int) -> tuple[tuple[float, ...], ...]:
    """``trace`` (``SpeedMonitor.replay``'s rows) for a host of ``cores``: as it is when
    each row has a factor per core (or one factor), else ``(at_s, total factor)`` pairs
    (probes on fewer cores than the host has, or more)."""
    from clipperlab.simulator import total_factor

    if not trace or len(trace[0]) - 1 in (1, cores):
        return tuple(trace)
    return tuple((r[0], total_factor(r[1:])) for r in trace)


def fit_speed(t: Sequence[float], ns: Sequence[float],
              threshold: float = SLOW_THRESHOLD) -> HostSpeed | None:
    """Two speeds from a probe trace (see the module's rules)."""
    if len(ns) < MIN_PROBES or len(t) != len(ns):
        return None
    cut = slow_cut(ns, threshold)
    slow = [v > cut for v in ns]
    n_slow = sum(slow)
    span = float(t[-1] - t[0])
    step = span / (len(t) - 1) if len(t) > 1 else 0.0
    if n_slow == 0 or n_slow == len(ns):
        return HostSpeed(fast_ns=statistics.median(ns), slow_factor=1.0, slow_share=0.0,
                         slow_dwell_s=float("nan"), probes=len(ns), span_s=span)
    fast_med = statistics.median(v for v, s in zip(ns, slow, strict=True) if not s)
    slow_med = statistics.median(v for v, s in zip(ns, slow, strict=True) if s)
    periods: list[tuple[bool, int]] = []  # (slow, probes in a row)
    for s in slow:
        if periods and periods[-1][0] == s:
            periods[-1] = (s, periods[-1][1] + 1)
        else:
            periods.append((s, 1))
    runs = sum(1 for s, _ in periods if s)
    whole = periods[1:-1] if len(periods) > 4 else periods
    return HostSpeed(fast_ns=fast_med, slow_factor=slow_med / fast_med,
                     slow_share=n_slow / len(ns), slow_dwell_s=n_slow * step / runs,
                     probes=len(ns), span_s=span,
                     slow_dwells_s=tuple(k * step for s, k in whole if s),
                     fast_dwells_s=tuple(k * step for s, k in whole if not s))


MAX_PROBE_CPUS = 8


def probe_cpus(limit: int = MAX_PROBE_CPUS) -> tuple[int, ...]:
    """The cores a ``SpeedMonitor`` probes one by one: those this process may run on,
    the first ``limit`` (each probe is 1-2% of a core)."""
    return tuple(sorted(os.sched_getaffinity(0)))[:limit]


def pool_speeds(fits: Sequence[HostSpeed | None]) -> HostSpeed | None:
    """Several cores' fits as one host's: the mean fast level, slow share and slow
    factor (each core's factor weighted by its slow share), the slow periods' mean over
    all of them and every core's periods (``SpeedMonitor`` with ``cpus``)."""
    got = [f for f in fits if f is not None]
    if not got:
        return None
    if len(got) == 1:
        return got[0]
    fits = got
    share = statistics.fmean(f.slow_share for f in fits)
    slow = [f for f in fits if f.slow_share > 0 and f.slow_factor > 1.0]
    factor = (sum(f.slow_factor * f.slow_share for f in slow) / sum(f.slow_share for f in slow)
              if slow else 1.0)
    sd = tuple(d for f in fits for d in f.slow_dwells_s)
    fd = tuple(d for f in fits for d in f.fast_dwells_s)
    dwell = (statistics.fmean(sd) if sd else statistics.fmean(
        f.slow_dwell_s for f in slow) if slow else float("nan"))
    return HostSpeed(fast_ns=statistics.fmean(f.fast_ns for f in fits), slow_factor=factor,
                     slow_share=share, slow_dwell_s=dwell,
                     probes=sum(f.probes for f in fits), span_s=max(f.span_s for f in fits),
                     slow_dwells_s=sd, fast_dwells_s=fd, cores=len(fits))


def speed_probes(seconds: float, interval_s: float = SPEED_INTERVAL_S
                 ) -> tuple[list[float], list[float]]:
    """Probes taken in this thread every ``interval_s`` for ``seconds``: their times
    (``time.monotonic``) and ns a probe iteration."""
    t: list[float] = []
    ns: list[float] = []
    end = time.monotonic() + seconds
    while (now := time.monotonic()) < end:
        t.append(now)
        ns.append(speed_probe_ns())
        time.sleep(max(interval_s - (time.monotonic() - now), 0.0))
    return t, ns


def speed_sample(seconds: float, interval_s: float = SPEED_INTERVAL_S) -> HostSpeed | None:
    """A fit over probes taken in this thread every ``interval_s`` for ``seconds``."""
    return fit_speed(*speed_probes(seconds, interval_s))


def _speed_trace(path: str, interval_s: float, cpu: int | None = None) -> None:
    """The monitor's process: a probe every ``interval_s``, one line each, until killed
    or its parent is gone; pinned to core ``cpu`` when given."""
    parent = os.getppid()
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    with open(path, "a", buffering=1) as f:
        while os.getppid() == parent:
            t = time.monotonic()
            f.write(f"{t:.6f} {speed_probe_ns():.1f}\n")
            time.sleep(max(interval_s - (time.monotonic() - t), 0.0))


class SpeedMonitor:
    """Probes the machine's speed in a process of its own while a measurement runs (see
    the module's rules); ``trace(since, until)`` returns the probes taken between two
    ``time.monotonic`` moments (default: all), ``fit(since, until)`` fits them; with
    ``cpus``, one process pinned to each of those cores (``trace(..., cpu=k)``: core
    ``k``'s probes; ``fit``: the cores pooled; ``replay``: the speed as it was)."""

    def __init__(self, path: str | Path, interval_s: float = SPEED_INTERVAL_S,
                 cpus: Iterable[int] | None = None) -> None:
        if not interval_s > 0:
            raise CalibrationError(f"speed probe interval must be > 0 s, got {interval_s}")
        self.path = Path(path)
        self.interval_s = interval_s
        self.cpus: tuple[int, ...] = tuple(cpus) if cpus is not None else ()
        bad = [c for c in self.cpus if c not in os.sched_getaffinity(0)]
        if bad:
            raise CalibrationError(f"speed probe cores {bad}: not cores this process may "
                                   f"use ({sorted(os.sched_getaffinity(0))})")
        self._procs: list[subprocess.Popen[bytes]] = []
        # each core's (slow cut, fast level) once ``freeze`` fixed them
        self._frozen: dict[int | None, tuple[float, float]] = {}

    def freeze(self) -> None:
        """Fix each core's slow cut and fast level (``replay``'s reference) to the probes
        so far: later replays and mean factors read against them, not against probes
        taken after the measurement (run 37: the probes kept running through the
        minutes of fitting that follow a setting's last real run, on a machine then
        faster, and moved the fast level from about 2,050 to 1,290 ns a probe iteration,
        so the levels, replayed after the fits, ran at x1.65-1.76 where the runs the
        twin was fitted on had been kept at x1.0-1.3).  A core with too few probes
        stays as it was."""
        self._frozen = {}
        for c in self.cpus or (None,):
            if (ref := self._reference(c, *self.trace(cpu=c))) is not None:
                self._frozen[c] = ref

    def _reference(self, cpu: int | None, t: list[float], ns: list[float]
                   ) -> tuple[float, float] | None:
        """Core ``cpu``'s (slow cut, fast level): as ``freeze`` fixed them, else fitted
        on its probes ``(t, ns)`` (None: too few)."""
        if cpu in self._frozen:
            return self._frozen[cpu]
        fit = fit_speed(t, ns)
        return None if fit is None else (slow_cut(ns), fit.fast_ns)

    def _file(self, cpu: int | None) -> Path:
        return self.path if cpu is None else self.path.with_name(f"{self.path.name}.cpu{cpu}")

    def __enter__(self) -> SpeedMonitor:
        for cpu in self.cpus or (None,):
            self._file(cpu).write_text("")
            self._procs.append(subprocess.Popen(
                [sys.executable, "-m", "clipperlab.calibration.quiet", "--speed-trace",
                 str(self._file(cpu)), "--interval-ms", f"{self.interval_s * 1e3:g}",
                 *(["--cpu", str(cpu)] if cpu is not None else [])],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        for p in self._procs:
            p.terminate()
        for p in self._procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._procs = []

    def trace(self, since: float = -float("inf"), until: float = float("inf"),
              cpu: int | None = None) -> tuple[list[float], list[float]]:
        t: list[float] = []
        ns: list[float] = []
        if cpu is None and self.cpus:
            cpu = self.cpus[0]
        try:
            lines = self._file(cpu).read_text().splitlines()
        except OSError:
            return t, ns
        for line in lines:
            parts = line.split()
            if len(parts) != 2:
                continue  # a line being written
            try:
                a, b = float(parts[0]), float(parts[1])
            except ValueError:
                continue
            if since <= a <= until:
                t.append(a)
                ns.append(b)
        return t, ns

    def probes(self) -> dict[int, tuple[list[float], list[float]]]:
        """Every probe so far, per core (``-1``: the one floating probe without
        ``cpus``): ``(time.monotonic, ns)`` lists, what ``save_probes`` keeps."""
        return {(-1 if c is None else c): self.trace(cpu=c) for c in self.cpus or (None,)}

    @classmethod
    def from_probes(cls, probes: Mapping[int, tuple[Sequence[float], Sequence[float]]],
                    path: str | Path, interval_s: float = SPEED_INTERVAL_S) -> SpeedMonitor:
        """A monitor that is not running over probes taken before (``probes``,
        ``load_probes``), their trace files written next to ``path``: ``trace``, ``fit``,
        ``replay`` and ``mean_factor`` read them as they read a live one's."""
        mon = cls(path, interval_s=interval_s)
        mon.path.parent.mkdir(parents=True, exist_ok=True)
        mon.cpus = tuple(sorted(c for c in probes if c >= 0))
        for c, (t, ns) in probes.items():
            mon._file(None if c < 0 else c).write_text("".join(
                f"{a:.6f} {b:.1f}\n" for a, b in zip(t, ns, strict=True)))
        return mon

    def reference_fast_ns(self) -> float:
        """The fast level ``replay`` and ``mean_factor`` divide by now (each core's, as
        ``freeze`` fixed it or fitted on its probes so far; their mean over the cores), in
        ns a probe iteration; NaN while a core has too few probes.  A factor of 1 means
        this speed: what a stretch measured against this reference is at (its "fast
        speed"), for comparing it with a stretch measured against another one."""
        fast: list[float] = []
        for c in self.cpus or (None,):
            if (ref := self._reference(c, *self.trace(cpu=c))) is None:
                return math.nan
            fast.append(ref[1])
        return statistics.fmean(fast)

    def fit(self, since: float = -float("inf"), until: float = float("inf")
            ) -> HostSpeed | None:
        if self.cpus:
            return pool_speeds([fit_speed(*self.trace(since, until, c)) for c in self.cpus])
        return fit_speed(*self.trace(since, until))

    def fit_spans(self, spans: Sequence[tuple[float, float]]) -> HostSpeed | None:
        """``fit`` over the probes of several stretches, joined end to end (each
        stretch's times shifted to follow the previous one's last probe by one interval),
        so a gap between them is neither a slow nor a fast period."""
        def joined(cpu: int | None) -> HostSpeed | None:
            t_all: list[float] = []
            ns_all: list[float] = []
            for since, until in spans:
                t, ns = self.trace(since, until, cpu)
                if not t:
                    continue
                shift = (t_all[-1] + self.interval_s - t[0]) if t_all else 0.0
                t_all.extend(v + shift for v in t)
                ns_all.extend(ns)
            return fit_speed(t_all, ns_all)

        if self.cpus:
            return pool_speeds([joined(c) for c in self.cpus])
        return joined(None)

    def replay(self, since: float, until: float) -> tuple[tuple[float, ...], ...]:
        """The speed from ``since`` to ``until`` as ``(s from since, factor of each
        core)`` rows (one factor without ``cpus``), a row per probe interval where a
        factor changes (see the module's rules): each core's latest probe at or before the
        point, 1 when fast, or when slow its time over the core's fast level, to
        ``REPLAY_DIGITS`` decimals (the levels fitted over all its probes so far, or
        as ``freeze`` fixed them).  Empty when a core has too few probes to fit."""
        levels: list[tuple[list[float], list[float], float, float]] = []
        for c in self.cpus or (None,):
            t_all, ns_all = self.trace(cpu=c)
            if (ref := self._reference(c, t_all, ns_all)) is None:
                return ()
            thr, fast = ref
            lo = bisect.bisect_left(t_all, since - 2 * self.interval_s)
            hi = bisect.bisect_right(t_all, until)
            if lo >= hi:
                return ()
            levels.append((t_all[lo:hi], ns_all[lo:hi], thr, fast))
        out: list[tuple[float, ...]] = []
        idx = [0] * len(levels)
        at = since
        while at <= until:
            fs = []
            for k, (t, ns, thr, fast) in enumerate(levels):
                while idx[k] + 1 < len(t) and t[idx[k] + 1] <= at:
                    idx[k] += 1
                v = ns[idx[k]]
                fs.append(max(1.0, round(v / fast, REPLAY_DIGITS)) if v > thr else 1.0)
            if not out or list(out[-1][1:]) != fs:
                out.append((round(at - since, 6), *fs))
            at += self.interval_s
        return tuple(out)

    def mean_factor(self, since: float, until: float) -> float:
        """The time-averaged factor of ``replay(since, until)``, the cores' total speed
        (each core's levels from all its probes, so a stretch that was slow all along
        reads slow); NaN when there is nothing to replay."""
        return replay_mean(self.replay(since, until), until - since)


def save_probes(path: str | Path, probes: Mapping[int, tuple[Sequence[float],
                                                               Sequence[float]]],
                interval_s: float = SPEED_INTERVAL_S) -> Path:
    """A monitor's probes (``SpeedMonitor.probes``) as a compressed ``.npz``: per core
    ``k`` its times (``t_<k>``, ``time.monotonic`` seconds) and probe times (``ns_<k>``),
    the interval, and the wall clock less the monotonic one now (``unix_offset_s``: a
    stored run's ``CpuRun.started_unix`` less it is its start on the probes' clock);
    ``load_probes`` reads it back."""
    import numpy as np  # here: the probe's process needs none

    arrays: dict[str, np.ndarray] = {"interval_s": np.array(interval_s),
                                     "unix_offset_s": np.array(time.time() - time.monotonic())}
    for c, (t, ns) in probes.items():
        arrays[f"t_{c}"] = np.asarray(t, dtype=np.float64)
        arrays[f"ns_{c}"] = np.asarray(ns, dtype=np.float32)
    out = Path(path)
    np.savez_compressed(out, **arrays)  # type: ignore[arg-type]
    return out


def load_probes(path: str | Path
                ) -> tuple[dict[int, tuple[list[float], list[float]]], float, float]:
    """``save_probes``' file: the probes per core, the interval (s) and the wall clock
    less the monotonic one when it was saved (s)."""
    import numpy as np

    try:
        with np.load(path) as z:
            cores = sorted(int(k[2:]) for k in z.files if k.startswith("t_"))
            return ({c: (z[f"t_{c}"].tolist(), z[f"ns_{c}"].astype(np.float64).tolist())
                     for c in cores}, float(z["interval_s"]), float(z["unix_offset_s"]))
    except (OSError, ValueError, KeyError) as e:
        raise CalibrationError(f"{path}: not a file of speed probes ({e})") from e


# --------------------------------------------------------------------------- stalls


@dataclass(frozen=True, slots=True)
class HostStalls:
    """The cores' stalls a hiccup meter saw (``host_stalls``): ``lengths_s[k]`` on core
    ``cpus[k]``, over ``span_s`` seconds, each at least ``min_s``."""

    span_s: float
    cpus: tuple[int, ...]
    lengths_s: tuple[tuple[float, ...], ...]
    min_s: float = STALL_MIN_S

    @classmethod
    def of_fields(cls, lengths_s: tuple[tuple[float, ...], ...], span_s: float
                  ) -> HostStalls:
        """The stalls a twin's ``Calibration`` (or ``HostCPU``) holds: core k measured as
        the twin's core k."""
        return cls(span_s=span_s, cpus=tuple(range(len(lengths_s))), lengths_s=lengths_s)

    def rate_hz(self, k: int) -> float:
        return len(self.lengths_s[k]) / self.span_s if self.span_s > 0 else 0.0

    def share(self, k: int) -> float:
        return sum(self.lengths_s[k]) / self.span_s if self.span_s > 0 else 0.0

    def describe(self) -> str:
        parts = []
        for k, cpu in enumerate(self.cpus):
            ls = sorted(self.lengths_s[k])
            if not ls:
                parts.append(f"core {cpu}: none")
                continue
            parts.append(f"core {cpu}: {self.rate_hz(k):.2g}/s of {ls[0] * 1e3:.1f}-"
                         f"{ls[-1] * 1e3:.1f} ms (median {statistics.median(ls) * 1e3:.1f}), "
                         f"{self.share(k):.2%} of its time")
        return (f"stalls of {self.min_s * 1e3:g} ms or more over {self.span_s:g} s: "
                + "; ".join(parts))

    def to_json(self) -> str:
        return json.dumps({"span_s": self.span_s, "cpus": list(self.cpus),
                           "lengths_s": [list(x) for x in self.lengths_s],
                           "min_s": self.min_s})

    @classmethod
    def from_json(cls, text: str) -> HostStalls:
        try:
            d = json.loads(text)
            out = cls(span_s=float(d["span_s"]), cpus=tuple(int(c) for c in d["cpus"]),
                      lengths_s=tuple(tuple(float(v) for v in x) for x in d["lengths_s"]),
                      min_s=float(d.get("min_s", STALL_MIN_S)))
        except (ValueError, KeyError, TypeError) as e:
            raise CalibrationError(f"not a stalls file (HostStalls.to_json): {e}") from None
        if not out.span_s > 0 or len(out.cpus) != len(out.lengths_s) or any(
                v <= 0 for x in out.lengths_s for v in x):
            raise CalibrationError("not a stalls file: expected span_s > 0 and, per core, "
                                   "stall lengths > 0")
        return out


def _stall_meter(seconds: float, min_s: float) -> list[float]:
    """Spin on the monotonic clock for ``seconds``; every jump of ``min_s`` or more."""
    out: list[float] = []
    clock = time.monotonic
    t = clock()
    end = t + seconds
    while t < end:
        n = clock()
        if n - t >= min_s:
            out.append(n - t)
        t = n
    return out


def host_stalls(seconds: float = STALL_SECONDS, cpus: Sequence[int] | None = None,
                min_s: float = STALL_MIN_S) -> HostStalls:
    """The hiccup meter (module rules) on ``cpus`` (default ``probe_cpus()``) at once."""
    if not (math.isfinite(seconds) and seconds > 0):
        raise CalibrationError(f"stall meter: expected seconds > 0, got {seconds!r}")
    cores = tuple(cpus) if cpus is not None else probe_cpus()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "clipperlab.calibration.quiet", "--stall-meter",
         f"{seconds:g}", "--cpu", str(c), "--stall-min-ms", f"{min_s * 1e3:g}"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) for c in cores]
    lengths = []
    for c, p in zip(cores, procs, strict=True):
        out, _ = p.communicate(timeout=seconds + 60)
        if p.returncode != 0:
            raise CalibrationError(f"stall meter on core {c} failed (exit {p.returncode})")
        lengths.append(tuple(float(x) for x in out.split()))
    return HostStalls(span_s=seconds, cpus=cores, lengths_s=tuple(lengths), min_s=min_s)


# --------------------------------------------------------------------------- the guard


def guard(policy: str = "warn", *, max_other_cpu_share: float | None = MAX_OTHER_CPU_SHARE,
          max_loadavg_per_core: float | None = MAX_LOADAVG_PER_CORE, what: str = "measuring",
          settle_s: float = 0.0, log: Callable[[str], None] | None = None,
          sample: Callable[[], LoadSample] = machine_load,
          sleep: Callable[[float], None] = time.sleep) -> LoadSample | None:
    """Sample the machine before ``what`` and apply ``policy`` (see the module's rules).
    Returns the sample the decision was made on, or ``None`` when the policy is off."""
    if policy not in BUSY_POLICIES:
        raise CalibrationError(f"busy policy {policy!r}: expected one of {BUSY_POLICIES}")
    if policy == "off":
        return None
    s = sample()
    reasons = s.busy_reasons(max_other_cpu_share, max_loadavg_per_core)
    waited = 0.0
    while reasons and policy == "refuse" and waited < settle_s:
        step = min(SETTLE_STEP_S, settle_s - waited)
        sleep(step)
        waited += step
        s = sample()
        reasons = s.busy_reasons(max_other_cpu_share, max_loadavg_per_core)
    if not reasons:
        return s
    msg = (f"the machine is busy before {what}: " + "; ".join(reasons)
           + (f" (after waiting {waited:g} s)" if waited else ""))
    if policy == "refuse":
        raise BusyMachineError(msg + "; measure on a quiet machine, or pass --busy warn")
    (log or _LOG.warning)("warning: " + msg + "; the result records it")
    return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m clipperlab.calibration.quiet",
        description="Sample the machine's load; exit 3 when it is busy and --busy refuse.")
    ap.add_argument("--busy", choices=BUSY_POLICIES, default="refuse",
                    help="refuse: exit 3 when busy; warn: report only (default %(default)s)")
    ap.add_argument("--max-other-cpu-share", type=float, default=MAX_OTHER_CPU_SHARE,
                    help="busy above this share of all cores' CPU time taken by other "
                         "processes (default %(default)s)")
    ap.add_argument("--max-loadavg-per-core", type=float, default=MAX_LOADAVG_PER_CORE,
                    help="busy above this 1-minute load average per core (default "
                         "%(default)s)")
    ap.add_argument("--settle-s", type=float, default=0.0,
                    help="with refuse: wait up to this many seconds for quiet (default 0)")
    ap.add_argument("--speed", type=float, default=0.0, metavar="SECONDS",
                    help="also probe the machine's speed for this many seconds and print "
                         "its two speeds (default 0: no probe)")
    ap.add_argument("--stalls", type=float, default=0.0, metavar="SECONDS",
                    help="also run the hiccup meter on every core for this many seconds "
                         "and print the cores' stalls (default 0: none)")
    ap.add_argument("--stalls-out", default=None, metavar="FILE",
                    help="with --stalls: write them there as JSON (for fidelity "
                         "--resimulate --stalls)")
    ap.add_argument("--stall-meter", type=float, default=None,
                    help=argparse.SUPPRESS)  # host_stalls' process (with --cpu)
    ap.add_argument("--stall-min-ms", type=float, default=STALL_MIN_S * 1e3,
                    help=argparse.SUPPRESS)
    ap.add_argument("--speed-trace", help=argparse.SUPPRESS)  # SpeedMonitor's process
    ap.add_argument("--cpu", type=int, default=None, help=argparse.SUPPRESS)  # its core
    ap.add_argument("--interval-ms", type=float, default=SPEED_INTERVAL_S * 1e3,
                    help="milliseconds between speed probes (default %(default)s)")
    a = ap.parse_args(argv)
    if not a.interval_ms > 0:
        ap.error(f"--interval-ms must be > 0, got {a.interval_ms:g}")
    if a.speed_trace:
        _speed_trace(a.speed_trace, a.interval_ms / 1e3, a.cpu)
        return 0
    if a.stall_meter is not None:
        if a.cpu is not None:
            os.sched_setaffinity(0, {a.cpu})
        for v in _stall_meter(a.stall_meter, a.stall_min_ms / 1e3):
            print(f"{v:.7f}")
        return 0
    if a.speed < 0:
        ap.error(f"--speed must be >= 0 seconds, got {a.speed:g}")
    if a.stalls < 0 or (a.stalls_out and not a.stalls > 0):
        ap.error(f"--stalls must be >= 0 seconds (and > 0 with --stalls-out), got "
                 f"{a.stalls:g}")
    try:
        s = guard(a.busy, max_other_cpu_share=a.max_other_cpu_share,
                  max_loadavg_per_core=a.max_loadavg_per_core, settle_s=a.settle_s,
                  log=lambda m: print(m, file=sys.stderr))
    except BusyMachineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    print(s.describe() if s is not None else "not sampled (--busy off)")
    if a.speed > 0:
        sp = speed_sample(a.speed, a.interval_ms / 1e3)
        print("speed: " + (sp.describe() if sp is not None else
                           f"too few probes (at least {MIN_PROBES})"))
    if a.stalls > 0:
        st = host_stalls(a.stalls)
        print(st.describe())
        if a.stalls_out:
            Path(a.stalls_out).write_text(st.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())

