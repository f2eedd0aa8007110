"""How a query is answered: with its models' outputs, combined, or with the default.

A task finishes once: when every selected model answered, at its deadline with what
arrived (straggler mitigation), or refused (overload, shed).  With nothing, or with a
confidence under the application's threshold, the answer is the application's default,
flagged and explained (``DefaultReason``).  A feedback task finishes by updating the
selection state (``FeedbackApplied``).  A part of ``Engine`` (``core.py``).
"""

from __future__ import annotations

import itertools
from bisect import bisect_left

from ._state import _App, _EngineFields, _FeedbackTask, _Task
from ._types import DefaultReason, FeedbackApplied, Instruction, Prediction, Reply
from .selection import loss

_tuple_new = tuple.__new__  # builds a NamedTuple without its Python-level __new__


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
        if answers and len(selected) == 1:
            pred = _tuple_new(
                Prediction, (answers[selected[0]], 1.0, False, None, None, selected, ())
            )
        elif not answers:
            if not selected:
                reason = DefaultReason.NO_MODEL
            elif task.failed == len(selected):
                reason = DefaultReason.MODEL_ERROR
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
                DefaultReason.EXPLANATIONS[reason],
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
        h = app.m_latency
        h.counts[bisect_left(h.bounds, latency)] += 1
        h.sum += latency
        h.count += 1
        out.append(_tuple_new(Reply, (task.id, pred, latency, False)))
        if self.remember_queries:
            recent = self._recent
            recent[task.id] = task
            if len(recent) > self._recent_limit:
                # drop the oldest quarter at once: O(1) per query, amortised
                for k in list(itertools.islice(recent, len(recent) - self.remember_queries)):
                    del recent[k]
        if self.log is not None:
            self.log.append(
                ("reply", now, task.id, pred.output, pred.default, pred.default_reason, pred.models)
            )

    def _count_default(self, app: _App, reason: str) -> None:
        self.metrics.counter(
            "clipperlab_defaults_total", app=app.spec.name, reason=reason
        ).value += 1

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
