"""What ``bench/real_bench.py`` prints from a run's results (``--report FILE`` prints a
stored one again): the table, the CPU splits (the plain fit and the one beyond the echo),
the round-trip floor, the server's CPU at one load, and the machine's speed."""

from __future__ import annotations

from typing import Any

import numpy as np
from real_bench_roles import RTT_FRAME


def few_batches(q: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> bool:
    """Batches under 1% of the queries (cache hits, the echo): nothing per batch to fit."""
    return bool(b.sum() <= 0.01 * q.sum())


def split(q: np.ndarray[Any, Any], b: np.ndarray[Any, Any],
          cpu: np.ndarray[Any, Any]) -> tuple[float, float] | None:
    """``cpu = a x q + b x batches`` over runs (CPU seconds), as ``(a, b)`` in us by a
    non-negative least-squares fit; ``None`` where there is nothing to split: batches under
    1% of the queries (cache hits, the echo) or fewer than two runs."""
    from scipy.optimize import nnls

    if few_batches(q, b) or len(q) < 2:
        return None
    (a, c), _ = nnls(np.column_stack([q, b]), cpu)
    return float(a * 1e6), float(c * 1e6)


def beyond_echo_split(runs: list[dict[str, float]],
                      echo_runs: list[dict[str, float]]) -> dict[str, float]:
    """The frontend's per-query and per-batch CPU (us) with our echo server's CPU per query
    at each run's load taken out first: ``cpu - echo(load) x queries = a x queries + b x
    batches``, by ``split`` as the plain fit.  The plain fit's per-batch figure also
    carries what the HTTP stack and the kernel's wake-ups cost: dear per query under light
    load, where batches are small and many, cheap under heavy load, where they are big, so
    the fit lays much of it on the batches.  ``echo(load)``: the echo's CPU per query at
    that offered load, interpolated in log load between its runs (its one-at-a-time run
    for ours).  Per query only where batches are under 1% of the queries (cache hits);
    ``{}`` without such echo runs, or with fewer than two of ours to split."""

    def per_query(r: dict[str, float]) -> float:
        return r["frontend_cpu_s"] / r["queries"]

    ok = [r for r in echo_runs if r.get("queries", 0) > 0 and "frontend_cpu_s" in r]
    load = sorted((r["offered"], per_query(r)) for r in ok if r.get("offered", 0) > 0)
    closed = [per_query(r) for r in ok if r.get("offered", -1) == 0]
    mine = [r for r in runs if r.get("queries", 0) > 0 and "offered" in r
            and (r["offered"] > 0 or closed)]
    if not load or not mine:
        return {}
    at, cost = np.log([x for x, _ in load]), [y for _, y in load]

    def echo(r: dict[str, float]) -> float:
        return closed[0] if r["offered"] == 0 else float(np.interp(np.log(r["offered"]), at, cost))

    q = np.array([r["queries"] for r in mine])
    b = np.array([r["batches"] for r in mine])
    cpu = np.array([r["frontend_cpu_s"] - echo(r) * r["queries"] for r in mine])
    if few_batches(q, b):  # cache hits: per query only
        return {"frontend_us_per_query": float(cpu.sum() / q.sum() * 1e6)}
    ab = split(q, b, cpu)
    return {} if ab is None else {"frontend_us_per_query": ab[0], "frontend_us_per_batch": ab[1]}


ECHOES = ("echo", "echo-mypyc", "aiohttp")  # the baselines: no engine, nothing to split


def floor_of(name: str, targets: dict[str, Any]) -> str:
    """The echo a target's CPU is taken apart against: its build's (``echo-mypyc``, our
    HTTP stack compiled, for a compiled target when that echo ran), else ``echo``."""
    return "echo-mypyc" if name.endswith("-mypyc") and "echo-mypyc" in targets else "echo"


def print_table(results: dict[str, Any]) -> None:
    cols = (f"{'target':<13} {'sat. q/s':>9} {'x echo':>7} {'p50/p99 half ms':>16} "
            f"{'c=1 p50':>8} {'fe us/q':>8} {'fe us/b':>8} {'ct us/b':>8} {'fe us/q all':>11}")
    print(cols)
    echo_sat = results.get("echo", {}).get("saturation", {})
    echo = echo_sat.get("ok_qps")
    for name, r in results["targets"].items():
        s, h, c1, cpu = r["saturation"], r["half"], r["c1"], r["cpu"]
        ratio = s["ok_qps"] / echo if echo else float("nan")
        # a ramp that ended at --max-rate without falling short found a lower bound:
        # '>=' on its saturation, and '<=' on a ratio to an echo whose ramp did so
        at_least = ">=" if s.get("capped") else "  "
        at_most = "<=" if echo_sat.get("capped") and name != "echo" else "  "

        def us(k: str, cpu: dict[str, float] = cpu) -> str:
            return f"{cpu[k]:>8.1f}" if k in cpu else f"{'-':>8}"

        print(f"{name:<11}{at_least}{s['ok_qps']:>9,.0f} {at_most}{ratio:>5.2f} "
              f"{h['p50_ms']:>7.2f}/{h['p99_ms']:<8.2f} {c1['p50_ms']:>8.3f} "
              f"{us('frontend_us_per_query')} {us('frontend_us_per_batch')} "
              f"{us('container_us_per_batch')} {cpu.get('frontend_us_per_query_all', 0):>11.1f}")
    print("(sat.: successful replies/s at saturation, defaults excluded, '>=' where the ramp "
          "reached --max-rate without falling short; x echo: against our echo server in "
          "this run, '<=' when the echo's saturation is such a bound; half: open loop at "
          "half of saturation; c=1: one request at a time; fe/ct: frontend/container CPU "
          "from /proc, split per query and per batch by a least-squares fit over the runs; "
          "'all': frontend CPU / queries, unsplit)")
    def echo_runs(key: str) -> list[dict[str, float]]:
        echo_t = results["targets"].get(key, {})
        return list(echo_t.get("runs", [])) + (
            [echo_t["equal"]["run"]] if "run" in echo_t.get("equal", {}) else [])

    fits = []
    rtt = results.get("rtt")
    shares = []  # (target, the echo's share of the plain per-batch figure)
    for n, r in results["targets"].items():
        f = ({} if n in ECHOES else
             beyond_echo_split(r.get("runs", []), echo_runs(floor_of(n, results["targets"]))))
        if f:
            fits.append(f"{n} {f['frontend_us_per_query']:.1f} us/q" + (
                f" + {f['frontend_us_per_batch']:.1f} us/b" if "frontend_us_per_batch" in f
                else ""))
            if "frontend_us_per_batch" in f and "frontend_us_per_batch" in r["cpu"]:
                shares.append((n, r["cpu"]["frontend_us_per_batch"]
                               - f["frontend_us_per_batch"]))
    if fits:
        print("the frontend's split again with our echo's CPU per query at each run's load "
              + ("(echo-mypyc's for the -mypyc rows) " if "echo-mypyc" in results["targets"]
                 else "")
              + "taken out first (the HTTP stack's and the kernel's wake-ups, dear per query "
              "at light load where batches are small and many, otherwise fall on the "
              "batches): " + "; ".join(fits))
    if rtt:
        print(f"a bare round trip between two processes ({RTT_FRAME} bytes each way over "
              "loopback TCP, a uvloop sender, a blocking receiver, one in flight: the "
              f"per-batch floor on this machine): sender {rtt['sender_us']:.1f} us, receiver "
              f"{rtt['receiver_us']:.1f} us of CPU")
        if shares:
            print("what a frontend with no per-batch work of its own would show per batch "
                  "here (issue 12's goal: 60 us): the echo's wake-ups the plain fit lays on "
                  "the batches (its per-batch figure less the one beyond the echo) plus the "
                  "bare round trip's sender: " + "; ".join(
                      f"{n} {share:.1f} + {rtt['sender_us']:.1f} = "
                      f"{share + rtt['sender_us']:.1f} us" for n, share in shares))
    equal = {n: r["equal"] for n, r in results["targets"].items() if "equal" in r}
    if equal:
        rate = next(iter(equal.values()))["rate"]

        def line(cpu: Any, ok: bool, servers_only: bool = False) -> str:
            """Each target's ``cpu(its name, its equal-load run)`` and its ratio to its
            build's REST."""
            parts = []
            for n, e in equal.items():
                if servers_only and n in ECHOES:
                    continue
                base = "rest-mypyc" if n.endswith("-mypyc") else "rest"
                rest = cpu(base, equal[base]) if base in equal else 0.0
                vs = f" = {cpu(n, e) / rest:.2f}x {base}" if rest and n != base else ""
                parts.append(f"{n} {cpu(n, e):.1f}{vs}"
                             + (f" (ok {e['ok_qps']:,.0f}/s)" if ok else ""))
            return ", ".join(parts)

        print(f"frontend CPU us/query at equal load ({rate:,.0f} q/s offered, unsplit): "
              + line(lambda n, e: e["frontend_us_per_query"], True))
        # the server's CPU (the "server CPU per request"): a miss also costs its
        # container, a cache hit does not reach one
        def server(e: Any) -> float:
            return float(e["frontend_us_per_query"] + e.get("container_us_per_query", 0.0))

        print("server CPU us/query at equal load (frontend + containers): "
              + line(lambda n, e: server(e), False))
        if "echo" in equal:  # what the HTTP stack and the kernel take at this load
            floors = {k: server(equal[k]) for k in ("echo", "echo-mypyc") if k in equal}
            also = (f" (echo-mypyc's {floors['echo-mypyc']:.1f} for the -mypyc rows)"
                    if "echo-mypyc" in floors else "")
            print(f"server CPU beyond the echo's {floors['echo']:.1f} us/query{also} at equal "
                  "load (our HTTP stack's and the kernel's share taken out): "
                  + line(lambda n, e: server(e) - floors[floor_of(n, equal)], False,
                         servers_only=True))
    print(f"(other jobs kept {results['background_cpu_busy_share']:.0%} of the CPUs busy "
          f"before the run; load average {results['loadavg']})")
    speeds = {n: r["speed"] for n, r in results["targets"].items() if r.get("speed")}
    if speeds:
        shown = dict(speeds)
        for key in ("echo", "echo-mypyc"):
            echo_eq = results["targets"].get(key, {}).get("equal", {}).get("speed")
            if echo_eq:  # its run at the equal load, after the servers
                shown[f"{key} at equal load"] = echo_eq
        print("the machine's speed while each target ran (quiet.SpeedMonitor: slow share, "
              "x factor; absolute microseconds compare only at like speeds): " + ", ".join(
                  f"{n} {sp['slow_share']:.0%} x{sp['slow_factor']:.2f} "
                  f"(fast {sp['fast_ns']:.0f} ns)" for n, sp in shown.items()))
        parts = []
        for n, sp in speeds.items():
            cpu = results["targets"][n].get("cpu", {})
            m = 1.0 + sp["slow_share"] * (sp["slow_factor"] - 1.0)
            got = [f"{label} {cpu[k] / m:.1f}" for label, k in (
                ("fe us/q", "frontend_us_per_query"), ("fe us/b", "frontend_us_per_batch"),
                ("ct us/b", "container_us_per_batch")) if k in cpu]
            if got:
                parts.append(f"{n} {', '.join(got)}")
        if parts:
            print("the CPU splits at the fast speed (each divided by its target's mean "
                  "factor, 1 + slow share x (factor - 1)): " + "; ".join(parts))
