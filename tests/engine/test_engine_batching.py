"""Batching controllers with hand-set time: AIMD, quantile regression, delayed batching,
and the peers' shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clipperlab.engine import (
    Application,
    BatchingConfig,
    Dispatch,
    Engine,
    ModelSpec,
    QueueView,
    Wait,
)
from clipperlab.engine._types import ReleaseReason
from clipperlab.engine.batching import (
    AIMDController,
    QuantileController,
    fit_linear_quantile,
    make_controller,
)
from clipperlab.engine.errors import ConfigError
from tests.fake import FakeDriver

BOUND = 0.020


def view(n: int, oldest: float = 0.0, newest: float = 0.0, head_deadline: float = 1.0) -> QueueView:
    return QueueView(n, oldest, newest, head_deadline)


def test_aimd_follows_the_prototype_rule() -> None:
    """+2 on the size sent below the band, hold within the last 10%, x0.9 at or above."""
    c = AIMDController(BatchingConfig(policy="aimd"), BOUND)
    assert c.cap == 1
    c.observe(1, 0.005, 0.0)
    assert c.cap == 3
    c.observe(3, 0.005, 0.0)
    assert c.cap == 5
    c.observe(5, 0.0185, 0.0)  # in the hold band [18 ms, 20 ms)
    assert c.cap == 5
    c.observe(5, 0.020, 0.0)  # at the bound: back off
    assert c.cap == 4  # floor(5 * 0.9)
    c.observe(1, 0.5, 0.0)
    assert c.cap == 1  # never below 1


def test_aimd_respects_max_batch_size() -> None:
    c = AIMDController(BatchingConfig(policy="aimd", max_batch_size=4), BOUND)
    for _ in range(10):
        c.observe(c.cap, 0.001, 0.0)
    assert c.cap == 4


def test_quantile_regression_fits_the_p99_line() -> None:
    """On data from p99 = 100 us/item + 2 ms, the cap is (20 ms - 2 ms) / 100 us = 180."""
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 200, 2000)
    noise = rng.uniform(0.0, 1.0, 2000)
    lat = 1e-4 * sizes + 0.002 * noise / 0.99  # the 0.99 quantile of the noise is 2 ms
    alpha, beta = fit_linear_quantile(list(sizes), list(lat), 0.99)
    assert alpha == pytest.approx(1e-4, rel=0.05)
    assert beta == pytest.approx(0.002, rel=0.1)


def test_quantile_controller_runs_aimd_then_sets_cap_once() -> None:
    cfg = BatchingConfig(policy="quantile", fit_after_batches=50)
    c = QuantileController(cfg, BOUND)
    latency = lambda b: 1e-4 * b + 0.002  # noqa: E731
    for _ in range(49):
        c.observe(c.cap, latency(c.cap), 0.0)
    assert c.fit is None
    c.observe(c.cap, latency(c.cap), 0.0)
    assert c.fit is not None
    assert c.cap == pytest.approx(180, abs=2)
    cap = c.cap
    c.observe(cap, 1.0, 0.0)  # no refit configured: the cap stays
    assert c.cap == cap


def test_quantile_controller_refits_periodically() -> None:
    cfg = BatchingConfig(policy="quantile", fit_after_batches=20, refit_every_batches=20)
    c = QuantileController(cfg, BOUND)
    for _ in range(20):
        c.observe(c.cap, 1e-4 * c.cap + 0.002, 0.0)
    first = c.cap
    for _ in range(20):  # the model got twice as slow per item
        c.observe(c.cap, 2e-4 * c.cap + 0.002, 0.0)
    assert c.cap < first


def test_delayed_batching_waits_from_the_oldest_arrival() -> None:
    c = make_controller(
        BatchingConfig(policy="fixed", max_batch_size=8, wait_timeout_s=0.002), BOUND
    )
    assert c.decide(0.0005, view(3, oldest=0.0)) == Wait(0.002)
    d = c.decide(0.002, view(3, oldest=0.0))
    assert d == Dispatch(3, ReleaseReason.WAIT_TIMEOUT)
    assert c.decide(0.0001, view(8)) == Dispatch(8, ReleaseReason.CAP_REACHED)


def test_delayed_batching_releases_early_under_deadline_pressure() -> None:
    c = make_controller(
        BatchingConfig(policy="fixed", max_batch_size=64, wait_timeout_s=0.010), BOUND
    )
    for _ in range(5):
        c.observe(4, 0.006, 0.0)  # a batch of 4 takes 6 ms
    # head deadline at 10 ms: waiting until 10 ms would miss it; release at 4 ms at the latest
    assert c.decide(0.001, view(4, oldest=0.0, head_deadline=0.010)) == Wait(pytest.approx(0.004))
    d = c.decide(0.0045, view(4, oldest=0.0, head_deadline=0.010))
    assert isinstance(d, Dispatch) and d.reason == ReleaseReason.DEADLINE_PRESSURE


def test_tfserving_pads_to_allowed_sizes_and_bounds_queue() -> None:
    cfg = BatchingConfig(
        policy="tfserving",
        max_batch_size=32,
        wait_timeout_s=0.001,
        allowed_batch_sizes=(4, 8, 16),
        max_enqueued_batches=2,
    )
    c = make_controller(cfg, BOUND)
    assert c.max_queue == 64
    d = c.decide(0.002, view(5))
    assert isinstance(d, Dispatch) and d.size == 5 and d.padded_size == 8
    assert c.decide(0.0005, view(5)) == Wait(0.001)


def test_triton_sends_largest_preferred_size_at_once() -> None:
    cfg = BatchingConfig(
        policy="triton", max_batch_size=64, preferred_batch_sizes=(4, 8), wait_timeout_s=0.005
    )
    c = make_controller(cfg, BOUND)
    assert c.decide(0.0, view(9)) == Dispatch(8, ReleaseReason.PREFERRED_SIZE)
    assert c.decide(0.0, view(3)) == Wait(0.005)
    assert c.decide(0.006, view(3)) == Dispatch(3, ReleaseReason.WAIT_TIMEOUT)


def test_bentoml_sheds_oldest_when_bound_cannot_be_met() -> None:
    c = make_controller(BatchingConfig(policy="bentoml", max_batch_size=100), BOUND)
    for _ in range(10):
        c.observe(10, 0.001 * 10 + 0.005, float(_))
    d = c.decide(0.010, view(5, oldest=0.0, newest=0.009))  # 10 ms waited + 10 ms compute
    assert isinstance(d, Dispatch) and d.shed == 1
    d2 = c.decide(0.010, view(5, oldest=0.009, newest=0.009))
    assert isinstance(d2, (Dispatch, Wait)) and not (isinstance(d2, Dispatch) and d2.shed)


def test_engine_sheds_through_bentoml_with_refusal() -> None:
    eng = Engine()
    eng.add_application(Application(name="a", slo_s=1.0, default_output=0), now=0.0)
    eng.add_model(
        ModelSpec(name="m", batching=BatchingConfig(policy="bentoml", latency_bound_s=0.010)),
        now=0.0,
    )
    eng.link("a", ["m"], now=0.0)
    d = FakeDriver(eng)
    d.up("m")
    d.query(0, "a", 0)
    d.now = 0.008
    d.complete(d.sent[0].batch_id)  # one batch of 1 took 8 ms: the model sees b = 8 ms
    d.query(1, "a", 1)
    d.query(2, "a", 2)
    # BentoML keeps waiting for a fuller batch on 1 ms ticks; once a query has waited
    # 2 ms, wait + 8 ms of compute reaches the 10 ms bound and it is shed (HTTP 503).
    d.advance(0.050)
    for q in (1, 2):
        assert d.replies[q].refused and d.replies[q].prediction.default_reason == "shed"
        assert d.reply_times[q] == pytest.approx(0.0108, abs=0.0011)
    assert len(d.sent) == 1


def test_batch_never_exceeds_cap_and_aimd_grows_under_load() -> None:
    """With a 1 ms + 10 us/item model and a steady queue, AIMD caps grow and batches obey them."""
    eng = Engine()
    eng.add_application(Application(name="a", slo_s=0.020), now=0.0)
    eng.add_model(ModelSpec(name="m", batching=BatchingConfig(policy="aimd")), now=0.0)
    eng.link("a", ["m"], now=0.0)
    d = FakeDriver(eng)
    rid = d.up("m")
    qid = 0
    for step in range(60):
        for _ in range(20):
            d.query(qid, "a", qid)
            qid += 1
        [sb] = d.open_for(rid)
        cap_before = eng.controller(rid).cap
        assert len(sb.inputs) <= max(cap_before, 1) or step == 0
        d.now += 0.001 + 1e-5 * len(sb.inputs)
        d.complete(sb.batch_id)
    assert eng.controller(rid).cap > 20
    assert max(len(s.inputs) for s in d.sent) > 10


def test_wait_timeout_batch_dispatched_by_timer() -> None:
    """A below-cap batch is released by the engine's timer at oldest arrival + wait."""
    eng = Engine(decision_log=True)
    eng.add_application(Application(name="a", slo_s=0.050), now=0.0)
    eng.add_model(
        ModelSpec(
            name="m",
            batching=BatchingConfig(policy="fixed", max_batch_size=10, wait_timeout_s=0.003),
        ),
        now=0.0,
    )
    eng.link("a", ["m"], now=0.0)
    d = FakeDriver(eng)
    d.up("m")
    d.now = 0.001
    d.query(1, "a", 1)
    d.now = 0.002
    d.query(2, "a", 2)
    assert d.sent == []
    assert eng.next_deadline() == pytest.approx(0.004)
    d.advance(0.005)
    [sb] = d.sent
    assert sb.inputs == (1, 2) and sb.reason == ReleaseReason.WAIT_TIMEOUT
    assert math.isclose(eng.log[0][1], 0.004)  # type: ignore[index]


