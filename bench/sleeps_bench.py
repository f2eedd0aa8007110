"""The server's CPU and every process's sleeps per request at one offered load.

    python3 bench/sleeps_bench.py [--target hit[,rest,echo]] [--rate 44000] [--duration-s 5]
                                  [--repeat 3] [--compiled] [--against REF] [--json FILE]

Starts each target as ``bench/real_bench.py`` does (``echo``: our echo on our HTTP stack;
``rest``: ``clipperlab serve`` with the bench's no-op model, cache off; ``hit``: the same
with the cache on and one input), drives it with ``real_bench``'s open-loop generator
(32 connections) and reads, over the measured window, from ``/proc``: the CPU of the
frontend, of its containers and of the generator, and how often each went to sleep
(voluntary context switches), per request.

Why: on a virtual machine waking a sleeping process is dear (this VM halts an idle core at
once; ``real_bench``'s ``rtt`` line), and the waker pays.  A server that writes its
answers one at a time, while the client reads each and goes back to sleep before the
next, pays a wake-up per answer; the generator's sleeps per request show it, where CPU
per request alone cannot tell it from the server's own work.  Compare two versions of the
code by alternating runs of this script on each (``--repeat`` runs one after another;
the machine's speed moves within minutes, see ``real_bench``'s speed lines), or let
``--against REF`` do it: each round runs every target on the code at git revision ``REF``
(staged from a temporary worktree; compiled too with ``--compiled``) and on the working
tree, in alternating order, then prints each version's median and how many rounds the
working tree was lower, and, with ``--target hit,rest``, a hit's server CPU as a share of
a miss's in the same rounds (issue 12's goal: at most half).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import real_bench as rb  # noqa: E402
from real_bench_roles import child_pids, process_cpu_s  # noqa: E402


def sample(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system) and voluntary context switches of ``pid`` so far."""
    sleeps = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            sleeps = int(line.split(":")[1])
    return process_cpu_s(pid), sleeps


def one_run(target: str, rate: float, duration_s: float, tree: Path | None) -> dict[str, Any]:
    """One run of ``target`` at ``rate`` q/s: per request, each process's CPU (us) and sleeps."""
    a = argparse.Namespace(set=[], replicas=1, slo_ms=20.0)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if target == "echo":
            proc, port = rb._start_echo("echo", tmp, tree)
            path, mark = "/echo", rb.DEFAULT_MARKS["echo"]
        else:
            proc, port = rb.start_server(tmp, a, target == "hit", tree)
            path, mark = "/bench/predict", rb.DEFAULT_MARKS["rest"]
        try:
            warmup_s = 1.0
            load = subprocess.Popen(
                [sys.executable, str(BENCH / "real_bench.py"), "--role", "load", "--rate",
                 str(rate), "--connections", "32", "--duration-s", str(duration_s),
                 "--warmup-s", str(warmup_s), "--port", str(port), "--path", path,
                 "--body", rb.REST_BODY.decode(), "--mark", mark.decode("latin-1")],
                stdout=subprocess.PIPE, text=True, start_new_session=True)
            time.sleep(warmup_s + 0.5)
            procs = {"frontend": [proc.pid], "containers": child_pids(proc.pid),
                     "generator": [load.pid]}
            before = {k: [sample(p) for p in v] for k, v in procs.items()}
            t0 = time.monotonic()
            time.sleep(duration_s - 1.0)
            after = {k: [sample(p) for p in v] for k, v in procs.items()}
            span = time.monotonic() - t0
            out = json.loads(load.communicate()[0].strip().splitlines()[-1])
        finally:
            rb._stop(proc)
    n = rate * span  # requests in the window, at the offered rate (the run keeps up: ok_qps)
    r: dict[str, Any] = {"target": target, "rate": rate, "ok_qps": out["ok_qps"]}
    for k in procs:
        pairs = list(zip(after[k], before[k], strict=True))
        r[f"{k}_cpu_us"] = sum(x[0] - y[0] for x, y in pairs) / n * 1e6
        r[f"{k}_sleeps"] = sum(x[1] - y[1] for x, y in pairs) / n
    return r


def ref_tree(ref: str, dest: Path, compiled: bool) -> Path:
    """The packages as they were at git revision ``ref``, staged in ``dest`` (compiled
    with mypyc when ``compiled``), for ``PYTHONPATH``; ``RuntimeError`` if it cannot be."""
    from _build import mypyc_real

    work = dest / "src"
    r = subprocess.run(["git", "-C", str(rb.ROOT), "worktree", "add", "--detach", "-q",
                        str(work), ref], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"no worktree at {ref!r}: {r.stderr.strip()}")
    try:
        tree = dest / "tree"
        if compiled:
            print(f"compiling {ref} with mypyc ...", flush=True)
            mypyc_real.build_tree(out=tree, root=work)
            rb.check_compiled(tree)
        else:
            mypyc_real.stage(tree, root=work)
    finally:
        subprocess.run(["git", "-C", str(rb.ROOT), "worktree", "remove", "--force",
                        str(work)], capture_output=True)
    return tree


