"""Peers benchmark: clipperlab beside MLServer, BentoML and Ray Serve, same load, same no-op.

    bash scripts/peers-setup.sh                    # once: one venv per peer in .venv-peers/
    python3 bench/peers_bench.py [--quick] [--levels 1,16,64] [--duration-s 8]
                                 [--only rest,oip,mlserver,bentoml,ray]

What it runs, one server at a time, each started here as a subprocess on a free loopback
port and stopped (its whole process tree) before the next:
- ``rest``, ``oip``: ``clipperlab serve`` with one no-op container, AIMD batching, SLO
  20 ms, cache off, one replica (started by ``bench/real_bench.py``'s own helper), queried
  through Clipper's ``POST /bench/predict`` and through OIP v2 (``/v2/models/bench/infer``);
- ``mlserver``: ``mlserver start`` on a custom ``MLModel`` that answers zeros, adaptive
  batching on (``max_batch_size``, ``max_batch_time``), MLServer's defaults otherwise (one
  parallel inference worker process), queried through OIP v2 with the same body as ``oip``;
- ``bentoml``: ``bentoml serve`` on a ``@bentoml.service`` (one worker) whose
  ``@bentoml.api(batchable=True)`` answers zeros (``max_batch_size``; ``max_latency_ms``
  high enough that its dispatcher never rejects: latency is measured here, not capped);
- ``ray``: a Ray Serve deployment (one replica, ``max_ongoing_requests`` 10,000) whose
  ``@serve.batch`` method answers zeros, on a local Ray of its own (``address="local"``,
  as many CPUs as the machine has, no dashboard), behind Serve's HTTP proxy.
Each peer's server runs with the python of its own virtual environment
(``.venv-peers/NAME/bin/python``, from ``scripts/peers-setup.sh`` and the ``peers`` extra);
a peer whose environment or package is absent is skipped with a one-line note in the table.
The no-op answers are the peers' own code (written to a temporary folder at run time), not
clipperlab's.

Load: closed loop at a fixed concurrency (``--levels``: c keep-alive connections, one
request outstanding on each, the next sent when the reply arrives; as ``wrk -c``), from
this process on uvloop, with ``bench/real_bench_roles.py``'s connection class (httptools parser).
Each level warms up for ``--warmup-s`` (not counted), then counts ``--duration-s``: req/s
is successful replies (HTTP 200, not a clipperlab default) per second; p50/p99 are theirs.

Server CPU per request: user + system time from ``/proc`` of every process in the server's
process tree (the process started here and all its descendants, read before and after each
level: a process that appears in between counts whole, one that exits in between is lost),
divided by the replies the level got (warm-up included, as the CPU is).  For clipperlab
that is the frontend and its container processes; for MLServer the server and its
inference worker; for BentoML the arbiter and its worker; for Ray the driver script and
everything it started: GCS server, raylet, the agents, and the workers (Serve controller,
HTTP proxy, the replica).  The names counted are recorded in the JSON.  The load
generator's own CPU is never counted.

Output: one markdown table (the issue's: req/s at each level; p50/p99 and CPU per request
at the highest), printed and written with the raw numbers: a full run (no ``--quick``, every
target) to ``results/bench/peers_bench.{md,json}``, anything else to
``results/quick/peers_bench.{md,json}`` (git-ignored, marked as not a full run).  The
machine's load before the run is recorded beside the numbers; other jobs skew all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
import real_bench  # noqa: E402  (bench/ is not a package: its siblings, by path)
import real_bench_roles as roles  # noqa: E402

sys.path.remove(str(BENCH))  # bench/'s other modules stay out of an importer's path

VENVS = ROOT / ".venv-peers"
NO_MARK = real_bench.DEFAULT_MARKS["echo"]  # bytes no reply contains: peers have no default
REST_BODY = real_bench.REST_BODY
OIP_BODY = real_bench.OIP_BODY
BENTO_BODY = b'{"x":[[0.25,0.5,0.75,1.0]]}'  # a batchable API takes a batch of one row
ALL_TARGETS = ("rest", "oip", "mlserver", "bentoml", "ray")


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """One server and one way to query it."""

    key: str
    label: str
    path: str
    body: bytes
    mark: bytes = NO_MARK
    venv: str | None = None  # .venv-peers/<venv>; None: clipperlab's own environment
    dist: str = "clipperlab"  # the distribution whose version is reported
    compiled: bool = False  # clipperlab's real path compiled with mypyc (--compiled)


TARGETS: dict[str, Target] = {t.key: t for t in (
    Target(key="rest", label="clipperlab, Clipper REST", path="/bench/predict",
           body=REST_BODY, mark=real_bench.DEFAULT_MARKS["rest"]),
    Target(key="oip", label="clipperlab, OIP v2", path="/v2/models/bench/infer",
           body=OIP_BODY, mark=real_bench.DEFAULT_MARKS["oip"]),
    Target(key="mlserver", label="MLServer (OIP v2, adaptive batching)",
           path="/v2/models/noop/infer", body=OIP_BODY, venv="mlserver", dist="mlserver"),
    Target(key="bentoml", label="BentoML (batchable API)", path="/predict", body=BENTO_BODY,
           venv="bentoml", dist="bentoml"),
    Target(key="ray", label="Ray Serve (@serve.batch)", path="/noop", body=REST_BODY,
           venv="ray", dist="ray"),
    Target(key="rest-mypyc", label="clipperlab, Clipper REST, compiled", path="/bench/predict",
           body=REST_BODY, mark=real_bench.DEFAULT_MARKS["rest"], compiled=True),
    Target(key="oip-mypyc", label="clipperlab, OIP v2, compiled", path="/v2/models/bench/infer",
           body=OIP_BODY, mark=real_bench.DEFAULT_MARKS["oip"], compiled=True),
)}
COMPILED_TARGETS = ("rest-mypyc", "oip-mypyc")  # added by --compiled, after rest and oip


@dataclass(slots=True, kw_only=True)
class Level:
    """One closed-loop run at one concurrency."""

    concurrency: int
    ok_qps: float
    p50_ms: float
    p99_ms: float
    errors: int  # non-200 replies in the window
    defaults: int  # clipperlab's default answers (objective missed) in the window
    lost_connections: int
    completed: int  # every reply, warm-up and drain included
    cpu_s: float  # the server's process tree, over the whole run
    cpu_us_per_request: float


@dataclass(slots=True, kw_only=True)
class Result:
    """A target's levels, or why it was skipped."""

    key: str
    label: str
    version: str = ""
    skipped: str = ""  # non-empty: not measured, and why
    levels: list[Level] = field(default_factory=list)
    processes: dict[str, int] = field(default_factory=dict)  # name -> count, CPU counted


