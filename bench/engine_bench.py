"""Queries per second through the engine alone.

One model, AIMD batching, no cache hits (inputs are not cached, as in the paper's salted
runs), driven by a plain loop with a virtual clock: queries arrive at a constant rate,
each replica's batch takes ``alpha*b + beta`` virtual seconds (the prototype's linear SVM
fit), and the loop calls ``on_query``, ``on_batch_done`` and ``on_timer`` in time order.
Wall-clock time of the whole loop is what is measured.  The default load is the one
``bench/sim_bench.py`` simulates (20K qps offered to one replica), so the two compare.
Beside it: the same loop with a minimal hand-written batcher that makes the same batches.

    python bench/engine_bench.py [--queries 1000000] [--rate 20000] [--replicas 1] [--no-profile]
                                 [--alpha-s 12.5e-6] [--beta-s 3.6e-3]

The small-batch case (issue 14: an engine round trip per query, as ``sim_bench.py``'s
small-batch rows): ``--rate 500 --alpha-s 0 --beta-s 1e-3``.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import heapq
import io
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipperlab.engine import (  # noqa: E402
    Application,
    BatchDone,
    BatchingConfig,
    Engine,
    ModelSpec,
    Query,
    ReplicaId,
    Reply,
    SendBatch,
)


def _result(
    n_queries: int, wall: float, items: int, batches: int, defaults: int
) -> dict[str, float]:
    return {
        "queries": n_queries,
        "wall_s": wall,
        "qps": n_queries / wall,
        "mean_batch": items / max(batches, 1),
        "defaults": defaults,
        "batches": batches,
    }


def run(
    n_queries: int,
    rate_qps: float = 20_000.0,
    replicas: int = 1,
    alpha_s: float = 12.5e-6,
    beta_s: float = 3.6e-3,
) -> dict[str, float]:
    eng = Engine(seed=0)
    eng.add_application(Application(name="bench", slo_s=0.020, default_output=0), now=0.0)
    eng.add_model(ModelSpec(name="m", batching=BatchingConfig(policy="aimd")), now=0.0)
    eng.link("bench", ["m"], now=0.0)
    for i in range(replicas):
        eng.on_replica_up(ReplicaId("m", "1", i), 0.0)
    gap = 1.0 / rate_qps
    done_heap: list[tuple[float, int, SendBatch]] = []
    replies = defaults = batches = items = 0
    payload = b"x"
    new_query = tuple.__new__

    def carry(instrs: list, now: float) -> None:
        nonlocal replies, defaults, batches, items
        for ins in instrs:
            if type(ins) is Reply:
                replies += 1
                defaults += ins.prediction.default
            elif type(ins) is SendBatch:
                n = len(ins.inputs)
                batches += 1
                items += n
                heapq.heappush(done_heap, (now + alpha_s * n + beta_s, ins.batch_id, ins))

    on_query, on_done, on_timer, next_deadline = (
        eng.on_query,
        eng.on_batch_done,
        eng.on_timer,
        eng.next_deadline,
    )
    inf = float("inf")

    def step_until(limit: float) -> None:
        """Deliver batch completions and engine timers due by ``limit``, in time order."""
        while True:
            t_done = done_heap[0][0] if done_heap else inf
            t_timer = next_deadline()
            t_timer = inf if t_timer is None else t_timer
            if t_done <= limit and t_done <= t_timer and t_done < inf:
                at, _, sb = heapq.heappop(done_heap)
                done = BatchDone(
                    replica=sb.replica, batch_id=sb.batch_id, outputs=[1] * len(sb.inputs)
                )
                carry(on_done(done, at), at)
            elif t_timer <= limit and t_timer < inf:
                carry(on_timer(t_timer), t_timer)
            else:
                return

    t0 = time.perf_counter()
    for qid in range(n_queries):
        now = qid * gap
        step_until(now)
        # built as a plain tuple, as the simulator driver does (NamedTuple.__new__ is Python)
        carry(on_query(new_query(Query, (qid, "bench", payload, None, None, None)), now), now)
    step_until(inf)
    wall = time.perf_counter() - t0
    assert replies == n_queries, (replies, n_queries)
    return _result(n_queries, wall, items, batches, defaults)


def run_bare(
    n_queries: int,
    rate_qps: float = 20_000.0,
    replicas: int = 1,
    alpha_s: float = 12.5e-6,
    beta_s: float = 3.6e-3,
    slo_s: float = 0.020,
) -> dict[str, float]:
    """Baseline: the same loop and latency model with a minimal hand-written batcher (one
    FIFO, AIMD caps per replica, deadline defaults) and no engine: what plain Python costs."""
    from collections import deque

    gap = 1.0 / rate_qps
    queue: deque[tuple[int, float]] = deque()
    idle = deque(range(replicas))  # the replica idle longest goes first, as in the engine
    caps = [1] * replicas
    done_heap: list[tuple[float, int, int, list[tuple[int, float]], float]] = []
    replies = defaults = batches = items = 0
    seq = 0
    out: list[tuple[int, int, bool]] = []

    def dispatch(now: float) -> None:
        nonlocal batches, items, seq, defaults, replies
        while idle and queue:
            while queue and queue[0][1] + slo_s <= now:
                queue.popleft()
                defaults += 1
                replies += 1
            if not queue:
                return
            r = idle.popleft()
            n = min(caps[r], len(queue))
            batch = [queue.popleft() for _ in range(n)]
            batches += 1
            items += n
            seq += 1
            heapq.heappush(done_heap, (now + alpha_s * n + beta_s, seq, r, batch, now))

    def complete() -> None:
        nonlocal replies, defaults
        at, _, r, batch, start = heapq.heappop(done_heap)
        lat = at - start
        n = len(batch)
        if lat < slo_s - 0.1 * slo_s:
            caps[r] = n + 2
        elif lat >= slo_s:
            caps[r] = max(int(n * 0.9), 1)
        for q, arrival in batch:
            replies += 1
            late = at >= arrival + slo_s
            defaults += late
            out.append((q, 1, late))
        idle.append(r)
        dispatch(at)

    t0 = time.perf_counter()
    for qid in range(n_queries):
        now = qid * gap
        while done_heap and done_heap[0][0] <= now:
            complete()
        queue.append((qid, now))
        dispatch(now)
    while done_heap:
        complete()
    dispatch(float("inf"))
    wall = time.perf_counter() - t0
    return _result(n_queries, wall, items, batches, defaults)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--queries", type=int, default=1_000_000,
                   help="queries per loop (default 1,000,000)")
    p.add_argument(
        "--rate",
        type=float,
        default=20_000.0,
        help="offered queries per simulated second (default: 20,000, as sim_bench)",
    )
    p.add_argument("--replicas", type=int, default=1, help="replicas of the model (default 1)")
    p.add_argument("--no-profile", action="store_true", help="skip the cProfile of a 200K run")
    p.add_argument("--alpha-s", type=float, default=12.5e-6,
                   help="batch latency per item, virtual seconds (default: the linear SVM's)")
    p.add_argument("--beta-s", type=float, default=3.6e-3,
                   help="batch latency per batch, virtual seconds (default: the linear SVM's)")
    args = p.parse_args()
    line = {"alpha_s": args.alpha_s, "beta_s": args.beta_s}
    r = run(args.queries, args.rate, args.replicas, **line)
    b = run_bare(args.queries, args.rate, args.replicas, **line)
    # The real server runs with a frozen heap and a gen-0 threshold of 5000 (real/server.py);
    # the same setting here shows what the engine costs inside the server.
    g = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(max(g[0], 5000), g[1], 100)
    try:
        rs = run(args.queries, args.rate, args.replicas, **line)
    finally:
        gc.set_threshold(*g)
        gc.unfreeze()
    # The simulator pauses the cyclic GC for the whole run (simulator/driver.py).
    gc.collect()
    gc.disable()
    try:
        rp = run(args.queries, args.rate, args.replicas, **line)
    finally:
        gc.enable()
    print(
        f"{'loop':<34} {'queries':>10} {'wall s':>8} {'queries/s':>12} {'mean batch':>11} "
        f"{'batches':>8} {'defaults':>9}"
    )
    rows = (
        ("engine (default GC)", r),
        ("engine (server GC settings)", rs),
        ("engine (GC paused, as simulated)", rp),
        ("bare batcher, no engine", b),
    )
    for name, x in rows:
        print(
            f"{name:<34} {x['queries']:>10} {x['wall_s']:>8.2f} {x['qps']:>12,.0f} "
            f"{x['mean_batch']:>11.1f} {x['batches']:>8} {x['defaults']:>9}"
        )
    print(f"engine / bare: {r['qps'] / b['qps']:.2f}x (default GC)")
    for name, x in rows[:3]:
        print(f"goal >= 300,000 queries/s, {name}: {'met' if x['qps'] >= 300_000 else 'NOT met'}")
    if not args.no_profile:
        pr = cProfile.Profile()
        pr.enable()
        run(200_000, args.rate, args.replicas, **line)
        pr.disable()
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(15)
        print(s.getvalue())


if __name__ == "__main__":
    main()
