"""A plan's deployments as files, and ``--verify``: run them on the real server.

Rules:
- ``write_deploy`` writes a candidate as ``STEM.toml`` (``clipperlab serve --config`` runs
  it as is: ``replay`` containers, the batching tables the planner simulated with the
  overload settings spelled out, ``[server] cache = false`` as the plan simulated no
  cache, an ensemble's deadline as ``PlanSpec.app_tables`` sets it) and ``STEM-sim.toml``
  (its simulated twin: the plan file's simulator tables with the candidate's profiles,
  batching and replicas, and the planned workloads). Each model replays its profile
  (``replay/<model>-<hardware>.json``, written by ``clipperlab.calibration.replay``; the
  profile's recorded predictions when it has them for the workload's task, else 0). Paths
  in ``STEM.toml`` are relative to the folder ``clipperlab plan`` ran in (the project
  root).
- ``verify`` runs the recommendation and the next-cheaper candidate, one after the other,
  each in a fresh server process (``calibration.server.ServerProcess``: ephemeral ports),
  waits until every replica is connected, then sends the plan's workloads (seed 0, every
  application at once, one load generator thread each: ``calibration.loadgen``) and
  measures per application the share answered in time (not by default) within the
  objective's latency, p50 and p99, and the share of the members' answers missing (the
  server's ``clipperlab_missing_predictions_total`` over queries x members). The
  prediction beside it is the simulator's on the same traces (seed 0) at the same latency.
  The machine's load is sampled before each run (``calibration.quiet.machine_load``).
- A deployment meets an objective on the real server when its measured share in time
  reaches the target and its measured missing share keeps to ``max_missing_share``.
- The plan holds when the recommendation meets every objective on the real server and
  the next-cheaper one misses one, or meets it only inside the margin (its share within
  the objective's latency less the margin is below the target).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipperlab.report.latency import summarise
from clipperlab.report.tables import markdown_table
from clipperlab.simulator import Simulation
from clipperlab.simulator.capacity import attained_share

from .plan_space import Candidate, PlanSpec

__all__ = ["VerifyResult", "to_toml", "verify", "write_deploy"]

VERIFY_SEED = 0


# ------------------------------------------------------------------------- TOML out


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else
                                                  ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def to_toml(doc: Mapping[str, Any], header: str = "") -> str:
    """A document of scalars, tables (one level) and arrays of tables as TOML."""
    lines = [f"# {h}" for h in header.splitlines()] if header else []
    plain = {k: v for k, v in doc.items() if not isinstance(v, Mapping)
             and not (isinstance(v, list) and v and all(isinstance(x, Mapping) for x in v))}
    lines += [f"{_key(k)} = {_value(v)}" for k, v in plain.items()]
    for k, v in doc.items():
        if isinstance(v, Mapping):
            lines += ["", f"[{_key(k)}]"] + [f"{_key(a)} = {_value(b)}" for a, b in v.items()]
        elif k not in plain:
            for t in v:
                lines += ["", f"[[{_key(k)}]]"] + [f"{_key(a)} = {_value(b)}"
                                                   for a, b in t.items()]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------- deploy files


def _task_and_inputs(spec: PlanSpec) -> tuple[str, Mapping[str, Any]]:
    wl = spec.workload_objects()[0]
    return wl.generate(0).task, dict(spec.workloads[0].get("inputs", {"kind": "digits"}))


def write_deploy(spec: PlanSpec, cand: Candidate, out: Path, stem: str) -> list[Path]:
    """``out/STEM.toml``, ``out/STEM-sim.toml`` and the replay files (module rules)."""
    from clipperlab.calibration.replay import write_replay

    task, inputs = _task_and_inputs(spec)
    models = []
    written = []
    for c in cand.choices:
        prof = spec.profile(c.model, c.hardware)
        rp = out / "replay" / f"{c.model}-{c.hardware}.json"
        kw: dict[str, Any] = {"output": 0}
        if task in prof.predictions:
            kw.update(task=task, inputs=inputs)
        written.append(write_replay(prof, rp, **kw))
        models.append({"name": c.model, "kind": "replay", "path": str(rp),
                       "replicas": c.replicas,
                       "batching": dict(spec.batching(c.model, c.batching))})
    doc = {"server": {"cache": False}, "models": models, spec.app_key(): spec.app_tables()}
    header = (f"clipperlab serve --config {out / (stem + '.toml')}   (from the project root)\n"
              f"{'The plan' if stem == 'deploy' else 'The next-cheaper candidate'} for "
              f"{spec.path}: {cand.label()} (cost {spec.cost(cand):g}).\n"
              f"Replay containers wait as the profiles say; the simulated twin: "
              f"{stem}-sim.toml.")
    p = out / f"{stem}.toml"
    p.write_text(to_toml(doc, header))
    sim = dict(spec.sim_doc(cand))
    for m in sim["models"]:
        ref = m["profile"]
        if ref.endswith(".json"):
            # relative to the twin's own folder, where `clipperlab simulate --config` looks
            # for it: the file works from any checkout, not only the one that wrote it
            m["profile"] = os.path.relpath(Path(ref).resolve(), out.resolve())
    sim["seed"] = VERIFY_SEED
    if len(spec.workloads) == 1:
        sim["workload"] = dict(spec.workloads[0])
    s = out / f"{stem}-sim.toml"
    s.write_text(to_toml(sim, f"clipperlab simulate --config {s}\nThe simulated twin of "
                              f"{stem}.toml at the planned load (one workload per "
                              "application; `clipperlab simulate` takes the first)."))
    return [*written, p, s]


# ------------------------------------------------------------------------- verification


@dataclass
class VerifyResult:
    rows: pd.DataFrame  # one row per (deployment, application)
    holds: bool
    why: str
    load: str
    wall_s: float

    def markdown(self, spec: PlanSpec) -> str:
        show = self.rows.copy()
        cols = ["deployment", "candidate", "app", "target", "predicted share",
                "measured share", "predicted p50 / p99 ms", "measured p50 / p99 ms",
                "measured share within objective - margin", "meets (measured)"]
        show["predicted p50 / p99 ms"] = [f"{a:.1f} / {b:.1f}" for a, b in
                                          zip(show["pred_p50_ms"], show["pred_p99_ms"],
                                              strict=True)]
        show["measured p50 / p99 ms"] = [f"{a:.1f} / {b:.1f}" for a, b in
                                         zip(show["real_p50_ms"], show["real_p99_ms"],
                                             strict=True)]
        for a, b in (("target", "target"), ("predicted share", "pred_share"),
                     ("measured share", "real_share"),
                     ("measured share within objective - margin", "real_share_margin")):
            show[a] = [f"{x:.2%}" for x in show[b]]
        show["meets (measured)"] = show["real_meets"]
        if (show["max_missing_share"] < 1).any():
            show["members' answers missing: predicted / measured (at most)"] = [
                f"{a:.1%} / {b:.1%} ({c:.0%})" for a, b, c in
                zip(show["pred_missing_share"], show["real_missing_share"],
                    show["max_missing_share"], strict=True)]
            cols.insert(-1, "members' answers missing: predicted / measured (at most)")
        return "\n".join([
            f"# Verification: {Path(spec.path).name}", "",
            f"The recommended deployment and the next-cheaper one on the real server "
            f"(`clipperlab serve`, replay containers) under the plan's workloads (seed "
            f"{VERIFY_SEED}), beside the simulator's prediction on the same traces.", "",
            markdown_table(show[cols]), "",
            f"**The plan {'holds' if self.holds else 'does not hold'}**: {self.why}", "",
            f"Machine load: {self.load}. Verification took {self.wall_s:.0f} s.", ""])


def _wait_replicas(url: str, n: int, timeout_s: float = 120.0) -> None:
    until = time.monotonic() + timeout_s
    while time.monotonic() < until:
        try:
            with urllib.request.urlopen(f"{url}/metrics", timeout=2) as r:
                for line in r.read().decode().splitlines():
                    if (line.startswith("clipperlab_real_replicas_connected")
                            and float(line.split()[-1]) >= n):
                        return
        except OSError:
            pass
        time.sleep(0.2)
    from clipperlab.calibration.errors import ValidationError

    raise ValidationError(f"the replicas did not all connect within {timeout_s:.0f} s")


def _missing_counts(url: str) -> dict[str, float]:
    """Per application, the server's ``clipperlab_missing_predictions_total``."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {s.labels.get("app", ""): float(s.value)
            for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "clipperlab_missing_predictions_total"}


