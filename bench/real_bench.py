"""Real-mode benchmark: the whole path, beside bare echo servers measured in the same run.

    python3 bench/real_bench.py [--duration-s 5] [--connections 32] [--only rest,oip,hit]
                                [--json results.json]
    python3 bench/real_bench.py --report results.json   # a stored run's table again

What it runs, each in its own process:
1. baselines: a bare echo server on our own HTTP stack (``clipperlab.real.http.HttpProtocol``,
   httptools on uvloop) and, when aiohttp is installed, a bare aiohttp + uvloop echo; both
   answer every request with its body (no JSON, no engine); with ``--compiled`` also
   ``echo-mypyc``, our echo on the compiled HTTP stack: the floor the compiled rows' CPU
   is taken apart against (the interpreted echo stays the ``x echo`` column's baseline);
2. ``clipperlab serve`` with one application ``bench`` (objective 20 ms) and one no-op
   container with AIMD batching, queried three ways:
   - ``rest``: Clipper's ``POST /bench/predict`` with the prediction cache off (the paper
     salted its inputs so the cache never hit): HTTP -> JSON -> engine -> RPC -> container;
   - ``oip``: the same through the Open Inference Protocol v2 (``/v2/models/bench/infer``,
     a JSON FP64 tensor of shape [1, 4]), cache off;
   - ``hit``: Clipper's API with the cache on and the same input every time (cache hits);
3. an open-loop load generator (uvloop, ``--connections`` keep-alive connections, requests
   pipelined, responses parsed with httptools).  Every server and generator runs in a
   session of its own, as services do: where the kernel groups processes by session for
   scheduling (autogroup), a server sharing the generator's session would share one
   process's weight of CPU with it, and its containers (sessions of their own) would not.
   Each request's latency is counted from the time the schedule says it should have been
   sent, so a lagging generator cannot hide queueing (no coordinated omission).

For each target the offered load ramps up (x``--step`` from ``--start-rate``) until fewer than
``--good-share`` of the offered queries get a successful reply (HTTP 200 and not a default);
*saturation* is the best successful rate seen; a ramp that reaches ``--max-rate`` without
falling short found only a lower bound, printed ``>=`` (and a ratio to such an echo ``<=``).
Then latency is measured at half of it
(p50/p99), and at concurrency 1 (one connection, one request at a time: p50).

CPU: around every run the benchmark reads the user + system time of the frontend process and
of its container processes from ``/proc`` and the server's query and batch counters from
``/metrics``; a non-negative least-squares fit over all runs of a target splits the CPU into
*per query* and *per batch* (``cpu = a x queries + b x batches``), for the frontend and the
container separately. The machine's load before the run is printed with the table; other
jobs skew every figure. So does the machine's own speed: on a virtual machine a core can run
~2x slower for seconds at a time with nothing else running (other tenants), so a probe
(``clipperlab.calibration.quiet.SpeedMonitor``, about 2% of a core) runs beside the bench
and the table ends with the speed while each target ran: microseconds compare only between
targets measured at like speeds. Goals (issue "Lean real path", 2-core machine): REST
saturation >= 0.4x our echo server; frontend <= 15 us per query and <= 60 us per batch;
container <= 40 us per batch; OIP within 1.25x of REST per query; a cache hit <= half the
CPU of a miss; c=1 p50 within 1.5x of the aiohttp echo. CPU per query falls as load rises
(more requests per read, write and wakeup), and each target's ramp ends at its own
saturation, so 'all' compares targets at different loads; one more run per target at
``--equal-rate`` (kept out of the fit; by default half of REST's saturation, for rest, oip
and hit) gives each one's frontend CPU per query at the same offered load, and the OIP and
cache-hit ratios against REST from it; the line after adds each target's containers
(the server's CPU per query: a miss makes its container work, a cache hit does not).  Our
echo server runs once more at that load after the servers (the load is known only once
REST's ramp is done), and a last line takes its CPU per query out of each target's: what
the HTTP stack and the kernel's reads, writes and wake-ups cost at that load is then out
of the ratios.

The per-batch figure of that fit also carries the HTTP stack's and the kernel's wake-ups:
they cost a lot per query under light load, where batches are small and many, and little
under heavy load, where batches are big, so the fit lays much of them on the batches.  Two
more lines take them apart: the frontend's split fitted again with our echo's CPU per query
at each run's load taken out first (the echo ran at the same loads), and ``rtt``, a bare
round trip between two processes over loopback TCP (a uvloop sender and a blocking
receiver, one frame in flight, as the frontend and a container under light load): its
sender's and receiver's CPU per trip, the floor of the frontend's and the container's cost
per batch on this machine, before any of our code runs.  A last line adds the two up: what
a frontend with no per-batch work of its own would show per batch here (the plain fit's
per-batch figure less the one beyond the echo, plus the sender's trip).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
if str(Path(__file__).resolve().parent) not in sys.path:  # bench/ is not a package:
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # its siblings, by path

from real_bench_report import print_table, split  # noqa: E402
from real_bench_roles import (  # noqa: E402
    child_pids,
    process_cpu_s,
    run_aiohttp_echo,
    run_closed,
    run_echo,
    run_load,
    run_rtt,
    run_rtt_peer,
)

CLI = [sys.executable, "-c", "import sys; from clipperlab.cli import main; sys.exit(main())"]
REST_BODY = b'{"input":[0.25,0.5,0.75,1.0]}'
OIP_BODY = (
    b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP64","data":[0.25,0.5,0.75,1.0]}]}'
)
# What a default looks like in each API's 200 reply (the no-op model answers 0, never true).
DEFAULT_MARKS = {"rest": b'"default":true', "oip": b"true", "echo": b"\xff\xfe"}  # echo: none


# ============================================================================ measuring
def _counters(port: int) -> dict[str, float]:
    """Sum of each ``clipperlab_*_total`` counter over its labels, from ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("clipperlab_") and "_total" in line:
            name = line.split("{", 1)[0].split(" ", 1)[0]
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def run_role(argv: list[str]) -> dict[str, Any]:
    """This script as ``--role ...`` (``argv``) in a session of its own, until it exits;
    the JSON object its last line prints."""
    out = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True,
                         check=True, start_new_session=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


