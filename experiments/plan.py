"""``clipperlab plan``: size a deployment for a latency objective with the simulator.

    from clipperlab.experiments.plan import run_plan
    outcome = run_plan("examples/plan/a-gpu-bursty.toml", out_dir=Path("results/plan/a"))

The inputs, the objective, the costs, the bounds and the margin are ``plan_space``'s; the
search (seeds, intervals, early verdicts, bisection, pruning, executors) is
``plan_search``'s; ``--verify`` is ``plan_verify``'s.  This module runs the search and
writes its outputs to ``out_dir``:

- ``plan.md``: the recommendation (the cheapest candidate that meets every objective,
  ties to the higher share in time), the margin and where it comes from, why each
  cheaper candidate fails (each one evaluated or pruned, with its reason), the
  runners-up, the Pareto front and how long planning took;
- ``plan.csv``: every candidate, one row per candidate and application (pruned ones
  too, with their bound);
- ``pareto.png``: cost against the share in time and against p99, the Pareto front
  (candidates no other beats on cost, share and p99 at once) marked;
- ``deploy.toml``: the recommendation as ``clipperlab serve`` runs it, with ``replay``
  containers (one replay file per model under ``replay/``, written by
  ``clipperlab.calibration.replay``; their paths are relative to the directory the plan
  ran in, the project root) and ``sim.toml``, its simulated twin (``clipperlab simulate
  --config``); ``cheaper.toml`` / ``cheaper-sim.toml``: the next-cheaper candidate, which
  ``--verify`` runs beside it.

An infeasible plan (no candidate in the space meets the objective) is an answer: the
outcome's ``best`` is None, ``closest`` the candidate with the highest share in time,
and ``plan.md`` says so.  Quick runs (``quick=True``) use fewer seeds and shorter
workloads, go to ``results/quick/plan/<name>/`` and are marked as previews, as the
experiments' quick runs are (``experiments.framework``); they refuse a folder that holds
a full run.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from clipperlab.report.tables import markdown_table

from .framework import FullRunInTheWay
from .plan_search import Evaluation, Search, SearchResult
from .plan_space import Candidate, PlanError, PlanSpec, load_plan

__all__ = ["PlanError", "PlanOutcome", "QUICK_SEEDS", "QUICK_SHARE", "run_plan", "write_outputs"]

QUICK_SEEDS = 2
QUICK_SHARE = 0.4  # a quick run simulates this share of each workload's queries


@dataclass
class PlanOutcome:
    spec: PlanSpec
    result: SearchResult
    wall_s: float
    out_dir: Path
    quick: bool
    executor: str

    @property
    def best(self) -> Evaluation | None:
        return self.result.best

    @property
    def closest(self) -> Evaluation | None:
        evs = [e for e in self.result.evaluations if e.rows]
        return max(evs, key=lambda e: (e.min_attainment(), -e.cost)) if evs else None

    @property
    def cheaper(self) -> Evaluation | None:
        """The next-cheaper candidate: the recommendation with one replica fewer of one
        model (the dearest such, ties to the higher share in time); when there is none,
        the dearest evaluated candidate below the recommendation."""
        if self.best is None:
            return None
        below = [e for e in self.result.evaluations if e.rows and e.cost < self.best.cost]
        best = self.best.candidate
        same = [e for e in below if e.candidate.shape == best.shape and sum(
            abs(a.replicas - b.replicas) for a, b in zip(e.candidate.choices, best.choices,
                                                         strict=True)) == 1]
        pool = same or below
        return max(pool, key=lambda e: (e.cost, e.min_attainment())) if pool else None


def quick_spec(spec: PlanSpec) -> PlanSpec:
    """Fewer seeds and a shorter workload (``QUICK_SHARE`` of its queries)."""
    wls = []
    for w in spec.workloads:
        w = dict(w)
        if "n_queries" in w:
            w["n_queries"] = max(200, int(w["n_queries"] * QUICK_SHARE))
        if "duration_s" in w:
            w["duration_s"] = float(w["duration_s"]) * QUICK_SHARE
        wls.append(w)
    return dataclasses.replace(spec, seeds=min(spec.seeds, QUICK_SEEDS), workloads=tuple(wls))


def run_plan(path: str | Path, *, out_dir: Path, quick: bool = False, executor: str = "local",
             workers: int = 1, ray_address: str | None = None, margin_ms: float | None = None,
             progress: bool = False) -> PlanOutcome:
    """Plan ``path`` and write the outputs to ``out_dir`` (see the module's docstring)."""
    spec = load_plan(path, margin_ms=margin_ms)
    if quick:
        spec = quick_spec(spec)
        if _holds_full_plan(out_dir):
            raise FullRunInTheWay(f"{out_dir} holds a full plan; a quick run does not "
                                  "overwrite it (pick another --out)")
    bar: Any = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc=f"plan ({executor})", unit="run", file=sys.stderr,
                   disable=None)
    t0 = time.perf_counter()
    try:
        search = Search(spec, executor=executor, workers=workers, ray_address=ray_address,
                        on_run=(bar.update if bar is not None else None))
        if executor == "ray":
            _ray_init(workers, ray_address)
        result = search.search()
    finally:
        if bar is not None:
            bar.close()
        if executor == "ray":
            _ray_shutdown()
    outcome = PlanOutcome(spec, result, time.perf_counter() - t0, out_dir, quick, executor)
    write_outputs(outcome)
    return outcome


