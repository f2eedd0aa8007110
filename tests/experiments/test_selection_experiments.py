"""The model-selection experiments (fig6, fig8, fig10, cache) in tiny configurations:
each writes its CSV, figure, summary and config; bad values are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from clipperlab.cli import main
from clipperlab.experiments.framework import EXPERIMENTS, run_experiment

TINY: dict[str, dict[str, object]] = {
    "fig6": {"n_queries": 1500, "models": ("logreg", "rbf_svm", "knn"),
             "thresholds": (0.6, 1.0)},
    "fig8": {"n_queries": 1500, "fail_from": 500, "fail_to": 1000, "every": 100,
             "policies": ("exp3", "exp4_discounted"),
             "models": ("rbf_svm", "logreg", "naive_bayes")},
    "fig10": {"n_queries": 1500, "n_users": 8, "policies": ("exp4",)},
    "cache": {"skews": (0.0, 1.6), "n_queries": 6000, "rate_qps": 10_000.0,
              "feedback_queries": 2000, "universe": 20_000, "ramp_s": 0.1,
              "warmup_s": 0.1},
}


@pytest.mark.parametrize("name", list(TINY))
def test_experiment_runs_and_writes_its_files(name: str, tmp_path: Path) -> None:
    """run -> out/: NAME.csv, NAME.png, summary.md with the claims table, config.json."""
    assert name in EXPERIMENTS
    rec = run_experiment(name, quick=True, out_dir=tmp_path, seed=1, overrides=TINY[name])
    files = {p.name for p in tmp_path.iterdir()}
    assert {f"{name}.csv", f"{name}.png", "summary.md", "config.json"} <= files
    table = pd.read_csv(tmp_path / f"{name}.csv")
    assert len(table) == len(rec.results.table) > 0
    assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (tmp_path / "summary.md").read_text()
    assert summary.startswith(f"# {name}: ") and "| what | paper | ours |" in summary
    assert json.loads((tmp_path / "config.json").read_text())["seed"] == 1
    assert (table["mode"] == "sim").all()


def test_fig8_moves_weight_away_from_the_failing_model(tmp_path: Path) -> None:
    """During the failure the discounted Exp4 gives the failing model almost no weight,
    and after it recovers the weight comes back."""
    over = dict(TINY["fig8"], n_queries=4000, fail_from=1000, fail_to=2000)
    t = run_experiment("fig8", quick=True, out_dir=tmp_path, overrides=over).results.table
    g = t[t["policy"] == "exp4_discounted"].set_index("queries")["p_rbf_svm"]
    assert g.loc[1000] > 0.5 and g.loc[2000] < 0.05 and g.loc[4000] > 0.5
    stat = t[t["policy"] == "static:rbf_svm"].set_index("queries")["window_error"]
    assert stat.loc[1500] > 0.8  # the failure is real


def test_fig10_personal_state_beats_global(tmp_path: Path) -> None:
    over = dict(TINY["fig10"], n_queries=3000)
    t = run_experiment("fig10", quick=True, out_dir=tmp_path, overrides=over).results.table
    last = t[t["feedback_lo"] == t["feedback_lo"].max()].set_index("state")["error"]
    assert last["personal"] < 0.3 < last["global"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["experiment", "fig8", "--quick", "--set", "mode=bogus"], "mode must be one of"),
        (["experiment", "fig8", "--quick", "--set", "failing=gpt"], "failing="),
        (["experiment", "fig6", "--quick", "--set", "thresholds=2"], "thresholds"),
    ],
)
def test_bad_values_are_one_line_errors(args: list[str], needle: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err


def test_fig8_real_mode_tiny_run_writes_real_rows(tmp_path: Path) -> None:
    """``mode=real``: a real server, real containers, feedback over HTTP; the table holds
    the same columns as the simulated run and a ``fig8-real.png``."""
    over = dict(TINY["fig8"], mode="real", real_queries=60, every=500)
    rec = run_experiment("fig8", quick=True, out_dir=tmp_path, overrides=over)
    t = rec.results.table
    assert set(t["mode"]) == {"real"}
    assert {"cum_error", "window_error", "p_rbf_svm"} <= set(t.columns)
    assert (tmp_path / "fig8-real.png").exists()
    assert t[t["policy"] == "static:rbf_svm"]["window_error"].max() > 0.5  # the failure


SOFTMAX = f"{Path(__file__).resolve().parents[2] / 'examples' / 'custom_policy.py'}:Softmax"


@pytest.mark.parametrize("name", ["fig8", "fig10"])
def test_selection_experiments_run_a_policy_of_ones_own(name: str, tmp_path: Path) -> None:
    """fig8 and fig10 take a selection policy by ``file.py:Class`` beside the built-ins."""
    over = dict(TINY[name], policies=("exp4", SOFTMAX))
    t = run_experiment(name, quick=True, out_dir=tmp_path, overrides=over).results.table
    assert SOFTMAX in set(t["policy"])


@pytest.mark.parametrize("name", ["fig8", "fig10"])
@pytest.mark.parametrize(("policy", "needle"), [("static", "not an adaptive policy"),
                                                 ("nosuch:X", "no module")])
def test_selection_experiments_refuse_a_bad_policy(name: str, policy: str, needle: str,
                                                   tmp_path: Path) -> None:
    over = dict(TINY[name], policies=(policy,))
    with pytest.raises(ValueError, match=needle):
        run_experiment(name, quick=True, out_dir=tmp_path, overrides=over)
