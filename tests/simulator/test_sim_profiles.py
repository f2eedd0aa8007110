"""Latency profiles: shipped files, sampling from the data, extrapolation, bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clipperlab.simulator import (
    LatencyProfile,
    ProfileError,
    list_profiles,
    load_profile,
    save_profile,
)

PROTOTYPES = ["prototype-kernel-svm", "prototype-linear-svm", "prototype-logistic-regression",
              "prototype-noop", "prototype-random-forest", "prototype-spark-svm"]


def test_shipped_profiles() -> None:
    """The six prototype fits and the measured profiles ship, tagged with their source."""
    names = list_profiles()
    for n in PROTOTYPES:
        assert n in names
        p = load_profile(n)
        assert "prototype fit" in p.tags["source"] and p.kind == "cpu"
    measured = [n for n in names if n.startswith("measured-")]
    assert {"measured-noop", "measured-linear-svm", "measured-random-forest",
            "measured-kernel-svm", "measured-logistic-regression",
            "measured-torch-cnn"} <= set(measured)
    for n in measured:
        p = load_profile(n)
        assert {"hardware", "software", "source"} <= set(p.tags)
        if n.startswith("measured-gpu-"):  # torch nets timed on a GPU: no sklearn answers
            assert p.kind == "gpu" and "NVIDIA" in p.tags["hardware"]
        else:
            assert len(p.predictions["digits-binary-3"]) == 1797
    assert {"measured-gpu-mnist-cnn", "measured-gpu-cifar-cnn", "measured-gpu-digits-cnn",
            "measured-gpu-resnet18-w16"} <= set(measured)


def test_prototype_line_is_the_p99() -> None:
    """A prototype profile's 0.99 quantile is its fitted line; p99/mean is 1.35."""
    p = load_profile("prototype-linear-svm")
    alpha, beta = 12.7e-6, 3496e-6
    for b in (1, 64, 512):
        assert p.quantile_s(b, 0.99) == pytest.approx(alpha * b + beta, rel=1e-6)
        assert p.quantile_s(b, 0.99) / p.mean_s(b) == pytest.approx(1.35, rel=0.02)


def test_samples_follow_the_data() -> None:
    """Draws reproduce the measured quantiles, right tail included."""
    rng = np.random.default_rng(0)
    data = {4: list(rng.lognormal(np.log(0.002), 0.5, 5000))}
    p = LatencyProfile.from_samples("t", data)
    s = p.sampler(np.random.default_rng(1))
    draws = np.array([s(4) for _ in range(50_000)])
    for q in (0.5, 0.9, 0.99):
        assert np.quantile(draws, q) == pytest.approx(np.quantile(data[4], q), rel=0.05)
    assert draws.max() <= max(data[4]) + 1e-12


def test_interpolation_and_extrapolation() -> None:
    """Between sizes: linear in b at the same quantile; beyond: scaled by the fitted line."""
    p = LatencyProfile.from_samples("t", {1: [1.0, 2.0], 3: [3.0, 4.0]})
    assert p.quantile_s(2, 0.0) == pytest.approx(2.0)
    assert p.quantile_s(2, 1.0) == pytest.approx(3.0)
    assert p.fit is not None
    ratio = p.line_s(6) / p.line_s(3)
    assert p.quantile_s(6, 0.5) == pytest.approx(3.5 * ratio)


def test_save_and_load(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A saved profile loads back equal (to 9 significant digits)."""
    p = load_profile("prototype-random-forest")
    path = save_profile(p, tmp_path / "rf.json")
    q = load_profile(path)
    assert q.batch_sizes == p.batch_sizes and q.fit == p.fit
    assert np.allclose(q.latency_s, p.latency_s, rtol=1e-8)


def _write(tmp_path, data) -> str:  # type: ignore[no-untyped-def]
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(data))
    return str(f)


GOOD = {"name": "x", "batch_sizes": [1, 2], "levels": [0.0, 1.0],
        "latency_s": [[0.001, 0.002], [0.002, 0.003]]}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": None}, r"bad\.json: name: missing"),
        ({"batch_sizes": [2, 1]}, r"bad\.json: batch_sizes: expected strictly increasing"),
        ({"levels": [0.1, 1.0]}, r"bad\.json: levels: expected strictly increasing quantile"),
        ({"latency_s": [[0.001, 0.002]]}, r"bad\.json: latency_s: expected one row per"),
        ({"latency_s": [[0.002, 0.001], [0.002, 0.003]]},
         r"bad\.json: latency_s\[0\]: expected values non-decreasing"),
        ({"latency_s": [[-1, 0.002], [0.002, 0.003]]},
         r"bad\.json: latency_s\[0\]: expected finite latencies >= 0"),
        ({"kind": "tpu"}, r"bad\.json: kind: expected one of \('cpu', 'gpu'\), got 'tpu'"),
        ({"fit": {"alpha_s": "fast", "beta_s": 1}}, r"bad\.json: fit\.alpha_s: expected a "),
        ({"speed": 3}, r"bad\.json: unknown field\(s\) \['speed'\]"),
        ({"samples_s": {"1": []}}, r"bad\.json: samples_s\[1\]: expected a non-empty list"),
    ],
)
def test_bad_profile_files(tmp_path, change, message) -> None:  # type: ignore[no-untyped-def]
    """Each malformed field is reported with the file and the field."""
    data = {**GOOD, **change}
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(ProfileError, match=message):
        load_profile(_write(tmp_path, data))


def test_unknown_and_unreadable(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Unknown names list the shipped profiles; broken JSON names the line."""
    with pytest.raises(ProfileError, match="not a shipped profile; shipped: .*prototype-noop"):
        load_profile("no-such-profile")
    f = tmp_path / "broken.json"
    f.write_text("{\n  'x': 1\n}")
    with pytest.raises(ProfileError, match=r"broken\.json: not valid JSON \(line 2"):
        load_profile(f)


def test_measure_script_writes_a_loadable_profile(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """python -m clipperlab.simulator.measure_profiles writes a tagged profile with predictions."""
    from clipperlab.simulator.measure_profiles import main

    assert main(["--models", "noop", "--budget-s", "0.01", "--max-batch", "4",
                 "--out", str(tmp_path)]) == 0
    p = load_profile(tmp_path / "measured-noop.json")
    assert p.batch_sizes == (1, 2, 4) and "measured in-process" in p.tags["source"]
    assert set(p.predictions) == {"digits-binary-3", "digits-10"}