def _row(label: str, r: dict[str, Any], width: int) -> str:
    return (f"{label:<{width}} {r['ok_qps']:>8,.0f} {r['frontend_cpu_us']:>12.1f}"
            f" {r['frontend_sleeps']:>7.3f} {r['containers_cpu_us']:>14.1f}"
            f" {r['containers_sleeps']:>7.3f} {r['generator_cpu_us']:>13.1f}"
            f" {r['generator_sleeps']:>7.3f}")


def server_us(r: dict[str, Any]) -> float:
    """A run's server CPU per request: frontend and containers."""
    return float(r["frontend_cpu_us"] + r["containers_cpu_us"])


def summary(runs: list[dict[str, Any]], targets: list[str], ref: str) -> list[str]:
    """``--against``'s verdict over the rounds: each version's median server CPU, the
    rounds where the working tree was lower, and a hit's share of a miss's."""
    lines = []
    by = {(r["version"], r["target"], r["round"]): server_us(r) for r in runs}
    rounds = sorted({r["round"] for r in runs})
    for t in targets:
        old = [by[("ref", t, i)] for i in rounds]
        new = [by[("new", t, i)] for i in rounds]
        lower = sum(n < o for o, n in zip(old, new, strict=True))
        lines.append(f"{t}: server us a request, median {statistics.median(old):.2f} at {ref}"
                     f" -> {statistics.median(new):.2f}; lower in {lower} of {len(rounds)}"
                     " rounds")
    if "hit" in targets and "rest" in targets:
        for v, name in (("ref", ref), ("new", "the working tree")):
            hits = sum(by[(v, "hit", i)] for i in rounds)
            misses = sum(by[(v, "rest", i)] for i in rounds)
            each = sorted(by[(v, "hit", i)] / by[(v, "rest", i)] for i in rounds)
            lines.append(f"a hit / a miss, {name}: {hits / misses:.3f} over the rounds"
                         f" (each round {each[0]:.3f}-{each[-1]:.3f},"
                         f" median {statistics.median(each):.3f})")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--target", default="hit",
                    help="what to run, comma-separated: echo, rest, hit (see the module's doc)")
    ap.add_argument("--rate", type=float, default=44_000.0, help="offered load (q/s)")
    ap.add_argument("--duration-s", type=float, default=5.0,
                    help="seconds of load after a 1 s warm-up (the last 1 s is not measured)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs (rounds with --against), one after another")
    ap.add_argument("--compiled", action="store_true",
                    help="the real path compiled with mypyc (real_bench's --compiled tree)")
    ap.add_argument("--against", metavar="REF",
                    help="alternate every run with the code at git revision REF (default: none)")
    ap.add_argument("--json", help="also write the runs here (JSON)")
    a = ap.parse_args()
    targets = a.target.split(",")
    if a.duration_s < 2.0 or a.rate <= 0 or a.repeat < 1:
        ap.error("--duration-s must be >= 2, --rate > 0 and --repeat >= 1")
    if any(t not in ("echo", "rest", "hit") for t in targets):
        ap.error(f"--target takes echo, rest and hit, comma-separated; got {a.target!r}")
    with tempfile.TemporaryDirectory() as d:
        trees: dict[str, Path | None] = {"new": None}
        try:
            if a.compiled:
                trees["new"] = rb.compiled_tree()
            if a.against:
                trees["ref"] = ref_tree(a.against, Path(d), a.compiled)
        except RuntimeError as e:
            print(f"sleeps_bench: {e}", file=sys.stderr)
            return 1
        tag = "-mypyc" if a.compiled else ""
        w = 10  # the label column (wider with --against: target-mypyc@REF)
        if a.against:
            w = max(w, max(map(len, targets)) + len(tag) + len(a.against) + 1)
        print(f"load average {os.getloadavg()[0]:.2f}; per request at {a.rate:,.0f} q/s"
              " offered:")
        print(f"{'target':<{w}} {'ok/s':>8} {'frontend us':>12} {'sleeps':>7}"
              f" {'containers us':>14} {'sleeps':>7} {'generator us':>13} {'sleeps':>7}")
        runs = []
        for i in range(a.repeat):
            versions = ["new"] if not a.against else (["ref", "new"] if i % 2 == 0
                                                      else ["new", "ref"])
            for t in targets:
                for v in versions:
                    r = one_run(t, a.rate, a.duration_s, trees[v])
                    r.update(version=v, round=i)
                    runs.append(r)
                    label = t + tag + (f"@{a.against}" if v == "ref" else "")
                    print(_row(label, r, w), flush=True)
        if a.against:
            print("\n".join(summary(runs, targets, a.against)))
    if a.json:
        Path(a.json).write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