class Target:
    """A server to measure: its port, process ids and what a request looks like."""

    def __init__(self, name: str, port: int, path: str, body: bytes, mark: bytes,
                 pid: int | None = None, engine: bool = True) -> None:
        self.name, self.port, self.path, self.body, self.mark = name, port, path, body, mark
        self.pid, self.engine = pid, engine
        self.samples: list[dict[str, float]] = []  # per run: cpu and counter deltas

    def _snapshot(self) -> dict[str, float]:
        s: dict[str, float] = {}
        if self.pid is not None:
            s["frontend_cpu_s"] = process_cpu_s(self.pid)
            s["container_cpu_s"] = sum(process_cpu_s(c) for c in child_pids(self.pid))
        if self.engine:
            c = _counters(self.port)
            s["queries"] = c.get("clipperlab_queries_total", 0.0)
            s["batches"] = c.get("clipperlab_batches_total", 0.0)
        return s

    def run(self, argv: list[str]) -> dict[str, Any]:
        before = self._snapshot()
        r = run_role([*argv, "--port", str(self.port), "--path", self.path,
                      "--body", self.body.decode(), "--mark", self.mark.decode("latin-1")])
        after = self._snapshot()
        sample = {k: after[k] - before[k] for k in before}
        # the load it ran at (0: one request at a time), for the fit beyond the echo
        sample["offered"] = float(argv[argv.index("--rate") + 1]) if "--rate" in argv else 0.0
        if not self.engine:  # no counters: every response is one query, no batches
            sample.update(queries=float(r["completed"]), batches=0.0)
        self.samples.append(sample)
        return r

    def cpu_split(self) -> dict[str, float]:
        """Per-query and per-batch CPU (us) of the frontend and container: a non-negative
        least-squares fit over this target's runs; per query only when there are no
        batches (cache hits, echo)."""
        rows = [s for s in self.samples if s.get("queries", 0) > 0]
        out: dict[str, float] = {}
        if self.pid is None or not rows:
            return out
        q = np.array([s["queries"] for s in rows])
        b = np.array([s["batches"] for s in rows])
        for who in ("frontend", "container"):
            cpu = np.array([s[f"{who}_cpu_s"] for s in rows])
            out[f"{who}_us_per_query_all"] = float(cpu.sum() / q.sum() * 1e6)
            ab = split(q, b, cpu)  # None (cache hits, echo): per query only
            if ab is not None:
                out[f"{who}_us_per_query"], out[f"{who}_us_per_batch"] = ab
        out["queries_per_batch"] = float(q.sum() / b.sum()) if b.sum() else float("inf")
        return out


