"""The workload spec: seeded traces, inputs, labels, feedback, contexts, config tables."""

from __future__ import annotations

import numpy as np
import pytest

from clipperlab.workloads import (
    ConstantRate,
    DigitsInputs,
    FeedbackStream,
    Poisson,
    SyntheticTensors,
    UserContexts,
    Workload,
    WorkloadError,
)


def test_generate_is_seeded() -> None:
    """The same seed gives the same arrays; another seed does not."""
    w = Workload(Poisson(1000), n_queries=2000, feedback=FeedbackStream(0.3, 0.01),
                 contexts=UserContexts(5))
    a, b, c = w.generate(1), w.generate(1), w.generate(2)
    for f in ("arrival_at", "input_index", "label", "context", "feedback_at"):
        assert np.array_equal(getattr(a, f), getattr(b, f))
    assert not np.array_equal(a.arrival_at, c.arrival_at)


def test_streams_are_independent() -> None:
    """Adding feedback does not move the arrivals or the inputs."""
    base = Workload(Poisson(1000), n_queries=500)
    fb = Workload(Poisson(1000), n_queries=500, feedback=FeedbackStream(0.5, 0.1))
    a, b = base.generate(3), fb.generate(3)
    assert np.array_equal(a.arrival_at, b.arrival_at)
    assert np.array_equal(a.input_index, b.input_index)


def test_digits_binary_is_the_papers_task() -> None:
    """'Is it a 3?': labels are 1 exactly for threes, balanced classes by default."""
    inp = DigitsInputs(binary=True)
    x, y = inp.load()
    assert x.shape == (1797, 64) and inp.input_bytes == 512
    _, y10 = DigitsInputs(binary=False).load()
    assert np.array_equal(y, (y10 == 3).astype(np.int64))
    t = Workload(ConstantRate(1000), n_queries=20_000, inputs=inp).generate(0)
    assert t.label.mean() == pytest.approx(0.5, abs=0.02)
    assert np.array_equal(t.label, y[t.input_index])


def test_synthetic_tensors_bytes() -> None:
    """784 float64 values are the paper's 6,272-byte MNIST input."""
    s = SyntheticTensors(shape=(784,), dtype="float64", pool=8, classes=3)
    x, y = s.load()
    assert x.shape == (8, 784) and s.input_bytes == 6272 and set(y) <= {0, 1, 2}
    assert Workload(ConstantRate(10), n_queries=5, inputs=s).input_bytes == 6272


def test_duration_and_feedback() -> None:
    """duration_s bounds the arrivals; feedback arrives delay_s after its query."""
    w = Workload(ConstantRate(1000), duration_s=0.5, feedback=FeedbackStream(1.0, 0.02))
    t = w.generate(0)
    assert len(t) == 500 and t.arrival_at[-1] <= 0.5
    assert np.allclose(t.feedback_at, t.arrival_at[t.feedback_query] + 0.02)


def test_contexts_zipf() -> None:
    """Zipf users: user 0 is the most frequent."""
    t = Workload(ConstantRate(1000), n_queries=5000,
                 contexts=UserContexts(10, zipf_a=1.5)).generate(0)
    assert t.context is not None
    counts = np.bincount(t.context, minlength=10)
    assert counts.argmax() == 0 and counts.sum() == 5000


def test_config_round_trip() -> None:
    """to_dict/from_dict round-trip."""
    w = Workload(Poisson(200), n_queries=10, inputs=SyntheticTensors((2, 3), "float32"),
                 feedback=FeedbackStream(0.5, 0.1), contexts=UserContexts(3), cacheable=True)
    assert Workload.from_dict(w.to_dict()) == w


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"n_queries": 5}, r"workload\.arrivals: missing"),
        ({"arrivals": {"kind": "poisson", "qps": -5}, "n_queries": 5}, r"qps must be .*> 0"),
        ({"arrivals": {"kind": "poison", "qps": 5}, "n_queries": 5},
         r"workload\.arrivals\.kind must be one of"),
        ({"arrivals": {"kind": "poisson", "qps": "fast"}, "n_queries": 5},
         r"workload\.arrivals\.qps must be a number, got 'fast'"),
        ({"arrivals": {"kind": "poisson", "qps": 5}}, "exactly one of n_queries and duration_s"),
        ({"arrivals": {"kind": "poisson", "qps": 5}, "n_queries": 5, "speed": 1},
         r"unknown field\(s\) \['speed'\]"),
        ({"arrivals": {"kind": "poisson", "qps": 5}, "n_queries": 5,
          "feedback": {"fraction": 2}}, r"feedback\.fraction must be in \[0, 1\]"),
    ],
)
def test_config_errors(table: dict, message: str) -> None:  # type: ignore[type-arg]
    """Bad tables name the field and the rule."""
    with pytest.raises(WorkloadError, match=message):
        Workload.from_dict(table)