def _run_real(spec: PlanSpec, cand: Candidate, deploy: Path,
              traces: list[Any]) -> tuple[dict[str, pd.DataFrame], dict[str, float]]:
    from clipperlab.calibration.loadgen import run_load
    from clipperlab.calibration.server import ServerProcess, real_deployment

    dep = real_deployment(deploy)
    models = [dict(m, path=str(Path(m["path"]).resolve())) for m in dep.models]
    dep = dataclasses.replace(dep, models=models)
    with ServerProcess(dep, cache=False) as srv:
        for o in spec.objectives:
            srv.wait_ready(o.app)
        _wait_replicas(srv.url, sum(c.replicas for c in cand.choices))
        time.sleep(1.0)
        out: dict[str, pd.DataFrame] = {}
        errors: list[BaseException] = []

        def one(tr: Any, pool: np.ndarray) -> None:
            try:
                out[tr.app] = run_load(tr, pool, srv.url, connections=8, drain_s=3.0)
            except BaseException as e:  # noqa: BLE001 - re-raised below
                errors.append(e)

        threads = [threading.Thread(target=one, args=(tr, np.asarray(wl.inputs.load()[0])))
                   for tr, wl in zip(traces, spec.workload_objects(), strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        missing = _missing_counts(srv.url)
    return out, missing


def verify(spec: PlanSpec, best: Candidate, cheaper: Candidate | None, out: Path
           ) -> VerifyResult:
    """Run ``best`` and ``cheaper`` on the real server (module rules)."""
    from clipperlab.calibration.quiet import machine_load

    t0 = time.perf_counter()
    traces = [wl.generate(VERIFY_SEED) for wl in spec.workload_objects()]
    rows = []
    loads = []
    for label, cand, stem in (("recommended", best, "deploy"), ("next cheaper", cheaper,
                                                                "cheaper")):
        if cand is None:
            continue
        deploy = out / f"{stem}.toml"
        if not deploy.exists():
            write_deploy(spec, cand, out, stem)
        s = machine_load(1.0)
        loads.append(f"{label}: load average {s.loadavg_1m:.1f} on {s.cpus} cores, "
                     f"others' CPU {s.other_cpu_share:.0%}")
        pred = Simulation(spec.deployment(cand), traces if len(traces) > 1 else traces[0],
                          seed=VERIFY_SEED).run().queries
        real, missing = _run_real(spec, cand, deploy, traces)
        for o in spec.objectives:
            pq = pred[pred["app"] == o.app]
            rq = real[o.app]
            ps, rs = summarise(pq), summarise(rq)
            real_share = attained_share(rq, o.within_s)
            members = len(spec.ensembles.get(o.app) or ()) or 1
            real_missing = missing.get(o.app, 0.0) / max(len(rq) * members, 1)
            rows.append({
                "deployment": label, "candidate": cand.label(), "cost": spec.cost(cand),
                "app": o.app, "target": o.attainment, "within_ms": o.within_s * 1e3,
                "pred_share": attained_share(pq, o.within_s), "real_share": real_share,
                "real_share_margin": attained_share(rq, spec.within_eff_s(o)),
                "pred_p50_ms": ps["p50_ms"], "pred_p99_ms": ps["p99_ms"],
                "real_p50_ms": rs["p50_ms"], "real_p99_ms": rs["p99_ms"],
                "real_default_rate": rs.get("default_rate", math.nan),
                "max_missing_share": o.max_missing_share,
                "pred_missing_share": ps.get("missing_share", 0.0),
                "real_missing_share": real_missing,
                "real_meets": (real_share >= o.attainment
                               and real_missing <= o.max_missing_share),
            })
    t = pd.DataFrame(rows)
    holds, why = _judge(t)
    res = VerifyResult(t, holds, why, "; ".join(loads), time.perf_counter() - t0)
    t.to_csv(out / "verify.csv", index=False, float_format="%.6g")
    (out / "verify.md").write_text(res.markdown(spec))
    return res


def _judge(t: pd.DataFrame) -> tuple[bool, str]:
    rec = t[t["deployment"] == "recommended"]
    cheap = t[t["deployment"] == "next cheaper"]
    rec_ok = bool(rec["real_meets"].all())
    if cheap.empty:
        return rec_ok, ("the recommendation meets the objective on the real server and "
                        "there is no cheaper candidate" if rec_ok else
                        "the recommendation misses the objective on the real server")
    cheap_miss = not bool(cheap["real_meets"].all())
    cheap_inside = bool((cheap["real_share_margin"] < cheap["target"]).any())
    if not rec_ok:
        return False, "the recommendation misses the objective on the real server"
    if cheap_miss:
        return True, ("the recommendation meets the objective on the real server and the "
                      "next-cheaper candidate misses it")
    if cheap_inside:
        return True, ("the recommendation meets the objective; the next-cheaper candidate "
                      "meets it too, but only inside the margin (it misses the objective's "
                      "latency less the margin)")
    return False, ("the next-cheaper candidate meets the objective with the margin to "
                   "spare: the plan over-provisions")
