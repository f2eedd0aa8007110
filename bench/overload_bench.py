"""Overload benchmark (issue 11, defect 8): goodput at 5x capacity, beside the old default.

    python3 bench/overload_bench.py [--overload-s 10] [--factor 5] [--slo-ms 20]
                                    [--delay-s 0.005] [--per-item-s 0] [--policy none]
                                    [--modes default,baseline] [--json out.json]

For each mode it starts ``clipperlab serve`` (its own process) with one application (the
objective ``--slo-ms``) and one no-op container whose batches take ``delay_s + per_item_s
x size`` (``real/models.py``): a model of known service time.  ``default`` is the server's
default (admission control by predicted wait and ``drop_hopeless`` on); ``baseline`` turns
both off (the server before issue 11: only ``max_queue``).  Then:

1. capacity: short open-loop runs (``clipperlab.calibration.loadgen``) at 0.5x to 1.2x the
   model's nominal rate; capacity is the best *in-time* rate seen (HTTP 200, not a
   default, latency <= the objective);
2. overload: ``--factor`` x capacity, open loop, for ``--overload-s`` seconds;
3. it prints in-time answers/s against capacity, the share of explained defaults and of
   503s (by reason, from the server's ``/metrics``), and the server's RSS before and after.

Goal: in-time answers at 5x >= 70% of measured capacity, RSS flat.  Numbers depend on the
machine and on what else runs on it (the load generator shares the CPUs).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from clipperlab.calibration.loadgen import run_load
from clipperlab.workloads import ConstantRate, Workload
from clipperlab.workloads.inputs import SyntheticTensors

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import real_bench  # noqa: E402  (bench/ is not a package: its sibling, by path)

sys.path.remove(str(BENCH))  # bench/'s other modules stay out of an importer's path
APP = "overload"


def _start(tmp: Path, a: argparse.Namespace, mode: str) -> tuple[subprocess.Popen[Any], int]:
    on = "true" if mode == "default" else "false"
    overload = "" if mode == "default" else f"admission_control = {on}\ndrop_hopeless = {on}\n"
    cfg = tmp / f"{mode}.toml"
    cfg.write_text(f"""
[server]
query_port = 0
admin_port = 0
rpc_port = 0
store = "{tmp / f"store-{mode}"}"
cache = false
{overload}
[[models]]
name = "noop"
kind = "noop"
replicas = 1
options = {{ delay_s = {a.delay_s}, per_item_s = {a.per_item_s} }}
batching = {{ policy = "{a.policy}" }}

