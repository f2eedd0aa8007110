"""The one driver base: exhaustive dispatch, one timer slot re-armed only when the engine's
deadline moves, early timers clamped; shown through the tests' fake driver."""

from __future__ import annotations

import typing
from dataclasses import dataclass

import pytest

from clipperlab.engine import (
    Application,
    BatchingConfig,
    Engine,
    Instruction,
    ModelSpec,
    NotFound,
    Query,
)
from clipperlab.engine.driver import HANDLED, Driver
from tests.fake import FakeDriver

SLO_S = 0.020


@dataclass(frozen=True, slots=True, kw_only=True)
class Bogus:
    """An instruction no driver knows."""

    what: str = "?"


def _driver(decision_log: bool = False) -> FakeDriver:
    eng = Engine(seed=0, decision_log=decision_log)
    eng.add_application(Application(name="a", slo_s=SLO_S, default_output=-1), now=0.0)
    eng.add_model(ModelSpec(name="m", batching=BatchingConfig(policy="none")), now=0.0)
    eng.link("a", ["m"], now=0.0)
    return FakeDriver(eng)


def test_dispatch_covers_every_instruction_type() -> None:
    """The base dispatches exactly the members of ``Instruction``."""
    assert set(HANDLED) == set(typing.get_args(Instruction))


def test_unknown_instruction_raises_type_error() -> None:
    """An instruction of an unknown type is an error naming it, not silently dropped."""
    d = _driver()
    with pytest.raises(TypeError, match="FakeDriver cannot carry out Bogus"):
        d.handle([Bogus()])  # type: ignore[list-item]


def test_hooks_are_abstract() -> None:
    """A driver that does not fill in a hook fails loudly when it is needed."""
    d = Driver(_driver().eng)
    with pytest.raises(NotImplementedError):
        d.on_query(Query(0, "a", 1), 0.0)  # queued (no replica): the timer must be armed


def test_timer_rearmed_only_when_the_deadline_moves() -> None:
    """Queries that do not move the engine's next deadline do not touch the timer; an
    earlier deadline cancels and re-arms; firing empties the slot and arms the next one."""
    d = _driver()
    d.query(0, "a", 1)  # no replica: waits for its deadline
    assert d.armed == [SLO_S] and d.cancelled == 0 and d.timer_at == SLO_S
    d.now = 0.001
    d.query(1, "a", 2)  # deadline 0.021: the next deadline is still 0.020
    d.query(2, "a", 3)
    assert d.armed == [SLO_S] and d.cancelled == 0
    d.query(3, "a", 4, deadline=0.010)  # an earlier deadline moves it
    assert d.armed == [SLO_S, 0.010] and d.cancelled == 1
    d.advance(0.0105)
    assert d.reply_times == {3: 0.010}
    assert d.armed == [SLO_S, 0.010, SLO_S] and d.cancelled == 1  # fired: nothing to cancel
    d.advance(0.05)
    assert sorted(d.replies) == [0, 1, 2, 3] and d.timer_at is None


def test_early_timer_is_clamped_to_its_time() -> None:
    """A timer that fires before its time (an event loop rounding its delay) is taken as
    firing at its time: the deadline reply goes out, stamped with the deadline."""
    d = _driver()
    d.query(0, "a", 1)
    out = d.on_timer(SLO_S - 0.0004)
    [reply] = out
    assert reply.query_id == 0 and reply.prediction.default
    assert reply.latency_s == SLO_S and d.reply_times[0] == SLO_S


def test_time_never_goes_back_after_an_early_timer() -> None:
    """After an early timer is clamped up to its time, a later event read from a clock
    still short of that time happens at it: the query answered there with the deadline
    default is expired from its queue, not sent in the next batch.  (Before, the batch
    carried the answered query with its input dropped, ``None``, and the model failed
    the whole batch: run 28's forest container, ``array=[nan]``.)"""
    d = _driver()
    d.up("m")
    d.query(0, "a", 10)  # the replica is idle: its batch goes at once
    d.now = 0.001
    d.query(1, "a", 11)  # queued behind it, deadline 0.021
    [first] = d.sent
    assert d.timer_at == SLO_S
    d.on_timer(SLO_S - 0.0004)  # fires early: query 0's deadline default at 0.020
    assert d.timer_at == SLO_S + 0.001
    d.on_timer(SLO_S + 0.0006)  # early again: query 1's default at 0.021, still queued
    assert d.replies[1].prediction.default and d.reply_times[1] == SLO_S + 0.001
    d.now = SLO_S + 0.0008  # the clock read after the clamp is still short of it
    d.complete(first.batch_id)
    assert d.sent == [first], "a batch carried a query already answered"
    assert d.duplicate_replies == 0 and sorted(d.replies) == [0, 1]
    d.now = 0.030
    d.query(2, "a", 12)  # the replica serves the next query as before
    assert [sb.inputs for sb in d.sent[1:]] == [(12,)]


def test_an_engine_error_does_not_swallow_due_replies() -> None:
    """A query for an unknown application raises before the engine handles what was due,
    so the reply due at that time still goes out (with the next call)."""
    d = _driver()
    d.query(0, "a", 1)
    d.now = 0.030  # the timer is late
    with pytest.raises(NotFound):
        d.query(1, "nope", 1)
    with pytest.raises(NotFound):
        d.up("ghost")
    assert d.replies == {}
    d.advance(0.030)
    assert list(d.replies) == [0] and d.duplicate_replies == 0


def test_admin_calls_take_now_and_rearm() -> None:
    """``admin(fn, now)`` runs ``fn(now)``; a version change is logged with that time."""
    d = _driver(decision_log=True)
    d.admin(lambda now: d.eng.add_model(ModelSpec(name="m", version="2"), now=now), 0.5)
    d.admin(lambda now: d.eng.set_model_version("m", "2", now=now), 1.0)
    assert d.admin(lambda now: d.eng.rollback("m", now=now), 2.0) == "1"
    assert d.eng.log == [("version", 1.0, "m", "2"), ("version", 2.0, "m", "1")]