def measure(t: Target, a: argparse.Namespace, equal_rate: float = 0.0) -> dict[str, Any]:
    """Ramp the offered load by ``--step`` until fewer than ``--good-share`` of the offered
    queries succeed within the window; the saturation throughput is the best successful
    rate seen.  Then latency at half of it, and at concurrency 1."""
    common = ["--duration-s", str(a.duration_s), "--warmup-s", str(a.warmup_s)]
    steps = []
    rate = a.start_rate
    best: dict[str, Any] | None = None
    capped = True  # no run fell short before the ramp's end: saturation is a lower bound
    while rate <= a.max_rate:
        r = t.run(["--role", "load", "--rate", str(rate), "--connections", str(a.connections),
                   *common])
        steps.append(r)
        print(f"  {t.name:<8} offered {rate:>9,.0f}/s -> ok {r['ok_qps']:>9,.0f}/s"
              f" (defaults {r['defaults_qps']:,.0f}/s, errors {r['errors']})", flush=True)
        if best is None or r["ok_qps"] > best["ok_qps"]:
            best = r
        if r["ok_qps"] < a.good_share * rate:
            capped = False
            break
        rate *= a.step
    assert best is not None
    half = t.run(["--role", "load", "--rate", str(max(best["ok_qps"] / 2, 100.0)),
                  "--connections", str(a.connections), *common])
    c1 = t.run(["--role", "closed", *common])
    out: dict[str, Any] = {"saturation": {**best, "capped": capped}, "half": half, "c1": c1,
                           "ramp": steps, "cpu": t.cpu_split(),
                           "runs": [dict(s) for s in t.samples]}  # what the fit saw
    if t.name == "rest" and a.equal_rate == 0:
        equal_rate = max(best["ok_qps"] / 2, 100.0)  # auto: REST's half load
    if equal_rate > 0:  # kept out of the fit: one more point at a load all targets carry
        out["equal"] = equal_run(t, a, equal_rate)
    return out


def equal_rate(a: argparse.Namespace, results: dict[str, Any]) -> float:
    """The one offered load every target runs at once more: ``--equal-rate``, or half of
    REST's saturation once REST has run (0 before: nothing to run at yet)."""
    return float(a.equal_rate or results["targets"].get("rest", {}).get("equal", {}).get(
        "rate", 0.0))


def equal_run(t: Target, a: argparse.Namespace, rate: float) -> dict[str, Any]:
    """One run of ``t`` at ``rate`` offered, kept out of its CPU fit: its CPU per query
    unsplit (the frontend's and its containers')."""
    r = t.run(["--role", "load", "--rate", str(rate), "--connections", str(a.connections),
               "--duration-s", str(a.duration_s), "--warmup-s", str(a.warmup_s)])
    s = t.samples.pop()
    q, b = s["queries"], s["batches"]
    return {**r, "rate": rate, "run": s,
            "frontend_us_per_query": s["frontend_cpu_s"] / max(q, 1) * 1e6,
            "container_us_per_query": s["container_cpu_s"] / max(q, 1) * 1e6,
            "queries_per_batch": q / b if b else float("inf")}


# ============================================================================ orchestration
def _wait_file(p: Path, proc: subprocess.Popen[Any], timeout_s: float = 60.0) -> str:
    until = time.monotonic() + timeout_s
    while time.monotonic() < until:
        if p.exists() and p.read_text().strip():
            return p.read_text()
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        time.sleep(0.05)
    raise TimeoutError(f"{p} never appeared")


def _start_echo(role: str, tmp: Path,
                compiled: Path | None = None) -> tuple[subprocess.Popen[Any], int]:
    """An echo role's process and port; ``compiled``: ``--role echo`` with that tree first
    on its ``PYTHONPATH`` (our HTTP stack compiled, as the compiled servers run it),
    checked to have loaded the compiled library."""
    pf = tmp / f"{role}{'-mypyc' if compiled else ''}.port"
    pf.unlink(missing_ok=True)  # an earlier start's file would name its (closed) port
    env = None
    if compiled is not None:
        from _build import mypyc_real

        env = mypyc_real.env_with(compiled)
    proc = subprocess.Popen([sys.executable, __file__, "--role", role, "--port-file", str(pf)],
                            start_new_session=True, env=env)
    port = int(_wait_file(pf, proc))
    if compiled is not None and f"{compiled}/clipperlab/real/http.cpython" not in Path(
            f"/proc/{proc.pid}/maps").read_text():
        _stop(proc)
        raise RuntimeError(f"the echo on {compiled} did not load the compiled HTTP stack")
    return proc, port


