"""The planner's inputs: the plan file, the search space, the objective, costs, bounds and
the margin (``clipperlab plan``; the search is ``plan_search``, the outputs ``plan``).

A plan file is a ``clipperlab simulate`` config (``[[applications]]`` and ``[[models]]``
read by ``engine.schema``, ``[frontend_cpu]``, ``[host_cpu]``, ``[[hosts]]``; one
``[workload]`` or several ``[[workloads]]``, one per application) plus the planner's own
tables::

    [plan]
    seeds = 5              # at most this many seeds per candidate (default 5)
    peak_factor = 2.0      # plan for the workloads' rates x this (default 1)
    margin_ms = "fidelity" # or milliseconds (default "fidelity", see below)
    early_gap = 0.05       # one seed this far below the target: clearly out (default)
    missing_margin = 0.0   # plan for max_missing_share less this (default 0)

    [objective]            # required: the share answered in time (not a default)
    attainment = 0.99      # required, no default; or p99_ms = 50 (= attainment 0.99
    within_ms = 50         #   within 50 ms); within_ms: default each application's SLO
    [objective.apps.NAME]  # per application: attainment, within_ms, p99_ms,
                           #   max_missing_share (ensembles, default 1: no limit)

    [costs]                # cost per replica by hardware kind (default cpu = 1, gpu = 4)
    gpu = 4.0

    [search.models.NAME]   # per model (default: its own profile, batching, 1..16)
    replicas = [1, 16]
    hardware = { gpu = "synthetic-convnet-gpu", cpu = "measured-torch-cnn" }
    batching = [{ policy = "aimd" }, { policy = "fixed", max_batch_size = 8 }]

Rules:
- A *shape* is one hardware kind and one batching option per model; a *candidate* is a
  shape with a replica count per model.  Its cost is the sum over models of replicas x
  the cost of its hardware kind.
- Batching tables are ``BatchingConfig`` fields; a table that leaves ``admission_control``
  or ``drop_hopeless`` unsaid gets the real server's defaults (both on, ``[server]`` of
  ``deploy.toml``), so the simulated candidate is the deployment ``clipperlab serve``
  runs.
- The objective of an application holds when at least ``attainment`` of its queries are
  answered, not by default, within ``within_ms - margin``; ``p99_ms = X`` is the same as
  ``attainment = 0.99, within_ms = X`` (a default counts as late, as in the p99 a client
  sees).
- An ensemble application (a policy that asks several models, e.g. Exp4) answers at its
  deadline with the members that arrived (straggler mitigation): such a reply is not a
  default, and it is in time when the deadline is.  So the planner sets an ensemble
  application's deadline (its ``slo_ms``, in the simulated candidate and in
  ``deploy.toml``) to the objective's latency less the margin when the application's own
  is later (``PlanSpec.app_tables``); otherwise every answer without a straggler would
  count as late and the plan would size every member for its own tail.  What a reply
  without a member costs (accuracy) is bounded, if the plan wants, by
  ``max_missing_share``: the share of the members' answers that may be missing
  (``n_missing / n_selected`` over the application's queries; default 1, no limit).  The
  search plans for ``max_missing_share - missing_margin`` (``[plan]``, default 0): the
  margin for how many more answers the real server misses than the simulator.
- The margin (milliseconds, ``margin_ms``) is what the simulator has been measured to
  miss: by default (``"fidelity"``) the median, over the rows of
  ``results/validation/fidelity_goals.csv`` at the lowest load level measured (30% of
  capacity: plans run the frontend lightly), of how far the real p99 was above the
  simulated one (``real_p99_ms - sim_p99_ms``, 0 where the simulator was above), in the
  mode the plan simulates (``sim+frontend`` with a ``[frontend_cpu]``, else ``sim``).
  Without that table the margin is ``FALLBACK_MARGIN_SHARE`` (10%) of the objective's
  latency, and the plan says so.
- Bounds: a replica of a model cannot answer in time more than ``ceiling_qps`` queries
  per second: the best ``b / mean latency(b)`` over the batch sizes ``b`` the batching cap
  allows whose fastest latency is within the objective.  A model gets each query of an
  ensemble application linked to it, and of an application that links it alone; the
  replicas it needs are at least ``share x load / ceiling`` (rounded up), where ``share``
  is the share of those queries it must answer in time: ``attainment`` for an
  application that links it alone; for a member of an ensemble of ``K`` models, at least
  ``1 - K x max_missing_share`` (the missing answers, at most ``max_missing_share x K x
  queries``, could all be its own), 0 without a limit (straggler mitigation answers
  without it).  An
  application whose every configuration is slower than its objective at batch size 1 is
  a one-line error, before any simulation.
- Errors are ``PlanError``: one line, the file and the field.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipperlab.engine import ConfigError
from clipperlab.engine.schema import (
    SLO_FIELDS,
    application_tables,
    parse_application,
    parse_batching,
    parse_document,
)
from clipperlab.engine.selection import policy_class
from clipperlab.real.config import ServerConfig
from clipperlab.simulator import (
    Deployment,
    LatencyProfile,
    ProfileError,
    SimConfigError,
    config_from_dict,
    load_profile,
)
from clipperlab.workloads import Workload, WorkloadError

__all__ = [
    "DEFAULT_COSTS",
    "FALLBACK_MARGIN_SHARE",
    "FIDELITY_GOALS",
    "Candidate",
    "Choice",
    "ModelSpace",
    "Objective",
    "PlanError",
    "PlanSpec",
    "batching_label",
    "ceiling_qps",
    "fidelity_margin_ms",
    "load_plan",
    "plan_from_dict",
]

DEFAULT_COSTS: dict[str, float] = {"cpu": 1.0, "gpu": 4.0}
FALLBACK_MARGIN_SHARE = 0.10
FIDELITY_GOALS = Path("results/validation/fidelity_goals.csv")
_PLAN_TABLES = ("plan", "objective", "costs", "search", "workload", "workloads")
# what ``clipperlab serve`` gives a model whose batching leaves it unsaid (overload
# settings, AIMD's rule): the planner simulates each option with them spelled out, so the
# deployment it writes runs as it simulated
_SERVER_DEFAULTS: dict[str, Any] = ServerConfig().model_defaults


class PlanError(ValueError):
    """Bad plan input: one line naming the file, the field and the rule."""


@dataclass(frozen=True, slots=True)
class Objective:
    """Application ``app`` holds when ``attainment`` of its queries are answered in time
    (not by default) within ``within_s`` (before the margin)."""

    app: str
    attainment: float
    within_s: float
    max_missing_share: float = 1.0  # ensembles: the members' answers that may be missing


@dataclass(frozen=True, slots=True)
class ModelSpace:
    """What the search may choose for one model."""

    name: str
    hardware: tuple[tuple[str, LatencyProfile, str], ...]  # (kind label, profile, its ref)
    batching: tuple[tuple[str, Mapping[str, Any]], ...]  # (label, BatchingConfig table)
    min_replicas: int
    max_replicas: int


@dataclass(frozen=True, slots=True, order=True)
class Choice:
    """One model's part of a candidate."""

    model: str
    hardware: str
    batching: str
    replicas: int


