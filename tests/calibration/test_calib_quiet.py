"""The busy-machine guard (``clipperlab.calibration.quiet``) on a fake ``/proc``: the load
it reads, and what each policy does with a busy or a quiet sample."""

from __future__ import annotations

import dataclasses
import gzip
import logging
import math
import os
import time
from pathlib import Path

import pytest

from clipperlab.calibration.errors import CalibrationError
from clipperlab.calibration.quiet import (
    MIN_PROBES,
    SPEED_INTERVAL_S,
    STALL_MIN_S,
    BusyMachineError,
    HostStalls,
    LoadSample,
    SpeedMonitor,
    fit_speed,
    for_cores,
    guard,
    host_stalls,
    kernel_slice_s,
    kernel_tick_s,
    load_probes,
    machine_load,
    main,
    pool_speeds,
    probe_cpus,
    save_probes,
    speed_probe_ns,
)


def _stat_line(user: int, idle: int, steal: int = 0) -> str:
    # user nice system idle iowait irq softirq steal guest guest_nice
    return f"cpu  {user} 0 0 {idle} 0 0 0 {steal} 0 0\ncpu0 0 0 0 0 0 0 0 0 0 0\n" \
           "cpu1 0 0 0 0 0 0 0 0 0 0\n"


def _pid_stat(pid: int, ppid: int, ticks: int) -> str:
    # pid (comm) state ppid ... utime (14th field) stime (15th)
    rest = ["S", str(ppid)] + ["0"] * 9 + [str(ticks), "0"] + ["0"] * 30
    return f"{pid} (py thon) " + " ".join(rest) + "\n"


class FakeProc:
    """A ``/proc`` with two CPUs, us (pid 100), our child (101) and a stranger (200);
    ``sleep`` moves it from the first snapshot to the second."""

    def __init__(self, root: Path, loadavg: float, machine_busy: int, ours: int,
                 child: int, steal: int = 0, window_ticks: int = 200) -> None:
        self.root = root
        self.second = (machine_busy, ours, child, steal, window_ticks)
        (root / "loadavg").write_text(f"{loadavg:.2f} 1.00 1.00 2/300 4242\n")
        self._write(1000, 5000, 0, 50, 10, 500)

    def _write(self, user: int, idle: int, steal: int, ours: int, child: int,
               other: int) -> None:
        (self.root / "stat").write_text(_stat_line(user, idle, steal))
        for pid, ppid, ticks in ((100, 1, ours), (101, 100, child), (200, 1, other)):
            d = self.root / str(pid)
            d.mkdir(exist_ok=True)
            (d / "stat").write_text(_pid_stat(pid, ppid, ticks))

    def sleep(self, _s: float) -> None:
        busy, ours, child, steal, window = self.second
        self._write(1000 + busy - steal, 5000 + window - busy, steal, 50 + ours, 10 + child,
                    500 + busy - steal - ours - child)

    def sample(self) -> LoadSample:
        self._write(1000, 5000, 0, 50, 10, 500)  # each sample starts from the first snapshot
        return machine_load(0.5, own_pids=[100], proc=self.root, sleep=self.sleep)


def test_machine_load_counts_others_not_our_tree(tmp_path: Path) -> None:
    """Over a 200-tick window the machine was busy 120 ticks, 30 of them ours and 20 our
    child's: the others took 70 / 200 = 35%; the load average is read as is."""
    fake = FakeProc(tmp_path, loadavg=1.5, machine_busy=120, ours=30, child=20)
    s = fake.sample()
    assert s.other_cpu_share == pytest.approx(0.35)
    assert s.loadavg_1m == 1.5 and s.cpus == 2 and s.loadavg_per_core == 0.75


def test_steal_counts_as_others(tmp_path: Path) -> None:
    """The hypervisor's steal is time another guest had our core: it counts as others'."""
    fake = FakeProc(tmp_path, loadavg=0.1, machine_busy=60, ours=0, child=0, steal=60)
    assert fake.sample().other_cpu_share == pytest.approx(0.30)


