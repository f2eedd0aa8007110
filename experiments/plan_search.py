"""The planner's search: simulate candidates over seeds, decide early, bisect, prune.

Theory of operation:
- A candidate is simulated once per seed (``simulate_seed``: the plan's workloads
  generated with that seed, every application at once, so applications share the
  frontend as they do on the server).  An answer exactly at the deadline counts as in
  time (``DEADLINE_TOLERANCE_S`` absorbs the rounding of ``reply_at - arrival_at``): an
  ensemble's answer without its stragglers comes then (``plan_space``'s rules).
  Seeds are common to every candidate (0, 1, ...): two candidates see the same
  arrivals, so their difference is the deployment's.
- Per application and seed, the share answered in time (``simulator.capacity``'s
  ``attained_share`` at the objective's latency less the margin).  After each round of
  seeds (as many as the executor runs at once) a candidate is *clearly in* when, for
  every application, the 95% Student-t interval of the per-seed shares lies above the
  target, *clearly out* when one application's lies below it (or when every seed so far
  misses the target by more than ``early_gap``); an application with a
  ``max_missing_share`` is in only when every seed keeps to it (less ``missing_margin``)
  and out when every seed exceeds it; otherwise it gets more seeds, up to
  ``PlanSpec.seeds``, after which the pooled share decides and the candidate is marked
  borderline.
- Within a shape (a hardware kind and a batching option per model) attainment is taken
  to be monotone in each model's replicas (more replicas never hurt): every count below
  one that failed fails, every count above one that held holds.  (Not always true: the
  engine's admission control can shed more with more replicas of a noisy profile, see
  ``examples/plan/b-ensemble.toml``; the plan's table shows it.)  One model: bisection
  between the throughput bound and the space's maximum.  Several models: from the bounds,
  add a replica to the busiest model of a failing candidate (among the models
  of the applications that miss) until it holds (or costs
  more than the cheapest candidate found to hold: pruned), then descend
  greedily: try one replica fewer of each model, the dearest replica first (the cost
  table), take the first removal that still holds, and repeat until no single removal
  does (a local minimum; under monotonicity one pass would do, the repeat guards against
  noise).  A shape whose bound already costs more than the cheapest
  candidate found so far is skipped (pruned), as is one the bound puts out of the space.
- Jobs go through ``experiments.sweep.run_jobs`` (local processes or Ray, in job order),
  so the answer does not depend on the executor.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from clipperlab.report.latency import summarise
from clipperlab.simulator import Simulation
from clipperlab.simulator.capacity import attained_share

from .plan_space import Candidate, PlanSpec, plan_from_dict
from .sweep import Job, run_jobs

__all__ = ["Evaluation", "Search", "SearchResult", "simulate_seed"]

BURST_WINDOW_S = 0.25
DEADLINE_TOLERANCE_S = 1e-9  # float rounding of an answer exactly at the deadline


# ------------------------------------------------------------------------- one run


_SPECS: dict[str, PlanSpec] = {}  # a worker reads each plan once


def _spec_of(payload: dict[str, Any]) -> PlanSpec:
    key = json.dumps([payload["doc"], payload["file"], payload["base_dir"],
                      payload["margin_ms"]], sort_keys=True)
    spec = _SPECS.get(key)
    if spec is None:
        spec = _SPECS[key] = plan_from_dict(payload["doc"], payload["file"],
                                            Path(payload["base_dir"]),
                                            margin_ms=payload["margin_ms"])
    return spec


def plan_job(job: Job) -> pd.DataFrame:
    """A sweep job: one candidate, one seed (``job.overrides``: the payload as JSON)."""
    payload = json.loads(dict(job.overrides)["plan"])
    spec = _spec_of(payload)
    return simulate_seed(spec, Candidate.from_payload(payload["candidate"]), job.seed)


def simulate_seed(spec: PlanSpec, cand: Candidate, seed: int) -> pd.DataFrame:
    """One row per application: the share in time and what explains the misses."""
    dep = spec.deployment(cand)
    traces = [wl.generate(seed) for wl in spec.workload_objects()]
    res = Simulation(dep, traces if len(traces) > 1 else traces[0], seed=seed).run()
    q = res.queries
    span = max(float(q["arrival_at"].max() - q["arrival_at"].min()), 1e-9)
    util = _utilisation(res.batches, cand, span)
    rows = []
    objs = {o.app: o for o in spec.objectives}
    for app, o in objs.items():
        qa = q[q["app"] == app]
        within = spec.within_eff_s(o)
        share = attained_share(qa, within + DEADLINE_TOLERANCE_S)
        s = summarise(qa)
        lat = qa["latency_s"].to_numpy(float)
        miss = ~((lat <= within) & ~qa["default"].to_numpy(bool))
        burst_q, burst_m = _burst_shares(qa["arrival_at"].to_numpy(float), miss)
        rows.append({
            "app": app, "seed": seed, "n": len(qa), "attainment": share,
            "p50_ms": s.get("p50_ms", math.nan), "p99_ms": s.get("p99_ms", math.nan),
            "default_rate": s.get("default_rate", math.nan),
            "missing_share": s.get("missing_share", 0.0),
            "burst_query_share": burst_q, "burst_miss_share": burst_m,
            "util": json.dumps(util),
        })
    return pd.DataFrame(rows)


def _utilisation(batches: pd.DataFrame, cand: Candidate, span_s: float) -> dict[str, float]:
    """Each model's busy share: its batches' service time over replicas x the span."""
    out = {}
    for c in cand.choices:
        b = batches[(batches["model"] == c.model) & (batches["status"] == "done")]
        busy = float((b["done_at"] - b["start_at"]).sum())
        out[c.model] = busy / (c.replicas * span_s)
    return out


def _burst_shares(arrival_at: np.ndarray, miss: np.ndarray) -> tuple[float, float]:
    """The share of queries, and of misses, in the busiest windows (rate above 1.25 x the
    mean, ``BURST_WINDOW_S`` long)."""
    if arrival_at.size < 2 or not miss.any():
        return math.nan, math.nan
    w = np.floor((arrival_at - arrival_at.min()) / BURST_WINDOW_S).astype(np.int64)
    counts = np.bincount(w)
    busy = counts[w] > 1.25 * counts[counts > 0].mean()
    return float(busy.mean()), float(busy[miss].mean())


# ------------------------------------------------------------------------- verdicts


@dataclass
class Evaluation:
    """A candidate's runs so far and the verdict."""

    candidate: Candidate
    cost: float
    rows: list[pd.DataFrame] = field(default_factory=list)
    meets: bool | None = None  # None: not simulated (pruned by a bound)
    clear: bool = False
    reason: str = ""

    @property
    def table(self) -> pd.DataFrame:
        return pd.concat(self.rows, ignore_index=True) if self.rows else pd.DataFrame()

    @property
    def seeds(self) -> int:
        return int(self.table["seed"].nunique()) if self.rows else 0

    def per_app(self) -> pd.DataFrame:
        """Per application: pooled share in time, its 95% interval over seeds, latency."""
        t = self.table
        out = []
        for app, g in t.groupby("app", sort=False):
            x = g["attainment"].to_numpy(float)
            pooled = float((g["attainment"] * g["n"]).sum() / max(g["n"].sum(), 1))
            half = (float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
                    if x.size > 1 else math.nan)
            out.append({"app": app, "attainment": pooled, "ci_lo": pooled - half,
                        "ci_hi": pooled + half, "p50_ms": float(g["p50_ms"].mean()),
                        "p99_ms": float(g["p99_ms"].mean()),
                        "default_rate": float(g["default_rate"].mean()),
                        "missing_share": float(g["missing_share"].mean()),
                        "burst_query_share": float(g["burst_query_share"].mean()),
                        "burst_miss_share": float(g["burst_miss_share"].mean()),
                        "seeds": int(x.size)})
        return pd.DataFrame(out)

    def utilisation(self) -> dict[str, float]:
        us = [json.loads(u) for u in self.table["util"]]
        return {m: float(np.mean([u[m] for u in us])) for m in us[0]} if us else {}

    def min_attainment(self) -> float:
        return float(self.per_app()["attainment"].min()) if self.rows else math.nan


