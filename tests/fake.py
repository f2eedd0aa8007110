"""A hand-driven driver for engine tests: the test moves time and completes batches."""

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


class FakeDriver:
    """Carries out the engine's instructions into plain dicts; time moves only by hand."""

    def __init__(self, engine: Engine) -> None:
        self.eng = engine
        self.now = 0.0
        self.replies: dict[int, Reply] = {}
        self.reply_times: dict[int, float] = {}
        self.open: dict[int, SendBatch] = {}
        self.sent: list[SendBatch] = []
        self.feedback: dict[int, FeedbackApplied] = {}
        self.duplicate_replies = 0

    def handle(self, instrs: list[Instruction]) -> list[Instruction]:
        for ins in instrs:
            if isinstance(ins, Reply):
                if ins.query_id in self.replies:
                    self.duplicate_replies += 1
                self.replies[ins.query_id] = ins
                self.reply_times[ins.query_id] = self.now
            elif isinstance(ins, SendBatch):
                self.open[ins.batch_id] = ins
                self.sent.append(ins)
            elif isinstance(ins, FeedbackApplied):
                self.feedback[ins.feedback_id] = ins
        return instrs

    def advance(self, to: float) -> None:
        """Move time to ``to``, firing every engine timer due on the way."""
        assert to >= self.now
        while True:
            nd = self.eng.next_deadline()
            if nd is None or nd > to:
                break
            self.now = max(self.now, nd)
            self.handle(self.eng.on_timer(self.now))
        self.now = to

    def up(self, model: str, version: str = "1", ordinal: int = 0) -> ReplicaId:
        rid = ReplicaId(model, version, ordinal)
        self.handle(self.eng.on_replica_up(rid, self.now))
        return rid

    def down(self, rid: ReplicaId) -> None:
        self.handle(self.eng.on_replica_down(rid, self.now))
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
        return self.handle(
            self.eng.on_query(Query(qid, app, input, key, context, deadline), self.now)
        )

    def complete(self, batch_id: int, fn: Callable[[Any], Any] = lambda x: x) -> list[Instruction]:
        sb = self.open.pop(batch_id)
        return self.handle(
            self.eng.on_batch_done(
                BatchDone(
                    replica=sb.replica, batch_id=batch_id, outputs=[fn(x) for x in sb.inputs]
                ),
                self.now,
            )
        )

    def fail(self, batch_id: int) -> list[Instruction]:
        sb = self.open.pop(batch_id)
        return self.handle(
            self.eng.on_batch_failed(
                BatchFailed(replica=sb.replica, batch_id=batch_id, error="boom"), self.now
            )
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
        return self.handle(
            self.eng.on_feedback(
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
        )

    def open_for(self, rid: ReplicaId) -> list[SendBatch]:
        return [sb for sb in self.open.values() if sb.replica == rid]
