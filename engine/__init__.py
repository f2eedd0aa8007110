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
"""

from ._types import (
    BatchDone,
    BatchFailed,
    DefaultReason,
    Feedback,
    FeedbackApplied,
    Instruction,
    ModelId,
    Prediction,
    Query,
    ReleaseReason,
    ReplicaId,
    Reply,
    SendBatch,
)
from .batching import (
    AIMDController,
    BatchController,
    Dispatch,
    FixedController,
    LatencyModel,
    NoBatchingController,
    QuantileController,
    QueueView,
    Wait,
    fit_linear_quantile,
    make_controller,
)
from .cache import MISS, PredictionCache
from .core import Engine
from .digest import input_digest
from .errors import ConfigError, Conflict, EngineError, NotFound
from .metrics import Counter, Histogram, Metrics
from .peers import BentoMLController, TFServingController, TritonController
from .registry import INPUT_TYPES, Application, BatchingConfig, ModelSpec, Registry
from .selection import (
    POLICIES,
    UCB1,
    ABSplit,
    EpsilonGreedy,
    Exp3,
    Exp4,
    PolicyState,
    SelectionPolicy,
    Static,
    loss,
    make_policy,
)

__all__ = [
    "ABSplit",
    "AIMDController",
    "Application",
    "BatchController",
    "BatchDone",
    "BatchFailed",
    "BatchingConfig",
    "BentoMLController",
    "ConfigError",
    "Conflict",
    "Counter",
    "DefaultReason",
    "Dispatch",
    "Engine",
    "EngineError",
    "EpsilonGreedy",
    "Exp3",
    "Exp4",
    "Feedback",
    "FeedbackApplied",
    "FixedController",
    "Histogram",
    "INPUT_TYPES",
    "Instruction",
    "LatencyModel",
    "MISS",
    "Metrics",
    "ModelId",
    "ModelSpec",
    "NoBatchingController",
    "NotFound",
    "POLICIES",
    "PolicyState",
    "Prediction",
    "PredictionCache",
    "QuantileController",
    "Query",
    "QueueView",
    "Registry",
    "ReleaseReason",
    "ReplicaId",
    "Reply",
    "SelectionPolicy",
    "SendBatch",
    "Static",
    "TFServingController",
    "TritonController",
    "UCB1",
    "Wait",
    "fit_linear_quantile",
    "input_digest",
    "loss",
    "make_controller",
    "make_policy",
]