def compiled_tree() -> Path:
    """The real path compiled with mypyc (``_build/mypyc_real.py``, built once per source
    digest), checked to import compiled; ``RuntimeError`` when it cannot be built or does
    not.  Shared by the benches' ``--compiled``."""
    from _build import mypyc_real  # ROOT is on sys.path (this module's import)

    print("compiling the real path with mypyc ...", flush=True)
    tree = mypyc_real.build_tree()
    check_compiled(tree)
    print(f"compiled tree: {tree}", flush=True)
    return tree


def check_compiled(tree: Path) -> None:
    """``RuntimeError`` unless a process with ``tree`` first on its path imports every
    compiled module compiled (a missing or broken tree would run interpreted, unnoticed)."""
    from _build import mypyc_real

    check = subprocess.run(
        [sys.executable, "-c", "import sys; from clipperlab.real import compiled_modules; "
         f"sys.exit(len(compiled_modules()) != {len(mypyc_real.MODULES)})"],
        cwd=ROOT, env=mypyc_real.env_with(tree))
    if check.returncode != 0:
        raise RuntimeError(f"the tree {tree} does not import compiled")


def start_server(tmp: Path, a: argparse.Namespace, cache: bool,
                 compiled: Path | None = None) -> tuple[subprocess.Popen[Any], int]:
    """``clipperlab serve`` with the bench's deployment; ``compiled``: a tree from
    ``_build/mypyc_real.py`` first on the server's (and its containers') ``PYTHONPATH``."""
    tag = ("cache" if cache else "nocache") + ("-compiled" if compiled else "")
    cfg = tmp / f"bench-{tag}.toml"
    cfg.write_text(f"""
[server]
query_port = 0
admin_port = 0
rpc_port = 0
store = "{tmp / f"store-{tag}"}"
cache = {"true" if cache else "false"}
{chr(10).join(a.set)}

[[models]]
name = "noop"
kind = "noop"
replicas = {a.replicas}
batching = {{ policy = "aimd" }}

[[applications]]
name = "bench"
slo_ms = {a.slo_ms}
default_output = -1
models = ["noop"]
""")
    env = None
    if compiled is not None:
        from _build import mypyc_real

        env = mypyc_real.env_with(compiled)
    return serve_config(cfg, "bench", env=env)


def serve_config(cfg: Path, app: str, env: dict[str, str] | None = None,
                 ready_timeout_s: float = 60.0) -> tuple[subprocess.Popen[Any], int]:
    """``clipperlab serve --config cfg`` in a session of its own (module rules); returns
    the process and its query port once ``app`` is ready (``TimeoutError`` if it is not
    within ``ready_timeout_s``: the server is stopped first).  Shared by the benches."""
    pf = cfg.with_suffix(".ports")
    pf.unlink(missing_ok=True)
    proc = subprocess.Popen([*CLI, "serve", "--config", str(cfg), "--ports-file", str(pf),
                             "--log-level", "WARNING"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            start_new_session=True, env=env)
    try:
        port = int(json.loads(_wait_file(pf, proc))["ports"]["query"])
        until = time.monotonic() + ready_timeout_s
        while time.monotonic() < until:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/{app}/ready",
                                            timeout=5) as r:
                    if r.status == 200:
                        return proc, port
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"application {app!r} was not ready within {ready_timeout_s:g} s")
    except BaseException:
        _stop(proc)
        raise


