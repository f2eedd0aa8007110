"""A hand-driven driver for engine tests: the test moves time and completes batches.

``FakeDriver`` subclasses the engine's one driver base (``clipperlab.engine.driver``), like
the simulator and the real server: the same dispatch and timer slot, hooks into dicts.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from clipperlab.engine import (
    BatchDone,
    BatchFailed,
    Engine,
    Feedback,
    FeedbackApplied,
    Instruction,
    Query,
    ReplicaId,
    Reply,
    SendBatch,
)
from clipperlab.engine.driver import Driver


class FakeDriver(Driver):
    """Carries out the engine's instructions into plain dicts; time moves only by hand.

    The timer is a number: ``advance`` fires it when time passes it.  ``armed`` lists every
    time the base armed it, ``cancelled`` counts the cancellations."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.eng = engine
        self.now = 0.0
        self.replies: dict[int, Reply] = {}
        self.reply_times: dict[int, float] = {}
        self.open: dict[int, SendBatch] = {}
        self.sent: list[SendBatch] = []
        self.feedback: dict[int, FeedbackApplied] = {}
        self.duplicate_replies = 0
        self.armed: list[float] = []
        self.cancelled = 0

    def handle(
        self, instructions: list[Instruction], now: float | None = None
    ) -> list[Instruction]:
        """Carry out ``instructions`` (returned by an engine call at ``now``, by default the
        driver's time) and re-arm."""
        return super().handle(instructions, self.now if now is None else now)

    # -- hooks
    def reply(self, reply: Reply, now: float) -> None:
        if reply.query_id in self.replies:
            self.duplicate_replies += 1
        self.replies[reply.query_id] = reply
        self.reply_times[reply.query_id] = now

    def send_batch(self, batch: SendBatch, now: float) -> None:
        self.open[batch.batch_id] = batch
        self.sent.append(batch)

    def feedback_applied(self, applied: FeedbackApplied, now: float) -> None:
        self.feedback[applied.feedback_id] = applied

    def arm_timer(self, at: float) -> None:
        self.armed.append(at)

    def cancel_timer(self) -> None:
        self.cancelled += 1

    # -- time and events by hand
    def advance(self, to: float) -> None:
        """Move time to ``to``, firing the timer whenever it is due on the way."""
        assert to >= self.now
        self.rearm()  # a test may have changed the engine directly
        while self.timer_at is not None and self.timer_at <= to:
            self.now = max(self.now, self.timer_at)
            self.on_timer(self.now)
        self.now = to

    def up(self, model: str, version: str = "1", ordinal: int = 0) -> ReplicaId:
        rid = ReplicaId(model, version, ordinal)
        self.on_replica_up(rid, self.now)
        return rid

    def down(self, rid: ReplicaId) -> None:
        self.on_replica_down(rid, self.now)
        for bid in [b for b, sb in self.open.items() if sb.replica == rid]:
            del self.open[bid]

    def query(
        self,
        qid: int,
        app: str,
        input: Any = None,
        *,
        key: Hashable | None = None,
        context: Hashable | None = None,
        deadline: float | None = None,
    ) -> list[Instruction]:
        return self.on_query(Query(qid, app, input, key, context, deadline), self.now)

    def complete(self, batch_id: int, fn: Callable[[Any], Any] = lambda x: x) -> list[Instruction]:
        sb = self.open.pop(batch_id)
        return self.on_batch_done(
            BatchDone(replica=sb.replica, batch_id=batch_id, outputs=[fn(x) for x in sb.inputs]),
            self.now,
        )

    def fail(self, batch_id: int) -> list[Instruction]:
        sb = self.open.pop(batch_id)
        return self.on_batch_failed(
            BatchFailed(replica=sb.replica, batch_id=batch_id, error="boom"), self.now
        )

    def feedback_(
        self,
        fid: int,
        app: str,
        label: Any,
        input: Any = None,
        *,
        key: Hashable | None = None,
        query_id: int | None = None,
        context: Hashable | None = None,
    ) -> list[Instruction]:
        return self.on_feedback(
            Feedback(
                feedback_id=fid,
                app=app,
                label=label,
                input=input,
                input_key=key,
                context=context,
                query_id=query_id,
            ),
            self.now,
        )

    def open_for(self, rid: ReplicaId) -> list[SendBatch]:
        return [sb for sb in self.open.values() if sb.replica == rid]
