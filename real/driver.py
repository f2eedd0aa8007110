"""The engine driver of real mode: one engine, fed from the event loop.

Rules (the driver translates; it never decides):
- ``EngineDriver`` is a ``clipperlab.engine.driver.Driver``: the base carries out every
  instruction (an unknown one raises ``TypeError``) and keeps the one timer slot.  This
  module fills in the hooks and turns the server's inputs into engine events.
- Time is ``time.monotonic()`` in seconds, the clock libuv and asyncio use.  ``loop.time()``
  is not used for ``now`` because uvloop rounds it to milliseconds, which would quantise
  every batch latency the batching controllers learn from.
- The timer is ``loop.call_later`` at ``engine.next_deadline()``, cancelled and re-armed
  only when that deadline moves.  libuv rounds delays to milliseconds, so it may fire a
  little early: the base then clamps ``now`` up to the deadline, and every engine call
  after it is at that time or later (``Driver.not_before``: the clock read just after an
  early timer can still be short of it).
- ``SendBatch`` goes to the replica's connection (``send_batch``); a replica with no
  connection (gone meanwhile) gets ``on_batch_failed``, and so does a batch whose
  connection raises while encoding or writing it (the base does that).  ``Reply``
  completes the callback registered for its query id (a query answered by ``on_query``
  itself, a cache hit, goes to its callback at once, never registered, or with ``ask``
  back to the caller, which answers it in place);
  ``FeedbackApplied`` the one for its feedback id.  A callback that raises is logged and
  counted (``reply_errors``): it never stops the other instructions nor reaches the
  container connection that delivered the result.
- Engine errors (``NotFound``, ``ConfigError``...) from ``on_query``/``on_feedback`` propagate
  to the caller, which turns them into HTTP 4xx.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable
from typing import Any, Final, Protocol, TypeVar

from clipperlab.engine import (
    BatchFailed,
    Engine,
    Feedback,
    FeedbackApplied,
    ReplicaId,
    Reply,
    SendBatch,
)
from clipperlab.engine.driver import Driver

__all__ = ["EngineDriver", "ReplicaLink"]

log: Final = logging.getLogger("clipperlab.driver")

_now = time.monotonic  # (not Final: tests put a clock of their own here)
_Reply: Final = Reply  # a C static compiled, not a look-up in the module's dict a query
T = TypeVar("T")


class ReplicaLink(Protocol):
    """What the driver needs from a container connection."""

    def send_batch(self, batch_id: int, inputs: tuple[Any, ...]) -> None: ...


class EngineDriver(Driver):
    """Feeds ``engine`` from the running event loop and carries out its instructions."""

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(engine)
        self.loop = loop
        self.links: dict[ReplicaId, ReplicaLink] = {}
        self._replies: dict[int, Callable[[Reply], None]] = {}
        self._feedback: dict[int, Callable[[FeedbackApplied], None]] = {}
        self.last_id = 0  # the id of the last query submitted (ids count from 1)
        self._timer: asyncio.TimerHandle | None = None
        self.reply_errors = 0

    # -- inputs
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
        """Submit a query; ``on_reply`` gets its ``Reply`` (maybe before this returns).
        Returns the query's id."""
        r = self.ask(app, input_, on_reply, input_key=input_key, context=context,
                     deadline=deadline)
        if r is not None:
            try:
                on_reply(r)
            except Exception:  # noqa: BLE001 - as in reply(): logged and counted
                self.reply_errors += 1
                log.exception("answering query %d failed", r.query_id)
        return self.last_id

    def ask(
        self,
        app: str,
        input_: Any,
        on_reply: Callable[[Reply], None],
        *,
        input_key: Hashable | None = None,
        context: Hashable | None = None,
        deadline: float | None = None,
    ) -> Reply | None:
        """``query``, but a ``Reply`` the engine gives at once (a cache hit, a refusal) is
        returned to the caller instead of passed to ``on_reply``, which then is never
        called; ``None``: ``on_reply`` will get the reply later.  The query's id is
        ``last_id``."""
        qid = self.last_id + 1
        self.last_id = qid
        now = _now()
        if now < self.now_floor:  # Driver.not_before, inlined (once per query)
            now = self.now_floor
        # Query's fields as a plain tuple (Engine.on_query takes one: no NamedTuple built)
        out = self.engine.on_query((qid, app, input_, input_key, context, deadline), now)
        if len(out) == 1:
            r = out[0]
            if type(r) is _Reply and r.query_id == qid:
                # Answered at once (a cache hit, a refusal): handle()'s dispatch and the
                # callback table skipped, the same hook's work (with the engine's hit path
                # and the reply cache's identity look-up, frontend_bench's hit 18.0-18.7
                # against 19.5-20.3 us, measured)
                self.rearm()
                return r
        # registered after on_query: the engine calls nothing back, and an engine error
        # leaves nothing to unregister
        self._replies[qid] = on_reply
        try:
            self.handle(out, now)
        except Exception:
            self._replies.pop(qid, None)
            raise
        return None

    def feedback(self, fb: Feedback, on_done: Callable[[FeedbackApplied], None]) -> None:
        self._feedback[fb.feedback_id] = on_done
        try:
            self.on_feedback(fb, _now())
        except Exception:
            self._feedback.pop(fb.feedback_id, None)
            raise

    def batch_done(self, replica: ReplicaId, batch_id: int, outputs: list[Any]) -> None:
        now = self.not_before(_now())
        # Driver.on_batch_done without building the BatchDone (Engine.on_outputs)
        self.handle(self.engine.on_outputs(replica, batch_id, outputs, now), now)

    def batch_failed(self, replica: ReplicaId, batch_id: int, error: str) -> None:
        self.on_batch_failed(BatchFailed(replica=replica, batch_id=batch_id, error=error), _now())

    def replica_up(self, replica: ReplicaId, link: ReplicaLink) -> None:
        self.links[replica] = link
        self.on_replica_up(replica, _now())

    def replica_down(self, replica: ReplicaId) -> None:
        if self.links.pop(replica, None) is None:
            return
        self.on_replica_down(replica, _now())

    def admin(self, fn: Callable[[float], T], now: float | None = None) -> T:
        """Run an administrative engine call as ``fn(now)`` (``now``: the clock), then
        re-arm the timer."""
        return super().admin(fn, _now() if now is None else now)

    @property
    def pending(self) -> int:
        return len(self._replies) + len(self._feedback)

    # -- hooks
    def reply(self, reply: Reply, now: float) -> None:
        cb = self._replies.pop(reply.query_id, None)
        if cb is not None:
            try:
                cb(reply)
            except Exception:  # noqa: BLE001 - one reply must not stop the others
                self.reply_errors += 1
                log.exception("answering query %d failed", reply.query_id)

    def send_batch(self, batch: SendBatch, now: float) -> None:
        link = self.links.get(batch.replica)
        if link is None:
            self.loop.call_soon(
                self.batch_failed, batch.replica, batch.batch_id, "replica is not connected"
            )
        else:
            link.send_batch(batch.batch_id, batch.inputs)

    def feedback_applied(self, applied: FeedbackApplied, now: float) -> None:
        cb = self._feedback.pop(applied.feedback_id, None)
        if cb is not None:
            cb(applied)

    def arm_timer(self, at: float) -> None:
        self._timer = self.loop.call_later(max(at - _now(), 0.0), self._fire)

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        self.on_timer(_now())