def decide(ev: Evaluation, spec: PlanSpec, final: bool) -> None:
    """Set ``ev.meets``/``ev.clear`` from its seeds so far (module rules); ``final``: no
    more seeds will come."""
    per = ev.per_app()
    targets = {o.app: o.attainment for o in spec.objectives}
    limits = {o.app: spec.missing_limit(o) for o in spec.objectives}
    ins, outs = [], []
    t = ev.table
    for r in per.itertuples():
        a, lim = targets[str(r.app)], limits[str(r.app)]
        seeds_x = t.loc[t["app"] == r.app, "attainment"].to_numpy(float)
        miss_x = np.nan_to_num(t.loc[t["app"] == r.app, "missing_share"].to_numpy(float))
        far = bool(np.all(seeds_x < a - spec.early_gap))
        ins.append(r.seeds > 1 and r.ci_lo >= a and bool(np.all(miss_x <= lim)))
        outs.append(far or (r.seeds > 1 and r.ci_hi < a) or bool(np.all(miss_x > lim)))
    if any(outs):
        ev.meets, ev.clear = False, True
    elif all(ins):
        ev.meets, ev.clear = True, True
    elif final:
        ev.meets = bool(all(r.attainment >= targets[str(r.app)]
                            and np.nan_to_num(r.missing_share) <= limits[str(r.app)]
                            for r in per.itertuples()))
        ev.clear = False
    ev.reason = explain(ev, spec)


