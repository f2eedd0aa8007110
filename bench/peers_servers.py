"""Who ``bench/peers_bench.py`` runs and how: the targets (clipperlab's rows and the peers:
MLServer, BentoML, Ray Serve), each peer's virtual environment and version, the peers' own
no-op servers (written to a temporary folder at run time and started from their venvs),
readiness, stopping a server's whole process tree, and the process-tree readings whose CPU
the benchmark counts.  ``peers_bench.py`` measures, tabulates and writes."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
_ADDED = str(BENCH) not in sys.path  # bench/ is not a package: its siblings, by path
if _ADDED:
    sys.path.insert(0, str(BENCH))
import real_bench  # noqa: E402
import real_bench_roles as roles  # noqa: E402

if _ADDED:  # bench/'s other modules stay out of an importer's path
    sys.path.remove(str(BENCH))
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