_RAY_STARTED = False


def _ray_init(workers: int, address: str | None) -> None:
    """One Ray session for the whole search (``run_jobs`` would start one per call)."""
    global _RAY_STARTED
    from .sweep import ExecutorUnavailable, ray_address_kwargs, ray_runtime_env

    try:
        import ray
    except ImportError:
        raise ExecutorUnavailable("--executor ray needs Ray, which is not installed; "
                                  "python3 -m pip install -e '.[ray]'") from None
    if not ray.is_initialized():
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True,
                              "runtime_env": ray_runtime_env()}
        kw.update(ray_address_kwargs(address, workers))
        ray.init(**kw)
        _RAY_STARTED = True


def _ray_shutdown() -> None:
    global _RAY_STARTED
    if _RAY_STARTED:
        import ray

        ray.shutdown()
        _RAY_STARTED = False


def _holds_full_plan(out_dir: Path) -> bool:
    md = out_dir / "plan.md"
    return md.exists() and "QUICK RUN" not in md.read_text()[:400]


# ------------------------------------------------------------------------- outputs


def table(outcome: PlanOutcome) -> pd.DataFrame:
    """``plan.csv``: one row per candidate and application."""
    rows = []
    spec = outcome.spec
    best = outcome.best.candidate if outcome.best else None
    for ev in [*outcome.result.evaluations, *outcome.result.pruned]:
        base: dict[str, Any] = {}
        if outcome.quick:
            base["run"] = "quick"
        base.update({"candidate": ev.candidate.label(), "cost": ev.cost})
        for c in ev.candidate.choices:
            base[f"{c.model}_hardware"] = c.hardware
            base[f"{c.model}_batching"] = c.batching
            base[f"{c.model}_replicas"] = c.replicas
        verdict = ("pruned" if ev.meets is None else "meets" if ev.meets else "fails")
        base.update({"verdict": verdict, "clear": ev.clear if ev.meets is not None else None,
                     "recommended": ev.candidate == best})
        util = ev.utilisation() if ev.rows else {}
        for m, u in util.items():
            base[f"{m}_busy"] = u
        per = ev.per_app() if ev.rows else pd.DataFrame(
            [{"app": o.app} for o in spec.objectives])
        for r in per.to_dict("records"):
            rows.append({**base, **{k: v for k, v in r.items()}, "reason": ev.reason})
    out = pd.DataFrame(rows)
    return out.sort_values(["cost", "candidate", "app"], kind="stable").reset_index(drop=True)


def pareto(evs: list[Evaluation]) -> list[Evaluation]:
    """Candidates no other beats on cost, share in time and p99 at once."""
    pts = [(e, e.cost, e.min_attainment(), float(e.per_app()["p99_ms"].max()))
           for e in evs if e.rows]
    front = []
    for e, c, a, p in pts:
        dominated = any(c2 <= c and a2 >= a and p2 <= p and (c2, a2, p2) != (c, a, p)
                        for _, c2, a2, p2 in pts)
        if not dominated:
            front.append(e)
    return sorted(front, key=lambda e: e.cost)


def write_outputs(outcome: PlanOutcome) -> list[Path]:
    out = outcome.out_dir
    out.mkdir(parents=True, exist_ok=True)
    t = table(outcome)
    t.to_csv(out / "plan.csv", index=False, float_format="%.6g")
    written = [out / "plan.csv", _plot(outcome, out / "pareto.png")]
    from .plan_verify import write_deploy

    if outcome.best is not None:
        written += write_deploy(outcome.spec, outcome.best.candidate, out, "deploy")
    if outcome.cheaper is not None:
        written += write_deploy(outcome.spec, outcome.cheaper.candidate, out, "cheaper")
    (out / "plan.md").write_text(markdown(outcome))
    written.append(out / "plan.md")
    return written


