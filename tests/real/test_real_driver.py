"""The real server's engine driver on the driver base: unknown instructions raise, the
loop timer is re-armed only when the engine's deadline moves, an early timer is clamped.
No server and no running loop: the clock is patched, the timer fired by hand."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from clipperlab.engine import Application, Engine, ModelSpec, Reply
from clipperlab.real import driver as real_driver
from clipperlab.real.driver import EngineDriver


@dataclass(frozen=True)
class Bogus:
    what: str = "?"


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def _driver(loop: asyncio.AbstractEventLoop) -> EngineDriver:
    eng = Engine()
    d = EngineDriver(eng, loop)
    d.admin(lambda now: eng.add_application(Application(name="a", slo_s=0.020), now=now))
    d.admin(lambda now: eng.add_model(ModelSpec(name="m"), now=now))
    d.admin(lambda now: eng.link("a", ["m"], now=now))
    return d


def test_unknown_instruction_raises(loop: asyncio.AbstractEventLoop) -> None:
    """An instruction the driver does not know is a TypeError, no longer dropped."""
    d = _driver(loop)
    with pytest.raises(TypeError, match="EngineDriver cannot carry out .*Bogus"):
        d.handle([Bogus()], 0.0)  # type: ignore[list-item]


def test_timer_rearmed_only_when_deadline_moves_and_clamped_when_early(
    loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two queries with the same next deadline share one loop timer; when it fires early
    (libuv rounds to milliseconds) the engine sees the deadline, and the queries that
    were due get their default replies."""
    clock = [100.0]
    monkeypatch.setattr(real_driver, "_now", lambda: clock[0])
    d = _driver(loop)
    got: list[Reply] = []
    d.query("a", 1, got.append)  # no replica: waits for its deadline at 100.020
    handle = d._timer
    assert handle is not None and d.timer_at == pytest.approx(100.020)
    clock[0] = 100.001
    d.query("a", 2, got.append)
    assert d._timer is handle  # the next deadline did not move: same timer
    clock[0] = 100.0195  # the loop fires it half a millisecond early
    d._fire()
    assert [r.query_id for r in got] == [1]
    assert got[0].prediction.default and got[0].latency_s == pytest.approx(0.020)
    assert d.timer_at == pytest.approx(100.021) and d._timer is not handle
    assert d.pending == 1


class _Link:
    def __init__(self) -> None:
        self.sent: list[int] = []

    def send_batch(self, batch_id: int, inputs: tuple[object, ...]) -> None:
        self.sent.append(batch_id)


def test_an_answer_given_at_once_reaches_its_callback_and_a_raising_one_is_counted(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """A cache hit is answered before ``query`` returns, nothing stays pending; a callback
    that raises on it is logged and counted, and the next query is served."""
    from clipperlab.engine import ReplicaId

    d = _driver(loop)
    link = _Link()
    d.replica_up(ReplicaId("m", d.engine.registry.active["m"], 0), link)
    got: list[Reply] = []
    d.query("a", 1, got.append, input_key="k")
    d.batch_done(ReplicaId("m", d.engine.registry.active["m"], 0), link.sent[0], [9])
    assert [r.prediction.output for r in got] == [9]

    def boom(r: Reply) -> None:
        raise RuntimeError("the client's handler failed")

    qid = d.query("a", 1, boom, input_key="k")  # a hit: answered at once
    assert d.reply_errors == 1 and d.pending == 0
    d.query("a", 1, got.append, input_key="k")
    assert [r.prediction.output for r in got] == [9, 9] and got[-1].query_id == qid + 1
    assert len(link.sent) == 1 and d.pending == 0


def test_ask_returns_an_answer_given_at_once_and_calls_back_with_a_later_one(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """``ask`` hands a cache hit back to its caller (its callback never called, nothing
    pending, the same reply ``query`` would give); a miss returns ``None`` and its callback
    gets the reply when the batch is done.  Query ids count on across both calls."""
    from clipperlab.engine import ReplicaId

    d = _driver(loop)
    link = _Link()
    rid = ReplicaId("m", d.engine.registry.active["m"], 0)
    d.replica_up(rid, link)
    got: list[Reply] = []
    assert d.ask("a", 1, got.append, input_key="k") is None and d.pending == 1
    d.batch_done(rid, link.sent[0], [9])
    assert [(r.query_id, r.prediction.output) for r in got] == [(1, 9)]

    def never(r: Reply) -> None:
        raise AssertionError("an answer given at once goes back to the caller")

    r = d.ask("a", 1, never, input_key="k")
    assert r is not None and (r.query_id, r.prediction.output) == (2, 9) and d.last_id == 2
    assert d.pending == 0 and len(link.sent) == 1
    assert d.query("a", 1, got.append, input_key="k") == 3
    assert got[-1].prediction == r.prediction and got[-1].query_id == 3
