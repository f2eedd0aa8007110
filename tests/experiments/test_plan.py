"""``clipperlab plan``: the search against a closed form, bounds, verdicts, bad input, CLI."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clipperlab.cli import main
from clipperlab.experiments.plan import run_plan
from clipperlab.experiments.plan_search import Search
from clipperlab.experiments.plan_space import PlanError, ceiling_qps, plan_from_dict
from clipperlab.experiments.plan_verify import to_toml
from clipperlab.simulator import LatencyProfile, save_profile

MU, LAM = 100.0, 400.0  # service rate per replica, arrival rate (q/s)


def erlang_c(c: int, a: float) -> float:
    s = sum(a**k / math.factorial(k) for k in range(c))
    top = a**c / math.factorial(c) * c / (c - a)
    return top / (s + top)


def mmc_in_time(c: int, lam: float, mu: float, t: float) -> float:
    """P(response time <= t) in M/M/c: no wait with 1 - C, else Exp(c mu - lam) + Exp(mu)."""
    a = lam / mu
    if c <= a:
        return 0.0
    C, th = erlang_c(c, a), c * mu - lam
    both = ((th * math.exp(-mu * t) - mu * math.exp(-th * t)) / (th - mu)
            if abs(th - mu) > 1e-9 else math.exp(-mu * t) * (1 + mu * t))
    return 1 - ((1 - C) * math.exp(-mu * t) + C * both)


@pytest.fixture(scope="module")
def exp_profile(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Exponential service (mean 10 ms) at batch size 1, on a fine quantile grid."""
    lv = [*np.linspace(0, 0.999, 1000), 0.9999, 0.99999, 1.0]
    vals = [-math.log(1 - u) / MU if u < 1 else -math.log(1e-7) / MU for u in lv]
    path = tmp_path_factory.mktemp("prof") / "exp.json"
    save_profile(LatencyProfile("exp", (1,), tuple(lv), (tuple(vals),)), path)
    return str(path)


def mmc_plan(profile: str, attainment: float, within_ms: float, *, n: int = 8000,
             replicas: tuple[int, int] = (1, 12), **extra: Any) -> dict[str, Any]:
    return {
        "plan": {"seeds": 3, "margin_ms": 0.0},
        "objective": {"attainment": attainment, "within_ms": within_ms},
        "hosts": [{"name": "h", "cpus": 64, "latency_s": 0.0, "bandwidth_bps": 1e15}],
        "applications": [{"name": "a", "slo_ms": 10_000, "policy": "static",
                          "models": ["m"]}],
        "models": [{"name": "m", "profile": profile}],
        "search": {"models": {"m": {"replicas": list(replicas), "batching": [
            {"policy": "none", "admission_control": False, "drop_hopeless": False}]}}},
        "workload": {"app": "a", "n_queries": n, "arrivals": {"kind": "poisson",
                                                               "qps": LAM}},
        **extra,
    }


def test_smallest_replicas_match_erlang_c(exp_profile: str, tmp_path: Path) -> None:
    """Exponential service, batch size 1, one shared queue: M/M/c.  The target sits
    halfway between Erlang C's shares for the answer and one replica fewer."""
    t = 0.030
    shares = {c: mmc_in_time(c, LAM, MU, t) for c in range(5, 9)}
    want = 6  # 0.867 at 5 replicas, 0.937 at 6
    target = (shares[want - 1] + shares[want]) / 2
    spec = plan_from_dict(mmc_plan(exp_profile, target, t * 1e3), "t", tmp_path)
    res = Search(spec, workers=1).search()
    assert res.best is not None
    assert res.best.candidate.replicas() == {"m": want}
    # one fewer replica was simulated and fails; the bound pruned below a = 4 replicas
    five = [e for e in res.evaluations if e.candidate.replicas() == {"m": want - 1}]
    assert five and not five[0].meets
    assert all(e.candidate.replicas()["m"] >= math.ceil(target * LAM / MU)
               for e in res.evaluations)


def test_monotone_search_never_simulates_inside_a_decided_range(exp_profile: str,
                                                                tmp_path: Path) -> None:
    """Bisection: every failing count is below every count that held."""
    spec = plan_from_dict(mmc_plan(exp_profile, 0.9, 30.0), "t", tmp_path)
    res = Search(spec).search()
    held = [e.candidate.replicas()["m"] for e in res.evaluations if e.meets]
    failed = [e.candidate.replicas()["m"] for e in res.evaluations if e.meets is False]
    assert held and failed and max(failed) < min(held)
    assert res.pruned and all(e.meets is None and e.reason.startswith("pruned")
                              for e in res.pruned)


