"""``clipperlab plan --executor ray`` gives the local executor's answer: the same
candidates, the same shares (common seeds, jobs in order), on a local Ray."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from clipperlab.experiments.plan import run_plan
from clipperlab.experiments.plan_verify import to_toml

from .test_plan import exp_profile, mmc_plan  # noqa: F401 - the fixture

pytest.importorskip("ray")


def test_ray_and_local_plan_alike(exp_profile: str, tmp_path: Path) -> None:  # noqa: F811
    plan = tmp_path / "p.toml"
    plan.write_text(to_toml(mmc_plan(exp_profile, 0.9, 30.0, n=2500)))
    tables = {}
    for ex in ("local", "ray"):
        out = run_plan(plan, out_dir=tmp_path / ex, quick=True, executor=ex, workers=2)
        assert out.best is not None
        tables[ex] = pd.read_csv(tmp_path / ex / "plan.csv").drop(columns=["reason"])
    pd.testing.assert_frame_equal(tables["local"], tables["ray"])
