"""The ``replay`` container kind: batch latencies drawn from a profile, recorded outputs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from clipperlab.calibration.replay import main as replay_main
from clipperlab.calibration.replay import replay_spec, write_replay
from clipperlab.real.models import ReplaySampler, load_model, read_replay
from clipperlab.simulator import LatencyProfile, load_profile
from clipperlab.workloads import DigitsInputs


@pytest.mark.parametrize("name", ["synthetic-convnet-gpu", "measured-logistic-regression"])
@pytest.mark.parametrize("batch_size", [1, 3, 8, 100, 5000])
def test_inverse_cdf_is_the_simulators(name: str, batch_size: int) -> None:
    """At measured, interpolated (3, 100) and extrapolated (5000) sizes the container's
    inverse CDF is the simulator profile's, at every u."""
    prof = load_profile(name)
    s = ReplaySampler(replay_spec(prof), np.random.default_rng(0))
    u = np.linspace(0, 1, 1001)
    np.testing.assert_allclose(s.inverse_cdf(batch_size, u), prof.inverse_cdf(batch_size, u),
                               rtol=1e-12, atol=0)


@pytest.mark.parametrize("batch_size", [1, 6, 64])
def test_draws_follow_the_profile(batch_size: int) -> None:
    """40,000 seeded draws: at each of the profile's p10..p99 the empirical CDF is within
    0.015 of the level (the DKW bound at this size is 0.0097 with probability 0.999)."""
    prof = LatencyProfile.from_line("t", alpha_s=0.001, beta_s=0.004, kind="gpu")
    s = ReplaySampler(replay_spec(prof), np.random.default_rng(7))
    draws = np.array([s.draw(batch_size) for _ in range(40_000)])
    for q in (0.1, 0.25, 0.5, 0.75, 0.9, 0.99):
        share = float(np.mean(draws <= prof.quantile_s(batch_size, q)))
        assert abs(share - q) < 0.015, (q, share)
    assert draws.min() >= prof.quantile_s(batch_size, 0.0)
    assert draws.max() <= prof.quantile_s(batch_size, 1.0)


def test_a_replica_waits_and_replays_recorded_predictions(tmp_path: Path) -> None:
    """The model answers the profile's recorded predictions for known inputs, the constant
    for others, and waits about the drawn latency (divided by ``speed``)."""
    prof = load_profile("measured-logistic-regression")
    path = write_replay(prof, tmp_path / "r.json", output=-7, task="digits-binary-3",
                        inputs={"kind": "digits", "binary": True, "positive_digit": 3})
    predict = load_model("replay", str(path), {"seed": 1, "speed": 1e3})
    x, _ = DigitsInputs().load()
    got = predict(np.asarray(x[:50]))
    assert list(got) == list(prof.predictions["digits-binary-3"][:50])
    assert list(predict(np.full((2, 64), 99.0))) == [-7, -7]
    t0 = time.perf_counter()
    predict(np.asarray(x[:4]))
    assert time.perf_counter() - t0 >= prof.quantile_s(4, 0.0) / 1e3


def test_constant_output_without_predictions(tmp_path: Path) -> None:
    path = write_replay("synthetic-convnet-gpu", tmp_path / "g.json", output=3)
    predict = load_model("replay", str(path), {"speed": 1e6})
    assert list(predict(np.zeros((5, 64)))) == [3] * 5


def test_bad_replay_files_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs path"):
        load_model("replay", "", {})
    with pytest.raises(ValueError, match="cannot read"):
        read_replay(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "clipperlab-profile/1"}))
    with pytest.raises(ValueError, match="format"):
        read_replay(str(bad))
    spec = replay_spec(load_profile("synthetic-convnet-gpu"))
    spec["latency_s"][0] = list(reversed(spec["latency_s"][0]))
    bad.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="non-decreasing"):
        read_replay(str(bad))


def test_the_converter_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert replay_main(["synthetic-convnet-gpu", str(tmp_path / "x.json")]) == 0
    assert read_replay(str(tmp_path / "x.json"))["kind"] == "gpu"
    assert replay_main(["no-such-profile", str(tmp_path / "y.json")]) == 2
    assert "no-such-profile" in capsys.readouterr().err