@dataclass(frozen=True, slots=True, order=True)
class Candidate:
    choices: tuple[Choice, ...]

    @property
    def shape(self) -> tuple[tuple[str, str, str], ...]:
        return tuple((c.model, c.hardware, c.batching) for c in self.choices)

    def replicas(self) -> dict[str, int]:
        return {c.model: c.replicas for c in self.choices}

    def with_replicas(self, replicas: Mapping[str, int]) -> Candidate:
        return Candidate(tuple(Choice(c.model, c.hardware, c.batching, replicas[c.model])
                               for c in self.choices))

    def label(self) -> str:
        return "; ".join(f"{c.model}: {c.replicas} x {c.hardware}, {c.batching}"
                         for c in self.choices)

    def to_payload(self) -> list[list[Any]]:
        return [[c.model, c.hardware, c.batching, c.replicas] for c in self.choices]

    @classmethod
    def from_payload(cls, data: Sequence[Sequence[Any]]) -> Candidate:
        return cls(tuple(Choice(str(m), str(h), str(b), int(r)) for m, h, b, r in data))


@dataclass(frozen=True)
class PlanSpec:
    """A plan file, read and checked."""

    path: str
    base_dir: Path
    doc: Mapping[str, Any]  # the simulator's part of the file
    workloads: tuple[Mapping[str, Any], ...]  # workload tables, rates x peak_factor
    objectives: tuple[Objective, ...]
    costs: Mapping[str, float]
    spaces: tuple[ModelSpace, ...]
    seeds: int = 5
    peak_factor: float = 1.0
    early_gap: float = 0.05
    margin_s: float = 0.0
    margin_source: str = ""
    missing_margin: float = 0.0
    ensembles: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # app -> models
    slos: Mapping[str, float] = field(default_factory=dict)  # app -> its own deadline (s)

    # -------------------------------------------------------------------- derived
    def space(self, model: str) -> ModelSpace:
        return next(s for s in self.spaces if s.name == model)

    def profile(self, model: str, hardware: str) -> LatencyProfile:
        return next(p for h, p, _ in self.space(model).hardware if h == hardware)

    def batching(self, model: str, label: str) -> Mapping[str, Any]:
        return next(t for b, t in self.space(model).batching if b == label)

    def cost(self, cand: Candidate) -> float:
        return float(sum(c.replicas * self.costs[c.hardware] for c in cand.choices))

    def shapes(self) -> list[Candidate]:
        """Every shape, as a candidate at each model's minimum replicas."""
        per_model = [
            [Choice(s.name, h, b, s.min_replicas) for (h, _, _), (b, _) in
             itertools.product(s.hardware, s.batching)]
            for s in self.spaces
        ]
        return [Candidate(tuple(c)) for c in itertools.product(*per_model)]

    def workload_objects(self) -> list[Workload]:
        return [Workload.from_dict(w, f"workloads[{i}]") for i, w in enumerate(self.workloads)]

    def planned_qps(self) -> dict[str, float]:
        """Each application's mean planned rate (queries per second, peak factor in)."""
        out: dict[str, float] = {}
        for wl in self.workload_objects():
            tr = wl.generate(0)
            t = tr.arrival_at
            out[wl.app] = (t.size - 1) / float(t[-1] - t[0]) if t.size > 1 else 0.0
        return out

    def app_key(self) -> str:
        return "applications" if "applications" in self.doc else "apps"

    def app_tables(self) -> list[dict[str, Any]]:
        """The application tables as the candidates run them: an ensemble's deadline at
        its objective's latency less the margin when its own is later (module rules)."""
        objs = {o.app: o for o in self.objectives}
        out = []
        for t in self.doc[self.app_key()]:
            t = dict(t)
            name = str(t.get("name"))
            if name in objs and len(self.ensembles.get(name, ())) > 1:
                eff_s = self.within_eff_s(objs[name])
                if self.slos[name] > eff_s:
                    for k in SLO_FIELDS:
                        t.pop(k, None)
                    t["slo_ms"] = eff_s * 1e3
            out.append(t)
        return out

    def sim_doc(self, cand: Candidate) -> dict[str, Any]:
        """The simulator config (``clipperlab simulate``'s format, workloads left out) of
        ``cand``: each model's profile, batching and replicas set, the applications'
        deadlines as ``app_tables`` says."""
        doc = copy.deepcopy(dict(self.doc))
        doc[self.app_key()] = self.app_tables()
        by_name = {c.model: c for c in cand.choices}
        for m in doc["models"]:
            c = by_name[m["name"]]
            ref = next(r for h, _, r in self.space(c.model).hardware if h == c.hardware)
            m["profile"] = ref
            m["batching"] = dict(self.batching(c.model, c.batching))
            m["replicas"] = c.replicas
        return doc

    def deployment(self, cand: Candidate) -> Deployment:
        try:
            return config_from_dict(self.sim_doc(cand), self.path, self.base_dir).deployment
        except SimConfigError as e:
            raise PlanError(str(e)) from None

    def within_eff_s(self, obj: Objective) -> float:
        return obj.within_s - self.margin_s

    def missing_limit(self, obj: Objective) -> float:
        """The missing share the search plans for: the objective's less the margin."""
        if obj.max_missing_share >= 1.0:
            return 1.0
        return max(0.0, obj.max_missing_share - self.missing_margin)

    def lower_bounds(self, shape: Candidate) -> tuple[dict[str, int], dict[str, str]]:
        """Each model's fewest replicas by the throughput bound, and why (module rules)."""
        loads = self.model_loads()
        lb: dict[str, int] = {}
        why: dict[str, str] = {}
        for c in shape.choices:
            s = self.space(c.model)
            load, share, within = loads.get(c.model, (0.0, 1.0, math.inf))
            cap = int(self.batching(c.model, c.batching).get("max_batch_size", 1 << 16))
            if self.batching(c.model, c.batching).get("policy") == "none":
                cap = 1
            ceil = ceiling_qps(self.profile(c.model, c.hardware), cap, within)
            need = s.min_replicas
            if load > 0:
                need = (max(need, math.ceil(share * load / ceil - 1e-9)) if ceil > 0
                        else s.max_replicas + 1 if share > 0 else need)
            lb[c.model] = need
            why[c.model] = (f"a replica of {c.model} ({c.hardware}, {c.batching}) answers "
                            f"at most {ceil:,.0f} q/s in time; the planned load is "
                            f"{load:,.0f} q/s, of which it must answer at least "
                            f"{share:.0%}")
        return lb, why

    def model_loads(self) -> dict[str, tuple[float, float, float]]:
        """model -> (planned q/s it gets, the largest share of it it must answer in time,
        the tightest effective latency) over the applications that send it every query
        (module rules, "Bounds")."""
        qps = self.planned_qps()
        objs = {o.app: o for o in self.objectives}
        out: dict[str, tuple[float, float, float]] = {}
        for app, models in self.ensembles.items():
            o = objs[app]
            for m in models:
                load, share, within = out.get(m, (0.0, 0.0, math.inf))
                need = (o.attainment if len(models) == 1
                        else max(0.0, 1.0 - len(models) * self.missing_limit(o)))
                out[m] = (load + qps.get(app, 0.0), max(share, need),
                          min(within, self.within_eff_s(o)))
        return out


