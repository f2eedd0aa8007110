"""The engine driver of real mode: one engine, fed from the event loop.

Rules (the driver translates; it never decides):
- Time is ``time.monotonic()`` in seconds, the clock libuv and asyncio use.  ``loop.time()``
  is not used for ``now`` because uvloop rounds it to milliseconds, which would quantise
  every batch latency the batching controllers learn from.
- After every engine call the driver arms one timer at ``engine.next_deadline()``
  (``loop.call_later``); when it fires it calls ``on_timer``.  A timer that fires early
  (libuv rounds delays to milliseconds) just finds nothing due and re-arms.
- ``SendBatch`` goes to the replica's connection (``send_batch``); a replica with no
  connection (gone meanwhile) gets ``on_batch_failed``.  ``Reply`` completes the callback
  registered for its query id; ``FeedbackApplied`` the one for its feedback id.
- Engine errors (``NotFound``, ``ConfigError``...) from ``on_query``/``on_feedback`` propagate
  to the caller, which turns them into HTTP 4xx.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Hashable
from typing import Any, Protocol

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

__all__ = ["EngineDriver", "ReplicaLink"]

log = logging.getLogger("clipperlab.driver")

_now = time.monotonic


class ReplicaLink(Protocol):
    """What the driver needs from a container connection."""

    def send_batch(self, batch_id: int, inputs: tuple[Any, ...]) -> None: ...


class EngineDriver:
    """Feeds ``engine`` from the running event loop and carries out its instructions."""

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop) -> None:
        self.engine = engine
        self.loop = loop
        self.links: dict[ReplicaId, ReplicaLink] = {}
        self._replies: dict[int, Callable[[Reply], None]] = {}
        self._feedback: dict[int, Callable[[FeedbackApplied], None]] = {}
        self._ids = itertools.count(1)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.on_instruction_error: Callable[[Exception], None] | None = None

    # -- inputs
    def next_id(self) -> int:
        return next(self._ids)

    def query(
        self,
        app: str,
        input_: Any,
        on_reply: Callable[[Reply], None],
        *,
        input_key: Hashable | None = None,
        context: Hashable | None = None,
        deadline: float | None = None,
    ) -> int:
        qid = next(self._ids)
        out = self.engine.on_query(Query(qid, app, input_, input_key, context, deadline), _now())
        self._replies[qid] = on_reply
        if out:
            self._carry(out)
        self._arm()
        return qid

    def feedback(self, fb: Feedback, on_done: Callable[[FeedbackApplied], None]) -> None:
        self._feedback[fb.feedback_id] = on_done
        try:
            out = self.engine.on_feedback(fb, _now())
        except Exception:
            self._feedback.pop(fb.feedback_id, None)
            raise
        self._carry(out)
        self._arm()

    def batch_done(self, replica: ReplicaId, batch_id: int, outputs: list[Any]) -> None:
        out = self.engine.on_batch_done(
            BatchDone(replica=replica, batch_id=batch_id, outputs=outputs), _now()
        )
        if out:
            self._carry(out)
        self._arm()

    def batch_failed(self, replica: ReplicaId, batch_id: int, error: str) -> None:
        out = self.engine.on_batch_failed(
            BatchFailed(replica=replica, batch_id=batch_id, error=error), _now()
        )
        self._carry(out)
        self._arm()

    def replica_up(self, replica: ReplicaId, link: ReplicaLink) -> None:
        self.links[replica] = link
        out = self.engine.on_replica_up(replica, _now())
        self._carry(out)
        self._arm()

    def replica_down(self, replica: ReplicaId) -> None:
        if self.links.pop(replica, None) is None:
            return
        out = self.engine.on_replica_down(replica, _now())
        self._carry(out)
        self._arm()

    def admin(self, fn: Callable[[], Any]) -> Any:
        """Run an administrative engine call, then re-arm the timer."""
        try:
            return fn()
        finally:
            self._arm()

    @property
    def pending(self) -> int:
        return len(self._replies) + len(self._feedback)

    # -- instructions
    def _carry(self, out: list[Instruction]) -> None:
        replies = self._replies
        for ins in out:
            if type(ins) is Reply:
                cb = replies.pop(ins.query_id, None)
                if cb is not None:
                    cb(ins)
            elif type(ins) is SendBatch:
                link = self.links.get(ins.replica)
                if link is None:
                    self.loop.call_soon(
                        self.batch_failed, ins.replica, ins.batch_id, "replica is not connected"
                    )
                else:
                    link.send_batch(ins.batch_id, ins.inputs)
            elif type(ins) is FeedbackApplied:
                fcb = self._feedback.pop(ins.feedback_id, None)
                if fcb is not None:
                    fcb(ins)

    def _arm(self) -> None:
        at = self.engine.next_deadline()
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None:
            self._timer = self.loop.call_later(max(at - _now(), 0.0), self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = None
        out = self.engine.on_timer(_now())
        if out:
            self._carry(out)
        self._arm()
