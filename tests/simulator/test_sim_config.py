"""Config files: the examples load and run; bad fields are named with file and rule."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from clipperlab.simulator import SimConfigError, Simulation, config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[2]

BASE = """
seed = 1
[[hosts]]
name = "h"
cpus = 2
[[apps]]
name = "digits"
slo_s = 0.02
default_output = -1
models = ["svm"]
[[models]]
name = "svm"
profile = "prototype-linear-svm"
replicas = 2
[workload]
n_queries = 500
arrivals = { kind = "poisson", qps = 1000 }
"""


@pytest.mark.parametrize("name", ["simulate.toml", "ensemble.toml", "frontend.toml"])
def test_examples_load_and_run(name: str) -> None:
    """The committed examples are valid and run (shortened)."""
    import dataclasses

    cfg = load_config(ROOT / "examples" / name)
    assert cfg.workload is not None
    wl = dataclasses.replace(cfg.workload, n_queries=2000)
    res = Simulation(cfg.deployment, wl, seed=cfg.seed).run()
    assert res.queries["reply_at"].notna().all()


def write(tmp_path: Path, text: str, suffix: str = ".toml") -> Path:
    f = tmp_path / f"c{suffix}"
    f.write_text(text)
    return f


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('slo_s = 0.02', 'slo_s = 0', r"apps\[0\]\.slo_s: expected a finite number > 0, got 0"),
        ('qps = 1000', 'qps = -5', r"workload\.arrivals: Poisson\.qps must be a finite"),
        ('replicas = 2', 'replicas = 3', r"model 'svm': replicas: 3 cpu replicas of 1 cpus "
                                         r"each do not fit on hosts \['h'\]"),
        ('replicas = 2', 'replicas = "two"', r"models\[0\]\.replicas: expected an integer"),
        ('profile = "prototype-linear-svm"', 'profile = "nope"',
         r"models\[0\]\.profile: profile 'nope': not a file and not a shipped profile"),
        ('profile = "prototype-linear-svm"', '', r"models\[0\]\.profile: expected a non-empty"),
        ('models = ["svm"]', 'models = ["svn"]', r"app 'digits': models: 'svn' is not a deployed"),
        ('cpus = 2', 'cpus = -1', r"hosts\[0\]\.cpus: expected an integer >= 0, got -1"),
        ('seed = 1', 'seed = 1\ncolour = "red"', r"top level: unknown field\(s\) \['colour'\]"),
        ('replicas = 2', 'replicas = 2\nbatching = { policy = "magic" }',
         r"models\[0\]\.batching: batching policy 'magic' is unknown"),
        ('replicas = 2', 'replicas = 2\noutputs = { kind = "accuracy", accuracy = 1.5 }',
         r"outputs\.accuracy: expected a number in \[0, 1\]"),
    ],
)
def test_bad_fields_are_named(tmp_path: Path, old: str, new: str, message: str) -> None:
    """Every bad field: the file, the field and the expectation in one message."""
    f = write(tmp_path, BASE.replace(old, new, 1))
    with pytest.raises(SimConfigError, match=message) as e:
        load_config(f)
    assert str(e.value).startswith(str(f))


def test_bad_syntax_and_missing_file(tmp_path: Path) -> None:
    """Unparseable TOML/JSON and missing files are one-line errors naming the file."""
    with pytest.raises(SimConfigError, match=r"c\.toml: not valid TOML"):
        load_config(write(tmp_path, "[[apps]\n"))
    with pytest.raises(SimConfigError, match=r"c\.json: not valid JSON \(line 1"):
        load_config(write(tmp_path, "{nope}", ".json"))
    with pytest.raises(SimConfigError, match="cannot read the config"):
        load_config(tmp_path / "missing.toml")


def test_json_config(tmp_path: Path) -> None:
    """JSON configs are accepted with the same fields."""
    import json
    import tomllib

    f = write(tmp_path, json.dumps(tomllib.loads(BASE)), ".json")
    cfg = load_config(f)
    assert cfg.deployment.models[0].replicas == 2 and cfg.seed == 1


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clipperlab", "simulate", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_cli_simulate(tmp_path: Path) -> None:
    """clipperlab simulate prints the metrics table and writes raw records with --out."""
    r = cli("--config", "examples/simulate.toml", "--queries", "3000", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "throughput_qps" in r.stdout and "svm#0" in r.stdout and "p99_ms" in r.stdout
    assert (tmp_path / "queries.parquet").exists() and (tmp_path / "batches.csv").exists()


def test_cli_bad_config_is_one_line(tmp_path: Path) -> None:
    """A bad config exits 2 with one line naming the file and field, no traceback."""
    f = write(tmp_path, BASE.replace("slo_s = 0.02", "slo_s = -1"))
    r = cli("--config", str(f))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "apps[0]" in lines[0] and str(f) in lines[0]
    assert "Traceback" not in r.stderr


def test_kinds_and_gpu_placement(tmp_path: Path) -> None:
    """GPU replicas need GPUs on their hosts; a CPU profile cannot run as a GPU kind."""
    gpu = BASE.replace('profile = "prototype-linear-svm"', 'profile = "synthetic-convnet-gpu"')
    with pytest.raises(SimConfigError, match=r"2 gpu replicas of 1 gpus each do not fit"):
        load_config(write(tmp_path, gpu))
    ok = gpu.replace("cpus = 2", "cpus = 2\ngpus = 2")
    assert load_config(write(tmp_path, ok)).deployment.placement()
    wrong = BASE.replace("replicas = 2", 'replicas = 2\nkind = "gpu"')
    with pytest.raises(SimConfigError, match="kind 'gpu' does not match its profile"):
        load_config(write(tmp_path, wrong))


def test_until_s_cuts_the_run() -> None:
    """run(until_s) stops the clock; queries not yet answered have no reply time."""
    import tomllib

    cfg = config_from_dict(tomllib.loads(BASE.replace("n_queries = 500", "n_queries = 5000")))
    assert cfg.workload is not None
    res = Simulation(cfg.deployment, cfg.workload, seed=0).run(until_s=1.0)
    q = res.queries
    assert res.sim_s == pytest.approx(1.0)
    assert q["reply_at"].isna().any() and (q["reply_at"].dropna() <= 1.0).all()