def batching_label(t: Mapping[str, Any]) -> str:
    """A short name for a batching table: ``aimd``, ``fixed<=8``, ``aimd+wait2ms``; the
    overload settings only where they differ from the server's defaults."""
    s = str(t.get("policy", "aimd"))
    if "max_batch_size" in t:
        s += f"<={int(t['max_batch_size'])}"
    if t.get("wait_timeout_s"):
        s += f"+wait{float(t['wait_timeout_s']) * 1e3:g}ms"
    rest = sorted(k for k in t if k not in ("policy", "max_batch_size", "wait_timeout_s")
                  and not (k in _SERVER_DEFAULTS and t[k] == _SERVER_DEFAULTS[k]))
    if rest:
        s += "(" + ",".join(f"{k}={t[k]}" for k in rest) + ")"
    return s


def ceiling_qps(profile: LatencyProfile, max_batch: int, within_s: float) -> float:
    """The most queries per second one replica can answer in time (module rules)."""
    best = 0.0
    b = 1
    top = min(max_batch, 4096)
    while b <= top:
        if profile.quantile_s(b, 0.0) > within_s:
            break
        best = max(best, b / profile.mean_s(b))
        b = b + 1 if b < 64 else int(b * 1.25)
    return best


def fidelity_margin_ms(within_ms: float, frontend: bool,
                       path: Path = FIDELITY_GOALS) -> tuple[float, str]:
    """The margin in milliseconds and a sentence saying where it comes from."""
    mode = "sim+frontend" if frontend else "sim"
    try:
        t = pd.read_csv(path)
        t = t[t["mode"] == mode]
        low = t[t["level"] == t["level"].min()]
        gaps = np.maximum(low["real_p99_ms"].to_numpy(float) - low["sim_p99_ms"].to_numpy(float),
                          0.0)
        gaps = gaps[np.isfinite(gaps)]
    except (OSError, KeyError, ValueError):
        gaps = np.array([])
    if gaps.size == 0:
        m = FALLBACK_MARGIN_SHARE * within_ms
        return m, (f"no fidelity table at {path}: {FALLBACK_MARGIN_SHARE:.0%} of the "
                   f"objective's latency ({m:.2f} ms)")
    m = float(np.median(gaps))
    return m, (f"the median of real p99 - simulated p99 over the {gaps.size} "
               f"lightest-load rows ({mode}) of {path}: {m:.2f} ms")


