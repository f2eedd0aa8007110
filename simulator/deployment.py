"""A simulated deployment: applications, models with profiles and replicas, hosts, links,
faults; and its config file.

Rules:
- A model runs ``replicas`` containers of one ``kind`` (``cpu`` or ``gpu``, by default its
  profile's kind); each replica takes ``cpus`` cores (cpu kind) or ``gpus`` devices (gpu
  kind) on a host.  Replicas are placed in ordinal order, round-robin over the model's
  ``hosts`` (all hosts when empty), skipping hosts that are full; a deployment whose
  replicas do not fit is refused, naming the model and the hosts.
- With no hosts given, there is one host ``local`` with room for every replica and a
  10 Gbps, 50 us link.
- Each host has a link to the frontend (``bandwidth_bps`` in bits per second, one-way
  ``latency_s``).  A batch's inputs cross the link once (bytes = batch size x input bytes);
  transfers on one link go one after another (FIFO), and when ``frontend_link`` is given
  they also share the frontend's NIC: a transfer runs at the smaller bandwidth and holds
  both.  Outputs come back in 8 bytes per item plus the link latency.
- ``frontend_cpu`` (optional) makes the frontend a process with one event loop, as the
  real server is: every arrival, batch send, batch result, timer and reply is handled one
  after another (FIFO), each costing CPU time (``FrontendCPU``).  The engine sees each
  event when the loop has finished with it, so a busy frontend delays queries, batches and
  replies, and saturates at ``1 / (query_s + reply_s + (batch_send_s + batch_done_s) /
  batch size)`` queries per second.  Without it the frontend costs nothing.
- ``host_cpu`` (optional, ``HostCPU``; off by default) shares each host's cores among its
  processes by processor sharing (``_cpu.py``): the frontend's event loop (on
  ``frontend_host``; its events cost what ``frontend_cpu`` says), every replica's
  container (a batch needs ``cpu_per_batch_s + cpu_per_item_s x padded size`` CPU
  seconds, by default its whole profile draw for a cpu container and none for a gpu one;
  the rest of the draw is wall time off the CPU) and the load generator
  (``loadgen_cpu_per_query_s`` per query; a query reaches the frontend when the
  generator has sent it, and its latency counts from when it was due).  Under load they
  queue for the cores.  Without it nothing shares a CPU and every path is as before.
- ``frontends`` (default 1): how many frontends serve the applications, as in real mode
  behind a load balancer: each has its own engine (queues, batching controllers, cache,
  selection state) and every frontend sends batches to every container.  A container
  computes one batch at a time, first come first served over the frontends' batches (a
  batch that reaches a busy container waits in its queue; the engine's batch latency
  includes that wait).  ``balancer`` spreads the queries (and feedback) over the
  frontends: ``round_robin`` (query ``i`` to frontend ``i mod frontends``) or
  ``least_connections`` (the frontend with the fewest queries not yet answered; ties go
  round robin).  With ``frontend_cpu`` each frontend is its own event loop with those
  costs (and its own pauses).  Several frontends run without ``host_cpu`` (frontends on
  hosts' CPUs are not modelled yet).  One frontend is exactly the single-frontend
  simulator.
- Config files are TOML or JSON; every error names the file, the field and the rule.
  Applications and models are read by ``engine.schema``, the schema ``clipperlab serve``'s
  ``deploy.toml`` shares (``[[applications]]`` or ``[[apps]]``, ``slo_ms`` / ``slo_s`` /
  ``latency_slo_micros``, policies of one's own as ``module:Class`` or ``file.py:Class``,
  a relative file taken from the config's folder); the rest is the simulator's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeGuard

from clipperlab.engine import Application, BatchingConfig, ConfigError, ModelSpec, ReplicaId
from clipperlab.engine.schema import (
    APP_TABLES,
    application_tables,
    parse_application,
    parse_document,
    parse_model,
)
from clipperlab.workloads import Workload, WorkloadError
from clipperlab.workloads.config import build_dataclass

from ._cpu import total_factor
from .errors import ProfileError, SimConfigError
from .faults import FAULT_KINDS, Crash, Degrade, Fault, Straggler, parse_replica
from .outputs import OUTPUT_KINDS, AccuracyOutputs, OutputModel
from .profiles import KINDS, LatencyProfile, load_profile

__all__ = [
    "AppDeployment",
    "Deployment",
    "FrontendCPU",
    "Host",
    "HostCPU",
    "Link",
    "ModelDeployment",
    "BALANCERS",
    "SimConfig",
    "load_config",
]

BALANCERS = ("round_robin", "least_connections")
"""How the load balancer in front of several frontends picks one (``Deployment.balancer``)."""


@dataclass(frozen=True, slots=True)
class Link:
    """A network link: bandwidth in bits per second, one-way latency in seconds."""

    bandwidth_bps: float = 10e9
    latency_s: float = 50e-6

    def __post_init__(self) -> None:
        if not (math.isfinite(self.bandwidth_bps) and self.bandwidth_bps > 0):
            raise SimConfigError(f"bandwidth_bps: expected bits per second > 0, got "
                                 f"{self.bandwidth_bps!r}")
        if not (math.isfinite(self.latency_s) and self.latency_s >= 0):
            raise SimConfigError(f"latency_s: expected seconds >= 0, got {self.latency_s!r}")


@dataclass(frozen=True, slots=True)
class FrontendCPU:
    """CPU seconds the frontend's event loop spends per event (see the module's rules).

    ``query_s``: per query received (HTTP parse, JSON, the engine's ``on_query``);
    ``reply_s``: per reply written; ``batch_send_s`` / ``batch_done_s``: per batch sent to
    a container / per batch result handled (RPC framing, the engine's batch logic);
    ``item_s``: per item of a batch, added to both (serialisation).  ``wake_s``: what an
    event costs on top when it finds the loop idle, growing with the idle time ``d`` as
    ``wake_s x (1 - exp(-d / cold_after_s))`` (a process that slept runs on cold caches,
    and on a virtual machine the wake-up itself costs CPU).  ``pause_rate_hz`` and
    ``pauses_s``: the process loses the CPU now and then (another process, the
    hypervisor): pauses start as a Poisson process and last a duration drawn from
    ``pauses_s``; everything waiting for the loop waits them out; with
    ``pause_rate_busy_hz`` the rate grows by that much times the loop's busy share (a busy
    process is preempted more).  ``timer_resolution_s``: timers fire as uvloop's do, their
    delay rounded to it (the nearest millisecond): a loop that sleeps until one sleeps
    the rounded delay, and a loop awake for another event runs it once its clock, cut
    down to the millisecond, has passed the due time (up to that much early); an early
    one makes the engine act at its deadline, as the real driver does.  Without
    ``host_cpu`` batch results and timers always go before waiting requests.  With it the
    loop's events are one FIFO unless ``parse_turn_s`` (> 0) is set: the real server's fair
    scheduler (``server.parse_turn_ms``): once arrivals wait to be parsed, the loop parses
    them in turns of at most this long and between turns handles what else came (batch
    results, timers), so a batch result waits for the turn, not behind the whole backlog,
    and the batches stay the size one round trip's parsing makes.  ``clipperlab validate``
    measures the costs on the real server and takes the turn from its settings."""

    query_s: float = 0.0
    reply_s: float = 0.0
    batch_send_s: float = 0.0
    batch_done_s: float = 0.0
    item_s: float = 0.0
    wake_s: float = 0.0
    cold_after_s: float = 1e-3
    pause_rate_hz: float = 0.0
    pauses_s: tuple[float, ...] = ()
    pause_rate_busy_hz: float = 0.0
    timer_resolution_s: float = 0.0
    parse_turn_s: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "pauses_s", tuple(float(x) for x in self.pauses_s))
        if any(not (math.isfinite(x) and x > 0) for x in self.pauses_s):
            raise SimConfigError("frontend_cpu.pauses_s: expected durations in seconds > 0")
        for f in fields(self):
            if f.name == "pauses_s":
                continue
            v = getattr(self, f.name)
            what = "a number" if "rate" in f.name else "seconds"
            if isinstance(v, bool) or not isinstance(v, int | float) or not (
                    math.isfinite(v) and v >= 0):
                raise SimConfigError(f"frontend_cpu.{f.name}: expected {what} >= 0, got {v!r}")
        if self.cold_after_s <= 0:
            raise SimConfigError(f"frontend_cpu.cold_after_s: expected seconds > 0, got "
                                 f"{self.cold_after_s!r}")
        if self.pause_rate_hz + self.pause_rate_busy_hz > 0 and not self.pauses_s:
            raise SimConfigError("frontend_cpu: pause_rate_hz needs pauses_s (durations)")

    def capacity_qps(self, batch_size: float = 1.0) -> float:
        """Queries per second the loop can handle at a mean batch size (inf when free)."""
        per = (self.query_s + self.reply_s + 2 * self.item_s
               + (self.batch_send_s + self.batch_done_s) / max(batch_size, 1.0))
        return 1.0 / per if per > 0 else math.inf


def _finite(v: object) -> TypeGuard[float]:
    """``v`` is a finite real number (an int or a float, not a bool)."""
    return not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v)


@dataclass(frozen=True, slots=True)
class HostCPU:
    """The host CPU model (off unless a deployment has one; see the module's rules).

    ``cpus``: cores every host's processes share (``None``: each ``Host``'s own ``cpus``,
    which is also what placement counts; give it to run more processes than cores, e.g.
    a frontend, a generator and two replicas on a 2-core machine).  ``frontend_host``:
    the host the frontend's event loop runs on (``None``: the first host).
    ``loadgen_host``: where the load generator runs (``None``: the frontend's host).
    ``loadgen_cpu_per_query_s``: CPU seconds the generator spends per query (sending it
    and reading its reply); 0 leaves the generator out.  ``loadgen_wake_s``: CPU seconds
    it spends each time it wakes to send (a distinct send time that finds it idle: its
    timer's tick; on a virtual machine a wake-up costs a hundred microseconds or more),
    run after that tick's sends (the generator
    stamps a query's send time after waking, so the wake-up delays no query; it takes a
    core from the others).  ``loadgen_replies`` (off by default): every reply passes
    through the generator too, as on the machine, where a query's latency is timed when
    the generator has woken and parsed its reply: the reply is a job of
    ``loadgen_reply_share`` of the per-query CPU (the rest is the send's) on the
    generator's process, and a reply that finds the generator idle pays ``loadgen_wake_s
    x (1 - exp(-idle / loadgen_idle_gap_s))`` first; the reply is the query's when that job
    is done (it waits for a core behind the loop and the containers, as the generator
    does).  Per model, ``ModelDeployment``'s
    ``cpu_per_batch_s`` and ``cpu_per_item_s`` give a container's CPU per batch.
    ``slice_s``: 0 (the default) shares the cores by processor sharing; above 0 they are
    handed out as Linux's EEVDF scheduler does with slices of that length (per-core run
    queues: a process woken while every core is taken preempts one that has had its
    slice, else waits on its core's queue, where idle cores look at each ``tick_s``, the
    scheduler tick, default 4 ms; ``_cpu.SlicedHostCpuState``; ``kernel_slice_s`` and
    ``kernel_tick_s`` give Linux's).  ``newidle`` (off by default): a core whose own
    queue is empty takes a waiting process from another core's at once, as Linux's
    newidle balance does, not at the next tick.

    The host's speed (off by default): a virtual machine's cores can run at two speeds,
    switching every few tens of milliseconds to seconds, as other tenants come and go on
    the physical cores beneath them (measured here: the same Python loop took 1.0-1.15
    or 1.85-2.3 us an iteration, nothing else running in the VM; ``quiet.speed_trace``).
    ``slow_factor`` (>= 1): how much longer CPU work takes in the slow state;
    ``slow_share`` (in [0, 1)): the share of the time a host is slow; ``slow_dwell_s``:
    the mean length of a slow period (exponential; a fast period's mean follows from the
    share).  ``slow_dwells_s`` and ``fast_dwells_s``, when given (both), are measured
    periods each period is drawn from instead (a probe's trace: ``quiet.fit_speed``; on
    this VM the slow periods are more spread out than exponential, a median of 50 ms and
    a third of the slow time in periods over half a second); ``slow_share`` and
    ``slow_dwell_s`` are then what they imply.  Each host switches on its own, and with
    ``core_speeds`` each of its cores does (measured here: the two cores' slow states
    correlate at 0.26; a single-threaded event loop runs at its own core's speed, not at
    the machine's average): in time slices a process runs at the speed of the core it
    holds, under processor sharing the host at its cores' total speed.  The
    demands keep their meaning (CPU seconds
    a job takes on average, as ``/proc`` measured them over a run): work runs
    ``1 / mean_factor`` as long when fast and ``slow_factor / mean_factor`` when slow, so
    the time-averaged speed is unchanged and only its swings are added.
    ``reference_factor`` (default: this host's own ``mean_factor``): the mean factor the
    demands were measured at, when that was another time's speed (a twin fitted while
    the machine was slow 40% of the time, run for a stretch when it was slow 70% of the
    time: work then takes ``factor / reference_factor`` of its demand, on average more;
    below 1 when the stretch ran slower even in its fast periods than the demands'
    measurement did: ``calibration.twin.at_speed``).
    ``speed_trace`` (off when empty): the speed as it was, replayed instead of drawn:
    ``(at_s, factor)`` pairs, times from the run's start in increasing order, each factor
    (> 0; 1: the fast speed) holding until the next (a probe's trace of a real run:
    ``quiet.SpeedMonitor.replay``), or ``(at_s, factor of core 0, factor of core 1,
    ...)`` rows, one factor per core (every row as long; a host with another number of
    cores is an error); every host follows it, the factors divided by
    ``reference_factor`` (default: the trace's own time-weighted mean factor up to its
    last point, a row's factor being its cores' total speed), and ``slow_factor``,
    ``slow_share`` and the periods are not drawn.

    Stalls (off by default): ``stalls_s[c]`` holds stall lengths measured on core ``c``
    over ``stalls_span_s`` seconds (a hiccup meter: ``quiet.host_stalls``), moments when
    the core ran nothing of ours at all (a kernel thread that does not yield, the
    hypervisor taking the core).  Each core of every host stalls at their rate (count over
    the span), at exponential intervals, each stall as long as one of them drawn at
    random: the process holding the core makes no progress until it ends (the others go
    on at their speed).  Measured here on an otherwise idle machine: 0.2-3.3 stalls a
    second per core, 0.5-7 ms each, 0.06-0.6% of a core's time; too short
    and rare for the speed probe to see, long enough to leave a replica idle while the
    generator's sends wait (``results/validation/diagnostics-forest-sheds/``)."""

    cpus: int | None = None
    frontend_host: str | None = None
    loadgen_host: str | None = None
    loadgen_cpu_per_query_s: float = 0.0
    loadgen_wake_s: float = 0.0
    loadgen_replies: bool = False
    loadgen_reply_share: float = 0.5
    loadgen_idle_gap_s: float = 50e-6
    slice_s: float = 0.0
    tick_s: float = 4e-3
    newidle: bool = False
    slow_factor: float = 1.0
    slow_share: float = 0.0
    slow_dwell_s: float = 0.1
    slow_dwells_s: tuple[float, ...] = ()
    fast_dwells_s: tuple[float, ...] = ()
    reference_factor: float | None = None
    speed_trace: tuple[tuple[float, ...], ...] = ()
    core_speeds: bool = False
    stalls_s: tuple[tuple[float, ...], ...] = ()
    stalls_span_s: float = 0.0

    def __post_init__(self) -> None:
        c = self.cpus
        if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 1):
            raise SimConfigError(f"host_cpu.cpus: expected an integer >= 1 (cores), got {c!r}")
        for k in ("frontend_host", "loadgen_host"):
            v = getattr(self, k)
            if v is not None and (not isinstance(v, str) or not v):
                raise SimConfigError(f"host_cpu.{k}: expected a host name, got {v!r}")
        checks: tuple[tuple[str, Callable[[float], bool], str], ...] = (
            ("loadgen_cpu_per_query_s", lambda v: v >= 0, "seconds >= 0"),
            ("loadgen_wake_s", lambda v: v >= 0, "seconds >= 0"),
            ("loadgen_reply_share", lambda v: 0 <= v <= 1, "a share in [0, 1]"),
            ("loadgen_idle_gap_s", lambda v: v > 0, "seconds > 0"),
            ("slice_s", lambda v: 0 <= v <= 1.0, "seconds in [0, 1] (0: processor sharing)"),
            ("tick_s", lambda v: 0 < v <= 1.0, "seconds in (0, 1] (the scheduler tick)"),
            ("slow_factor", lambda v: v >= 1.0, "a factor >= 1 (1: one speed)"),
            ("slow_share", lambda v: 0 <= v < 1, "a share in [0, 1)"),
            ("slow_dwell_s", lambda v: v > 0, "seconds > 0"),
        )
        for name, ok, expected in checks:
            v = getattr(self, name)
            if not (_finite(v) and ok(v)):
                raise SimConfigError(f"host_cpu.{name}: expected {expected}, got {v!r}")
        if not isinstance(self.newidle, bool):
            raise SimConfigError(f"host_cpu.newidle: expected true or false, got "
                                 f"{self.newidle!r}")
        if not isinstance(self.loadgen_replies, bool):
            raise SimConfigError(f"host_cpu.loadgen_replies: expected true or false, got "
                                 f"{self.loadgen_replies!r}")
        for k in ("slow_dwells_s", "fast_dwells_s"):
            v = getattr(self, k)
            if isinstance(v, list):
                object.__setattr__(self, k, v := tuple(v))
            if not isinstance(v, tuple) or not all(_finite(x) and x > 0 for x in v):
                raise SimConfigError(f"host_cpu.{k}: expected a list of seconds > 0, got "
                                     f"{v!r}")
        r = self.reference_factor
        if r is not None and not (_finite(r) and r > 0.0):
            raise SimConfigError(f"host_cpu.reference_factor: expected a mean factor > 0, "
                                 f"got {r!r}")
        tr = self.speed_trace
        if isinstance(tr, list):
            object.__setattr__(self, "speed_trace", tr := tuple(
                tuple(x) if isinstance(x, list) else x for x in tr))
        if not isinstance(tr, tuple) or not all(
                isinstance(x, tuple) and len(x) >= 2 and len(x) == len(tr[0]) and all(
                    not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v)
                    for v in x) and x[0] >= 0 and min(x[1:]) > 0 for x in tr) or any(
                    a[0] >= b[0] for a, b in zip(tr, tr[1:], strict=False)):
            raise SimConfigError(f"host_cpu.speed_trace: expected [at_s, factor] pairs or "
                                 f"[at_s, factor per core] rows of one length, times >= 0 "
                                 f"increasing, factors > 0, got {tr!r}")
        if not isinstance(self.core_speeds, bool):
            raise SimConfigError(f"host_cpu.core_speeds: expected true or false, got "
                                 f"{self.core_speeds!r}")
        if bool(self.slow_dwells_s) != bool(self.fast_dwells_s):
            raise SimConfigError("host_cpu.slow_dwells_s and fast_dwells_s: give both "
                                 "(measured periods of each speed) or neither")
        st = self.stalls_s
        if isinstance(st, list):
            object.__setattr__(self, "stalls_s", st := tuple(
                tuple(x) if isinstance(x, list) else x for x in st))
        if not isinstance(st, tuple) or not all(
                isinstance(x, tuple) and all(_finite(v) and v > 0 for v in x) for x in st):
            raise SimConfigError(f"host_cpu.stalls_s: expected a list per core of stall "
                                 f"lengths in seconds > 0, got {st!r}")
        if not (_finite(self.stalls_span_s) and self.stalls_span_s >= 0) or (
                any(st) and not self.stalls_span_s > 0):
            raise SimConfigError(f"host_cpu.stalls_span_s: expected the seconds the stalls "
                                 f"were measured over (> 0 with stalls), got "
                                 f"{self.stalls_span_s!r}")

    @property
    def stalls(self) -> bool:
        """Whether any core stalls (``stalls_s``)."""
        return any(self.stalls_s)

    @property
    def measured_dwells(self) -> bool:
        return bool(self.slow_dwells_s) and bool(self.fast_dwells_s)

    @property
    def share(self) -> float:
        """The share of the time slow: ``slow_share``, or what the measured periods
        imply."""
        if self.measured_dwells:
            s = sum(self.slow_dwells_s) / len(self.slow_dwells_s)
            f = sum(self.fast_dwells_s) / len(self.fast_dwells_s)
            return s / (s + f)
        return self.slow_share

    @property
    def speed_swings(self) -> bool:
        """Whether the hosts switch between two speeds (``slow_factor`` and a slow share
        or measured periods)."""
        return self.slow_factor > 1.0 and (self.slow_share > 0.0 or self.measured_dwells)

    @property
    def mean_factor(self) -> float:
        """The time-averaged factor of the two speeds: ``1 + share x (slow_factor -
        1)``; with a ``speed_trace``, its factors weighted by how long each held (up to its
        last point; a one-point trace: its factor)."""
        tr = self.speed_trace
        if tr:
            span = tr[-1][0] - tr[0][0]
            if span <= 0:
                return total_factor(tr[-1][1:])
            return sum((b[0] - a[0]) * total_factor(a[1:])
                       for a, b in zip(tr, tr[1:], strict=False)) / span
        return 1.0 + self.share * (self.slow_factor - 1.0)

    @property
    def reference(self) -> float:
        """What the factors are divided by: ``reference_factor``, else ``mean_factor``."""
        return self.mean_factor if self.reference_factor is None else self.reference_factor

    def cores(self, host: Host) -> int:
        """The cores ``host``'s processes share (at least one)."""
        return max(self.cpus if self.cpus is not None else host.cpus, 1)


@dataclass(frozen=True, slots=True)
class Host:
    """A machine with ``cpus`` cores and ``gpus`` devices, linked to the frontend."""

    name: str
    cpus: int = 1
    gpus: int = 0
    link: Link = field(default_factory=Link)

    def __post_init__(self) -> None:
        if not self.name:
            raise SimConfigError("host name: expected a non-empty string")
        if self.cpus < 0 or self.gpus < 0:
            raise SimConfigError(f"host {self.name!r}: cpus and gpus must be >= 0, got "
                                 f"{self.cpus} and {self.gpus}")


@dataclass(frozen=True, slots=True)
class ModelDeployment:
    """One model version, its latency profile, its replicas and what it answers."""

    spec: ModelSpec
    profile: LatencyProfile
    replicas: int = 1
    hosts: tuple[str, ...] = ()
    kind: str | None = None
    cpus: int = 1
    gpus: int = 1
    outputs: OutputModel = field(default_factory=AccuracyOutputs)
    # a batch that finds its container idle takes wake_s x (1 - exp(-idle / cold_after_s))
    # longer than its profile (a profile is timed back to back, on a warm container)
    wake_s: float = 0.0
    cold_after_s: float = 1e-3
    # CPU seconds per batch under the host CPU model (HostCPU): cpu_per_batch_s +
    # cpu_per_item_s x padded size; both None: the whole draw (cpu kind) or none (gpu kind)
    cpu_per_batch_s: float | None = None
    cpu_per_item_s: float | None = None

    def __post_init__(self) -> None:
        n = self.spec.name
        for k in ("cpu_per_batch_s", "cpu_per_item_s"):
            v = getattr(self, k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)
                                  or not (math.isfinite(v) and v >= 0)):
                raise SimConfigError(f"model {n!r}: {k}: expected seconds >= 0, got {v!r}")
        if not (self.wake_s >= 0 and self.cold_after_s > 0):
            raise SimConfigError(f"model {n!r}: wake_s must be >= 0 and cold_after_s > 0")
        if not isinstance(self.replicas, int) or self.replicas < 0:
            raise SimConfigError(f"model {n!r}: replicas: expected an integer >= 0, got "
                                 f"{self.replicas!r}")
        if self.kind is not None and self.kind not in KINDS:
            raise SimConfigError(f"model {n!r}: kind: expected one of {KINDS}, got "
                                 f"{self.kind!r}")
        if self.container_kind != self.profile.kind:
            raise SimConfigError(
                f"model {n!r}: kind {self.container_kind!r} does not match its profile "
                f"{self.profile.name!r}, measured on {self.profile.kind}"
            )
        if self.cpus < 1 or self.gpus < 1:
            raise SimConfigError(f"model {n!r}: cpus and gpus per replica must be >= 1")

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def container_kind(self) -> str:
        return self.kind if self.kind is not None else self.profile.kind

    def cpu_demand_s(self, padded_size: int, draw_s: float,
                     mean_draw_s: float | None = None) -> float:
        """CPU seconds a batch of ``padded_size`` whose profile draw is ``draw_s`` needs
        under the host CPU model (the rest of the draw is off the CPU).

        With ``cpu_per_batch_s`` / ``cpu_per_item_s`` a gpu container needs that CPU
        (the rest of its draw is on the GPU); a cpu container's demand follows its draw:
        that CPU times ``draw_s`` over the profile's mean at the size (``mean_draw_s``,
        ``profile.mean_s`` when not given), so the fitted costs are its mean demand and a
        batch slower than the mean is slower on the CPU too (a fixed demand kept only
        the draws above it, and their excess off the CPU: batch times steadier, and
        longer on average, than the profile's)."""
        if self.cpu_per_batch_s is None and self.cpu_per_item_s is None:
            return draw_s if self.container_kind == "cpu" else 0.0
        fitted = (self.cpu_per_batch_s or 0.0) + (self.cpu_per_item_s or 0.0) * padded_size
        if self.container_kind != "cpu":
            return fitted
        mean = self.profile.mean_s(padded_size) if mean_draw_s is None else mean_draw_s
        return fitted * draw_s / mean if mean > 0.0 else fitted

    def replica_ids(self) -> list[ReplicaId]:
        return [ReplicaId(self.spec.name, self.spec.version, i) for i in range(self.replicas)]


@dataclass(frozen=True, slots=True)
class AppDeployment:
    """An application and the models linked to it (in order)."""

    app: Application
    models: tuple[str, ...]


@dataclass(frozen=True)
class Deployment:
    """Everything the simulator runs except the workload."""

    apps: tuple[AppDeployment, ...]
    models: tuple[ModelDeployment, ...]
    hosts: tuple[Host, ...] = ()
    frontend_link: Link | None = None
    faults: tuple[Fault, ...] = ()
    cache_capacity_bytes: int = 32 << 20
    frontend_cpu: FrontendCPU | None = None
    host_cpu: HostCPU | None = None
    frontends: int = 1
    balancer: str = "round_robin"

    def __post_init__(self) -> None:
        fe = self.frontends
        if isinstance(fe, bool) or not isinstance(fe, int) or fe < 1:
            raise SimConfigError(f"frontends: expected an integer >= 1, got {fe!r}")
        if self.balancer not in BALANCERS:
            raise SimConfigError(f"balancer: expected one of {list(BALANCERS)}, got "
                                 f"{self.balancer!r}")
        if fe > 1 and self.host_cpu is not None:
            raise SimConfigError(
                f"frontends = {fe}: several frontends run without host_cpu (frontends on "
                "hosts' CPUs are not modelled yet); drop [host_cpu] or use frontends = 1")
        if (self.frontend_cpu is not None and self.frontend_cpu.parse_turn_s > 0
                and self.host_cpu is None):
            raise SimConfigError("frontend_cpu.parse_turn_s: parsing in turns needs host_cpu "
                                 "(without it batch results and timers always go before "
                                 "waiting requests); add [host_cpu] or set it to 0")
        object.__setattr__(self, "apps", tuple(self.apps))
        object.__setattr__(self, "models", tuple(self.models))
        object.__setattr__(self, "faults", tuple(self.faults))
        if not self.hosts:
            need_c = sum(m.replicas * m.cpus for m in self.models if m.container_kind == "cpu")
            need_g = sum(m.replicas * m.gpus for m in self.models if m.container_kind == "gpu")
            object.__setattr__(self, "hosts", (Host("local", cpus=need_c, gpus=need_g),))
        object.__setattr__(self, "hosts", tuple(self.hosts))
        names = [m.name for m in self.models]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise SimConfigError(f"models: names must be unique, {sorted(dup)} repeated")
        hnames = [h.name for h in self.hosts]
        if len(set(hnames)) != len(hnames):
            raise SimConfigError(f"hosts: names must be unique, got {hnames}")
        for a in self.apps:
            for m in a.models:
                if m not in names:
                    raise SimConfigError(
                        f"app {a.app.name!r}: models: {m!r} is not a deployed model; "
                        f"deployed: {names}"
                    )
        self.placement()  # validates capacity
        hc = self.host_cpu
        if hc is not None:
            for k in ("frontend_host", "loadgen_host"):
                h = getattr(hc, k)
                if h is not None and h not in hnames:
                    raise SimConfigError(f"host_cpu.{k}: {h!r} is not a host; hosts: {hnames}")
        for f in self.faults:
            if isinstance(f, Crash | Straggler):
                model, ordinal = parse_replica(f.replica)
                md = self.model(model, f"fault {f.replica!r}")
                if ordinal >= md.replicas:
                    raise SimConfigError(
                        f"fault on {f.replica!r}: model {model!r} has {md.replicas} replica(s)"
                    )
            elif isinstance(f, Degrade):
                self.model(f.model, "degrade")

    def model(self, name: str, where: str = "model") -> ModelDeployment:
        for m in self.models:
            if m.name == name:
                return m
        raise SimConfigError(f"{where}: model {name!r} is not deployed; deployed: "
                             f"{[m.name for m in self.models]}")

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise SimConfigError(f"host {name!r} does not exist; hosts: "
                             f"{[h.name for h in self.hosts]}")

    def placement(self) -> dict[ReplicaId, str]:
        """Replica -> host name, per the module's placement rule (raises when full)."""
        free = {h.name: {"cpu": h.cpus, "gpu": h.gpus} for h in self.hosts}
        out: dict[ReplicaId, str] = {}
        for m in self.models:
            allowed = list(m.hosts) if m.hosts else [h.name for h in self.hosts]
            for h in allowed:
                if h not in free:
                    raise SimConfigError(
                        f"model {m.name!r}: hosts: {h!r} is not a host; hosts: {list(free)}"
                    )
            kind = m.container_kind
            need = m.cpus if kind == "cpu" else m.gpus
            start = 0
            for rid in m.replica_ids():
                for k in range(len(allowed)):
                    h = allowed[(start + k) % len(allowed)]
                    if free[h][kind] >= need:
                        free[h][kind] -= need
                        out[rid] = h
                        start = (start + k + 1) % len(allowed)
                        break
                else:
                    unit = "cpus" if kind == "cpu" else "gpus"
                    raise SimConfigError(
                        f"model {m.name!r}: replicas: {m.replicas} {kind} replicas of {need} "
                        f"{unit} each do not fit on hosts {allowed} (replica {rid.ordinal} "
                        "has no room); add hosts or lower replicas"
                    )
        return out

    # ------------------------------------------------------------------ helpers
    @classmethod
    def single(
        cls,
        profile: LatencyProfile | str,
        *,
        model: str = "m",
        app: str = "digits",
        slo_s: float = 0.020,
        batching: BatchingConfig | None = None,
        replicas: int = 1,
        outputs: OutputModel | None = None,
        link: Link | None = None,
        frontend_link: Link | None = None,
        faults: Sequence[Fault] = (),
        default_output: Any = -1,
        frontends: int = 1,
        balancer: str = "round_robin",
    ) -> Deployment:
        """One application with one model, ``replicas`` replicas each on its own host
        (``h0``, ``h1``, ...) linked by ``link`` (10 Gbps by default), behind
        ``frontends`` frontends."""
        prof = load_profile(profile) if isinstance(profile, str) else profile
        spec = ModelSpec(name=model, batching=batching or BatchingConfig())
        hosts = tuple(
            Host(f"h{i}", cpus=1, gpus=1, link=link or Link()) for i in range(max(replicas, 1))
        )
        return cls(
            apps=(AppDeployment(Application(name=app, slo_s=slo_s,
                                            default_output=default_output), (model,)),),
            models=(ModelDeployment(spec=spec, profile=prof, replicas=replicas,
                                    outputs=outputs or AccuracyOutputs()),),
            hosts=hosts,
            frontend_link=frontend_link,
            faults=tuple(faults),
            frontends=frontends,
            balancer=balancer,
        )

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], file: str = "<dict>", base_dir: Path | None = None
    ) -> Deployment:
        return _deployment_from_dict(data, file, base_dir or Path.cwd())


