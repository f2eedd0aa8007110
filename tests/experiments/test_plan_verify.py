"""``clipperlab plan --verify`` end to end, tiny: a replay model of a few milliseconds, one
and two replicas on the real server, three seconds of load.  Behaviour only (the report
has both deployments, predicted and measured columns), never timing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from clipperlab.experiments.plan_space import Candidate, Choice, plan_from_dict
from clipperlab.experiments.plan_verify import verify, write_deploy
from clipperlab.simulator import LatencyProfile, save_profile


def test_verify_runs_both_deployments_and_reports_them(tmp_path: Path) -> None:
    prof = tmp_path / "r.json"
    save_profile(LatencyProfile.from_line("r", alpha_s=0.0005, beta_s=0.003), prof)
    spec = plan_from_dict({
        "plan": {"seeds": 1, "margin_ms": 1.0},
        "objective": {"attainment": 0.9, "within_ms": 200.0},
        "applications": [{"name": "a", "slo_ms": 200, "default_output": -1,
                          "policy": "static", "models": ["m"]}],
        "models": [{"name": "m", "profile": str(prof)}],
        "search": {"models": {"m": {"replicas": [1, 2]}}},
        "workload": {"app": "a", "n_queries": 150, "arrivals": {"kind": "poisson",
                                                               "qps": 50.0},
                     "inputs": {"kind": "digits", "binary": True, "positive_digit": 3}},
    }, "tiny", tmp_path)
    (hw, _, _), (batching, _) = spec.space("m").hardware[0], spec.space("m").batching[0]
    two, one = (Candidate((Choice("m", hw, batching, n),)) for n in (2, 1))
    out = tmp_path / "out"
    write_deploy(spec, two, out, "deploy")
    assert 'kind = "replay"' in (out / "deploy.toml").read_text()

    res = verify(spec, two, one, out)  # writes cheaper.toml itself

    assert list(res.rows["deployment"]) == ["recommended", "next cheaper"]
    assert list(res.rows["candidate"]) == [two.label(), one.label()]
    for col in ("pred_share", "real_share", "pred_p50_ms", "pred_p99_ms", "real_p50_ms",
                "real_p99_ms"):
        assert res.rows[col].between(0, 1e6).all(), col  # measured and predicted, finite
    assert (res.rows["real_share"] > 0).all()  # queries were answered
    assert res.rows["real_missing_share"].between(0, 1).all()  # from the server's metrics
    assert isinstance(res.holds, bool) and res.why
    md = (out / "verify.md").read_text()
    assert "predicted share" in md and "measured share" in md and "Machine load" in md
    assert len(pd.read_csv(out / "verify.csv")) == 2
