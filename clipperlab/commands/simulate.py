"""``clipperlab simulate --config FILE``: simulate a deployment described in a config file
and print its metrics table.

The config (TOML or JSON) holds the hosts, applications, models (profile, replicas,
batching, outputs), the workload and faults; see ``examples/simulate.toml`` and
``clipperlab.simulator.deployment``.  ``--queries``/``--qps``/``--seed`` override the file;
``--out DIR`` writes the raw records (``queries.parquet``, ``batches.csv``) and the
summary (``summary.csv``).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from clipperlab.errors import CLIError
from clipperlab.report.latency import pct
from clipperlab.report.tables import text_table

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, type=Path,
                   help="deployment config, TOML or JSON (required)")
    p.add_argument("--seed", type=int, default=None,
                   help="random seed, >= 0 (default: the config's)")
    p.add_argument("--queries", type=int, default=None,
                   help="queries to send (default: the config's workload.n_queries)")
    p.add_argument("--qps", type=float, default=None,
                   help="arrival rate in queries/s for constant, poisson and gamma "
                   "arrivals (default: the config's)")
    p.add_argument("--until-s", type=float, default=None,
                   help="stop at this simulated time, seconds (default: when every query is "
                   "answered)")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for the raw records and the summary (default: print only)")
    p.add_argument("--log", action="store_true",
                   help="keep the engine's decision log; --out writes it (default: off)")


def run(args: argparse.Namespace) -> int:
    from clipperlab.engine import ConfigError  # the simulator's SimConfigError is one
    from clipperlab.simulator.deployment import load_config
    from clipperlab.simulator.driver import Simulation
    from clipperlab.workloads import WorkloadError

    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        raise CLIError(str(e)) from None
    wl = cfg.workload
    if wl is None:
        raise CLIError(f"{args.config}: workload: missing (a [workload] table is required)")
    try:
        if args.queries is not None:
            wl = dataclasses.replace(wl, n_queries=args.queries, duration_s=None)
        if args.qps is not None:
            if not hasattr(wl.arrivals, "qps"):
                raise CLIError(f"--qps: the {type(wl.arrivals).__name__} arrival process has "
                               "no single rate")
            wl = dataclasses.replace(
                wl, arrivals=dataclasses.replace(wl.arrivals, qps=args.qps)  # type: ignore[call-arg]
            )
    except WorkloadError as e:
        raise CLIError(f"{e}") from None
    seed = cfg.seed if args.seed is None else args.seed
    try:
        sim = Simulation(cfg.deployment, wl, seed=seed, decision_log=args.log)
        res = sim.run(until_s=args.until_s)
    except (ConfigError, WorkloadError) as e:
        raise CLIError(f"{args.config}: {e}") from None

    print(f"clipperlab simulate: {args.config} (seed {seed}): {len(res.queries):,} queries, "
          f"{res.sim_s:.3f} simulated s in {res.wall_s:.2f} wall s "
          f"({len(res.queries) / max(res.wall_s, 1e-9):,.0f} queries/s)\n")
    summ = res.summary_table()
    cols = ["app", "queries", "offered_qps", "throughput_qps", "mean_ms", "p50_ms", "p90_ms",
            "p99_ms", "default_rate", "accuracy", "missing_share"]
    print(text_table(summ.to_dict("records"), [c for c in cols if c in summ.columns]))
    b = res.batches
    rows = []
    for (model, replica), g in b.groupby(["model", "replica"], observed=True):
        done = g[g["status"] == "done"]
        lat = (done["done_at"] - done["sent_at"]).to_numpy()
        rows.append({
            "replica": f"{model}#{replica}",
            "batches": len(done),
            "mean_batch": float(done["size"].mean()) if len(done) else float("nan"),
            "max_batch": int(done["size"].max()) if len(done) else 0,
            "batch_p50_ms": pct(lat, 50) * 1e3,
            "batch_p99_ms": pct(lat, 99) * 1e3,
            "lost": int((g["status"] == "lost").sum()),
            "items_per_s": float(done["size"].sum() / res.sim_s) if res.sim_s else float("nan"),
        })
    print()
    print(text_table(rows, ["replica", "batches", "mean_batch", "max_batch", "batch_p50_ms",
                        "batch_p99_ms", "items_per_s", "lost"]))
    reasons = res.queries["default_reason"].dropna().value_counts()
    if len(reasons):
        print("\ndefaults by reason: " + ", ".join(f"{k} {v:,}" for k, v in reasons.items()))
    if res.crashes:
        print("faults: " + ", ".join(f"{what} {rid} at {t:.3f}s" for t, rid, what in res.crashes))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        q = res.queries.copy()
        q["output"] = q["output"].astype(str)
        q.to_parquet(args.out / "queries.parquet", index=False)
        b.to_csv(args.out / "batches.csv", index=False)
        summ.to_csv(args.out / "summary.csv", index=False)
        if res.log is not None:
            with (args.out / "decisions.log").open("w") as f:
                for entry in res.log:
                    f.write(repr(entry) + "\n")
        print(f"\nwrote {args.out}/queries.parquet, batches.csv, summary.csv")
    return 0