def test_aimd_initial_size_and_step_from_cap() -> None:
    """Our AIMD options: start above 1; keep a cap that a short queue did not fill."""
    c = AIMDController(BatchingConfig(policy="aimd", initial_batch_size=64), BOUND)
    assert c.cap == 64
    c.observe(3, 0.005, 0.0)
    assert c.cap == 5  # the prototype steps from the size sent
    c = AIMDController(
        BatchingConfig(policy="aimd", initial_batch_size=64, aimd_step_from="cap"), BOUND
    )
    c.observe(3, 0.005, 0.0)
    assert c.cap == 66
    c.observe(66, 0.025, 0.0)
    assert c.cap == 59  # backoff still from the size sent
    c.observe(1, 0.005, 0.0)
    assert c.cap == 61  # a batch the queue did not fill still grows the cap


def test_aimd_step_from_filled_holds_the_cap_over_a_lull() -> None:
    """``aimd_step_from="filled"``: a fast batch that filled its cap grows it as the
    prototype does; one that did not (a lull, a short queue) holds it; a slow batch backs
    off from its size; and an idle stretch does not inflate it."""
    c = AIMDController(
        BatchingConfig(policy="aimd", initial_batch_size=40, aimd_step_from="filled"), BOUND
    )
    c.observe(40, 0.005, 0.0)
    assert c.cap == 42  # filled: +2
    for _ in range(100):
        c.observe(1, 0.001, 0.0)  # a lull's batches of one
    assert c.cap == 42  # held: the prototype would be at 3, "cap" at 242
    c.observe(42, 0.019, 0.0)
    assert c.cap == 42  # in the hold band
    c.observe(42, 0.025, 0.0)
    assert c.cap == 37  # backoff from the size sent
    c.observe(10, 0.025, 0.0)
    assert c.cap == 9  # a slow batch, even a small one, backs off
    sent = AIMDController(BatchingConfig(policy="aimd", initial_batch_size=40), BOUND)
    sent.observe(1, 0.001, 0.0)
    assert sent.cap == 3
    with pytest.raises(ConfigError, match="aimd_step_from must be one of 'sent', 'cap', "
                                          "'filled', got 'window'"):
        BatchingConfig(policy="aimd", aimd_step_from="window")


