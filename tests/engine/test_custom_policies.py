"""Policies of one's own: named by ``module:Class``, ``file.py:Class`` or an entry point,
checked against the interface when the config is built, and run by the engine; and the one
config schema for applications and models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from clipperlab.engine import (
    Application,
    BatchDone,
    BatchingConfig,
    ConfigError,
    Engine,
    ModelSpec,
    Query,
    ReplicaId,
    SendBatch,
    make_policy,
)
from clipperlab.engine.batching import make_controller
from clipperlab.engine.schema import (
    application_changes,
    application_tables,
    parse_application,
    parse_model,
)

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ROOT / "tests" / "plugin_classes.py"
EXAMPLES = ROOT / "examples"


def ref(cls: str) -> str:
    return f"{CLASSES}:{cls}"


def _run(eng: Engine, n: int) -> list[SendBatch]:
    """``n`` distinct queries at once, each batch answered 1 ms after it was sent."""
    sent: list[SendBatch] = []
    pending: list[Any] = []
    for i in range(n):
        pending += eng.on_query(Query(query_id=i, app="a", input=[float(i)]), now=0.001)
    t = 0.001
    while True:
        sends = [x for x in pending if isinstance(x, SendBatch)]
        if not sends:
            return sent
        send = sends[0]
        pending.remove(send)
        sent.append(send)
        t += 0.001
        pending += eng.on_batch_done(
            BatchDone(replica=send.replica, batch_id=send.batch_id,
                      outputs=[send.replica.model] * len(send.inputs)),
            now=t,
        )


def _engine(policy: str = "static", batching: str = "aimd", models: tuple[str, ...] = ("m",),
            **bc: Any) -> Engine:
    eng = Engine(seed=0)
    eng.add_application(Application(name="a", slo_s=10.0, default_output=-1, policy=policy),
                        now=0.0)
    for m in models:
        eng.add_model(ModelSpec(name=m, batching=BatchingConfig(policy=batching, **bc)), now=0.0)
        eng.link("a", [m], now=0.0)
        eng.on_replica_up(ReplicaId(m, "1", 0), now=0.0)
    return eng


def test_custom_controller_sets_the_batch_sizes() -> None:
    """A controller named by file and class decides every batch the engine sends."""
    eng = _engine(batching=ref("Doubling"))
    sizes = [len(s.inputs) for s in _run(eng, 40)]
    assert sizes == [1, 2, 4, 8, 8, 8, 8, 1]


def test_custom_controller_reads_its_params() -> None:
    """``BatchingConfig.params`` reach the controller."""
    eng = _engine(batching=ref("Doubling"), params={"top": 4})
    assert max(len(s.inputs) for s in _run(eng, 20)) == 4


def test_custom_selection_policy_picks_the_models() -> None:
    """A selection policy named by file and class chooses who answers."""
    eng = _engine(policy=ref("LastModel"), models=("first", "second"))
    sent = _run(eng, 5)
    assert {s.replica.model for s in sent} == {"second"}


def test_module_name_on_the_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """``module:Class`` imports the module by name (here: ``PYTHONPATH=examples``)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    ctrl = make_controller(BatchingConfig(policy="custom_controller:PowerOfTwo"), 0.02)
    assert ctrl.cap == 1
    ctrl.observe(1, 0.001, now=0.0)  # under half the bound: doubles
    ctrl.observe(2, 0.001, now=0.0)
    assert ctrl.cap == 4
    ctrl.observe(4, 0.03, now=0.0)  # over the bound: halves
    assert ctrl.cap == 2
    pol = make_policy("custom_policy:Softmax", {"temperature": 0.5})
    assert pol.params() == {"temperature": 0.5}


