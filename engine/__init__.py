"""clipperlab's engine: every serving decision, free of I/O, with time passed in.

Feed it events with ``now`` (seconds) and carry out the instructions it returns::

    from clipperlab.engine import Application, BatchDone, Engine, ModelSpec, Query, ReplicaId

    eng = Engine(seed=0)
    eng.add_application(Application(name="digits", slo_s=0.020, default_output=-1), now=0.0)
    eng.add_model(ModelSpec(name="svm"), now=0.0)
    eng.link("digits", ["svm"], now=0.0)
    eng.on_replica_up(ReplicaId("svm", "1", 0), now=0.0)
    [send] = eng.on_query(Query(query_id=1, app="digits", input=[0.0] * 64), now=0.001)
    [reply] = eng.on_batch_done(
        BatchDone(replica=send.replica, batch_id=send.batch_id, outputs=[3]), now=0.004)
    assert reply.prediction.output == 3

This module exports the public API: what the README's examples and the drivers use, the
driver base, the errors, and the interfaces a policy of one's own implements
(``BatchController`` with ``Dispatch``/``Wait``/``QueueView``, ``SelectionPolicy`` with
``PolicyState``), and for drivers' hot paths the positional builders ``batch_done_of`` and
``send_batch_of`` (``BatchDone``/``SendBatch`` without keyword parsing).  The built-in
controllers and policies, the cache and the reasons live in their modules
(``clipperlab.engine.batching``, ``.selection``, ``.peers``, ``.cache``, ``._types``);
configs name them by string.
"""

from ._types import (
    BatchDone,
    BatchFailed,
    Feedback,
    FeedbackApplied,
    Instruction,
    Prediction,
    Query,
    ReplicaId,
    Reply,
    SendBatch,
    batch_done_of,
    send_batch_of,
)
from .batching import BatchController, Dispatch, QueueView, Wait
from .core import Engine
from .digest import input_digest
from .driver import Driver
from .errors import ConfigError, Conflict, EngineError, NotFound
from .metrics import Counter, Metrics
from .registry import INPUT_TYPES, Application, BatchingConfig, ModelSpec
from .selection import PolicyState, SelectionPolicy, make_policy

__all__ = [
    "Application",
    "BatchController",
    "BatchDone",
    "BatchFailed",
    "BatchingConfig",
    "ConfigError",
    "Conflict",
    "Counter",
    "Dispatch",
    "Driver",
    "Engine",
    "EngineError",
    "Feedback",
    "FeedbackApplied",
    "INPUT_TYPES",
    "Instruction",
    "Metrics",
    "ModelSpec",
    "NotFound",
    "PolicyState",
    "Prediction",
    "Query",
    "QueueView",
    "ReplicaId",
    "Reply",
    "SelectionPolicy",
    "SendBatch",
    "Wait",
    "batch_done_of",
    "input_digest",
    "make_policy",
    "send_batch_of",
]