def test_quantile_fits_after_time_when_batches_are_slow() -> None:
    cfg = BatchingConfig(policy="quantile", fit_after_batches=500, fit_after_s=1.0)
    c = QuantileController(cfg, BOUND)
    for i in range(10):
        c.observe(c.cap, 1e-4 * c.cap + 0.002, i * 0.2)
    assert c.fit is not None  # 10 batches over 1.8 s: fitted on time, not on count


def test_drop_hopeless_skips_requests_that_cannot_make_it() -> None:
    """With drop_hopeless, a queued request whose deadline is before now + the predicted
    batch latency is not computed; its query gets the default at once."""
    eng = Engine()
    eng.add_application(Application(name="a", slo_s=0.030, default_output=-1), now=0.0)
    eng.add_model(
        ModelSpec(
            name="m", batching=BatchingConfig(policy="fixed", max_batch_size=8, drop_hopeless=True)
        ),
        now=0.0,
    )
    eng.link("a", ["m"], now=0.0)
    d = FakeDriver(eng)
    d.up("m")
    d.query(0, "a", 0)
    d.now = 0.002
    d.query(1, "a", 1)  # deadline 32 ms
    d.now = 0.015
    d.query(2, "a", 2)  # deadline 45 ms
    d.now = 0.020
    d.complete(d.sent[0].batch_id)  # a batch of 1 took 20 ms: the model predicts 20 ms
    # at 20 ms: query 1 (deadline 32 ms) cannot make it; query 2 (45 ms) can
    assert d.replies[1].prediction.default and d.reply_times[1] == pytest.approx(0.020)
    assert d.sent[-1].inputs == (2,)
    assert eng.metrics.value("clipperlab_queue_hopeless_total", model="m", version="1") == 1
    d.now = 0.040
    d.complete(d.sent[-1].batch_id)
    assert not d.replies[2].prediction.default
