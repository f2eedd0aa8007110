"""Arrival processes: seeded, at the asked rate, with the asked variability."""

from __future__ import annotations

import numpy as np
import pytest

from clipperlab.workloads import MMPP, ConstantRate, Gamma, Poisson, TraceReplay, WorkloadError


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_constant_rate_is_exact() -> None:
    """The paper's load: one query every 1/qps seconds."""
    t = ConstantRate(1000).times(5, rng())
    assert np.allclose(t, [0.001, 0.002, 0.003, 0.004, 0.005])


@pytest.mark.parametrize("proc", [Poisson(5000), Gamma(5000, cv=3.0), Gamma(5000, cv=0.5)])
def test_mean_rate(proc: Poisson | Gamma) -> None:
    """Random processes hit their mean rate within a few percent over 100K arrivals."""
    t = proc.times(100_000, rng(1))
    assert np.all(np.diff(t) >= 0)
    assert t.size / t[-1] == pytest.approx(5000, rel=0.05)


def test_gamma_cv() -> None:
    """Gamma gaps have the asked coefficient of variation."""
    gaps = np.diff(Gamma(1000, cv=2.5).times(200_000, rng(2)))
    assert gaps.std() / gaps.mean() == pytest.approx(2.5, rel=0.05)


def test_seeded() -> None:
    """Same seed, same times; another seed, other times."""
    a = Poisson(100).times(1000, rng(7))
    b = Poisson(100).times(1000, rng(7))
    c = Poisson(100).times(1000, rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_mmpp_bursts() -> None:
    """An MMPP's long-run rate is the dwell-weighted mean; gaps are burstier than Poisson."""
    p = MMPP((1000.0, 20_000.0), (0.2, 0.02))
    t = p.times(200_000, rng(3))
    assert t.size == 200_000 and np.all(np.diff(t) >= 0)
    assert t.size / t[-1] == pytest.approx(p.mean_qps, rel=0.1)
    gaps = np.diff(t)
    assert gaps.std() / gaps.mean() > 1.3


def test_trace_replay(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A CSV of timestamps is replayed from 0, scaled, and repeated when too short."""
    f = tmp_path / "t.csv"
    f.write_text("timestamp,other\n10.0,a\n10.5,b\n11.0,c\n")
    tr = TraceReplay(str(f), time_scale=2.0)
    assert np.allclose(tr.times(3, rng()), [0.0, 1.0, 2.0])
    assert np.allclose(tr.times(5, rng()), [0.0, 1.0, 2.0, 3.0, 4.0])


def test_trace_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Bad traces name the file, the line or the column."""
    f = tmp_path / "t.csv"
    f.write_text("ts\n1\n")
    with pytest.raises(WorkloadError, match="column 'timestamp' not found"):
        TraceReplay(str(f)).times(1, rng())
    f.write_text("timestamp\n1\nabc\n")
    with pytest.raises(WorkloadError, match=r"t\.csv:3: timestamp must be a number"):
        TraceReplay(str(f)).times(1, rng())


@pytest.mark.parametrize("bad", [lambda: Poisson(-1), lambda: ConstantRate(0),
                                 lambda: Gamma(10, cv=0), lambda: MMPP((1.0,), (1.0, 2.0)),
                                 lambda: Poisson(float("inf"))])
def test_nonsense_rates_refused(bad) -> None:  # type: ignore[no-untyped-def]
    """Negative, zero or infinite rates are refused with the field named."""
    with pytest.raises(WorkloadError, match=r"(qps|cv|MMPP)"):
        bad()