# ============================================================================ availability
def venv_python(name: str, venvs: Path = VENVS) -> Path:
    return venvs / name / "bin" / "python"


def peer_version(t: Target, venvs: Path = VENVS) -> tuple[str, str]:
    """(version, "") when the target can run here, else ("", a one-line reason)."""
    if t.venv is None:
        from importlib.metadata import version

        return version("clipperlab"), ""
    py = venv_python(t.venv, venvs)
    setup = f"bash scripts/peers-setup.sh {t.venv}"
    if not py.exists():
        return "", f"not installed: no {py.relative_to(venvs.parent)} ({setup})"
    probe = ("import importlib.metadata as m, importlib.util as u, sys; "
             f"sys.exit(3) if u.find_spec({t.dist!r}) is None else print(m.version({t.dist!r}))")
    r = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, timeout=60)
    if r.returncode != 0 or not r.stdout.strip():
        return "", f"not installed: {t.dist} is not importable in .venv-peers/{t.venv} ({setup})"
    return r.stdout.strip(), ""


# ============================================================================ process trees
def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks (tells a pid from a reused one); None when
    it is gone or a zombie (dead, waiting for a parent that may never reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return None if fields[0] == "Z" else int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants alive now (children's children too)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        if _start_time(p) is None:
            continue
        out.append(p)
        todo += roles.child_pids(p)
    return out


def tree_cpu(pid: int) -> dict[int, float]:
    """User + system CPU seconds of each process in the tree."""
    return {p: roles.process_cpu_s(p) for p in tree(pid)}


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU spent between two snapshots: a process new in ``after`` counts whole; one gone
    from it is lost (its last seconds are not in /proc any more)."""
    return sum(max(cpu - before.get(p, 0.0), 0.0) for p, cpu in after.items())


def process_name(pid: int) -> str:
    """The command's name; for a Python process, its script or ``-m`` module."""
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return ""
    args = [x for x in argv[1:] if x]
    if name.startswith("python"):
        for flag in ("-m", "-c"):
            if flag in args[:-1]:
                what = args[args.index(flag) + 1]
                if flag == "-c":  # the module it runs: multiprocessing's spawn, ...
                    what = what.split("from ", 1)[-1].split()[0] if "from " in what else "..."
                return f"python {flag} {what}"
        script = next((x for x in args if not x.startswith("-")), "")
        return f"python {Path(script).name}" if script else name
    if len(name) == 15 and argv[0]:  # /proc/PID/comm is cut at 15 bytes; the title is not
        return Path(argv[0].split()[0]).name
    return name


def process_names(pid: int) -> dict[str, int]:
    """How many processes of each name the tree has now."""
    out: dict[str, int] = {}
    for p in tree(pid):
        if name := process_name(p):
            out[name] = out.get(name, 0) + 1
    return out


# ============================================================================ load
def run_closed_loop(port: int, path: str, body: bytes, mark: bytes, concurrency: int,
                    duration_s: float, warmup_s: float) -> dict[str, Any]:
    """``concurrency`` keep-alive connections, one request outstanding on each: the next is
    sent when the reply arrives, until the window ends; then the last replies drain."""
    import uvloop

    request = roles.request_bytes(path, body)

    class Conn(roles.LoadConn):
        def on_message_complete(self) -> None:
            super().on_message_complete()
            if time.monotonic() < self.stats["measure_until"] and not self.transport.is_closing():
                self.send()

        def send(self) -> None:
            self.sent_at.append(time.monotonic())
            self.stats["outstanding"] += 1
            self.transport.write(request)

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        stats = roles.new_stats()
        start = time.monotonic()
        stats["measure_from"] = start + warmup_s
        stats["measure_until"] = start + warmup_s + duration_s
        conns: list[Conn] = []
        for _ in range(concurrency):
            _, c = await loop.create_connection(lambda: Conn(stats, mark), "127.0.0.1", port)
            conns.append(c)
        for c in conns:
            c.send()
        await asyncio.sleep(stats["measure_until"] - time.monotonic())
        until = time.monotonic() + 10.0
        while stats["outstanding"] > stats["lost"] and time.monotonic() < until:
            await asyncio.sleep(0.01)
        for c in conns:
            c.transport.close()
        out = roles.summarize(stats, 0.0, duration_s)
        out.update(lost=stats["lost"], defaults=stats["defaults"])
        return out

    return uvloop.run(main())


def measure_level(pid: int, port: int, t: Target, concurrency: int,
                  a: argparse.Namespace) -> Level:
    before = tree_cpu(pid)
    r = run_closed_loop(port, t.path, t.body, t.mark, concurrency, a.duration_s, a.warmup_s)
    cpu_s = cpu_delta(before, tree_cpu(pid))
    done = int(r["completed"])
    return Level(concurrency=concurrency, ok_qps=r["ok_qps"], p50_ms=r["p50_ms"],
                 p99_ms=r["p99_ms"], errors=int(r["errors"]),
                 defaults=int(r["defaults"]),
                 lost_connections=int(r["lost"]), completed=done, cpu_s=cpu_s,
                 cpu_us_per_request=cpu_s / done * 1e6 if done else float("nan"))


# ============================================================================ the peers' servers
MLSERVER_MODEL = '''
from mlserver import MLModel
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput


class NoopModel(MLModel):
    """Answers a zero per row: the batch is the first dimension of the first input."""

    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        n = payload.inputs[0].shape[0]
        return InferenceResponse(model_name=self.name, outputs=[
            ResponseOutput(name="y", shape=[n, 1], datatype="FP64", data=[0.0] * n)])
'''

BENTOML_SERVICE = '''
import os

import bentoml

MAX_BATCH = int(os.environ["PEERS_MAX_BATCH"])


@bentoml.service(workers=1)
class Noop:
    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=600_000)
    async def predict(self, x: list[list[float]]) -> list[float]:
        return [0.0] * len(x)
'''

RAY_APP = '''
import os, signal, sys, time

import ray
from ray import serve
from starlette.requests import Request

port, max_batch, wait_s = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])


@serve.deployment(num_replicas=1, max_ongoing_requests=10_000)
class Noop:
    @serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=wait_s)
    async def batched(self, rows: list) -> list:
        return [0.0] * len(rows)

    async def __call__(self, request: Request) -> dict:
        body = await request.json()
        return {"output": await self.batched(body["input"])}


stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
         logging_level=40, log_to_driver=False, _temp_dir=sys.argv[4])
serve.start(http_options={"host": "127.0.0.1", "port": port})
serve.run(Noop.bind(), name="noop", route_prefix="/noop")
while not stop:
    time.sleep(0.2)
ray.shutdown()  # stops the local cluster it started (serve.shutdown() can hang)
'''


def free_port() -> int:
    """A loopback port nobody listens on now (the peers take a port number, not 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_peer(t: Target, tmp: Path, a: argparse.Namespace,
               venvs: Path = VENVS) -> tuple[subprocess.Popen[bytes], int]:
    """Start a peer's server from its own venv; (process, HTTP port).  Its own session, so
    that the whole group can be stopped; its output goes to a log file in ``tmp``."""
    assert t.venv is not None
    py = str(venv_python(t.venv, venvs))
    bindir = venv_python(t.venv, venvs).parent
    port = free_port()
    d = tmp / t.key
    d.mkdir()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)
    if t.key == "mlserver":
        (d / "models.py").write_text(MLSERVER_MODEL)
        (d / "settings.json").write_text(json.dumps({
            "host": "127.0.0.1", "http_port": port, "grpc_port": free_port(),
            "metrics_port": free_port(), "debug": False}))
        (d / "model-settings.json").write_text(json.dumps({
            "name": "noop", "implementation": "models.NoopModel",
            "max_batch_size": a.max_batch, "max_batch_time": a.batch_wait_ms / 1e3}))
        argv = [str(bindir / "mlserver"), "start", str(d)]
    elif t.key == "bentoml":
        (d / "service.py").write_text(BENTOML_SERVICE)
        env.update(PEERS_MAX_BATCH=str(a.max_batch), BENTOML_HOME=str(d / "home"),
                   BENTOML_DO_NOT_TRACK="True")
        argv = [str(bindir / "bentoml"), "serve", "service:Noop", "--host", "127.0.0.1",
                "--port", str(port)]
    elif t.key == "ray":
        (d / "app.py").write_text(RAY_APP)
        # Ray's own files, its sockets too: a short path (107 bytes at most), removed with
        # the tree (stop_tree), as the agents write their logs until they are gone
        ray_tmp = tempfile.mkdtemp(prefix="ray-")
        (d / "scratch").write_text(ray_tmp)
        argv = [py, str(d / "app.py"), str(port), str(a.max_batch), str(a.batch_wait_ms / 1e3),
                ray_tmp]
    else:
        raise ValueError(f"start_peer: {t.key!r} is not a peer (one of mlserver, bentoml, ray)")
    log = open(d / "server.log", "wb")  # noqa: SIM115 - the child keeps it open
    proc = subprocess.Popen(argv, cwd=d, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    return proc, port


def wait_ready(proc: subprocess.Popen[Any], port: int, t: Target, timeout_s: float) -> None:
    """Until the benchmark's own request gets a 200 (the model is loaded and routed)."""
    url = f"http://127.0.0.1:{port}{t.path}"
    until = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < until:
        if proc.poll() is not None:
            raise RuntimeError(f"{t.key}: the server exited with {proc.returncode}")
        req = urllib.request.Request(url, data=t.body,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                if r.status == 200:
                    return
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}: {e.read()[:200]!r}"
        except OSError as e:
            last = str(e)
        time.sleep(0.25)
    raise TimeoutError(f"{t.key}: not ready after {timeout_s:.0f} s ({last})")


def stop_tree(proc: subprocess.Popen[Any], timeout_s: float = 30.0) -> None:
    """SIGTERM the server, then SIGKILL whatever of its tree (as it was before) outlived it."""
    procs = {p: _start_time(p) for p in tree(proc.pid)}
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()

    def left() -> list[int]:  # the same processes (pid and start time) that were ours
        return [p for p, st in procs.items() if st is not None and _start_time(p) == st]

    for kill in (False, True):  # 5 s to end by themselves, then 5 s after SIGKILL
        for p in left() if kill else []:
            with contextlib.suppress(OSError):
                os.kill(p, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while left() and time.monotonic() < deadline:
            time.sleep(0.1)


# ============================================================================ running
def measure_target(t: Target, tmp: Path, a: argparse.Namespace, venvs: Path = VENVS) -> Result:
    version, why = peer_version(t, venvs)
    res = Result(key=t.key, label=t.label, version=version, skipped=why)
    if why:
        print(f"{t.key}: skipped: {why}", flush=True)
        return res
    print(f"{t.key}: starting {t.dist} {version}", flush=True)
    if t.venv is None:
        ns = argparse.Namespace(replicas=1, slo_ms=a.slo_ms, set=[])  # real_bench's options
        (tmp / t.key).mkdir()  # its own: the helper's config, store and ports file
        proc, port = real_bench.start_server(tmp / t.key, ns, cache=False,
                                             compiled=a.compiled_tree if t.compiled else None)
    else:
        proc, port = start_peer(t, tmp, a, venvs)
    try:
        wait_ready(proc, port, t, a.start_timeout_s)
        for c in a.levels:
            lv = measure_level(proc.pid, port, t, c, a)
            res.levels.append(lv)
            print(f"  {t.key:<9} c={c:<4} {lv.ok_qps:>9,.0f} req/s  p50 {lv.p50_ms:7.2f} ms  "
                  f"p99 {lv.p99_ms:7.2f} ms  CPU {lv.cpu_us_per_request:9,.0f} us/request  "
                  f"non-200 {lv.errors}, defaults {lv.defaults}", flush=True)
        res.processes = process_names(proc.pid)
    except (RuntimeError, TimeoutError, OSError) as e:
        res.skipped = f"failed: {str(e).splitlines()[0][:200]}"
        print(f"{t.key}: {res.skipped}", flush=True)
        log = tmp / t.key / "server.log"
        if log.exists():  # the peer's own words, before the folder goes
            print("".join(log.read_text(errors="replace").splitlines(True)[-15:]), flush=True)
    finally:
        stop_tree(proc)
        if (tmp / t.key / "scratch").exists():
            shutil.rmtree((tmp / t.key / "scratch").read_text(), ignore_errors=True)
    return res


def run_order(a: argparse.Namespace) -> list[str]:
    """The targets to run, in the table's order: each of clipperlab's compiled rows
    (``--compiled``) right after its interpreted one."""
    keys = [k for k in ALL_TARGETS if k in a.only]
    if a.compiled:
        for k in COMPILED_TARGETS:
            base = k.removesuffix("-mypyc")
            if base in keys:
                keys.insert(keys.index(base) + 1, k)
    return keys


def _range(xs: list[float], fmt: str) -> str:
    return " / ".join(format(x, fmt) for x in xs)


def table_md(results: list[Result], levels: list[int]) -> str:
    """The issue's table: req/s at each level; p50/p99 and CPU per request at the top one."""
    top = levels[-1]
    lines = [f"| | version | req/s c={' / '.join(map(str, levels))} | p50 / p99 at c={top} "
             f"| server CPU per request at c={top} | non-200 / defaults |",
             "|---|---|---|---|---|---|"]
    for r in results:
        if r.skipped:
            lines.append(f"| {r.label} | {r.version or '-'} | skipped: {r.skipped} | | | |")
            continue
        by_c = {lv.concurrency: lv for lv in r.levels}
        hi = by_c[top]
        errors = sum(lv.errors for lv in r.levels)
        defaults = sum(lv.defaults for lv in r.levels)
        qps = _range([by_c[c].ok_qps for c in levels], ",.0f")
        lines.append(f"| {r.label} | {r.version} | {qps}"
                     f" | {hi.p50_ms:.2f} / {hi.p99_ms:.2f} ms | {hi.cpu_us_per_request:,.0f} us"
                     f" | {errors} / {defaults} |")
    return "\n".join(lines) + "\n"


def output_dir(a: argparse.Namespace) -> tuple[Path, bool]:
    """(folder, full): a full run (not --quick, every target) goes to results/bench/."""
    full = not a.quick and set(a.only) == set(ALL_TARGETS)
    return ROOT / "results" / ("bench" if full else "quick"), full


def write_results(results: list[Result], meta: dict[str, Any], a: argparse.Namespace) -> Path:
    out, full = output_dir(a)
    out.mkdir(parents=True, exist_ok=True)
    md = table_md(results, a.levels)
    mark = "" if full else ("**Not a full run** (--quick or a subset of the targets): a "
                            "preview, not a measurement.\n\n")
    notes = [f"Closed loop, {a.duration_s:g} s per level after {a.warmup_s:g} s of warm-up; "
             f"no-op model; batches of at most {a.max_batch}; "
             f"{meta['cpus']} CPUs, {meta['background_cpu_busy_share']:.0%} busy with other "
             f"jobs before the run (load average {meta['loadavg']}); {meta['started']}.",
             "req/s: successful replies per second; CPU: every process of the server's tree "
             "from /proc, per reply. Processes counted:"]
    if meta.get("compiled"):
        notes.insert(1, "Rows marked compiled: clipperlab's real path compiled with mypyc "
                        "(`_build/mypyc_real.py`, as `CLIPPERLAB_COMPILE=1 pip install .` "
                        "builds it), first on the server's and its containers' PYTHONPATH.")
    notes += [f"- {r.key}: " + ", ".join(f"{n} x{k}" if k > 1 else n
                                         for n, k in sorted(r.processes.items()))
              for r in results if r.processes]
    (out / "peers_bench.md").write_text(f"# peers_bench\n\n{mark}{md}\n" + "\n".join(notes) + "\n")
    doc = {**meta, "full_run": full, "args": {k: v for k, v in vars(a).items()},
           "results": [asdict(r) for r in results]}
    (out / "peers_bench.json").write_text(json.dumps(doc, indent=2, default=str))
    return out


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown, except where the help says them itself (they depend on --quick)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=_Help)
    ap.add_argument("--levels", default="1,16,64",
                    help="closed-loop concurrencies (connections, one request each)")
    ap.add_argument("--duration-s", type=float,
                    help="counted seconds per level (default: 8; 2 with --quick)")
    ap.add_argument("--warmup-s", type=float,
                    help="seconds per level before counting starts (default: 1; 0.5 with "
                         "--quick)")
    ap.add_argument("--quick", action="store_true",
                    help="shorter levels; writes results/quick/ (a preview)")
    ap.add_argument("--only", default=",".join(ALL_TARGETS),
                    help="comma-separated targets: " + ", ".join(ALL_TARGETS))
    ap.add_argument("--max-batch", type=int, default=64,
                    help="the peers' batch cap (MLServer max_batch_size, BentoML "
                         "max_batch_size, Ray max_batch_size)")
    ap.add_argument("--batch-wait-ms", type=float, default=2.0,
                    help="longest wait to fill a batch (ms): MLServer max_batch_time, Ray "
                         "batch_wait_timeout_s; BentoML's dispatcher picks its own")
    ap.add_argument("--slo-ms", type=float, default=20.0,
                    help="clipperlab's application objective (ms); AIMD batching under it")
    ap.add_argument("--compiled", action="store_true",
                    help="also clipperlab with its real path compiled with mypyc "
                         "(_build/mypyc_real.py, as CLIPPERLAB_COMPILE=1 installs it): rows "
                         + " and ".join(COMPILED_TARGETS) + " after rest and oip")
    ap.add_argument("--start-timeout-s", type=float, default=180.0,
                    help="seconds a server may take to answer its first request")
    a = ap.parse_args(argv)
    try:
        a.levels = sorted({int(x) for x in a.levels.split(",")})
    except ValueError:
        ap.error(f"--levels {a.levels!r}: comma-separated whole numbers, e.g. 1,16,64")
    if not a.levels or a.levels[0] < 1:
        ap.error(f"--levels {a.levels}: each concurrency must be at least 1")
    a.only = [x for x in a.only.split(",") if x]
    bad = sorted(set(a.only) - set(ALL_TARGETS))
    if bad or not a.only:
        ap.error(f"--only: unknown target(s) {bad}; choose from {', '.join(ALL_TARGETS)}")
    a.compiled_tree = None  # main builds it for --compiled
    if a.duration_s is None:
        a.duration_s = 2.0 if a.quick else 8.0
    if a.warmup_s is None:
        a.warmup_s = 0.5 if a.quick else 1.0
    if a.duration_s <= 0 or a.warmup_s < 0:
        ap.error(f"--duration-s {a.duration_s} must be > 0 and --warmup-s {a.warmup_s} >= 0")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    meta: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "background_cpu_busy_share": real_bench.background_busy_share(),
        "loadavg": Path("/proc/loadavg").read_text().split()[0],
    }
    print(f"before the run the CPUs were {meta['background_cpu_busy_share']:.0%} busy with "
          f"other jobs (load average {meta['loadavg']}); levels c={a.levels}, "
          f"{a.duration_s:g} s each", flush=True)
    if any(TARGETS[k].compiled for k in run_order(a)):  # (--compiled, clipperlab asked for)
        try:
            a.compiled_tree = real_bench.compiled_tree()
        except RuntimeError as e:
            print(f"peers_bench: {str(e).splitlines()[0]}", file=sys.stderr)
            return 1
    meta["compiled"] = str(a.compiled_tree or "")
    results = []
    with tempfile.TemporaryDirectory(prefix="peers-bench-") as d:
        for key in run_order(a):
            results.append(measure_target(TARGETS[key], Path(d), a))
    print()
    print(table_md(results, a.levels))
    out = write_results(results, meta, a)
    print(f"written to {out.relative_to(ROOT)}/peers_bench.{{md,json}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
