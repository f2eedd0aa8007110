"""The simulator's config reads applications and models through the engine's one schema:
both spellings, the aliases, policies of one's own, and errors naming file and field."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from clipperlab.engine import ConfigError
from clipperlab.simulator import SimConfigError, Simulation, load_config

ROOT = Path(__file__).resolve().parents[2]

APPS = """
[[apps]]
name = "digits"
slo_s = 0.02
default_output = -1
models = ["svm"]
"""

APPLICATIONS = """
[[applications]]
name = "digits"
latency_slo_micros = 20000
default_output = -1
candidate_model_names = ["svm"]
"""

MODELS = """
[[models]]
model_name = "svm"
profile = "prototype-linear-svm"
[models.batching]
policy = "POLICY"
"""


def write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "c.toml"
    f.write_text(text)
    return f


def test_apps_and_applications_read_the_same(tmp_path: Path) -> None:
    """``[[apps]]``+``slo_s`` and ``[[applications]]``+``latency_slo_micros`` are one app."""
    models = MODELS.replace("POLICY", "aimd")
    a = load_config(write(tmp_path, APPS + models)).deployment
    b = load_config(write(tmp_path, APPLICATIONS + models)).deployment
    assert a.apps == b.apps
    assert a.models[0].spec == b.models[0].spec


def test_both_tables_is_an_error(tmp_path: Path) -> None:
    f = write(tmp_path, APPS + APPLICATIONS + MODELS.replace("POLICY", "aimd"))
    with pytest.raises(SimConfigError, match=r"c\.toml: top level: expected one of "
                                             r"applications, apps, got both"):
        load_config(f)


def test_custom_policies_relative_to_the_config(tmp_path: Path) -> None:
    """A relative ``file.py:Class`` is found beside the config, and runs."""
    (tmp_path / "mine.py").write_text((ROOT / "tests" / "plugin_classes.py").read_text())
    text = (APPS.replace('default_output = -1', 'default_output = -1\npolicy = '
                         '"mine.py:LastModel"')
            + MODELS.replace("POLICY", "mine.py:Doubling") + "params = { top = 4 }\n"
            + '[workload]\nn_queries = 400\narrivals = { kind = "poisson", qps = 20000 }\n')
    cfg = load_config(write(tmp_path, text))
    assert cfg.deployment.apps[0].app.policy == f"{tmp_path / 'mine.py'}:LastModel"
    assert cfg.workload is not None
    res = Simulation(cfg.deployment, cfg.workload, seed=0).run()
    assert res.batches["size"].max() == 4
    assert res.queries["reply_at"].notna().all()


def test_examples_custom_runs() -> None:
    """``examples/custom.toml``: the example controller and policy, shortened."""
    cfg = load_config(ROOT / "examples" / "custom.toml")
    assert cfg.workload is not None
    wl = dataclasses.replace(cfg.workload, n_queries=2000)
    res = Simulation(cfg.deployment, wl, seed=cfg.seed).run()
    assert res.queries["reply_at"].notna().all()
    sizes = set(res.batches["size"])
    assert sizes <= {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024}


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ("nosuch_mod:X", r"models\[0\]\.batching: batching policy 'nosuch_mod:X': no module "
                         r"named 'nosuch_mod' can be imported"),
        ("gone.py:X", r"models\[0\]\.batching: batching policy '.*gone\.py:X': file "
                      r"'.*gone\.py' does not exist"),
        ("mod.Class", r"did you mean 'mod:Class'"),
    ],
)
def test_bad_policy_names_the_file_and_field(tmp_path: Path, policy: str, message: str) -> None:
    f = write(tmp_path, APPS + MODELS.replace("POLICY", policy))
    with pytest.raises(ConfigError, match=message) as e:  # one name to catch
        load_config(f)
    assert isinstance(e.value, SimConfigError)
    assert str(e.value).startswith(f"{f}: ")
