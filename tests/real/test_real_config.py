"""``deploy.toml`` reads applications and models through the engine's one schema, and the
server runs policies of one's own named there or through the admin API."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipperlab.engine import ConfigError as EngineConfigError
from clipperlab.real.client import AdminClient, QueryClient, ServerError
from clipperlab.real.config import ConfigError, app_from_dict, load_config, model_from_dict
from clipperlab.real.server import ServerThread

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ROOT / "tests" / "plugin_classes.py"

CLIPPER_SPELLING = """
[[apps]]
name = "hello"
latency_slo_micros = 500000
default_output = -1
candidate_model_names = ["noop"]
policy = "mine.py:LastModel"

[[models]]
model_name = "noop"
model_version = 2
container_name = "noop"
batching = { policy = "mine.py:Doubling", params = { top = 4 } }
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "mine.py").write_text(CLASSES.read_text())
    f = tmp_path / "deploy.toml"
    f.write_text(text)
    return f


def test_one_config_error() -> None:
    """The server's ConfigError is the engine's: one name to catch."""
    assert ConfigError is EngineConfigError


def test_clipper_spelling_is_read_into_one_spelling(tmp_path: Path) -> None:
    """``[[apps]]``, ``latency_slo_micros``, ``candidate_model_names``, ``model_name``,
    ``container_name`` are read; the config keeps one spelling, policies made absolute."""
    cfg = load_config(write(tmp_path, CLIPPER_SPELLING))
    [app] = cfg.applications
    [model] = cfg.models
    assert app["models"] == ["noop"] and "candidate_model_names" not in app
    assert app["policy"] == f"{tmp_path / 'mine.py'}:LastModel"
    assert (model["name"], model["version"], model["kind"]) == ("noop", "2", "noop")
    assert model["batching"]["policy"] == f"{tmp_path / 'mine.py'}:Doubling"
    assert app_from_dict(app).slo_s == 0.5
    spec, n = model_from_dict(model, max_queue=100)
    assert (spec.batching.params, spec.batching.max_queue, n) == ({"top": 4}, 100, 1)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("latency_slo_micros = 500000", "latency_slo_micros = 0",
         r"apps\[0\]\.latency_slo_micros: expected a finite number > 0, got 0"),
        ('policy = "mine.py:LastModel"', 'policy = "mine.py:Nope"',
         r"apps\[0\]\.policy: selection policy '.*mine\.py:Nope': module .* has no attribute"),
        ('"mine.py:Doubling"', '"mine.py:NoCap"',
         r"models\[0\]\.batching: batching policy '.*mine\.py:NoCap': the class NoCap does not "
         r"implement"),
        ('container_name = "noop"', 'container_name = "magic"',
         r"models\[0\]\.container_name: expected one of noop, .*, got 'magic'"),
        ('model_name = "noop"', 'model_name = "noop"\nname = "noop"',
         r"models\[0\]: expected one of name, model_name, got both"),
        ('[[apps]]', '[[applications]]\nname = "x"\n[[apps]]',
         r"top level: expected one of applications, apps, got both"),
    ],
)
def test_errors_name_the_file_and_field(tmp_path: Path, old: str, new: str,
                                        message: str) -> None:
    f = write(tmp_path, CLIPPER_SPELLING.replace(old, new, 1))
    with pytest.raises(ConfigError, match=message) as e:
        load_config(f)
    assert str(e.value).startswith(f"{f}: ")


def test_server_runs_policies_of_ones_own(tmp_path: Path) -> None:
    """A deploy.toml naming a custom controller and policy serves; the admin API sets a
    policy by ``file.py:Class`` and refuses a bad one with a 400 naming it."""
    text = CLIPPER_SPELLING.replace("[[models]]", """[[models]]
model_name = "other"
container_name = "noop"

[[models]]""")
    text = text.replace('candidate_model_names = ["noop"]',
                        'candidate_model_names = ["other", "noop"]')
    cfg = load_config(write(tmp_path, text), query_port=0, admin_port=0, rpc_port=0,
                      store=str(tmp_path / "store"), heartbeat_interval_s=0.2,
                      admin_token="t")  # a module:Class policy imports code: token
    st = ServerThread(cfg).start()
    try:
        admin = AdminClient(f"127.0.0.1:{st.ports['admin']}", token="t")
        q = QueryClient(f"127.0.0.1:{st.ports['query']}")
        admin.wait_ready("hello", timeout_s=60)
        r = q.predict("hello", [1.0])
        assert r["default"] is False and r["models"] == ["noop"]  # LastModel's choice
        info = admin.inspect()
        reps = info["models"]["noop"]["versions"]["2"]["replicas"]
        assert {r["policy"] for r in reps.values()} == {"doubling"}
        admin.set_policy("hello", f"{CLASSES}:LastModel")
        with pytest.raises(ServerError, match=r"400: .*selection policy 'nosuch:X'") as e:
            admin.set_policy("hello", "nosuch:X")
        assert e.value.status == 400
    finally:
        st.stop()