[[applications]]
name = "{APP}"
slo_ms = {a.slo_ms}
default_output = -1
models = ["noop"]
""")
    return real_bench.serve_config(cfg, APP)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _defaults_by_reason(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for m in re.finditer(r'^clipperlab_defaults_total\{([^}]*)\} ([0-9.e+]+)$', text, re.M):
        reason = re.search(r'reason="([^"]*)"', m.group(1))
        if reason:
            out[reason.group(1)] = out.get(reason.group(1), 0.0) + float(m.group(2))
    return out


def _run(port: int, qps: float, duration_s: float, slo_s: float, seed: int) -> dict[str, float]:
    wl = Workload(arrivals=ConstantRate(qps), duration_s=duration_s, app=APP,
                  inputs=SyntheticTensors(shape=(4,), pool=64))
    trace = wl.generate(seed)
    pool, _ = wl.inputs.load()
    t = run_load(trace, np.asarray(pool), f"127.0.0.1:{port}", connections=16, drain_s=3.0)
    n = len(t)
    ok = (t["status"] == 200) & ~t["default"]
    in_time = ok & (t["latency_s"] <= slo_s)
    return {
        "offered_qps": n / duration_s,
        "in_time_qps": float(in_time.sum()) / duration_s,
        "real_prediction_share": float(ok.sum()) / n,
        "default_share": float(((t["status"] == 200) & t["default"]).sum()) / n,
        "refused_503_share": float(t["refused"].sum()) / n,
        "unanswered_share": float(t["reply_at"].isna().sum()) / n,
        "lag_p99_ms": float(np.nanpercentile(t["lag_s"], 99) * 1e3),
    }


def _mode(tmp: Path, a: argparse.Namespace, mode: str) -> dict[str, Any]:
    proc, port = _start(tmp, a, mode)
    try:
        slo_s = a.slo_ms / 1e3
        nominal = 1.0 / (a.delay_s + a.per_item_s)
        _run(port, 0.5 * nominal, 1.0, slo_s, 0)  # warm up the controllers
        ramp = []
        for i, f in enumerate((0.5, 0.75, 0.9, 1.0, 1.2)):
            r = _run(port, f * nominal, a.capacity_s, slo_s, 1 + i)
            ramp.append(r)
            print(f"  [{mode}] capacity step {r['offered_qps']:7.0f}/s offered:"
                  f" {r['in_time_qps']:7.1f}/s in time", flush=True)
        capacity = max(r["in_time_qps"] for r in ramp)
        before = _defaults_by_reason(port)
        rss0 = _rss_mb(proc.pid)
        over = _run(port, a.factor * capacity, a.overload_s, slo_s, 99)
        rss1 = _rss_mb(proc.pid)
        after = _defaults_by_reason(port)
        reasons = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
        return {"mode": mode, "capacity_qps": capacity, "ramp": ramp, "overload": over,
                "goodput_share_of_capacity": over["in_time_qps"] / capacity if capacity else 0,
                "defaults_by_reason": {k: v for k, v in reasons.items() if v},
                "rss_mb_before": rss0, "rss_mb_after": rss1}
    finally:
        real_bench._stop(proc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--overload-s", type=float, default=10.0,
                   help="seconds of load at --factor x capacity")
    p.add_argument("--capacity-s", type=float, default=3.0,
                   help="seconds per run of the capacity search")
    p.add_argument("--factor", type=float, default=5.0,
                   help="the overload as a multiple of the measured capacity")
    p.add_argument("--slo-ms", type=float, default=20.0,
                   help="the application's latency objective (ms)")
    p.add_argument("--delay-s", type=float, default=0.005,
                   help="the no-op model's time per batch (s)")
    p.add_argument("--per-item-s", type=float, default=0.0,
                   help="the no-op model's extra time per query in a batch (s)")
    p.add_argument("--policy", default="none",
                   help="the model's batching policy (none, aimd, fixed, ...)")
    p.add_argument("--modes", default="default,baseline",
                   help="comma-separated: default (admission control and drop_hopeless "
                   "on), baseline (both off)")
    p.add_argument("--json", default="", help="also write the results here (JSON)")
    a = p.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="overload-bench-") as d:
        for mode in a.modes.split(","):
            results.append(_mode(Path(d), a, mode))
    print(f"\nmodel: {a.policy} batching, {a.delay_s * 1e3:g} ms + {a.per_item_s * 1e3:g} ms"
          f"/item; objective {a.slo_ms:g} ms; overload {a.factor:g}x for {a.overload_s:g} s")
    for r in results:
        o = r["overload"]
        print(f"{r['mode']:>9}: capacity {r['capacity_qps']:7.1f}/s in time; at"
              f" {o['offered_qps']:7.1f}/s offered: {o['in_time_qps']:7.1f}/s in time"
              f" ({100 * r['goodput_share_of_capacity']:5.1f}% of capacity);"
              f" real predictions {100 * o['real_prediction_share']:5.1f}%,"
              f" explained defaults {100 * o['default_share']:5.1f}%,"
              f" 503 {100 * o['refused_503_share']:5.1f}%,"
              f" unanswered {100 * o['unanswered_share']:5.1f}%;"
              f" RSS {r['rss_mb_before']:.0f} -> {r['rss_mb_after']:.0f} MB;"
              f" defaults by reason {r['defaults_by_reason']}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