# ------------------------------------------------------------------------- reading


def load_plan(path: str | Path, *, margin_ms: float | None = None,
              fidelity: Path = FIDELITY_GOALS) -> PlanSpec:
    """Read and check a plan file (``PlanError`` naming the file and field)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise PlanError(f"{p}: cannot read the plan file ({e.strerror})") from None
    try:
        data = parse_document(text, str(p))
    except ConfigError as e:
        raise PlanError(str(e)) from None
    return plan_from_dict(data, str(p), p.resolve().parent, margin_ms=margin_ms,
                          fidelity=fidelity)


def _num(v: Any, where: str, lo: float = 0.0, hi: float = math.inf,
         lo_open: bool = True) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise PlanError(f"{where}: expected a number, got {v!r}")
    if (v <= lo if lo_open else v < lo) or v > hi:
        raise PlanError(f"{where}: expected a number in {'(' if lo_open else '['}{lo:g}, "
                        f"{hi:g}], got {v!r}")
    return float(v)


def _tbl(v: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        raise PlanError(f"{where}: expected a table, got {v!r}")
    return v


def _only(t: Mapping[str, Any], keys: Sequence[str], where: str) -> None:
    extra = sorted(set(t) - set(keys))
    if extra:
        raise PlanError(f"{where}: unknown field(s) {extra}; expected some of {sorted(keys)}")


def scaled_workload(w: Mapping[str, Any], factor: float, base_dir: Path) -> dict[str, Any]:
    """A workload table with its arrival rate times ``factor`` (a trace: its times divided
    by it) and a relative trace path made absolute."""
    out: dict[str, Any] = copy.deepcopy(dict(w))
    arr = dict(_tbl(out.get("arrivals"), "workload.arrivals"))
    if "qps" in arr:
        arr["qps"] = arr["qps"] * factor
    if "rates_qps" in arr and isinstance(arr["rates_qps"], list):
        arr["rates_qps"] = [r * factor for r in arr["rates_qps"]]
    if arr.get("kind") == "trace":
        arr["time_scale"] = float(arr.get("time_scale", 1.0)) / factor
        if isinstance(arr.get("csv_path"), str) and not Path(arr["csv_path"]).is_absolute():
            arr["csv_path"] = str(base_dir / arr["csv_path"])
    out["arrivals"] = arr
    return out


def plan_from_dict(data: Mapping[str, Any], file: str = "<plan>", base_dir: Path | None = None,
                   *, margin_ms: float | None = None,
                   fidelity: Path = FIDELITY_GOALS) -> PlanSpec:
    base = base_dir or Path.cwd()
    plan = _tbl(data.get("plan", {}), f"{file}: plan")
    _only(plan, ("seeds", "peak_factor", "margin_ms", "early_gap", "missing_margin"),
          f"{file}: plan")
    seeds = plan.get("seeds", 5)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or not 1 <= seeds <= 100:
        raise PlanError(f"{file}: plan.seeds: expected an integer in [1, 100], got {seeds!r}")
    peak = _num(plan.get("peak_factor", 1.0), f"{file}: plan.peak_factor")
    gap = _num(plan.get("early_gap", 0.05), f"{file}: plan.early_gap", 0.0, 1.0)
    missing_margin = _num(plan.get("missing_margin", 0.0), f"{file}: plan.missing_margin",
                          0.0, 1.0, lo_open=False)
    doc = {k: v for k, v in data.items() if k not in _PLAN_TABLES}
    # workloads
    if "workload" in data and "workloads" in data:
        raise PlanError(f"{file}: give [workload] or [[workloads]], not both")
    raw_wls = data.get("workloads", [data["workload"]] if "workload" in data else [])
    if not isinstance(raw_wls, list) or not raw_wls:
        raise PlanError(f"{file}: workload: expected a [workload] table or [[workloads]] "
                        "tables (the load to plan for)")
    wls = tuple(scaled_workload(_tbl(w, f"{file}: workloads[{i}]"), peak, base)
                for i, w in enumerate(raw_wls))
    try:
        apps_seen = [Workload.from_dict(w, f"workloads[{i}]").app for i, w in enumerate(wls)]
    except WorkloadError as e:
        raise PlanError(f"{file}: {e}") from None
    # applications (the schema's parser; the simulator checks the rest below)
    try:
        key, tables = application_tables(data)
        entries = [parse_application(t, f"{key}[{i}]", base) for i, t in enumerate(tables)]
    except ConfigError as e:
        raise PlanError(f"{file}: {e}") from None
    if not entries:
        raise PlanError(f"{file}: applications: expected at least one [[applications]] table")
    apps = {e.app.name: e for e in entries}
    for a in apps_seen:
        if a not in apps:
            raise PlanError(f"{file}: workload app {a!r} is not an application; "
                            f"applications: {sorted(apps)}")
    if len(set(apps_seen)) != len(apps_seen):
        raise PlanError(f"{file}: workloads: one workload per application, got {apps_seen}")
    ensembles = {}
    for name, entry in apps.items():
        if name not in apps_seen:
            continue
        ens = bool(getattr(policy_class(entry.app.policy), "ensemble", False))
        ensembles[name] = tuple(entry.models) if (ens or len(entry.models) == 1) else ()
    # objective
    objectives = _objectives(data, file, {n: a.app.slo_s for n, a in apps.items()
                                          if n in apps_seen})
    # costs
    costs = dict(DEFAULT_COSTS)
    for k, v in _tbl(data.get("costs", {}), f"{file}: costs").items():
        costs[str(k)] = _num(v, f"{file}: costs.{k}", 0.0, lo_open=False)
    # the search space
    models = data.get("models")
    if not isinstance(models, list) or not models:
        raise PlanError(f"{file}: models: expected at least one [[models]] table")
    search = _tbl(data.get("search", {}), f"{file}: search")
    _only(search, ("models",), f"{file}: search")
    per_model = _tbl(search.get("models", {}), f"{file}: search.models")
    names = [str(_tbl(m, f"{file}: models").get("name")) for m in models]
    for n in per_model:
        if n not in names:
            raise PlanError(f"{file}: search.models.{n}: not a model; models: {names}")
    spaces = tuple(_space(m, _tbl(per_model.get(str(m.get("name")), {}),
                                  f"{file}: search.models.{m.get('name')}"), file, base, costs)
                   for m in models)
    # the margin
    within_ms = min(o.within_s for o in objectives) * 1e3
    if margin_ms is None and plan.get("margin_ms", "fidelity") != "fidelity":
        margin_ms = _num(plan["margin_ms"], f"{file}: plan.margin_ms", 0.0, lo_open=False)
    if margin_ms is None:
        margin_ms, source = fidelity_margin_ms(within_ms, "frontend_cpu" in data, fidelity)
    else:
        source = f"given: {margin_ms:.2f} ms"
    spec = PlanSpec(path=file, base_dir=base, doc=doc, workloads=wls,
                    objectives=objectives, costs=costs, spaces=spaces, seeds=seeds,
                    peak_factor=peak, early_gap=gap, margin_s=margin_ms / 1e3,
                    margin_source=source, missing_margin=missing_margin,
                    ensembles=ensembles,
                    slos={n: a.app.slo_s for n, a in apps.items()})
    for o in objectives:
        if spec.within_eff_s(o) <= 0:
            raise PlanError(f"{file}: objective: {o.app}: within {o.within_s * 1e3:g} ms "
                            f"leaves nothing after the margin of {margin_ms:.2f} ms")
    _check_reachable(spec, apps)
    for shape in spec.shapes():  # every shape must be a deployment the simulator takes
        spec.deployment(shape)
    return spec


def _objectives(data: Mapping[str, Any], file: str,
                slos: Mapping[str, float]) -> tuple[Objective, ...]:
    if "objective" not in data:
        raise PlanError(f"{file}: objective: missing; e.g. [objective] attainment = 0.99 "
                        "(the share of queries answered in time; there is no default)")
    top = _tbl(data["objective"], f"{file}: objective")
    _only(top, ("attainment", "within_ms", "p99_ms", "max_missing_share", "apps"),
          f"{file}: objective")
    per_app = _tbl(top.get("apps", {}), f"{file}: objective.apps")
    for a in per_app:
        if a not in slos:
            raise PlanError(f"{file}: objective.apps.{a}: not an application with a "
                            f"workload; those: {sorted(slos)}")
    out = []
    for app, slo_s in slos.items():
        t = {**{k: v for k, v in top.items() if k != "apps"},
             **_tbl(per_app.get(app, {}), f"{file}: objective.apps.{app}")}
        where = f"{file}: objective" + (f".apps.{app}" if app in per_app else "")
        _only(t, ("attainment", "within_ms", "p99_ms", "max_missing_share"), where)
        missing = (_num(t["max_missing_share"], f"{where}.max_missing_share", 0.0, 1.0,
                        lo_open=False) if "max_missing_share" in t else 1.0)
        if "p99_ms" in t:
            if "attainment" in t or "within_ms" in t:
                raise PlanError(f"{where}: p99_ms is attainment 0.99 within it; give p99_ms "
                                "or attainment (with within_ms), not both")
            out.append(Objective(app, 0.99, _num(t["p99_ms"], f"{where}.p99_ms") / 1e3,
                                 missing))
            continue
        if "attainment" not in t:
            raise PlanError(f"{where}.attainment: missing; the share of queries answered in "
                            "time, e.g. 0.99 (there is no default)")
        att = _num(t["attainment"], f"{where}.attainment", 0.0, 1.0)
        within = (_num(t["within_ms"], f"{where}.within_ms") / 1e3 if "within_ms" in t
                  else slo_s)
        out.append(Objective(app, att, within, missing))
    return tuple(out)


def _space(m: Mapping[str, Any], t: Mapping[str, Any], file: str, base: Path,
           costs: Mapping[str, float]) -> ModelSpace:
    name = str(m.get("name"))
    where = f"{file}: search.models.{name}"
    _only(t, ("replicas", "hardware", "batching"), where)
    r = t.get("replicas", [1, 16])
    if (not isinstance(r, list) or len(r) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in r)):
        raise PlanError(f"{where}.replicas: expected [min, max] integers, got {r!r}")
    if r[0] < 1 or r[1] < r[0]:
        raise PlanError(f"{where}.replicas: the search space is empty: expected 1 <= min <= "
                        f"max, got {r!r}")
    hw_t = t.get("hardware")
    if hw_t is None:
        ref = m.get("profile")
        if not isinstance(ref, str):
            raise PlanError(f"{file}: models.{name}.profile: expected a profile name or path, "
                            f"got {ref!r}")
        hw_t = {"": ref}
    hw_t = _tbl(hw_t, f"{where}.hardware")
    if not hw_t:
        raise PlanError(f"{where}.hardware: the search space is empty: expected at least one "
                        "kind = profile")
    hardware = []
    for kind, ref in hw_t.items():
        if not isinstance(ref, str) or not ref:
            raise PlanError(f"{where}.hardware.{kind}: expected a profile name or .json path, "
                            f"got {ref!r}")
        if ref.endswith(".json") and not Path(ref).is_absolute():
            ref = str(base / ref)
        try:
            prof = load_profile(ref)
        except ProfileError as e:
            raise PlanError(f"{where}.hardware: {e}") from None
        label = kind or prof.kind
        if label not in costs:
            raise PlanError(f"{file}: costs: no cost per replica for hardware {label!r} (model "
                            f"{name}); [costs] has {sorted(costs)}")
        hardware.append((label, prof, ref))
    b_t = t.get("batching")
    if b_t is None:
        b_t = [m.get("batching", {})]
    if not isinstance(b_t, list) or not b_t:
        raise PlanError(f"{where}.batching: the search space is empty: expected a list of "
                        "batching tables")
    batching = []
    for i, b in enumerate(b_t):
        full = {**_SERVER_DEFAULTS, **_tbl(b, f"{where}.batching[{i}]")}
        try:
            parse_batching(full, f"{where}.batching[{i}]", base)
        except ConfigError as e:
            raise PlanError(str(e)) from None
        batching.append((batching_label(full), full))
    if len({b for b, _ in batching}) != len(batching):
        raise PlanError(f"{where}.batching: two options are the same: "
                        f"{[b for b, _ in batching]}")
    return ModelSpace(name, tuple(hardware), tuple(batching), int(r[0]), int(r[1]))


def _check_reachable(spec: PlanSpec, apps: Mapping[str, Any]) -> None:
    """An objective faster than every configuration's batch of one is a one-line error."""
    for o in spec.objectives:
        within = spec.within_eff_s(o)
        for m in apps[o.app].models:
            fastest = min((p.quantile_s(1, 0.0), h) for h, p, _ in spec.space(m).hardware)
            if fastest[0] > within and spec.ensembles.get(o.app):
                raise PlanError(
                    f"{spec.path}: objective: no configuration can meet {o.app}'s objective "
                    f"(within {o.within_s * 1e3:g} ms less the {spec.margin_s * 1e3:.2f} ms "
                    f"margin): model {m}'s fastest batch of one ({fastest[1]}) takes "
                    f"{fastest[0] * 1e3:.2f} ms")
