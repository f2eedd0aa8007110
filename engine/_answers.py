"""How a query is answered: with its models' outputs, combined, or with the default.

A task finishes once: when every selected model answered, at its deadline with what
arrived (straggler mitigation), or refused (overload, shed).  With nothing, or with a
confidence under the application's threshold, the answer is the application's default,
flagged and explained (``DefaultReason``).  A feedback task finishes by updating the
selection state (``FeedbackApplied``).  A query of one model whose input is in the cache
is answered by ``on_query`` at once, without a task (``_answer_hit``: the same reply,
latency observation, memory and log entry as ``_finish``, its int outputs' Prediction the
one ``on_outputs`` shares).  A part of ``Engine`` (``core.py``).

Answered queries are remembered (for feedback naming their ``query_id``) without their
inputs, at most ``remember_queries`` of them and ``remember_bytes`` of their outputs
(``nbytes`` of arrays, ``len`` of bytes and strings), the oldest forgotten first.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Final

from ._state import _App, _EngineFields, _FeedbackTask, _Remembered, _Task
from ._types import DefaultReason, FeedbackApplied, Instruction, Prediction, Reply
from .metrics import Histogram
from .selection import loss

_FOLD_AT: Final = Histogram.FOLD_AT
_Reply: Final = Reply  # a C static compiled, not a look-up in the module's dict
_Prediction: Final = Prediction
_tuple_new: Final = tuple.__new__  # builds a NamedTuple without its Python-level __new__
# distinct int outputs per application whose one-model Prediction is shared (on_outputs,
# _answer_hit)
_SHARED_PREDICTIONS: Final = 1024


def one_model_prediction(app: _App, output: Any, selected: Any) -> Prediction:
    """The Prediction of ``output``, answered by ``selected``'s one model: for an int
    output (a class label, as a rule) the application's shared one, so that equal
    answers are one object (0.15 us and 112 bytes a query less, measured; the frontend's
    reply cache finds its bytes by identity: 0.86 against 2.64 us an encode), at most
    ``_SHARED_PREDICTIONS`` outputs an application."""
    if type(output) is int:
        shared = app.shared
        pred = shared.get(output)
        if pred is None or pred[5] is not selected:
            pred = _tuple_new(_Prediction, (output, 1.0, False, None, None, selected, ()))
            if len(shared) < _SHARED_PREDICTIONS or output in shared:
                shared[output] = pred
        return pred
    return _tuple_new(_Prediction, (output, 1.0, False, None, None, selected, ()))


class _Answers(_EngineFields):
    """Finishing tasks: replies, defaults, refusals and applied feedback."""

    def _finish(self, task: _Task, now: float, out: list[Instruction]) -> None:
        task.done = True
        if task.feedback:
            self._apply_feedback(task, now, out)  # type: ignore[arg-type]
            return
        app = task.app
        answers = task.answers
        selected = task.selected
        spec = app.spec
        one = len(selected) == 1  # not in the condition: see Engine.on_query
        if answers and one:
            pred = one_model_prediction(app, answers[selected[0]], selected)
        elif not answers:
            expl = None
            if not selected:
                reason = DefaultReason.NO_MODEL
            elif task.failed == len(selected):
                reason = DefaultReason.MODEL_ERROR
            elif task.shed is not None:
                reason, expl = task.shed
            else:
                reason = DefaultReason.DEADLINE
            self._count_default(app, reason)
            if selected:
                app.m_missing.value += len(selected)
            pred = Prediction(
                spec.default_output,
                0.0,
                True,
                reason,
                DefaultReason.EXPLANATIONS[reason] if expl is None else expl,
                (),
                selected,
            )
        else:
            output, conf = app.policy.combine(task.state, selected, answers)
            models = tuple(m for m in selected if m in answers)
            missing = tuple(m for m in selected if m not in answers)
            if missing:
                app.m_missing.value += len(missing)
            if conf < spec.confidence_threshold:
                reason = DefaultReason.LOW_CONFIDENCE
                self._count_default(app, reason)
                expl = DefaultReason.EXPLANATIONS[reason].format(
                    confidence=conf, threshold=spec.confidence_threshold
                )
                pred = Prediction(spec.default_output, conf, True, reason, expl, models, missing)
            else:
                pred = Prediction(output, conf, False, None, None, models, missing)
        latency = now - task.arrival_at
        h = app.m_latency  # Histogram.observe, inlined (a call less per query)
        p = h.pending
        p.append(latency)
        if len(p) >= _FOLD_AT:
            h.fold()
        out.append(_tuple_new(_Reply, (task.id, pred, latency, False)))
        if self.remember_queries:
            task.input = None  # a task still queued somewhere keeps no input alive
            if answers and one:
                # one model's answer: its Prediction is the record (shared by equal int
                # outputs), not the task's dict, which then dies young: a dict of 184 bytes
                # less a remembered query (3.7 MB at the server's 20,000); no change in speed
                # (engine alone, compiled, batches of 66, alternated)
                kept = self._record(app, task.context, pred)
            else:
                size = 0
                for v in answers.values():
                    size += _size_bytes(v)
                kept = _tuple_new(_Remembered, (app, task.context, answers, size))
            self._remember(task.id, kept)
        if self.log is not None:
            self.log.append(
                ("reply", now, task.id, pred.output, pred.default, pred.default_reason, pred.models)
            )

    def _answer_hit(
        self,
        qid: int,
        app: _App,
        selected: tuple[str, ...],
        output: Any,
        now: float,
        context: Hashable | None,
        out: list[Instruction],
    ) -> None:
        """``_finish`` of a query answered at once from the cache by its one model
        (``Engine.on_query``'s hit path): the same Reply, latency observation, memory
        and log, without the task that waited for nothing.  An int output's Prediction
        is the application's shared one (as ``on_outputs`` shares it)."""
        pred = one_model_prediction(app, output, selected)
        app.m_latency.zeros += 1  # Histogram.observe_zero, inlined: answered at once
        out.append(_tuple_new(_Reply, (qid, pred, 0.0, False)))
        if self.remember_queries:
            # what _finish would remember: a record, not a task (engine hit 2.34-2.49 against
            # 2.42-2.60 us, interleaved; 4 fields kept per query instead of 15 slots)
            self._remember(qid, self._record(app, context, pred))
        if self.log is not None:
            self.log.append(("reply", now, qid, output, False, None, selected))

    def _record(self, app: _App, context: Hashable | None, pred: Prediction) -> _Remembered:
        """The record of a query one model answered: the last one made when the query is
        alike (its application, context and shared Prediction the same objects: cache
        hits and batches of one class, no user id), else a new one.  The records are
        immutable, so alike queries share one instead of each keeping a tracked object
        of 72 bytes that the garbage collector's young and middle passes walk before it is
        forgotten (1.4 MB less at the server's 20,000; frontend_bench, compiled, three
        runs each, interleaved: a hit 3.8 -> 3.7 us, a miss 6.1-7.1 -> 5.8-6.2)."""
        last = self._last_record
        if (last is not None and last.answers is pred and last.app is app
                and last.context is context):
            return last
        kept = _tuple_new(_Remembered, (app, context, pred, _size_bytes(pred.output)))
        self._last_record = kept
        return kept

    def _remember(self, qid: int, kept: _Remembered) -> None:
        """Keep what feedback naming query ``qid`` needs: its application, context and
        answers (``kept.size_bytes`` of them, ``_size_bytes``), never its input.  One dict
        look-up for a new id, and the order's deque called through its bound methods, not
        a method look-up a call (compiled: 4.8% of a cache hit's frontend CPU, in process,
        before)."""
        recent = self._recent
        n = len(recent)
        recent.setdefault(qid, kept)
        if len(recent) == n:  # a driver reusing ids: the newer query is the one remembered
            self._forget(qid)
            recent[qid] = kept
        self._order_append(qid)  # ids alone: the sizes are in the records (no tuple a query)
        self._recent_bytes += kept.size_bytes
        limit = self.remember_bytes
        while len(recent) > self.remember_queries or self._recent_bytes > limit:
            self._recent_bytes -= recent.pop(self._order_popleft()).size_bytes

    def _forget(self, qid: int) -> None:
        self._recent_bytes -= self._recent.pop(qid).size_bytes
        self._recent_order.remove(qid)

    def _count_default(self, app: _App, reason: str) -> None:
        c = app.m_defaults.get(reason)
        if c is None:
            c = app.m_defaults[reason] = self.metrics.counter(
                "clipperlab_defaults_total", app=app.spec.name, reason=reason
            )
        c.value += 1

    def _refuse(
        self, task: _Task, now: float, out: list[Instruction], reason: str, model: str, limit: int
    ) -> None:
        app = task.app
        expl = DefaultReason.EXPLANATIONS[reason].format(model=model, limit=limit)
        pred = Prediction(app.spec.default_output, 0.0, True, reason, expl, (), task.selected)
        task.done = True
        self._count_default(app, reason)
        app.refused += 1
        out.append(Reply(task.id, pred, 0.0, True))
        if self.log is not None:
            self.log.append(("refuse", now, task.id, reason))

    def _refuse_shed(self, task: _Task, now: float, out: list[Instruction], model: str) -> None:
        app = task.app
        reason = DefaultReason.SHED
        expl = DefaultReason.EXPLANATIONS[reason].format(model=model)
        pred = Prediction(app.spec.default_output, 0.0, True, reason, expl, (), task.selected)
        task.done = True
        self._count_default(app, reason)
        app.refused += 1
        out.append(Reply(task.id, pred, now - task.arrival_at, True))
        if self.log is not None:
            self.log.append(("reply", now, task.id, pred.output, True, reason, ()))

    def _apply_feedback(self, task: _FeedbackTask, now: float, out: list[Instruction]) -> None:
        app = task.app
        kind = app.spec.loss
        losses = {m: loss(o, task.label, kind) for m, o in task.answers.items()}
        if losses:
            app.policy.observe(task.state, losses)
            app.dirty.add(task.context)
        app.m_feedback.value += 1
        out.append(
            FeedbackApplied(
                feedback_id=task.id,
                losses=losses,
                from_cache=task.from_cache,
                computed=len(task.answers) - task.from_cache,
            )
        )
        if self.log is not None:
            self.log.append(("feedback", now, task.id, tuple(sorted(losses.items()))))


def _size_bytes(v: Any) -> int:
    """What keeping ``v`` costs, roughly: an array's ``nbytes``, a string's length, else 8."""
    t = type(v)
    if t is float or t is int or t is bool:  # the common answer: no attribute lookup that fails
        return 8
    n = getattr(v, "nbytes", None)
    if n is not None:
        return int(n)
    if isinstance(v, str | bytes | bytearray):
        return len(v)
    if isinstance(v, list | tuple):
        return sum(_size_bytes(x) for x in v) + 8 * len(v)
    return 8