@dataclass(frozen=True)
class SimConfig:
    """A config file's content: the deployment, the workload (if any) and the seed."""

    deployment: Deployment
    workload: Workload | None
    seed: int = 0
    path: str = "<dict>"


# ---------------------------------------------------------------------- config files

_TOP = {"seed", "cache_capacity_bytes", "frontend", "frontend_cpu", "host_cpu", "hosts",
        *APP_TABLES, "models", "workload", "faults", "frontends", "balancer"}


def load_config(path: str | Path) -> SimConfig:
    """Read a TOML (``.toml``) or JSON config; see ``examples/`` and the module rules."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise SimConfigError(f"{p}: cannot read the config ({e.strerror})") from None
    try:
        data = parse_document(text, str(p))
    except ConfigError as e:
        raise SimConfigError(str(e)) from None
    return config_from_dict(data, str(p), p.resolve().parent)


def config_from_dict(data: Mapping[str, Any], file: str = "<dict>",
                     base_dir: Path | None = None) -> SimConfig:
    dep = _deployment_from_dict(data, file, base_dir or Path.cwd())
    wl = None
    if "workload" in data:
        try:
            wl = Workload.from_dict(_rebase_trace(data["workload"], base_dir), "workload")
        except WorkloadError as e:
            raise SimConfigError(f"{file}: {e}") from None
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SimConfigError(f"{file}: seed: expected an integer >= 0, got {seed!r}")
    return SimConfig(deployment=dep, workload=wl, seed=seed, path=file)


def _rebase_trace(w: Any, base_dir: Path | None) -> Any:
    if (isinstance(w, Mapping) and isinstance(w.get("arrivals"), Mapping)
            and w["arrivals"].get("kind") == "trace" and base_dir is not None
            and isinstance(w["arrivals"].get("csv_path"), str)):
        arr = dict(w["arrivals"])
        arr["csv_path"] = str(base_dir / arr["csv_path"])
        return {**w, "arrivals": arr}
    return w


def _err(file: str, where: str, msg: str) -> SimConfigError:
    return SimConfigError(f"{file}: {where}: {msg}")


def _table(data: Any, file: str, where: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise _err(file, where, f"expected a table, got {data!r}")
    return data


def _list_of_tables(data: Mapping[str, Any], key: str, file: str) -> list[Mapping[str, Any]]:
    v = data.get(key, [])
    if not isinstance(v, list):
        raise _err(file, key, f"expected a list of tables ([[{key}]]), got {v!r}")
    return [_table(x, file, f"{key}[{i}]") for i, x in enumerate(v)]


def _link(t: Mapping[str, Any], file: str, where: str) -> Link:
    kw = {}
    for k in ("bandwidth_bps", "latency_s"):
        if k in t:
            v = t[k]
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise _err(file, f"{where}.{k}", f"expected a number, got {v!r}")
            kw[k] = float(v)
    try:
        return Link(**kw)
    except SimConfigError as e:
        raise _err(file, where, str(e)) from None


def _deployment_from_dict(data: Mapping[str, Any], file: str, base_dir: Path) -> Deployment:
    data = _table(data, file, "top level")
    unknown = sorted(set(data) - _TOP)
    if unknown:
        raise _err(file, "top level", f"unknown field(s) {unknown}; expected some of "
                                      f"{sorted(_TOP)}")
    hosts = []
    for i, h in enumerate(_list_of_tables(data, "hosts", file)):
        where = f"hosts[{i}]"
        extra = sorted(set(h) - {"name", "cpus", "gpus", "bandwidth_bps", "latency_s"})
        if extra:
            raise _err(file, where, f"unknown field(s) {extra}; expected name, cpus, gpus, "
                                    "bandwidth_bps, latency_s")
        if not isinstance(h.get("name"), str) or not h.get("name"):
            raise _err(file, f"{where}.name", f"expected a non-empty string, got "
                                              f"{h.get('name')!r}")
        for k in ("cpus", "gpus"):
            v = h.get(k, 0 if k == "gpus" else 1)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise _err(file, f"{where}.{k}", f"expected an integer >= 0, got {v!r}")
        hosts.append(Host(h["name"], cpus=h.get("cpus", 1), gpus=h.get("gpus", 0),
                          link=_link(h, file, where)))
    models = []
    for i, m in enumerate(_list_of_tables(data, "models", file)):
        models.append(_model(m, file, f"models[{i}]", base_dir))
    apps = []
    try:
        key, tables = application_tables(data)
        for i, t in enumerate(tables):
            entry = parse_application(t, f"{key}[{i}]", base_dir)
            apps.append(AppDeployment(entry.app, entry.models))
    except ConfigError as e:
        raise SimConfigError(f"{file}: {e}") from None
    if not apps:
        raise _err(file, "applications", "expected at least one [[applications]] table")
    if not models:
        raise _err(file, "models", "expected at least one [[models]] table")
    faults: list[Fault] = []
    for i, f in enumerate(_list_of_tables(data, "faults", file)):
        where = f"faults[{i}]"
        kind = f.get("kind")
        if kind not in FAULT_KINDS:
            raise _err(file, f"{where}.kind", f"expected one of {sorted(FAULT_KINDS)}, got "
                                              f"{kind!r}")
        try:
            faults.append(build_dataclass(FAULT_KINDS[kind],
                                          {k: v for k, v in f.items() if k != "kind"}, where))
        except (WorkloadError, SimConfigError) as e:
            raise SimConfigError(f"{file}: {e}") from None
    fe = data.get("frontend")
    front = _link(_table(fe, file, "frontend"), file, "frontend") if fe is not None else None
    fc = data.get("frontend_cpu")
    fcpu = None
    if fc is not None:
        t = _table(fc, file, "frontend_cpu")
        keys = {f.name for f in fields(FrontendCPU)}
        extra = sorted(set(t) - keys)
        if extra:
            raise _err(file, "frontend_cpu", f"unknown field(s) {extra}; expected some of "
                                             f"{sorted(keys)}")
        try:
            fcpu = FrontendCPU(**{k: t[k] for k in keys if k in t})
        except SimConfigError as e:
            raise _err(file, "frontend_cpu", str(e)) from None
    hcpu = None
    if data.get("host_cpu") is not None:
        t = _table(data["host_cpu"], file, "host_cpu")
        keys = {f.name for f in fields(HostCPU)}
        extra = sorted(set(t) - keys)
        if extra:
            raise _err(file, "host_cpu", f"unknown field(s) {extra}; expected some of "
                                         f"{sorted(keys)}")
        try:
            hcpu = HostCPU(**{k: t[k] for k in keys if k in t})
        except SimConfigError as e:
            raise SimConfigError(f"{file}: {e}") from None
    cap = data.get("cache_capacity_bytes", 32 << 20)
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
        raise _err(file, "cache_capacity_bytes", f"expected an integer >= 0, got {cap!r}")
    nfe = data.get("frontends", 1)
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise _err(file, "frontends", f"expected an integer >= 1, got {nfe!r}")
    bal = data.get("balancer", "round_robin")
    if bal not in BALANCERS:
        raise _err(file, "balancer", f"expected one of {list(BALANCERS)}, got {bal!r}")
    try:
        return Deployment(apps=tuple(apps), models=tuple(models), hosts=tuple(hosts),
                          frontend_link=front, faults=tuple(faults), cache_capacity_bytes=cap,
                          frontend_cpu=fcpu, host_cpu=hcpu, frontends=nfe, balancer=bal)
    except SimConfigError as e:
        raise SimConfigError(f"{file}: {e}") from None


# the simulator's own fields of a [[models]] table (the shared ones: engine.schema)
_SIM_MODEL_FIELDS = ("profile", "hosts", "kind", "cpus", "gpus", "outputs", "wake_s",
                     "cold_after_s", "cpu_per_batch_s", "cpu_per_item_s")


def _model(m: Mapping[str, Any], file: str, where: str, base_dir: Path) -> ModelDeployment:
    try:
        spec, replicas, _ = parse_model(m, where, _SIM_MODEL_FIELDS, base_dir)
    except ConfigError as e:
        raise SimConfigError(f"{file}: {e}") from None
    prof_ref = m.get("profile")
    if not isinstance(prof_ref, str) or not prof_ref:
        raise _err(file, f"{where}.profile", f"expected a non-empty string (a shipped profile "
                                             f"name or a .json path), got {prof_ref!r}")
    if prof_ref.endswith(".json") and not Path(prof_ref).is_absolute():
        prof_ref = str(base_dir / prof_ref)
    try:
        profile = load_profile(prof_ref)
    except ProfileError as e:
        raise _err(file, f"{where}.profile", str(e)) from None
    for k, lo in (("cpus", 1), ("gpus", 1)):
        v = m.get(k, 1)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise _err(file, f"{where}.{k}", f"expected an integer >= {lo}, got {v!r}")
    hosts = m.get("hosts", [])
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
        raise _err(file, f"{where}.hosts", f"expected a list of host names, got {hosts!r}")
    outputs: OutputModel = AccuracyOutputs()
    if "outputs" in m:
        o = _table(m["outputs"], file, f"{where}.outputs")
        kind = o.get("kind")
        if kind not in OUTPUT_KINDS:
            raise _err(file, f"{where}.outputs.kind", f"expected one of {sorted(OUTPUT_KINDS)}, "
                                                      f"got {kind!r}")
        rest = {k: v for k, v in o.items() if k != "kind"}
        if kind == "replay" and isinstance(rest.get("source"), str) and rest["source"].endswith(
            (".json", ".npy", ".csv")
        ) and not Path(rest["source"]).is_absolute():
            rest["source"] = str(base_dir / rest["source"])
        try:
            outputs = build_dataclass(OUTPUT_KINDS[kind], rest, f"{where}.outputs")
        except (WorkloadError, SimConfigError) as e:
            raise SimConfigError(f"{file}: {e}") from None
    for k in ("wake_s", "cold_after_s"):
        v = m.get(k, 0.0 if k == "wake_s" else 1e-3)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise _err(file, f"{where}.{k}", f"expected seconds, got {v!r}")
    for k in ("cpu_per_batch_s", "cpu_per_item_s"):
        v = m.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)
                              or not (math.isfinite(v) and v >= 0)):
            raise _err(file, f"{where}.{k}", f"expected CPU seconds >= 0, got {v!r}")
    try:
        return ModelDeployment(spec=spec, profile=profile, replicas=replicas,
                               hosts=tuple(hosts), kind=m.get("kind"), cpus=m.get("cpus", 1),
                               gpus=m.get("gpus", 1), outputs=outputs,
                               wake_s=float(m.get("wake_s", 0.0)),
                               cold_after_s=float(m.get("cold_after_s", 1e-3)),
                               cpu_per_batch_s=_opt_float(m.get("cpu_per_batch_s")),
                               cpu_per_item_s=_opt_float(m.get("cpu_per_item_s")))
    except SimConfigError as e:
        raise _err(file, where, str(e)) from None


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)