def test_refuse_raises_naming_the_load(tmp_path: Path) -> None:
    """A busy machine and ``refuse``: a ``CalibrationError`` subclass whose message gives
    the measured share and the limit."""
    fake = FakeProc(tmp_path, loadavg=0.2, machine_busy=120, ours=30, child=20)
    with pytest.raises(BusyMachineError) as e:
        guard("refuse", sample=fake.sample, what="profiling noop")
    assert isinstance(e.value, CalibrationError)
    msg = str(e.value)
    assert "profiling noop" in msg and "35%" in msg and "limit 20%" in msg


def test_refuse_names_a_high_load_average(tmp_path: Path) -> None:
    """Quiet now, but the last minute's load average is 2.5 per core: refused, and said."""
    fake = FakeProc(tmp_path, loadavg=5.0, machine_busy=10, ours=0, child=0)
    with pytest.raises(BusyMachineError, match=r"load average 5\.00 on 2 CPUs"):
        guard("refuse", sample=fake.sample)
    # the check can be turned off (while our own server runs)
    assert guard("refuse", sample=fake.sample, max_loadavg_per_core=None) is not None


def test_refuse_waits_for_the_machine_to_settle() -> None:
    """With ``settle_s``, refuse re-samples until the machine is quiet, then goes on."""
    busy = LoadSample(loadavg_1m=0.1, cpus=2, other_cpu_share=0.9, window_s=0.5)
    quiet = LoadSample(loadavg_1m=0.1, cpus=2, other_cpu_share=0.01, window_s=0.5)
    seq = iter([busy, busy, quiet])
    slept: list[float] = []
    got = guard("refuse", sample=lambda: next(seq), settle_s=60, sleep=slept.append)
    assert got == quiet and slept == [5.0, 5.0]
    # and gives up after settle_s
    with pytest.raises(BusyMachineError, match="after waiting 10 s"):
        guard("refuse", sample=lambda: busy, settle_s=10, sleep=lambda s: None)