def _plot(outcome: PlanOutcome, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clipperlab.report.plots import save, stamped, style_axis

    evs = [e for e in outcome.result.evaluations if e.rows]
    front = pareto(evs)
    target = min(o.attainment for o in outcome.spec.objectives)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((ax1, "att", "share in time (worst application)"),
                           (ax2, "p99", "p99 latency, ms (worst application)")):
        for group, marker in ((evs, "o"), (front, "*")):
            xs = [e.cost for e in group]
            ys = [e.min_attainment() if key == "att" else float(e.per_app()["p99_ms"].max())
                  for e in group]
            ax.scatter(xs, ys, marker=marker, s=30 if marker == "o" else 140,
                       c=["tab:green" if e.meets else "tab:red" for e in group],
                       label="candidate" if marker == "o" else "Pareto front", alpha=0.8)
        if key == "att":
            ax.axhline(target, color="gray", ls="--", lw=1, label=f"target {target:.1%}")
        else:
            within = min(o.within_s for o in outcome.spec.objectives) * 1e3
            ax.axhline(within, color="gray", ls="--", lw=1, label=f"objective {within:g} ms")
            ax.set_yscale("log")
        style_axis(ax, title=label, xlabel="cost (replicas x cost of their hardware)",
                   ylabel=label)
        ax.legend(fontsize=8)
    fig.suptitle(f"clipperlab plan {Path(outcome.spec.path).name}: green meets, red fails")
    stamp = ("QUICK RUN (--quick): a preview, not the plan") if outcome.quick else ""
    if stamp:
        with stamped(stamp):
            save(fig, path)
    else:
        save(fig, path)
    plt.close(fig)
    return path


def _fmt_ev(ev: Evaluation) -> dict[str, Any]:
    per = ev.per_app()
    return {"candidate": ev.candidate.label(), "cost": ev.cost,
            "share in time": ", ".join(f"{r.app} {r.attainment:.2%}"
                                       + (f" [{max(r.ci_lo, 0):.2%}, {min(r.ci_hi, 1):.2%}]"
                                          if math.isfinite(r.ci_lo) else "")
                                       for r in per.itertuples()),
            "p50 / p99 ms": ", ".join(f"{r.p50_ms:.1f} / {r.p99_ms:.1f}"
                                      for r in per.itertuples()),
            "seeds": ev.seeds}


def markdown(outcome: PlanOutcome) -> str:
    spec, res = outcome.spec, outcome.result
    lines = []
    if outcome.quick:
        lines += ["> **QUICK RUN (--quick)**: fewer seeds and shorter workloads; a preview, "
                  "not the plan.", ""]
    lines += [f"# Plan: {Path(spec.path).name}", ""]
    objs = "; ".join(f"{o.app}: {o.attainment:.1%} of queries answered (not by default) "
                     f"within {o.within_s * 1e3:g} ms" for o in spec.objectives)
    qps = spec.planned_qps()
    lines += [f"- Objective: {objs}.",
              f"- Load: {', '.join(f'{a} {q:,.0f} q/s' for a, q in qps.items())} "
              f"(the workloads x {spec.peak_factor:g}).",
              f"- Margin: {spec.margin_s * 1e3:.2f} ms off each objective's latency "
              f"({spec.margin_source}).",
              *([f"- Missing answers margin: the search plans for each ensemble's "
                 f"max_missing_share less {spec.missing_margin:.1%}."]
                if spec.missing_margin else []),
              f"- Costs per replica: {', '.join(f'{k} {v:g}' for k, v in spec.costs.items())}.",
              f"- Search: {len(res.evaluations)} candidates simulated ({res.runs} runs of "
              f"up to {spec.seeds} seeds each), {len(res.pruned)} pruned by bounds, in "
              f"{outcome.wall_s:.1f} s on {outcome.executor}.", ""]
    if outcome.best is not None:
        b = outcome.best
        lines += ["## Recommendation", "", f"**{b.candidate.label()}** (cost {b.cost:g}): "
                  f"{b.reason}.", "", "`deploy.toml` runs it (`clipperlab serve --config "
                  f"{outcome.out_dir / 'deploy.toml'}`); `deploy-sim.toml` is its simulated twin.",
                  ""]
    else:
        c = outcome.closest
        lines += ["## Infeasible", "", "No candidate in the search space meets the "
                  "objective." + (f" Closest: **{c.candidate.label()}** (cost {c.cost:g}): "
                                  f"{c.reason}." if c else ""), ""]
    ref = outcome.best.cost if outcome.best else math.inf
    cheaper = sorted([e for e in [*res.evaluations, *res.pruned] if e.cost < ref
                      and not e.meets], key=lambda e: -e.cost)
    if cheaper:
        lines += ["## Why each cheaper candidate fails", ""]
        lines += [f"- {e.candidate.label()} (cost {e.cost:g}): {e.reason}" for e in cheaper]
        lines.append("")
    runners = sorted([e for e in res.evaluations if e.meets and e is not outcome.best],
                     key=lambda e: (e.cost, -e.min_attainment()))
    if runners:
        lines += ["## Runners-up", "", markdown_table([_fmt_ev(e) for e in runners[:8]]), ""]
    front = pareto([e for e in res.evaluations if e.rows])
    lines += ["## Pareto front (cost, share in time, p99)", "",
              markdown_table([_fmt_ev(e) for e in front]), "", "![pareto](pareto.png)", "",
              "Every candidate: `plan.csv`."]
    return "\n".join(lines) + "\n"


def evaluation_of(outcome: PlanOutcome, cand: Candidate) -> Evaluation | None:
    return next((e for e in outcome.result.evaluations if e.candidate == cand), None)


def describe(outcome: PlanOutcome) -> Mapping[str, Any]:
    """What the CLI prints: a JSON-able summary."""
    b, c = outcome.best, outcome.closest
    return {"recommended": b.candidate.label() if b else None, "cost": b.cost if b else None,
            "closest": c.candidate.label() if (b is None and c) else None,
            "candidates": len(outcome.result.evaluations), "runs": outcome.result.runs,
            "wall_s": round(outcome.wall_s, 1)}