def explain(ev: Evaluation, spec: PlanSpec) -> str:
    """Why a candidate fails (or a note on one that meets): the share in time and the
    likeliest cause."""
    per = ev.per_app()
    targets = {o.app: o.attainment for o in spec.objectives}
    limits = {o.app: spec.missing_limit(o) for o in spec.objectives}
    parts = []
    util = ev.utilisation()
    for r in per.itertuples():
        text = f"{r.app}: {r.attainment:.1%} in time (target {targets[str(r.app)]:.1%})"
        if r.attainment < targets[str(r.app)]:
            text += "; " + _cause(r, util)
        lim = limits[str(r.app)]
        if lim < 1.0:
            text += (f"; {np.nan_to_num(r.missing_share):.1%} of the members' answers "
                     f"missing (at most {lim:.1%}"
                     + (f" with the {spec.missing_margin:.1%} margin" if spec.missing_margin
                        else "") + ")")
        parts.append(text)
    if ev.meets is not None and not ev.clear:
        parts.append("borderline: the seeds' interval straddles the target")
    return "; ".join(parts)


def _cause(r: Any, util: dict[str, float]) -> str:
    busiest = max(util, key=lambda m: util[m]) if util else ""
    if busiest and util[busiest] > 0.97:
        return f"saturated ({busiest} busy {util[busiest]:.0%})"
    if (math.isfinite(r.burst_miss_share) and r.burst_miss_share > 0.7
            and r.burst_query_share < 0.5):
        return (f"queueing in bursts ({r.burst_miss_share:.0%} of misses in the busiest "
                f"{r.burst_query_share:.0%} of the time)")
    if r.default_rate > 0.005:  # before stragglers: a default lacks its one model too
        return (f"defaults ({r.default_rate:.1%} of queries: shed by admission control or "
                "past the deadline)")
    if r.missing_share > 0.01:
        return f"stragglers ({r.missing_share:.1%} of answers lack a member)"
    return f"tail latency (p99 {r.p99_ms:.1f} ms)" + (
        f", {busiest} busy {util[busiest]:.0%}" if busiest else "")


# ------------------------------------------------------------------------- the search


@dataclass
class SearchResult:
    best: Evaluation | None
    evaluations: list[Evaluation]
    pruned: list[Evaluation]
    runs: int  # simulated runs (candidate x seed)