def test_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bare name is looked up in the entry point groups of installed distributions."""
    dist = tmp_path / "myplugins-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myplugins\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[clipperlab.batching]\npow2 = custom_controller:PowerOfTwo\n"
        "[clipperlab.selection]\nsoftmax = custom_policy:Softmax\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(EXAMPLES))
    assert type(make_controller(BatchingConfig(policy="pow2"), 0.02)).__name__ == "PowerOfTwo"
    assert type(make_policy("softmax")).__name__ == "Softmax"


BAD_BATCHING = [
    ("tests.plugin_classes.Doubling", r"'tests\.plugin_classes\.Doubling' is unknown \(did you "
                                      r"mean 'tests\.plugin_classes:Doubling'\?\)"),
    ("nosuch_pkg.mod:Doubling", r"'nosuch_pkg\.mod:Doubling': no module named 'nosuch_pkg\.mod'"
                                r" can be imported"),
    ("/no/such/file.py:Doubling", r"'/no/such/file\.py:Doubling': file '/no/such/file\.py' "
                                  r"does not exist"),
    (ref("Missing"), r"module '.*plugin_classes\.py' has no attribute 'Missing'"),
    (ref("NotAPolicy"), r"expected a subclass of clipperlab\.engine\.BatchController, "
                        r"got the class NotAPolicy"),
    (ref("not_a_class"), r"expected a subclass of .*BatchController, got a int"),
    (ref("LastModel"), r"expected a subclass of .*BatchController, got the class LastModel"),
    (ref("NoCap"), r"the class NoCap does not implement BatchController's abstract method\(s\) "
                   r"cap"),
    (ref("Needy"), r"cannot be built from the config: TypeError: .*extra"),
    (ref("ZeroCap"), r"cap: expected an integer >= 1, got 0"),
    (f"{CLASSES}:", r"expected 'package\.module:Class' or 'path/to/file\.py:Class'"),
]


@pytest.mark.parametrize(("name", "message"), BAD_BATCHING)
def test_bad_controller_names_one_clear_error(name: str, message: str) -> None:
    """Each way a named controller can be wrong: a ConfigError naming the value and rule."""
    with pytest.raises(ConfigError, match=message) as e:
        BatchingConfig(policy=name)
    assert f"batching policy {name!r}" in str(e.value)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("nosuch_pkg:Policy", r"no module named 'nosuch_pkg' can be imported"),
        (ref("Missing"), r"has no attribute 'Missing'"),
        (ref("Doubling"), r"expected a subclass of clipperlab\.engine\.SelectionPolicy, "
                          r"got the class Doubling"),
        ("best", r"'best' is unknown; expected a built-in name \(ab, .*\), an entry point of "
                 r"group 'clipperlab\.selection'"),
    ],
)
def test_bad_selection_policy_names_one_clear_error(name: str, message: str) -> None:
    """The same rules for selection policies, checked when the application is built."""
    with pytest.raises(ConfigError, match=message) as e:
        Application(name="a", policy=name)
    assert f"selection policy {name!r}" in str(e.value)


def test_params_are_checked() -> None:
    """Built-in controllers take no params; a custom one's own checks are ConfigErrors."""
    with pytest.raises(ConfigError, match=r"expected none for the built-in policy 'aimd'"):
        BatchingConfig(policy="aimd", params={"x": 1})
    with pytest.raises(ConfigError, match=r"params\.low: expected a number in \(0, 1\), got 2"):
        BatchingConfig(policy=f"{EXAMPLES}/custom_controller.py:PowerOfTwo", params={"low": 2})
    with pytest.raises(ConfigError, match=r"temperature: expected a number > 0"):
        Application(name="a", policy=f"{EXAMPLES}/custom_policy.py:Softmax",
                    policy_params={"temperature": 0})


# ---------------------------------------------------------------- one config schema

def test_slo_aliases_agree() -> None:
    """``slo_ms``, ``slo_s`` and Clipper's ``latency_slo_micros`` are one field."""
    apps = [parse_application({"name": "a", k: v}).app
            for k, v in (("slo_ms", 25), ("slo_s", 0.025), ("latency_slo_micros", 25000))]
    assert {a.slo_s for a in apps} == {0.025}
    with pytest.raises(ConfigError, match=r"app: expected one of slo_ms, slo_s, got both"):
        parse_application({"name": "a", "slo_ms": 20, "slo_s": 0.02}, "app")