def test_warn_logs_and_returns_the_sample(tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    """``warn`` logs one warning naming the load and returns the sample to record."""
    fake = FakeProc(tmp_path, loadavg=0.2, machine_busy=120, ours=30, child=20)
    with caplog.at_level(logging.WARNING, logger="clipperlab.calibration.quiet"):
        s = guard("warn", sample=fake.sample)
    assert s is not None and s.other_cpu_share == pytest.approx(0.35)
    assert len(caplog.records) == 1 and "35%" in caplog.records[0].getMessage()
    seen: list[str] = []
    guard("warn", sample=lambda: s, log=seen.append)  # or to the caller's log
    assert len(seen) == 1 and "35%" in seen[0]


def test_quiet_machine_passes_silently(tmp_path: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:
    """A quiet machine: no warning under any policy, and the sample comes back."""
    fake = FakeProc(tmp_path, loadavg=0.3, machine_busy=20, ours=10, child=0)
    with caplog.at_level(logging.WARNING):
        for policy in ("warn", "refuse"):
            s = guard(policy, sample=fake.sample)
            assert s is not None and s.other_cpu_share == pytest.approx(0.05)
    assert not caplog.records


def test_off_does_nothing() -> None:
    """``off`` does not even sample."""
    def boom() -> LoadSample:
        raise AssertionError("sampled")

    assert guard("off", sample=boom) is None


def test_unknown_policy_is_an_error() -> None:
    with pytest.raises(CalibrationError, match="'loud'"):
        guard("loud")


def test_the_real_proc_reads() -> None:
    """On this machine (Linux) the sample is well formed; its values are not asserted."""
    s = machine_load(0.05)
    assert 0.0 <= s.other_cpu_share <= 1.0 and s.cpus >= 1 and s.loadavg_1m >= 0


@pytest.mark.parametrize(("cpus", "slice_ms"), [(1, 0.75), (2, 1.5), (4, 2.25), (8, 3.0),
                                                (64, 3.0)])
def test_kernel_slice_is_the_kernels_default_for_the_cores(tmp_path: Path, cpus: int,
                                                           slice_ms: float) -> None:
    """Without debugfs the slice is Linux's default: 0.75 ms x (1 + log2 of the cores,
    at most 8)."""
    (tmp_path / "stat").write_text("cpu  0 0 0 0 0 0 0 0 0 0\n" + "".join(
        f"cpu{k} 0 0 0 0 0 0 0 0 0 0\n" for k in range(cpus)))
    assert kernel_slice_s(tmp_path, tmp_path / "no-debugfs") == pytest.approx(slice_ms / 1e3)


def test_kernel_slice_reads_debugfs_when_it_can(tmp_path: Path) -> None:
    """Where the scheduler's ``base_slice_ns`` is readable, that is the slice."""
    (tmp_path / "base_slice_ns").write_text("3000000\n")
    assert kernel_slice_s(Path("/proc"), tmp_path) == pytest.approx(3e-3)


def test_kernel_tick_reads_the_kernels_config(tmp_path: Path) -> None:
    """The tick is 1 / ``CONFIG_HZ`` from ``/proc/config.gz``, else from
    ``/boot/config-<release>``, else 4 ms (HZ = 250)."""
    proc, boot = tmp_path / "proc", tmp_path / "boot"
    proc.mkdir()
    boot.mkdir()
    assert kernel_tick_s(proc, boot) == pytest.approx(4e-3)
    (boot / f"config-{os.uname().release}").write_text("CONFIG_HZ_300=y\nCONFIG_HZ=300\n")
    assert kernel_tick_s(proc, boot) == pytest.approx(1 / 300)
    with gzip.open(proc / "config.gz", "wt") as f:
        f.write("# CONFIG_HZ_250 is not set\nCONFIG_HZ_1000=y\nCONFIG_HZ=1000\n")
    assert kernel_tick_s(proc, boot) == pytest.approx(1e-3)


# --------------------------------------------------------------------------- speed


def test_fit_speed_finds_the_two_speeds_of_a_trace() -> None:
    """Probes every 25 ms: 4 slow (1,850 ns, with a little noise) then 8 fast (1,000 ns),
    over and over: slow a third of the time, by x1.85, in 100 ms periods."""
    pattern = [1850.0] * 4 + [1000.0] * 8
    ns = [v * (1 + 0.01 * ((i * 7) % 3 - 1)) for i, v in enumerate(pattern * 20)]
    t = [0.025 * i for i in range(len(ns))]
    sp = fit_speed(t, ns)
    assert sp is not None
    assert sp.slow_share == pytest.approx(1 / 3)
    assert sp.slow_factor == pytest.approx(1.85, rel=0.02)
    assert sp.fast_ns == pytest.approx(1000.0, rel=0.02)
    assert sp.slow_dwell_s == pytest.approx(0.1, rel=0.01)
    # the whole periods, the first (slow) and the last (fast) cut by the trace's ends
    assert sp.slow_dwells_s == pytest.approx([0.1] * 19)
    assert sp.fast_dwells_s == pytest.approx([0.2] * 19)
    assert sp.probes == len(ns) and "slow 33% of the time, by x1.8" in sp.describe()


def test_fit_speed_with_one_speed_or_too_few_probes() -> None:
    """A machine at one speed all along (fast or slow) shows factor 1 and no slow share;
    fewer than ``MIN_PROBES`` probes say nothing."""
    flat = [2000.0 + (i % 5) for i in range(100)]
    sp = fit_speed([0.025 * i for i in range(100)], flat)
    assert sp is not None and (sp.slow_factor, sp.slow_share) == (1.0, 0.0)
    assert math.isnan(sp.slow_dwell_s) and sp.describe().startswith("one speed")
    short = MIN_PROBES - 1
    assert fit_speed([0.025 * i for i in range(short)], flat[:short]) is None


def test_speed_monitor_probes_in_its_own_process_until_stopped(tmp_path: Path) -> None:
    """The monitor's process writes probes (positive nanoseconds, time in order) until the
    block ends; then it is gone and the trace stops growing; ``fit(since)`` sees only the
    probes after ``since``."""
    path = tmp_path / "speed.txt"
    with SpeedMonitor(path, interval_s=0.005) as mon:
        until = time.monotonic() + 60
        while len(mon.trace()[0]) < 2 * MIN_PROBES and time.monotonic() < until:
            time.sleep(0.05)
        t, ns = mon.trace()
        assert len(t) >= 2 * MIN_PROBES
        assert all(v > 0 for v in ns) and t == sorted(t)
        assert mon.fit() is not None
        assert len(mon.trace(since=t[MIN_PROBES])[0]) < len(mon.trace()[0])
        assert mon.trace(since=t[1], until=t[MIN_PROBES])[0] == t[1:MIN_PROBES + 1]
    n = len(mon.trace()[0])
    time.sleep(0.1)
    assert len(mon.trace()[0]) == n
    with pytest.raises(CalibrationError, match="interval must be > 0 s, got 0"):
        SpeedMonitor(path, interval_s=0)


def _pinned_traces(path: Path, per_cpu: dict[int, list[float]], step_s: float = 0.025,
                   t0: float = 100.0) -> SpeedMonitor:
    """A monitor over traces written by hand (no process): core ``k``'s probes every
    ``step_s`` from ``t0``."""
    mon = SpeedMonitor(path, interval_s=step_s, cpus=[0])
    mon.cpus = tuple(per_cpu)  # the cores the files stand for (this machine may have one)
    for cpu, ns in per_cpu.items():
        path.with_name(f"{path.name}.cpu{cpu}").write_text(
            "".join(f"{t0 + step_s * i:.6f} {v:.1f}\n" for i, v in enumerate(ns)))
    return mon


def test_replay_gives_the_speed_as_it_was_per_core(tmp_path: Path) -> None:
    """Two cores probed on their own: core 0 slow (x2) for the probes 40-59 of 100, core
    1 fast all along but for the probes 50-69 (x2).  ``replay`` from probe 30 gives a
    row where a core's factor changes, one factor per core; its mean counts a row at the
    cores' total speed: 1 while both are fast, 4/3 while one is slow (two cores at x1
    and x2 do the work of two at x4/3) and 2 while both are; ``for_cores`` keeps the
    rows for a 2-core host and gives a host of another size their totals; the pooled
    fit has the mean share and the factor, every period, and its count of cores."""
    slow0 = [2000.0 if 40 <= i < 60 else 1000.0 for i in range(100)]
    slow1 = [2000.0 if 50 <= i < 70 else 1000.0 for i in range(100)]
    mon = _pinned_traces(tmp_path / "s.txt", {0: slow0, 1: slow1})
    rec = mon.replay(100.0 + 0.025 * 30, 100.0 + 0.025 * 99)
    assert [r[0] for r in rec] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert [r[1:] for r in rec] == [(1.0, 1.0), (2.0, 1.0), (2.0, 2.0), (1.0, 2.0),
                                     (1.0, 1.0)]
    assert for_cores(rec, 2) == rec and for_cores((), 4) == ()
    assert [f for _, f in for_cores(rec, 4)] == pytest.approx([1.0, 4 / 3, 2.0, 4 / 3, 1.0])
    # over probes 30-99 (1.75 s): 1 for 0.25 s, 4/3 for 0.25, 2 for 0.25, 4/3 for 0.25, 1
    assert mon.mean_factor(100.0 + 0.025 * 30, 100.0 + 0.025 * 100) == pytest.approx(
        (0.25 * 1 + 0.25 * 4 / 3 + 0.25 * 2 + 0.25 * 4 / 3 + 0.75 * 1) / 1.75)
    # a stretch slow all along reads slow: the levels come from all the core's probes
    assert mon.mean_factor(100.0 + 0.025 * 52, 100.0 + 0.025 * 58) == pytest.approx(2.0)
    pooled = mon.fit()
    assert pooled is not None and pooled.slow_share == pytest.approx(0.2)
    assert pooled.slow_factor == pytest.approx(2.0) and pooled.probes == 200
    assert pooled.cores == 2
    assert sorted(pooled.slow_dwells_s) == pytest.approx([0.5, 0.5])
    one = fit_speed([0.025 * i for i in range(100)], slow0)
    assert pool_speeds([one]) is one and pool_speeds([]) is None  # type: ignore[list-item]
    # a core with too few probes: nothing to replay
    short = _pinned_traces(tmp_path / "t.txt", {0: slow0, 1: slow1[:MIN_PROBES - 1]})
    assert short.replay(100.0, 101.0) == ()


def test_probes_saved_and_loaded_replay_as_the_live_monitor(tmp_path: Path) -> None:
    """``save_probes`` keeps a monitor's probes per core (``SpeedMonitor.probes``);
    ``load_probes`` and ``SpeedMonitor.from_probes`` give a monitor that fits and replays
    them as the live one did (so a stored run's level replays can be looked at again);
    a file that is not one is a ``CalibrationError`` naming it."""
    slow0 = [2000.0 if 40 <= i < 60 else 1000.0 for i in range(100)]
    slow1 = [2000.0 if 50 <= i < 70 else 1000.0 for i in range(100)]
    mon = _pinned_traces(tmp_path / "s.txt", {0: slow0, 1: slow1})
    probes = mon.probes()
    assert sorted(probes) == [0, 1] and probes[1][1] == slow1
    path = save_probes(tmp_path / "speed_probes.npz", probes)
    got, interval, offset = load_probes(path)
    assert interval == SPEED_INTERVAL_S and got[0][1] == slow0
    assert abs(time.time() - time.monotonic() - offset) < 60.0  # the clocks' offset then
    assert got[1][0] == pytest.approx(probes[1][0])
    again = SpeedMonitor.from_probes(got, tmp_path / "again" / "s.txt")
    span = (100.0 + 0.025 * 30, 100.0 + 0.025 * 99)
    assert again.replay(*span) == mon.replay(*span)
    assert again.fit() == mon.fit()
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(CalibrationError, match="bad.npz: not a file of speed probes"):
        load_probes(tmp_path / "bad.npz")


def test_freeze_keeps_the_replays_reference_to_the_measurement(tmp_path: Path) -> None:
    """``freeze``: the replay's fast level and cut stay those of the probes so far; probes
    taken later on a faster machine (the minutes of fitting after a setting's runs) do not
    make the measured stretch read slow, as they do without it."""
    measured = [2000.0] * 100
    later = [1000.0] * 300
    span = (100.0 + 0.025 * 10, 100.0 + 0.025 * 90)
    mon = _pinned_traces(tmp_path / "s.txt", {0: measured})
    mon.freeze()
    mon._file(0).write_text("".join(f"{100.0 + 0.025 * i:.6f} {v:.1f}\n"
                                    for i, v in enumerate(measured + later)))
    assert mon.mean_factor(*span) == pytest.approx(1.0)
    free = _pinned_traces(tmp_path / "f.txt", {0: measured + later})
    assert free.mean_factor(*span) == pytest.approx(2.0)


def test_kept_runs_replayed_again_on_the_frozen_reference(tmp_path: Path) -> None:
    """``Bench.replay_kept`` after ``freeze``: a run kept while the probe had seen only a
    slow stretch (its fast level then 3,000 ns, so the run read x1.0) reads x1.5 against
    the frozen reference the later, faster probes give (2,000 ns), as the levels replayed
    after it do; its speed trace too when the bench keeps traces; a run not timed
    (NaN start) keeps what it had."""
    import numpy as np

    from clipperlab.calibration.fit import CpuRun
    from clipperlab.calibration.validation import Bench
    from clipperlab.workloads import ConstantRate, Workload

    early = [3000.0] * 40
    mon = _pinned_traces(tmp_path / "s.txt", {0: early})
    span = (100.0 + 0.025 * 10, 100.0 + 0.025 * 30)
    assert mon.mean_factor(*span) == pytest.approx(1.0)
    tr = Workload(ConstantRate(200), n_queries=20, app="digits").generate(0)
    run = CpuRun(tr, 20.0, 10.0, 0.01, np.full(20, 1e-3), 0.3, speed_factor=1.0,
                 speed_trace=mon.replay(*span))
    untimed = dataclasses.replace(run, speed_factor=1.7)
    bench = Bench(srv=None, pool=np.zeros((1, 1)), api="rest", connections=1,  # type: ignore[arg-type]
                  kept=[run, untimed], spans=[span, (math.nan, math.nan)], mon=mon,
                  replay=True)
    mon._file(0).write_text("".join(f"{100.0 + 0.025 * i:.6f} {v:.1f}\n"
                                    for i, v in enumerate(early + [2000.0] * 200)))
    mon.freeze()
    bench.replay_kept()
    assert bench.kept[0].speed_factor == pytest.approx(1.5)
    assert {f for _, *fs in bench.kept[0].speed_trace for f in fs} == {1.5}
    assert bench.kept[1].speed_factor == 1.7  # not timed: as it was


def test_fit_spans_joins_stretches_without_their_gap(tmp_path: Path) -> None:
    """``fit_spans``: the probes of two stretches (the calibration before and after the
    levels) fitted as one trace, each core on its own and pooled: a stretch of 40 probes
    slow all along (x2) and one of 40 fast, with 20 slow probes (the levels) between
    them left out: slow half the time in one 1-s period, the gap's probes not counted
    and its time not a period; an empty stretch adds nothing."""
    ns = [2000.0] * 40 + [2000.0] * 20 + [1000.0] * 40
    mon = _pinned_traces(tmp_path / "s.txt", {0: ns, 1: ns})
    at = [100.0 + 0.025 * i for i in range(100)]
    sp = mon.fit_spans([(at[0], at[39]), (at[60], at[99]), (200.0, 300.0)])
    assert sp is not None and sp.probes == 2 * 80 and sp.cores == 2
    assert sp.slow_share == pytest.approx(0.5) and sp.slow_factor == pytest.approx(2.0)
    assert sp.slow_dwell_s == pytest.approx(1.0)
    whole = mon.fit()
    assert whole is not None and whole.slow_share == pytest.approx(0.6)
    assert mon.fit_spans([(-math.inf, math.inf)]) == whole


def test_replay_grades_the_slow_state_by_its_probes(tmp_path: Path) -> None:
    """The slow state is not one level: a probe slower than the cut replays at its own
    time over the core's fast level, to a tenth, not at the fit's one slow factor.  A
    core fast at 1,000 ns, slow at 1,800 for a while and then at 2,150 for longer (a
    stretch of minutes slow all along, as this VM has) replays 1.8 and then 2.2 (2.15
    rounds to 2.1 or 2.2; here 2,160: 2.2); a stretch inside the second part reads 2.2
    all along, where the stretch's own fit (its own fast level) calls it fast."""
    ns = [1000.0] * 40 + [1800.0] * 20 + [2160.0] * 40
    mon = _pinned_traces(tmp_path / "s.txt", {0: ns})
    rec = mon.replay(100.0 + 0.025 * 30, 100.0 + 0.025 * 99)
    assert [r[1:] for r in rec] == [(1.0,), (1.8,), (2.2,)]
    assert [r[0] for r in rec] == pytest.approx([0.0, 0.25, 0.75])
    assert mon.mean_factor(100.0 + 0.025 * 70, 100.0 + 0.025 * 90) == pytest.approx(2.2)
    own = mon.fit(100.0 + 0.025 * 65, 100.0 + 0.025 * 99)
    assert own is not None and own.slow_factor == 1.0


def test_profile_samples_divided_by_the_speed_when_taken(tmp_path: Path) -> None:
    """``profiler.at_fast_speed``: a sample taken while both cores were slow (x2) is
    halved, one while one core was (the cores' total speed x4/3) divided by 4/3, one
    while both were fast kept; the mean factor is over every sample; nothing to replay
    (no probes then): None."""
    from clipperlab.calibration.profiler import at_fast_speed

    slow0 = [2000.0 if 40 <= i < 60 else 1000.0 for i in range(100)]
    slow1 = [2000.0 if 50 <= i < 70 else 1000.0 for i in range(100)]
    mon = _pinned_traces(tmp_path / "s.txt", {0: slow0, 1: slow1})
    at = [100.0 + 0.025 * i + 0.005 for i in (30, 45, 55, 65)]  # fast, one, both, one
    got = at_fast_speed({8: [2e-3, 2e-3], 16: [4e-3, 4e-3]}, {8: at[:2], 16: at[2:]}, mon)
    assert got is not None
    fast, mean = got
    assert fast[8] == pytest.approx([2e-3, 2e-3 * 3 / 4])
    assert fast[16] == pytest.approx([2e-3, 4e-3 * 3 / 4])
    assert mean == pytest.approx((1 + 4 / 3 + 2 + 4 / 3) / 4)
    empty = _pinned_traces(tmp_path / "t.txt", {0: slow0[:5], 1: slow1[:5]})
    assert at_fast_speed({8: [2e-3]}, {8: [at[0]]}, empty) is None


def test_reference_fast_level_is_what_replay_divides_by(tmp_path: Path) -> None:
    """``reference_fast_ns``: the cores' fast levels ``replay`` reads against, their mean
    (core 0 at 1,000 ns a probe iteration, core 1 at 1,200, each slow x2 for a stretch);
    NaN while a core has too few probes."""
    slow0 = [2000.0 if 40 <= i < 60 else 1000.0 for i in range(100)]
    slow1 = [2400.0 if 50 <= i < 70 else 1200.0 for i in range(100)]
    mon = _pinned_traces(tmp_path / "s.txt", {0: slow0, 1: slow1})
    assert mon.reference_fast_ns() == pytest.approx(1100.0)
    # replay's factors are relative to it: core 1's slow probes read x2
    assert {r[2] for r in mon.replay(100.0, 100.0 + 0.025 * 99)} == {1.0, 2.0}
    short = _pinned_traces(tmp_path / "t.txt", {0: slow0, 1: slow1[:MIN_PROBES - 1]})
    assert math.isnan(short.reference_fast_ns())


def test_pinned_monitor_probes_each_core(tmp_path: Path) -> None:
    """With ``cpus`` the monitor runs one probe process per core, each writing its own
    trace, all stopped with the block; a core this process may not use is an error."""
    cpus = probe_cpus()
    assert cpus and len(cpus) <= 8
    with SpeedMonitor(tmp_path / "p.txt", interval_s=0.005, cpus=cpus) as mon:
        until = time.monotonic() + 60
        while (min(len(mon.trace(cpu=c)[0]) for c in cpus) < MIN_PROBES
               and time.monotonic() < until):
            time.sleep(0.05)
        assert all(len(mon.trace(cpu=c)[0]) >= MIN_PROBES for c in cpus)
        procs = list(mon._procs)
        assert len(procs) == len(cpus)
    assert all(p.poll() is not None for p in procs)
    with pytest.raises(CalibrationError, match=r"speed probe cores \[9999\]"):
        SpeedMonitor(tmp_path / "q.txt", cpus=[9999])


def test_speed_probe_and_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    """A probe takes this thread's CPU time (positive); ``--speed`` prints a fit or why
    there is none; a bad interval is a usage error."""
    assert speed_probe_ns(50) > 0
    assert main(["--busy", "off", "--speed", "0.3", "--interval-ms", "5"]) == 0
    out = capsys.readouterr().out
    assert "speed: " in out
    with pytest.raises(SystemExit) as e:
        main(["--busy", "off", "--interval-ms", "0"])
    assert e.value.code == 2


def test_the_hiccup_meter_and_its_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    """``host_stalls`` spins one pinned process per core at once and keeps every clock
    jump of ``STALL_MIN_S`` or more per core (how many there are is the machine's
    business); the JSON file gives them back; ``--stalls`` prints them and writes the
    file; a file that is not one, or a bad length, is an error that says so."""
    cores = probe_cpus()[:2]
    st = host_stalls(0.3, cores)
    assert st.cpus == cores and st.span_s == 0.3 and len(st.lengths_s) == len(cores)
    assert all(v >= STALL_MIN_S for x in st.lengths_s for v in x)
    assert all(0 <= st.share(k) < 1 and st.rate_hz(k) >= 0 for k in range(len(cores)))
    assert st.describe().startswith("stalls of 0.5 ms or more over 0.3 s: core ")
    made = HostStalls(span_s=10.0, cpus=(0, 1), lengths_s=((1e-3, 4e-3), ()))
    assert HostStalls.from_json(made.to_json()) == made
    assert made.rate_hz(0) == pytest.approx(0.2) and made.share(0) == pytest.approx(5e-4)
    assert "core 0: 0.2/s of 1.0-4.0 ms (median 2.5), 0.05% of its time; core 1: none" in \
        made.describe()
    for bad in ("{}", '{"span_s": 0, "cpus": [0], "lengths_s": [[]]}',
                '{"span_s": 1, "cpus": [0], "lengths_s": [[-1]]}'):
        with pytest.raises(CalibrationError, match="not a stalls file"):
            HostStalls.from_json(bad)
    with pytest.raises(CalibrationError, match="expected seconds > 0"):
        host_stalls(0.0)
    out = tmp_path / "stalls.json"
    assert main(["--busy", "off", "--stalls", "0.2", "--stalls-out", str(out)]) == 0
    assert "stalls of 0.5 ms or more over 0.2 s" in capsys.readouterr().out
    assert HostStalls.from_json(out.read_text()).span_s == 0.2
    with pytest.raises(SystemExit):
        main(["--busy", "off", "--stalls-out", str(out)])
