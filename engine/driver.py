"""The one driver loop: feed the engine an event, carry out what it returns, re-arm.

Theory of operation.  The engine is a state machine with no clock and no I/O; a *driver*
owns the clock, the sockets or simulated containers, and one timer.  Every driver does the
same three things after every engine call, and this base does them in one place (dask's
``BaseWorker`` and aioquic's connection adapter are the models):

1. **Carry out** each instruction, in the engine's order, through an exhaustive dispatch:
   ``SendBatch`` -> ``send_batch``, ``Reply`` -> ``reply``, ``FeedbackApplied`` ->
   ``feedback_applied``.  An instruction of any other type raises ``TypeError``: a new
   instruction must be taught to every driver, not dropped by one of them.  A
   ``send_batch`` that raises fails that batch (``engine.on_batch_failed``, after the rest
   of the list) instead of stopping the list: a batch that cannot be sent must not leave
   its replica busy for ever nor its queries unanswered.  A driver that calls
   ``send_batch`` itself on a hot path hands such an error to ``send_failed``, which
   does the same.
2. **Re-arm** the one timer slot: ask ``engine.next_deadline()`` (read as ``engine.due_at``,
   the same time as a float, without a call) and, only when it differs
   from the time the slot holds, ``cancel_timer()`` the old one and ``arm_timer(at)`` the
   new one.  The engine's deadline is a lower bound (it may be a little early), so a timer
   that finds nothing due is harmless: ``on_timer`` moves the deadline on.
3. When the timer fires, ``on_timer(now)`` empties the slot and calls ``engine.on_timer``.
   A timer that fires *early* (event loops round delays to their resolution) has ``now``
   clamped up to the time it was armed for, as aioquic does, so the engine sees its
   deadline reached rather than a spurious wake-up.
4. Time never goes back for the engine: once an early timer has been clamped, every
   later engine call's ``now`` is raised to at least that time (``now_floor``; a driver
   with a hot path of its own does the same with ``not_before``); the hooks keep the
   driver's own time (a simulated batch starts when it is sent, not at the clamp).
   Without it the clock, read after the clamp, could still be short of the clamped
   time: a query answered with the deadline default there was still in its model's
   queue with a deadline the engine no longer saw as passed, so the next batch carried
   the answered query, its input already dropped (``None``), and failed for every query
   in it (run 28's forest:
   ``Expected 2D array, got 1D array instead: array=[nan]``).

Subclasses implement the five hooks and translate their world's inputs into the ``on_*``
calls (``on_query``, ``on_batch_done``, ``on_batch_failed``, ``on_feedback``,
``on_replica_up``, ``on_replica_down``, ``on_timer``), each of which returns the
instructions it carried out.  Administrative engine calls go through ``admin(fn, now)``
(``fn`` gets ``now``) so the timer is re-armed after them too.  Hooks receive ``now``:
the time of the engine call whose instructions they carry out.

Pure like the rest of ``engine/``: no clock, no event loop; a driver brings those.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, TypeVar

from mypy_extensions import mypyc_attr

from ._types import (
    BatchDone,
    BatchFailed,
    Feedback,
    FeedbackApplied,
    Instruction,
    Query,
    ReplicaId,
    Reply,
    SendBatch,
)

if TYPE_CHECKING:
    from .core import Engine

__all__ = ["HANDLED", "Driver"]

T = TypeVar("T")
_INF: Final = float("inf")
# compiled (mypyc), an imported name is a dict look-up at each use (13 ns) and a Final
# alias a C static (1 ns): the instruction types the hot paths test, as Finals
_Reply: Final = Reply
_SendBatch: Final = SendBatch
_FeedbackApplied: Final = FeedbackApplied

HANDLED: Final[tuple[type, ...]] = (Reply, SendBatch, FeedbackApplied)
"""The instruction types ``Driver.carry_out`` dispatches (every member of ``Instruction``)."""

if set(HANDLED) != set(typing.get_args(Instruction)):  # pragma: no cover - a developer error
    raise TypeError(
        f"Driver.carry_out handles {sorted(t.__name__ for t in HANDLED)} but Instruction is "
        f"{sorted(t.__name__ for t in typing.get_args(Instruction))}: teach the driver"
    )


def _unsent(batch: SendBatch, e: Exception) -> BatchFailed:
    """What a ``send_batch`` that raised ``e`` becomes: the batch failed."""
    return BatchFailed(
        replica=batch.replica,
        batch_id=batch.batch_id,
        error=f"could not send the batch: {type(e).__name__}: {e}",
    )


# compiled with the real path (_build/mypyc_real.py); the simulator's and the tests'
# drivers subclass it interpreted, through the overrides mypyc allows them
@mypyc_attr(allow_interpreted_subclasses=True)
class Driver:
    """Base of every engine driver: one dispatch, one timer slot, hooks to fill in.

    ``timer_at`` is the time the slot is armed for (``None``: no timer armed).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.timer_at: float | None = None
        # the latest time an early timer was clamped up to: no engine call goes before it
        self.now_floor = -_INF

    def not_before(self, now: float) -> float:
        """``now``, or the time an early timer was clamped up to when that is later
        (rule 4)."""
        f = self.now_floor
        return f if now < f else now

    # ------------------------------------------------------------------ hooks
    def send_batch(self, batch: SendBatch, now: float) -> None:
        """Run ``batch`` on its replica; report back with ``on_batch_done``/``_failed``."""
        raise NotImplementedError

    def reply(self, reply: Reply, now: float) -> None:
        """Answer the query ``reply.query_id``."""
        raise NotImplementedError

    def feedback_applied(self, applied: FeedbackApplied, now: float) -> None:
        """Feedback ``applied.feedback_id`` has updated the selection state."""
        raise NotImplementedError

    def arm_timer(self, at: float) -> None:
        """Call ``on_timer`` at absolute time ``at`` (the slot is empty or just cancelled)."""
        raise NotImplementedError

    def cancel_timer(self) -> None:
        """Forget the timer armed for ``timer_at`` (it is about to be replaced or dropped)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the loop
    def carry_out(self, instructions: list[Instruction], now: float) -> None:
        """Carry out ``instructions`` in order; ``TypeError`` on an unknown one.

        A ``send_batch`` that raises does not stop the list: that batch becomes
        ``engine.on_batch_failed`` (its queries get the model-error default and its replica
        is free again) once the rest is carried out, and what that returns is carried out
        in turn."""
        if len(instructions) == 1:  # the most common lists, a call less (issue 14)
            ins = instructions[0]
            tp = type(ins)
            if tp is _Reply:
                self.reply(ins, now)  # type: ignore[arg-type]
                return
            if tp is _SendBatch:  # _carry_out's branch for it, without the loop
                try:
                    self.send_batch(ins, now)  # type: ignore[arg-type]
                    return
                except NotImplementedError:
                    raise
                except Exception as e:  # noqa: BLE001 - a batch that cannot be sent fails
                    failed = [_unsent(ins, e)]  # type: ignore[arg-type]
            else:
                failed = self._carry_out(instructions, now)
        else:
            failed = self._carry_out(instructions, now)
        if failed:
            self._fail(failed, now)

    def send_failed(self, batch: SendBatch, e: Exception, now: float) -> None:
        """``send_batch(batch, now)`` raised ``e``: the batch fails, as in ``carry_out``
        (for a driver that calls ``send_batch`` itself on its hot path)."""
        self._fail([_unsent(batch, e)], now)

    def _fail(self, failed: list[BatchFailed], now: float) -> None:
        """Tell the engine of batches that could not be sent; carry out what it returns."""
        while failed:  # each failure answers queries, so this ends when the queue is empty
            more: list[BatchFailed] = []
            for f in failed:
                more += self._carry_out(self.engine.on_batch_failed(f, now), now)
            failed = more

    def _carry_out(self, instructions: list[Instruction], now: float) -> list[BatchFailed]:
        # A `type(...) is` chain, Reply first (one per query): 0.66 us for six replies and a
        # batch, against 0.92 us with a dict of bound methods keyed by type (measured).
        reply = self.reply
        failed: list[BatchFailed] = []
        for ins in instructions:
            tp = type(ins)
            if tp is _Reply:
                reply(ins, now)  # type: ignore[arg-type]
            elif tp is _SendBatch:
                try:
                    self.send_batch(ins, now)  # type: ignore[arg-type]
                except NotImplementedError:
                    raise  # a driver without the hook is a developer's error, not a failure
                except Exception as e:  # noqa: BLE001 - a batch that cannot be sent fails
                    failed.append(_unsent(ins, e))  # type: ignore[arg-type]
            elif tp is _FeedbackApplied:
                self.feedback_applied(ins, now)  # type: ignore[arg-type]
            else:
                raise TypeError(
                    f"{type(self).__name__} cannot carry out {ins!r}: not one of "
                    f"{', '.join(t.__name__ for t in HANDLED)} (engine/_types.py)"
                )
        return failed

    def rearm(self) -> None:
        """Point the timer slot at ``engine.next_deadline()`` if it moved."""
        due = self.engine.due_at  # next_deadline() without the call (after every event)
        at = None if due == _INF else due
        if at != self.timer_at:
            if self.timer_at is not None:
                self.cancel_timer()
            self.timer_at = at
            if at is not None:
                self.arm_timer(at)

    def handle(self, instructions: list[Instruction], now: float) -> list[Instruction]:
        """Carry out what an engine call at ``now`` returned, then re-arm (even when a hook
        raised); returns them."""
        try:
            if instructions:
                self.carry_out(instructions, now)
        finally:
            self.rearm()
        return instructions

    # ------------------------------------------------------------------ events in
    def on_query(self, query: Query, now: float) -> list[Instruction]:
        return self.handle(self.engine.on_query(query, self.not_before(now)), now)

    def on_batch_done(self, done: BatchDone, now: float) -> list[Instruction]:
        return self.handle(self.engine.on_batch_done(done, self.not_before(now)), now)

    def on_batch_failed(self, failed: BatchFailed, now: float) -> list[Instruction]:
        return self.handle(self.engine.on_batch_failed(failed, self.not_before(now)), now)

    def on_feedback(self, feedback: Feedback, now: float) -> list[Instruction]:
        return self.handle(self.engine.on_feedback(feedback, self.not_before(now)), now)

    def on_replica_up(self, replica: ReplicaId, now: float) -> list[Instruction]:
        return self.handle(self.engine.on_replica_up(replica, self.not_before(now)), now)

    def on_replica_down(self, replica: ReplicaId, now: float) -> list[Instruction]:
        return self.handle(self.engine.on_replica_down(replica, self.not_before(now)), now)

    def on_timer(self, now: float) -> list[Instruction]:
        """The armed timer fired at ``now``: the slot empties; ``now`` is clamped up to
        the time it was armed for when it fired early."""
        at = self.timer_at
        self.timer_at = None
        if at is not None and now < at:
            now = at
            if now > self.now_floor:
                self.now_floor = now
        elif now < self.now_floor:
            now = self.now_floor
        return self.handle(self.engine.on_timer(now), now)

    def admin(self, fn: Callable[[float], T], now: float | None = None) -> T:
        """Run an administrative engine call as ``fn(now)``, then re-arm (a change of SLO
        or of links can move the engine's deadline).  ``now`` is required here (this base
        has no clock); a driver with one reads it when ``now`` is left out (the real
        server's ``EngineDriver``)."""
        if now is None:
            raise TypeError(f"{type(self).__name__}.admin needs now: this driver has no clock")
        try:
            return fn(self.not_before(now))
        finally:
            self.rearm()