def test_application_links_and_model_aliases() -> None:
    """Clipper's ``candidate_model_names`` and ``model_name``/``model_version`` are read."""
    entry = parse_application({"name": "a", "candidate_model_names": ["m"]})
    assert entry.models == ("m",)
    spec, replicas, extra = parse_model(
        {"model_name": "m", "model_version": 3, "replicas": 2, "kind": "noop"},
        driver_fields=("kind",))
    assert (spec.name, spec.version, replicas, extra) == ("m", "3", 2, {"kind": "noop"})


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"name": "a", "slo_ms": -1}, r"apps\[0\]\.slo_ms: expected a finite number > 0, got -1"),
        ({"name": "a", "slo_ms": "20"}, r"apps\[0\]\.slo_ms: expected a finite number > 0, "
                                        r"got '20'"),
        ({"slo_ms": 20}, r"apps\[0\]\.name: expected a name matching \[A-Za-z0-9\].*, got None"),
        ({"name": "a", "input_type": "pixels"}, r"apps\[0\]\.input_type: expected one of "
                                                r"integers, .*, got 'pixels'"),
        ({"name": "a", "models": "m"}, r"apps\[0\]\.models: expected a list of model names, "
                                       r"got 'm'"),
        ({"name": "a", "colour": 1}, r"apps\[0\]: unknown field\(s\) \['colour'\]"),
        ({"name": "a", "policy": "exp3", "policy_params": {"eta": -1}},
         r"apps\[0\]: exp3 eta must be a finite number > 0"),
        ({"name": "a", "policy": "nope:X"}, r"apps\[0\]\.policy: selection policy 'nope:X'"),
    ],
)
def test_application_errors_name_the_field(table: dict[str, Any], message: str) -> None:
    """Every error: the field, what was expected and what was got."""
    with pytest.raises(ConfigError, match=message):
        parse_application(table, "apps[0]")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"name": "m", "batching": {"max_batch_size": "8"}},
         r"models\[0\]\.batching\.max_batch_size: expected an integer, got '8'"),
        ({"name": "m", "batching": {"wait_timeout_s": -1}},
         r"models\[0\]\.batching: wait_timeout_s must be a finite number >= 0"),
        ({"name": "m", "batching": {"policy": "magic"}},
         r"models\[0\]\.batching: batching policy 'magic' is unknown"),
        ({"name": "m", "replicas": -1}, r"models\[0\]\.replicas: expected an integer >= 0"),
        ({"model_name": "m", "name": "m"}, r"models\[0\]: expected one of name, model_name, "
                                           r"got both"),
        ({"name": "m", "profile": "p"}, r"models\[0\]: unknown field\(s\) \['profile'\]"),
    ],
)
def test_model_errors_name_the_field(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_model(table, "models[0]")


def test_apps_or_applications_not_both() -> None:
    assert application_tables({"apps": [{"name": "a"}]})[0] == "apps"
    assert application_tables({}) == ("applications", [])
    with pytest.raises(ConfigError, match="top level: expected one of applications, apps"):
        application_tables({"apps": [], "applications": []})


def test_round_trip_and_changes() -> None:
    """``to_dict``/``from_dict`` round-trip through the schema (the store relies on it);
    an update's ``slo_ms`` becomes ``slo_s``."""
    app = Application(name="a", slo_s=0.05, policy="exp3", policy_params={"eta": 0.1},
                      input_shape=(64,))
    assert Application.from_dict(app.to_dict()) == app
    spec = ModelSpec(name="m", batching=BatchingConfig(policy=ref("Doubling"),
                                                       params={"top": 4},
                                                       allowed_batch_sizes=(2, 4)))
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert application_changes({"slo_ms": 30, "policy": "exp4"}) == {"slo_s": 0.03,
                                                                       "policy": "exp4"}


def test_relative_file_policies_follow_the_config(tmp_path: Path) -> None:
    """A relative ``file.py:Class`` is taken from the config's folder (``base_dir``)."""
    (tmp_path / "mine.py").write_text(CLASSES.read_text())
    entry = parse_application({"name": "a", "policy": "mine.py:LastModel"}, base_dir=tmp_path)
    assert entry.app.policy == f"{tmp_path / 'mine.py'}:LastModel"
    spec = parse_model({"name": "m", "batching": {"policy": "mine.py:Doubling"}},
                       base_dir=tmp_path).spec
    assert spec.batching.policy == f"{tmp_path / 'mine.py'}:Doubling"
