"""The profiler: a real container's batch latency over the container RPC, as a simulator
latency profile.

Theory of operation: the profiler plays the frontend's part of the RPC
(``clipperlab.real.protocol``): it listens on a TCP port, starts ``clipperlab container`` for the
model
(or waits for one started by hand, e.g. on another host: "attach"), answers its ``HELLO``
with ``WELCOME``, then sends ``BATCH`` frames one at a time and times each from the first
byte written to the ``RESULT`` frame read.  So a profile holds what the frontend waits for
per batch: encoding, loopback transfer, decoding, the model and the way back.  A simulated
deployment of such a profile should therefore put its replicas behind a link of zero
latency (``clipperlab.calibration.validation`` does), or the RPC is counted twice.

Rules:
- For each batch size (increasing), ``warmup`` batches are sent and dropped, then batches
  are timed until ``repeats`` samples are taken or ``max_s_per_size`` seconds have passed,
  whichever comes first, but never fewer than ``min_repeats`` (defaults: 5, 200, 4 s, 20;
  200 samples put the p99 between the 2nd and 3rd largest sample, enough for a stable
  p90 and a usable p99; the time cap keeps slow models at large sizes to minutes).
- Batches go back to back by default (a busy replica: neither process sleeps between
  batches).  ``gap_s`` > 0 idles that long before each timed batch, so the profile also
  holds the cost of waking an idle container and frontend (a replica at low load; on the
  2-core dev VM this added about 1-2 ms per batch).
- Inputs come from a ``workloads`` input source (digits by default, or synthetic tensors
  of a shape), cycled through the pool so no two consecutive batches are identical.
- ``rounds`` > 1 passes over the sizes that many times (each pass as above), so a busy
  spell of the machine hits one round of each size rather than all of one; per size the
  round whose p99 is the median of the rounds' is kept (``median_round``).
- Before measuring, ``quiet.guard`` samples the machine (``busy``: warn, refuse or
  off); after the timing it is sampled again (this process and its container left out).
- The profile (``simulator.LatencyProfile.from_samples``) is tagged with the CPU model
  and cores, the Python/numpy/scikit-learn/torch versions, the date, how it was
  measured and the load it was measured under (``load_average`` before and after,
  ``machine_load``: the samples, ``busy``: ``no`` or ``yes: `` and why, ``rounds``;
  ``machine_speed``: the machine's two speeds over ``SPEED_S`` seconds of probes just
  before and just after the timing, ``quiet.speed_sample``, none while it runs so the
  probe cannot stretch a batch; with a running ``SpeedMonitor``, ``speed_factor_divided``
  and ``machine_speed_divided``: the samples divided by the speed factor when each was
  taken, and ``speed_fast_ns``: the fast level those factors are relative to, in ns a
  probe iteration, which the twin sets against its calibration's; tags are strings, as
  the loader wants); ``simulator.save_profile`` writes it.
- A container that exits, refuses, or answers ``ERROR`` stops the run with a
  ``ProfilerError`` that says why (its last log line included).
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from clipperlab.real import protocol as p
from clipperlab.report.tables import text_table
from clipperlab.simulator import LatencyProfile
from clipperlab.workloads import DigitsInputs, InputSource

from .errors import ProfilerError
from .quiet import (
    BUSY_POLICIES,
    MAX_LOADAVG_PER_CORE,
    HostSpeed,
    LoadSample,
    SpeedMonitor,
    guard,
    machine_load,
    speed_sample,
)

SPEED_S = 2.0  # seconds of speed probes before and after a profile's timing

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "ProfileSpec",
    "ProfilerError",
    "hardware_tag",
    "load_average_text",
    "load_tags",
    "median_round",
    "profile_model",
    "software_tag",
]

DEFAULT_BATCH_SIZES: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
_DTYPE_OF_INPUT = {"doubles": "<f8", "floats": "<f4", "integers": "<i8"}




@dataclass(frozen=True, slots=True, kw_only=True)
class ProfileSpec:
    """What to profile and how (see the module rules for the defaults' reasons)."""

    model: str  # KIND[:PATH], as ``clipperlab container --model``
    name: str = ""
    version: str = "1"
    input_type: str = "doubles"
    options: dict[str, Any] = field(default_factory=dict)
    inputs: InputSource = field(default_factory=DigitsInputs)
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    warmup: int = 5
    repeats: int = 200
    min_repeats: int = 20
    max_s_per_size: float = 4.0  # per batch size and round
    gap_s: float = 0.0  # idle time before each timed batch (0: back to back)
    profile_name: str = ""
    rounds: int = 1  # passes over the sizes; per size the round with the median p99 is kept
    busy: str = "warn"  # the guard's policy before measuring (``quiet.guard``)
    container_args: tuple[str, ...] = ()  # more ``clipperlab container`` flags

    def __post_init__(self) -> None:
        kind = self.model.partition(":")[0]
        from clipperlab.real.models import MODEL_KINDS

        if kind not in MODEL_KINDS:
            raise ProfilerError(f"model {self.model!r}: kind {kind!r} is not one of {MODEL_KINDS}")
        if self.input_type not in _DTYPE_OF_INPUT:
            raise ProfilerError(
                f"input_type {self.input_type!r}: the profiler sends arrays; expected one of"
                f" {sorted(_DTYPE_OF_INPUT)}"
            )
        if not self.batch_sizes or any(int(b) < 1 for b in self.batch_sizes):
            raise ProfilerError(f"batch sizes must be integers >= 1, got {list(self.batch_sizes)}")
        if self.repeats < 1 or self.min_repeats < 1 or self.warmup < 0:
            raise ProfilerError("repeats and min_repeats must be >= 1, warmup >= 0")
        if self.rounds < 1:
            raise ProfilerError(f"rounds must be an integer >= 1, got {self.rounds}")
        if not self.max_s_per_size > 0:
            raise ProfilerError(f"the time per batch size must be > 0 s, got "
                                f"{self.max_s_per_size}")
        if self.busy not in BUSY_POLICIES:
            raise ProfilerError(f"busy policy {self.busy!r}: expected one of {BUSY_POLICIES}")

    @property
    def model_name(self) -> str:
        return self.name or self.model.partition(":")[0]


# --------------------------------------------------------------------------- tags


def hardware_tag() -> str:
    """``CPU model, N cores`` (from /proc/cpuinfo when there is one)."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {n} cores"


def software_tag() -> str:
    parts = [f"python {platform.python_version()}", f"numpy {np.__version__}"]
    for mod in ("sklearn", "torch"):
        with contextlib.suppress(ImportError):
            m = __import__(mod)
            parts.append(f"{'scikit-learn' if mod == 'sklearn' else mod} {m.__version__}")
    return ", ".join(parts)


def load_tags(before: LoadSample | None, after: LoadSample | None, rounds: int = 1,
              log: Any = None) -> dict[str, str]:
    """The profile's record of the load it was measured under (tags are strings):
    ``machine_load`` (before and after), ``busy`` (``no``, or ``yes: ...`` with the reasons;
    a busy machine after the timing is logged as a warning here, before it by the guard),
    ``rounds``."""
    if before is None and after is None:
        return {"machine_load": "not sampled (--busy off)", "rounds": str(rounds)}
    parts, reasons = [], []
    for when, s in (("before", before), ("after", after)):
        if s is not None:
            parts.append(f"{when}: {s.describe()}")
            # after the timing the load average holds our own container's work
            reasons += [f"{when}: {r}" for r in s.busy_reasons(
                max_loadavg_per_core=MAX_LOADAVG_PER_CORE if when == "before" else None)]
    if any(r.startswith("after") for r in reasons):
        msg = ("warning: the machine was busy while profiling (" + "; ".join(reasons)
               + "); the profile's tail holds other processes' time slices")
        if log is not None:
            log(msg)
        else:
            logging.getLogger(__name__).warning(msg)
    return {"machine_load": "; ".join(parts),
            "busy": "yes: " + "; ".join(reasons) if reasons else "no",
            "rounds": str(rounds)}


def load_average_text() -> str:
    """The 1-minute load average as text (``?`` where the system has none)."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"


# --------------------------------------------------------------------------- RPC


class _Rpc:
    """The frontend's end of one container connection (blocking sockets)."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.dec = p.FrameDecoder()
        self.frames: list[tuple[int, bytes]] = []

    def frame(self) -> tuple[int, bytes]:
        while not self.frames:
            data = self.conn.recv(1 << 20)
            if not data:
                raise ProfilerError("the container closed the connection")
            self.frames.extend(self.dec.feed(data))
        return self.frames.pop(0)

    def round_trip(self, frame: bytes, batch_id: int) -> tuple[float, Any]:
        t0 = time.perf_counter()
        self.conn.sendall(frame)
        while True:
            kind, payload = self.frame()
            if kind == p.RESULT:
                t1 = time.perf_counter()
                bid, out = p.decode_batch(payload)
                if bid != batch_id:
                    raise ProfilerError(f"answer for batch {bid}, expected {batch_id}")
                return t1 - t0, out
            if kind == p.ERROR:
                bid, msg = p.decode_error(payload)
                raise ProfilerError(f"the model failed on a batch: {msg}")
            if kind != p.HEARTBEAT:
                raise ProfilerError(f"unexpected frame type {kind} from the container")


def _accept(
    srv: socket.socket, proc: subprocess.Popen[bytes] | None, log_path: str, timeout_s: float
) -> socket.socket:
    until = time.monotonic() + timeout_s
    srv.settimeout(0.2)
    while True:
        try:
            conn, _ = srv.accept()
            conn.settimeout(None)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return conn
        except TimeoutError:
            pass
        if proc is not None and proc.poll() is not None:
            raise ProfilerError(
                f"the container exited with {proc.returncode} before connecting: "
                f"{_last_line(log_path)}"
            )
        if time.monotonic() > until:
            raise ProfilerError(f"no container connected within {timeout_s:.0f} s")


def _last_line(path: str) -> str:
    with contextlib.suppress(OSError):
        with open(path, "rb") as f:
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines()]
        lines = [ln for ln in lines if ln]
        if lines:
            return lines[-1][:300]
    return "(no output)"


def _handshake(rpc: _Rpc, spec: ProfileSpec) -> dict[str, Any]:
    kind, payload = rpc.frame()
    if kind != p.HELLO:
        raise ProfilerError(f"expected HELLO from the container, got frame type {kind}")
    hello = p.decode_json(payload)
    if hello.get("protocol") != p.PROTOCOL_VERSION:
        msg = f"protocol {hello.get('protocol')!r} is not {p.PROTOCOL_VERSION}"
        rpc.conn.sendall(p.encode_json(p.REFUSE, {"error": msg}))
        raise ProfilerError(f"the container speaks {msg}")
    rpc.conn.sendall(
        p.encode_json(
            p.WELCOME,
            {"replica": f"{hello.get('model')}:{hello.get('version')}#0", "ordinal": 0,
             "heartbeat_interval_s": 1.0},
        )
    )
    return hello


def _batches(spec: ProfileSpec, b: int, variants: int = 4) -> list[np.ndarray]:
    x, _ = spec.inputs.load()
    x = np.asarray(x).astype(_DTYPE_OF_INPUT[spec.input_type], copy=False)
    out = []
    for v in range(variants):
        idx = (np.arange(b) + v * b) % x.shape[0]
        out.append(np.ascontiguousarray(x[idx]))
    return out


def median_round(rounds: Sequence[Sequence[float]]) -> list[float]:
    """Of several rounds of samples of one batch size, the round whose p99 is the median
    of the rounds' (the lower one of the middle two for an even count): one round that a
    busy spell of the machine stretched does not move the profile."""
    if not rounds:
        raise ProfilerError("no rounds to choose from")
    p99 = [float(np.percentile(np.asarray(r, dtype=np.float64), 99)) if len(r) else math.inf
           for r in rounds]
    order = sorted(range(len(rounds)), key=lambda k: p99[k])
    return list(rounds[order[(len(rounds) - 1) // 2]])


def _measure_size(rpc: _Rpc, spec: ProfileSpec, b: int, frames: list[tuple[int, np.ndarray]],
                  starts: list[float] | None = None) -> list[float]:
    """One round of one batch size: the warm-up, then the timed batches (each one's
    ``time.monotonic`` start appended to ``starts`` when given)."""
    for k in range(spec.warmup):
        bid_k, arr = frames[k % len(frames)]
        rpc.round_trip(p.encode_batch(p.BATCH, bid_k, arr), bid_k)
    got: list[float] = []
    start = time.perf_counter()
    k = 0
    while len(got) < spec.repeats:
        if len(got) >= spec.min_repeats and time.perf_counter() - start > spec.max_s_per_size:
            break
        bid_k, arr = frames[k % len(frames)]
        k += 1
        frame = p.encode_batch(p.BATCH, bid_k, arr)
        if spec.gap_s > 0:
            time.sleep(spec.gap_s)
        if starts is not None:
            starts.append(time.monotonic())
        dt, out = rpc.round_trip(frame, bid_k)
        if len(out) != b:
            raise ProfilerError(f"the model answered {len(out)} outputs for a batch of {b}")
        got.append(dt)
    return got


def measure(
    rpc: _Rpc, spec: ProfileSpec, log: Any = None,
    speed: SpeedMonitor | None = None,
) -> tuple[dict[int, list[float]], dict[str, str]]:
    """Time batches over an established connection, ``spec.rounds`` passes over the sizes
    (so a busy spell hits one round of each, not all of one size); per size the median
    round (``median_round``) is kept.  With ``speed`` (a running ``SpeedMonitor``) each
    sample is divided by the machine's speed factor when it was taken (``at_fast_speed``):
    the latencies the fast speed gives, for a twin whose host adds the speed's swings
    itself (a profile taken while the machine was slow would count them twice).  Returns
    samples per size and notes."""
    sizes = sorted({int(s) for s in spec.batch_sizes})
    frames: dict[int, list[tuple[int, np.ndarray]]] = {}
    bid = 0
    for b in sizes:
        frames[b] = []
        for arr in _batches(spec, b):
            bid += 1
            frames[b].append((bid, arr))
    rounds: dict[int, list[list[float]]] = {b: [] for b in sizes}
    starts: dict[int, list[list[float]]] = {b: [] for b in sizes}
    for _ in range(spec.rounds):
        for b in sizes:
            at: list[float] = []
            rounds[b].append(_measure_size(rpc, spec, b, frames[b], at))
            starts[b].append(at)
    samples = {b: median_round(rounds[b]) for b in sizes}
    notes: dict[str, str] = {}
    if speed is not None:
        kept = {b: starts[b][rounds[b].index(samples[b])] for b in sizes}
        fast = at_fast_speed(samples, kept, speed)
        if fast is not None:
            samples, mean = fast
            notes["factor"] = f"{mean:.6g}"
            # the fast level those factors are relative to: the twin reads the profile
            # at its calibration's fast level (``twin.profile_base_factor``)
            ref = speed.reference_fast_ns()
            if math.isfinite(ref) and ref > 0:
                notes["fast_ns"] = f"{ref:.1f}"
            notes["speed"] = (f"each sample divided by the machine's speed factor when it "
                              f"was taken (the fast speed's latencies; mean factor "
                              f"{mean:.2f})")
    if log is not None:
        for b in sizes:
            a = np.asarray(samples[b]) * 1e3
            spread = ""
            if spec.rounds > 1:
                p99s = [np.percentile(np.asarray(r) * 1e3, 99) for r in rounds[b]]
                spread = f" (rounds' p99 {min(p99s):.3f}-{max(p99s):.3f} ms)"
            log(
                f"  batch {b:>5}: {len(a):>4} samples, p50 {np.percentile(a, 50):8.3f} ms,"
                f" p99 {np.percentile(a, 99):8.3f} ms{spread}"
            )
        if "speed" in notes:
            log(f"  {notes['speed']}")
    return samples, notes


def at_fast_speed(samples: dict[int, list[float]], starts: dict[int, list[float]],
                  speed: SpeedMonitor) -> tuple[dict[int, list[float]], float] | None:
    """``samples`` (per batch size, each started at ``starts``' ``time.monotonic``) each
    divided by the machine's speed factor at its middle (``SpeedMonitor.replay``: the
    cores' total speed, ``total_factor``; the container's core is not known), and their
    mean factor; None when the monitor has nothing to replay then."""
    from clipperlab.simulator import total_factor

    t = [x for b in samples for x in starts[b]]
    if not t:
        return None
    t0, t1 = min(t), max(t) + 1.0
    rec = speed.replay(t0, t1)
    if not rec:
        return None
    at = [r[0] for r in rec]
    fs = [total_factor(r[1:]) for r in rec]
    out: dict[int, list[float]] = {}
    used: list[float] = []
    for b, xs in samples.items():
        got = []
        for dt, s in zip(xs, starts[b], strict=True):
            f = fs[max(bisect.bisect_right(at, s + dt / 2 - t0) - 1, 0)]
            used.append(f)
            got.append(dt / f)
        out[b] = got
    return out, float(np.mean(used))


def profile_model(
    spec: ProfileSpec,
    *,
    listen: str | None = None,
    connect_timeout_s: float = 120.0,
    log: Any = None,
    sample: Callable[[], LoadSample] = machine_load,
    speed: SpeedMonitor | None = None,
) -> LatencyProfile:
    """Profile ``spec``'s model: start its container here, or with ``listen="HOST:PORT"``
    wait for a container started elsewhere to connect there.  The machine is sampled
    before (``quiet.guard`` with ``spec.busy``) and after the timing (``sample``, this
    process and its container left out), and the profile's tags say the load.  With
    ``speed`` (a running ``SpeedMonitor``) the samples are the fast speed's
    (``measure``), and the tag ``machine_speed_divided`` says so."""
    before = guard(spec.busy, what=f"profiling {spec.model}", log=log, sample=sample)
    speeds: list[HostSpeed | None] = []
    if spec.busy != "off":
        speeds.append(speed_sample(SPEED_S))
    host, port = "127.0.0.1", 0
    if listen:
        h, _, pt = listen.rpartition(":")
        if not pt.isdigit():
            raise ProfilerError(f"--listen {listen!r} must be HOST:PORT")
        host, port = h or "0.0.0.0", int(pt)
    try:
        srv = socket.create_server((host, port))
    except OSError as e:
        raise ProfilerError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    load_before = load_average_text()
    proc: subprocess.Popen[bytes] | None = None
    logf = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in the finally below
        prefix="clipperlab-profile-", suffix=".log", delete=False
    )
    log_path = logf.name
    try:
        bound = srv.getsockname()[1]
        if listen:
            if log is not None:
                log(f"waiting for a container to connect to {host}:{bound} ...")
        else:
            argv = [
                sys.executable, "-m", "clipperlab.real.container",
                "--model", spec.model,
                "--name", spec.model_name,
                "--version", spec.version,
                "--input-type", spec.input_type,
                "--frontend", f"127.0.0.1:{bound}",
                "--options", json.dumps(spec.options),
                *spec.container_args,
            ]
            proc = subprocess.Popen(argv, stdout=logf, stderr=logf, stdin=subprocess.DEVNULL)
        conn = _accept(srv, proc, log_path, connect_timeout_s)
        rpc = _Rpc(conn)
        try:
            hello = _handshake(rpc, spec)
            samples, notes = measure(rpc, spec, log, speed)
            after = sample() if spec.busy != "off" else None
            if spec.busy != "off":
                speeds.append(speed_sample(SPEED_S))
        except (OSError, p.ProtocolError) as e:
            raise ProfilerError(f"RPC with the container failed: {e}; {_last_line(log_path)}"
                                ) from None
        except ProfilerError as e:
            raise ProfilerError(f"{e}; container log: {_last_line(log_path)}") from None
        finally:
            conn.close()
    finally:
        srv.close()
        logf.close()
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        with contextlib.suppress(OSError):
            os.unlink(log_path)
    n = sum(len(v) for v in samples.values())
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    name = spec.profile_name or f"profiled-{spec.model_name}"
    tags = {
        "hardware": hardware_tag(),
        "software": software_tag(),
        "source": (
            f"clipperlab profile over the container RPC ({'attached' if listen else 'started'}"
            f" container, loopback); {n} samples"
            + (f", {spec.gap_s * 1e3:g} ms idle before each" if spec.gap_s > 0 else
               ", back to back")
        ),
        "date": date,
        "model": f"{spec.model} ({hello.get('model')}:{hello.get('version')})",
        "inputs": f"{type(spec.inputs).__name__}, {spec.inputs.input_bytes} bytes per input",
        "load_average": f"{load_before} before, {load_average_text()} after",
        **load_tags(before, after, spec.rounds, log),
    }
    if "speed" in notes:
        tags["machine_speed_divided"] = notes["speed"]
        tags["speed_factor_divided"] = notes["factor"]
        if "fast_ns" in notes:
            tags["speed_fast_ns"] = notes["fast_ns"]
    if speeds:
        tags["machine_speed"] = "; ".join(
            f"{when}: {sp.describe() if sp is not None else 'too few probes'}"
            for when, sp in zip(("before", "after"), speeds, strict=False))
    return LatencyProfile.from_samples(
        name,
        samples,
        kind="gpu" if _uses_gpu(spec) else "cpu",
        tags=tags,
        description=(
            f"{spec.model} batch latency: send BATCH to RESULT read, over the container RPC"
        ),
    )


def _uses_gpu(spec: ProfileSpec) -> bool:
    if not spec.model.startswith("torch"):
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """``"1,2,4"`` -> ``(1, 2, 4)``; ``ProfilerError`` naming the bad item."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit() or int(item) < 1:
            raise ProfilerError(f"--batch-sizes {text!r}: {item!r} is not an integer >= 1")
        out.append(int(item))
    return tuple(sorted(set(out)))


def summary_rows(profile: LatencyProfile, sizes: Sequence[int] | None = None) -> list[str]:
    """A printable table of a profile: batch size, p50, p99, mean (ms), items/s at p50."""
    rows = []
    for b in sizes or profile.batch_sizes:
        p50 = profile.quantile_s(b, 0.5)
        rows.append({"batch": b, "p50_ms": p50 * 1e3, "p99_ms": profile.quantile_s(b, 0.99) * 1e3,
                     "mean_ms": profile.mean_s(b) * 1e3,
                     "items_per_s": b / p50 if p50 > 0 else float("inf")})
    fmt3 = "{:.3f}"
    return text_table(rows, formats={"p50_ms": fmt3, "p99_ms": fmt3, "mean_ms": fmt3,
                                     "items_per_s": "{:,.0f}"}).splitlines()