def test_ceiling_is_an_upper_bound() -> None:
    """A replica's ceiling grows with its batching cap and is zero when even one query is
    slower than the objective."""
    p = LatencyProfile.from_line("l", alpha_s=0.001, beta_s=0.005)
    assert ceiling_qps(p, 1, 1.0) == pytest.approx(1 / p.mean_s(1))
    assert ceiling_qps(p, 8, 1.0) > ceiling_qps(p, 1, 1.0)
    assert ceiling_qps(p, 8, 0.001) == 0.0


def test_infeasible_is_an_answer_with_the_closest(exp_profile: str, tmp_path: Path) -> None:
    doc = mmc_plan(exp_profile, 0.99, 30.0, replicas=(1, 5), n=3000)
    plan = tmp_path / "p.toml"
    plan.write_text(to_toml(doc))
    out = run_plan(plan, out_dir=tmp_path / "out")
    assert out.best is None
    assert out.closest is not None and out.closest.candidate.replicas() == {"m": 5}
    assert "Infeasible" in (tmp_path / "out" / "plan.md").read_text()


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d["models"][0].update(profile="no-such-profile"), "no-such-profile"),
    (lambda d: d["search"]["models"]["m"].update(replicas=[3, 2]), "search space is empty"),
    (lambda d: d["search"]["models"]["m"].update(batching=[]), "search space is empty"),
    (lambda d: (d["objective"].update(within_ms=1.0),
                d["search"]["models"]["m"].update(hardware={"cpu": "synthetic-convnet-gpu"})),
     "no configuration can meet"),
    (lambda d: d["objective"].pop("attainment"), "attainment: missing"),
    (lambda d: d["costs"].pop("cpu"), "no cost per replica"),
])
def test_bad_input_is_one_line(exp_profile: str, tmp_path: Path, edit: Any, message: str,
                               capsys: pytest.CaptureFixture[str]) -> None:
    doc = mmc_plan(exp_profile, 0.9, 30.0, costs={"cpu": 1.0})
    edit(doc)
    if "cpu" not in doc["costs"]:
        doc["costs"] = {}
        doc["models"][0]["profile"] = exp_profile
    plan = tmp_path / "p.toml"
    plan.write_text(to_toml(doc))
    if message == "no cost per replica":  # the default table has cpu: name another kind
        doc["search"]["models"]["m"]["hardware"] = {"tpu": exp_profile}
        plan.write_text(to_toml(doc))
    assert main(["plan", str(plan), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err


def test_plan_error_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="p.toml"):
        from clipperlab.experiments.plan_space import load_plan

        (tmp_path / "p.toml").write_text("[plan]\nseeds = 0\n")
        load_plan(tmp_path / "p.toml")


def test_cli_help_and_a_tiny_quick_plan(exp_profile: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["plan", "--help"]) == 0
    assert "--verify" in capsys.readouterr().out
    plan = tmp_path / "tiny.toml"
    plan.write_text(to_toml(mmc_plan(exp_profile, 0.9, 30.0, n=2500)))
    out = tmp_path / "o"
    assert main(["plan", str(plan), "--quick", "--out", str(out), "--no-progress",
                 "-j", "1"]) == 0
    text = capsys.readouterr().out
    assert "recommended: m:" in text
    for f in ("plan.md", "plan.csv", "pareto.png", "deploy.toml", "deploy-sim.toml"):
        assert (out / f).exists(), f
    assert "QUICK RUN" in (out / "plan.md").read_text()
    deploy = (out / "deploy.toml").read_text()
    assert 'kind = "replay"' in deploy and "cache = false" in deploy
    # the twin names its profile relative to its own folder, and loads from anywhere
    twin = tomllib.loads((out / "deploy-sim.toml").read_text())
    ref = twin["models"][0]["profile"]
    assert ref.endswith(".json") and not Path(ref).is_absolute()
    from clipperlab.simulator.deployment import load_config

    with monkeypatch.context() as mp:
        mp.chdir(tmp_path.parent)
        assert load_config(out / "deploy-sim.toml").deployment.models[0].profile is not None
    # a quick run never overwrites a full plan
    (out / "plan.md").write_text("# Plan: full\n")
    assert main(["plan", str(plan), "--quick", "--out", str(out), "--no-progress"]) == 2
    assert "full plan" in capsys.readouterr().err
