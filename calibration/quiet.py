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
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import CalibrationError

__all__ = [
    "BUSY_POLICIES",
    "MAX_LOADAVG_PER_CORE",
    "MAX_OTHER_CPU_SHARE",
    "BusyMachineError",
    "LoadSample",
    "guard",
    "machine_load",
]

BUSY_POLICIES = ("warn", "refuse", "off")
MAX_OTHER_CPU_SHARE = 0.2
MAX_LOADAVG_PER_CORE = 1.0
WINDOW_S = 0.5
SETTLE_STEP_S = 5.0
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
    a = ap.parse_args(argv)
    try:
        s = guard(a.busy, max_other_cpu_share=a.max_other_cpu_share,
                  max_loadavg_per_core=a.max_loadavg_per_core, settle_s=a.settle_s,
                  log=lambda m: print(m, file=sys.stderr))
    except BusyMachineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    print(s.describe() if s is not None else "not sampled (--busy off)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