def _stop(proc: subprocess.Popen[Any]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _cpu_stat() -> list[int]:
    with open("/proc/stat") as f:
        return [int(v) for v in f.readline().split()[1:]]


def background_busy_share(window_s: float = 2.0) -> float:
    """Share of all CPUs' time that was not idle over ``window_s`` before the run."""
    a = _cpu_stat()
    time.sleep(window_s)
    d = [y - x for x, y in zip(a, _cpu_stat(), strict=True)]
    return 1.0 - (d[3] + d[4]) / max(sum(d[:8]), 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--role", choices=("main", "echo", "aiohttp", "load", "closed", "rtt",
                                       "rtt-peer"),
                    default="main", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--port-file", help=argparse.SUPPRESS)
    ap.add_argument("--path", default="/echo", help=argparse.SUPPRESS)
    ap.add_argument("--body", default=REST_BODY.decode(), help=argparse.SUPPRESS)
    ap.add_argument("--mark", default=DEFAULT_MARKS["echo"].decode("latin-1"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--rate", type=float, default=1000.0, help=argparse.SUPPRESS)
    ap.add_argument("--duration-s", type=float, default=5.0, help="measured seconds per run")
    ap.add_argument("--warmup-s", type=float, default=1.0, help="unmeasured seconds first")
    ap.add_argument("--connections", type=int, default=32, help="open-loop connections")
    ap.add_argument("--replicas", type=int, default=1, help="no-op replicas")
    ap.add_argument("--slo-ms", type=float, default=20.0, help="the application's objective (ms)")
    ap.add_argument("--start-rate", type=float, default=4000.0, help="first offered load (q/s)")
    ap.add_argument("--step", type=float, default=1.3, help="ramp factor between runs")
    ap.add_argument("--max-rate", type=float, default=1_000_000.0,
                    help="end of the ramp (q/s); our echo server passed 300,000 on 2 cores "
                    "(371,695 q/s, 2026-12-06), so a lower end caps its saturation")
    ap.add_argument("--good-share", type=float, default=0.95,
                    help="a run passes when this share of the offered load succeeds")
    ap.add_argument("--equal-rate", type=float, default=0.0,
                    help="one more run per target at this offered load (q/s), for CPU per "
                    "query at equal load; 0: half of REST's saturation, for rest, oip and hit")
    ap.add_argument("--only", default="echo,aiohttp,rtt,rest,oip,hit",
                    help="comma-separated targets: echo, aiohttp, rtt (a bare round trip "
                    "between two processes: the per-batch floor), rest, oip, hit")
    ap.add_argument("--compiled", action="store_true",
                    help="also run each of rest, oip and hit against a server whose real path "
                    "is compiled with mypyc (_build/mypyc_real.py, built once per source "
                    "digest under build/mypyc/, about a minute), as rest-mypyc and so on, "
                    "and our echo on that compiled HTTP stack (echo-mypyc) beside the echo")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a [server] setting for the clipperlab servers, in TOML"
                         " (parse_turn_ms=2, say); repeatable")
    ap.add_argument("--json", help="also write the results here (JSON)")
    ap.add_argument("--report", metavar="JSON",
                    help="print the table of a stored run (its --json file) and exit; "
                    "nothing is measured")
    a = ap.parse_args()
    if a.report:
        try:
            stored = json.loads(Path(a.report).read_text())
            print_table(stored)
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"real_bench: --report {a.report}: {type(e).__name__}: {e}",
                  file=sys.stderr)
            return 1
        return 0
    for kv in a.set:
        try:
            key = next(iter(tomllib.loads(kv)))
        except (tomllib.TOMLDecodeError, StopIteration):
            ap.error(f"--set {kv!r}: expected KEY=VALUE in TOML (parse_turn_ms=2, say)")
        if key in ("query_port", "admin_port", "rpc_port", "store", "cache"):
            ap.error(f"--set {kv!r}: the bench sets {key} itself")
    mark = a.mark.encode("latin-1")
    if a.role == "rtt-peer":
        run_rtt_peer(a.port)
        return 0
    if a.role == "rtt":
        print(json.dumps(run_rtt(a.duration_s, a.warmup_s)))
        return 0
    if a.role in ("echo", "aiohttp"):
        (run_echo if a.role == "echo" else run_aiohttp_echo)(a.port_file)
        return 0
    if a.role == "load":
        print(json.dumps(run_load(a.port, a.path, a.body.encode(), mark, a.rate, a.duration_s,
                                  a.warmup_s, a.connections)))
        return 0
    if a.role == "closed":
        print(json.dumps(run_closed(a.port, a.path, a.body.encode(), mark, a.duration_s,
                                    a.warmup_s)))
        return 0
    only = set(a.only.split(","))
    bad = only - {"echo", "aiohttp", "rtt", "rest", "oip", "hit"}
    if bad:
        ap.error(f"--only: unknown target(s) {sorted(bad)}")
    compiled: Path | None = None
    if a.compiled:
        try:
            compiled = compiled_tree()
        except RuntimeError as e:
            print(f"real_bench: {e}", file=sys.stderr)
            return 1
    # the cores the bench and everything it starts may use (``taskset -c 0,1 python3 ...``
    # gives a 2-core machine's run on a bigger host), beside the host's
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    results: dict[str, Any] = {"cpus": cpus, "host_cpus": os.cpu_count(), "targets": {},
                               "server_settings": a.set, "compiled": str(compiled or "")}
    if a.set:
        print("the clipperlab servers' [server] settings beside the bench's own: "
              + ", ".join(a.set), flush=True)
    results["background_cpu_busy_share"] = background_busy_share()
    results["loadavg"] = Path("/proc/loadavg").read_text().split()[0]
    print(f"{cpus} of the host's {os.cpu_count()} cores; "
          f"before the run the machine's CPUs were {results['background_cpu_busy_share']:.0%} "
          f"busy with other jobs (load average {results['loadavg']})", flush=True)
    from clipperlab.calibration.quiet import SpeedMonitor

    with tempfile.TemporaryDirectory() as d, SpeedMonitor(Path(d) / "speed.txt") as mon:
        tmp = Path(d)

        def speed(since: float) -> dict[str, float] | None:
            sp = mon.fit(since)
            return None if sp is None else {"fast_ns": sp.fast_ns, "slow_factor": sp.slow_factor,
                                            "slow_share": sp.slow_share,
                                            "slow_dwell_s": sp.slow_dwell_s}

        echoes = [(r, None) for r in ("echo", "aiohttp")] + (
            [("echo", compiled)] if compiled is not None else [])
        for role, tree in echoes:
            if role not in only:
                continue
            if role == "aiohttp":
                try:
                    import aiohttp  # noqa: F401
                except ImportError:
                    print("aiohttp is not installed: no aiohttp echo baseline")
                    continue
            key = role if tree is None else f"{role}-mypyc"
            proc, port = _start_echo(role, tmp, tree)
            try:
                t = Target(key, port, "/echo", REST_BODY, DEFAULT_MARKS["echo"], proc.pid,
                           engine=False)
                t0 = time.monotonic()
                results[key] = measure(t, a, a.equal_rate)
                results[key]["speed"] = speed(t0)
            finally:
                _stop(proc)
        if "rtt" in only:  # the per-batch floor: one batch's trip before any of our code
            results["rtt"] = run_role(["--role", "rtt", "--duration-s", str(a.duration_s),
                                       "--warmup-s", str(a.warmup_s)])
            print(f"  rtt      {results['rtt']['round_trips']:,} round trips: sender "
                  f"{results['rtt']['sender_us']:.1f} us, receiver "
                  f"{results['rtt']['receiver_us']:.1f} us of CPU each", flush=True)
        groups: list[tuple[bool, tuple[str, ...], Path | None]] = [
            (False, ("rest", "oip"), None), (True, ("hit",), None)]
        if compiled is not None:
            groups += [(cache, names, compiled) for cache, names, _ in groups]
        for cache, names, tree in groups:
            names = tuple(n for n in names if n in only)
            if not names:
                continue
            proc, port = start_server(tmp, a, cache, tree)
            try:
                for n in names:
                    path, body = (("/v2/models/bench/infer", OIP_BODY) if n == "oip"
                                  else ("/bench/predict", REST_BODY))
                    mk = DEFAULT_MARKS["oip" if n == "oip" else "rest"]
                    equal = equal_rate(a, results)
                    t0 = time.monotonic()
                    key = n if tree is None else f"{n}-mypyc"
                    results["targets"][key] = measure(Target(key, port, path, body, mk, proc.pid),
                                                      a, equal)
                    results["targets"][key]["speed"] = speed(t0)
            finally:
                _stop(proc)
        equal = equal_rate(a, results)
        for key, tree in (("echo", None), ("echo-mypyc", compiled)):
            if key not in results or not equal or "equal" in results[key]:
                continue
            # the echo at the servers' equal load (REST's half load is known only now): the
            # HTTP stack's and the kernel's share of every target's CPU per query there
            proc, port = _start_echo("echo", tmp, tree)
            try:
                t = Target(key, port, "/echo", REST_BODY, DEFAULT_MARKS["echo"], proc.pid,
                           engine=False)
                t0 = time.monotonic()
                results[key]["equal"] = equal_run(t, a, equal)
                results[key]["equal"]["speed"] = speed(t0)
            finally:
                _stop(proc)
    for role in ("echo-mypyc", "echo", "aiohttp"):
        if role in results:
            results["targets"] = {role: results[role], **results["targets"]}
    print_table(results)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
