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
clipperlab's.  The targets, the peers' servers, starting and stopping them and the process
trees are in ``bench/peers_servers.py``; this module measures, tabulates and writes.

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
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
import real_bench  # noqa: E402  (bench/ is not a package: its siblings, by path)
import real_bench_roles as roles  # noqa: E402
from peers_servers import (  # noqa: E402  (who runs and how: peers_servers.py)
    ALL_TARGETS,
    COMPILED_TARGETS,
    TARGETS,
    VENVS,
    Target,
    cpu_delta,
    peer_version,
    process_names,
    start_peer,
    stop_tree,
    tree_cpu,
    wait_ready,
)

sys.path.remove(str(BENCH))  # bench/'s other modules stay out of an importer's path


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