class Search:
    """The search over one plan (see the module's theory of operation)."""

    def __init__(self, spec: PlanSpec, *, executor: str = "local", workers: int = 1,
                 ray_address: str | None = None,
                 on_run: Callable[[int], None] | None = None) -> None:
        self.spec = spec
        self.executor = executor
        self.workers = max(1, workers)
        self.ray_address = ray_address
        self.on_run = on_run
        self.cache: dict[Candidate, Evaluation] = {}
        self.pruned: list[Evaluation] = []
        self.runs = 0
        self.best: Evaluation | None = None
        self._payload = {"doc": _jsonable(spec), "file": spec.path,
                         "base_dir": str(spec.base_dir), "margin_ms": spec.margin_s * 1e3}

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, cand: Candidate) -> Evaluation:
        """Simulate ``cand`` over seeds until its verdict is clear (or seeds run out)."""
        ev = self.cache.get(cand)
        if ev is not None:
            return ev
        ev = Evaluation(cand, self.spec.cost(cand))
        seed = 0
        while seed < self.spec.seeds:
            k = min(self.workers if seed else max(self.workers, 1), self.spec.seeds - seed)
            ev.rows.extend(self._run(cand, range(seed, seed + k)))
            seed += k
            decide(ev, self.spec, final=seed >= self.spec.seeds)
            if ev.clear:
                break
        self.cache[cand] = ev
        if ev.meets and (self.best is None or (ev.cost, -ev.min_attainment())
                         < (self.best.cost, -self.best.min_attainment())):
            self.best = ev
        return ev

    def _run(self, cand: Candidate, seeds: Sequence[int]) -> list[pd.DataFrame]:
        payload = json.dumps({**self._payload, "candidate": cand.to_payload()})
        jobs = [Job(i, "plan", (("plan", payload),), s) for i, s in enumerate(seeds)]
        tables = run_jobs(jobs, n_workers=self.workers, executor=self.executor,
                          progress=False, fn=plan_job, ray_address=self.ray_address)
        self.runs += len(jobs)
        if self.on_run is not None:
            self.on_run(len(jobs))
        return tables

    def prune(self, cand: Candidate, reason: str) -> None:
        ev = Evaluation(cand, self.spec.cost(cand), reason=f"pruned: {reason}")
        self.pruned.append(ev)

    # ------------------------------------------------------------------ per shape
    def search(self) -> SearchResult:
        shapes = []
        for shape in self.spec.shapes():
            lb, why = self.spec.lower_bounds(shape)
            shapes.append((self.spec.cost(shape.with_replicas(lb)), shape, lb, why))
        shapes.sort(key=lambda s: (s[0], s[1]))
        for lb_cost, shape, lb, why in shapes:
            over = [m for m, r in lb.items() if r > self.spec.space(m).max_replicas]
            if over:
                m = over[0]
                top = shape.with_replicas({**lb, m: self.spec.space(m).max_replicas})
                self.prune(top, f"{why[m]}: needs more than "
                                f"{self.spec.space(m).max_replicas} replicas")
                continue
            if self.best is not None and lb_cost > self.best.cost:
                self.prune(shape.with_replicas(lb), f"its bound already costs {lb_cost:g} > "
                                                    f"{self.best.cost:g}")
                continue
            if len(shape.choices) == 1:
                self._bisect(shape, lb, why)
            else:
                self._greedy(shape, lb)
        if self.best is not None:
            self._cheaper_neighbours(self.best.candidate)
        return SearchResult(self.best, list(self.cache.values()), self.pruned, self.runs)

    def _bisect(self, shape: Candidate, lb: dict[str, int], why: dict[str, str]) -> None:
        (m,) = lb
        lo, hi = lb[m], self.spec.space(m).max_replicas
        if lo > self.spec.space(m).min_replicas:
            self.prune(shape.with_replicas({m: lo - 1}), why[m])
        if self.evaluate(shape.with_replicas({m: lo})).meets:
            return
        top = self.evaluate(shape.with_replicas({m: hi}))
        if not top.meets:
            return
        while hi - lo > 1:  # lo fails, hi holds
            mid = (lo + hi) // 2
            if self.best is not None and self.spec.cost(shape.with_replicas({m: mid})) \
                    > self.best.cost:
                hi = mid  # dearer than a candidate that holds: not needed
                continue
            if self.evaluate(shape.with_replicas({m: mid})).meets:
                hi = mid
            else:
                lo = mid

    def _greedy(self, shape: Candidate, lb: dict[str, int]) -> None:
        r = dict(lb)
        while True:
            ev = self.evaluate(shape.with_replicas(r))
            if ev.meets:
                break
            util = ev.utilisation()
            room = [m for m in r if r[m] < self.spec.space(m).max_replicas]
            if not room:
                return
            short = self._models_of_failing(ev)
            room = [m for m in room if m in short] or room
            m = max(room, key=lambda k: util.get(k, 0.0))
            r[m] += 1
            nxt = shape.with_replicas(r)
            if self.best is not None and self.spec.cost(nxt) > self.best.cost:
                self.prune(nxt, f"it costs {self.spec.cost(nxt):g} > {self.best.cost:g}, "
                                "the cheapest candidate found to hold")
                return
        self._descend(shape, r, lb)

    def _models_of_failing(self, ev: Evaluation) -> set[str]:
        """The models linked to an application that misses its objective."""
        objs = {o.app: o for o in self.spec.objectives}
        links = {str(t.get("name")): [str(m) for m in t.get("models", [])]
                 for t in self.spec.doc[self.spec.app_key()]}
        out: set[str] = set()
        for r in ev.per_app().itertuples():
            o = objs[str(r.app)]
            if (r.attainment < o.attainment
                    or np.nan_to_num(r.missing_share) > self.spec.missing_limit(o)):
                out.update(links.get(str(r.app), []))
        return out

    def _descend(self, shape: Candidate, r: dict[str, int], lb: dict[str, int]) -> None:
        """Greedy descent from ``r`` (which holds) to a local minimum (module's theory)."""
        hw = {c.model: c.hardware for c in shape.choices}
        order = sorted(r, key=lambda m: -self.spec.costs[hw[m]])  # dearest replica first
        while True:
            for m in order:
                if r[m] <= lb[m]:
                    continue
                trial = {**r, m: r[m] - 1}
                if self.evaluate(shape.with_replicas(trial)).meets:
                    r = trial
                    break
            else:
                return

    def _cheaper_neighbours(self, cand: Candidate) -> None:
        """One fewer replica of each model of the recommendation: what ``--verify`` runs
        as the next-cheaper deployment and what the plan explains."""
        for c in cand.choices:
            if c.replicas > 1:
                self.evaluate(cand.with_replicas({**cand.replicas(), c.model: c.replicas - 1}))


def _jsonable(spec: PlanSpec) -> dict[str, Any]:
    """The plan's document as the workers rebuild it (the original tables)."""
    doc = dict(spec.doc)
    doc["workloads"] = [dict(w) for w in spec.workloads]  # already at the planned rate
    doc["plan"] = {"seeds": spec.seeds, "peak_factor": 1.0, "early_gap": spec.early_gap,
                   "missing_margin": spec.missing_margin}
    doc["objective"] = {"attainment": 0.5, "apps": {
        o.app: {"attainment": o.attainment, "within_ms": o.within_s * 1e3,
                "max_missing_share": o.max_missing_share}
        for o in spec.objectives}}
    doc["costs"] = dict(spec.costs)
    doc["search"] = {"models": {s.name: {
        "replicas": [s.min_replicas, s.max_replicas],
        "hardware": {h: ref for h, _, ref in s.hardware},
        "batching": [dict(t) for _, t in s.batching]} for s in spec.spaces}}
    out: dict[str, Any] = json.loads(json.dumps(doc))
    return out
