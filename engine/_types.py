"""Events that go into the engine and instructions that come out of it.

Theory of operation: a driver (the simulator, the real server, a test) owns every socket,
process and clock.  It feeds the engine *events* (a query arrived, a batch finished, a
replica came up, time passed) together with ``now`` in seconds, and carries out the
*instructions* the engine returns (send this batch to that replica, answer that query).
The engine never calls back.

Per-query types (``Query``, ``Prediction``, ``Reply``) are ``typing.NamedTuple``: they are
immutable like the frozen dataclasses used for everything else, but about 3x cheaper to
build on CPython 3.11 (measured: 315 ns vs 886 ns for five fields), and one of each is made
for every query on the hot path.  Per-batch and administrative types are frozen, slotted,
keyword-only dataclasses.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = [
    "BatchDone",
    "BatchFailed",
    "DefaultReason",
    "Feedback",
    "FeedbackApplied",
    "Instruction",
    "ModelId",
    "Prediction",
    "Query",
    "ReleaseReason",
    "Reply",
    "ReplicaId",
    "SendBatch",
]


class ModelId(NamedTuple):
    """A model at one version, e.g. ``ModelId("svm", "2")``."""

    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"


class ReplicaId(NamedTuple):
    """One container process serving one model version."""

    model: str
    version: str
    ordinal: int

    @property
    def model_id(self) -> ModelId:
        return ModelId(self.model, self.version)

    def __str__(self) -> str:
        return f"{self.model}:{self.version}#{self.ordinal}"


class ReleaseReason:
    """Why a batch left the queue (shown in metrics and in the decision log)."""

    CAP_REACHED = "cap_reached"
    WAIT_TIMEOUT = "wait_timeout"
    DEADLINE_PRESSURE = "deadline_pressure"
    REPLICA_IDLE = "replica_idle"
    PREFERRED_SIZE = "preferred_size"


class DefaultReason:
    """Why an answer is the application's default output."""

    DEADLINE = "deadline"
    LOW_CONFIDENCE = "low_confidence"
    NO_MODEL = "no_model"
    MODEL_ERROR = "model_error"
    OVERLOADED = "overloaded"
    SHED = "shed"
    PREDICTED_LATE = "shed_predicted_late"
    HOPELESS = "shed_hopeless"

    EXPLANATIONS = {
        DEADLINE: "Failed to retrieve a prediction response within the specified latency SLO",
        LOW_CONFIDENCE: "Confidence {confidence:.3f} is below the application's threshold"
        " {threshold:.3f}",
        NO_MODEL: "No model is linked to the application",
        MODEL_ERROR: "Every selected model failed to produce a prediction",
        OVERLOADED: "Queue of model {model} is full ({limit} queued); query refused",
        SHED: "Shed by the batching policy of model {model}: it could not meet the latency bound",
        PREDICTED_LATE: "shed: predicted wait {wait_ms:.1f} ms plus batch latency {batch_ms:.1f}"
        " ms at model {model} exceeds the {left_ms:.1f} ms left of the objective",
        HOPELESS: "shed: model {model} could not answer in time (predicted batch latency"
        " {batch_ms:.1f} ms, {left_ms:.1f} ms left of the objective)",
    }


# --------------------------------------------------------------------------- per query


class Query(NamedTuple):
    """An application query.

    ``input`` is opaque to the engine: it travels to the model in ``SendBatch``.
    ``input_key`` is a digest of the input used by the prediction cache; ``None`` means
    "never cache" (the paper's salted inputs).  ``deadline`` overrides the application's
    SLO when given (absolute time).  ``context`` selects the per-user selection state.
    """

    query_id: int
    app: str
    input: Any = None
    input_key: Hashable | None = None
    context: Hashable | None = None
    deadline: float | None = None


class Prediction(NamedTuple):
    """What an application query is answered with."""

    output: Any
    confidence: float
    default: bool
    default_reason: str | None = None
    explanation: str | None = None
    models: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()


class Reply(NamedTuple):
    """Instruction: answer query ``query_id`` with ``prediction``.

    ``refused`` is true when the query was never admitted (overload): the real server turns
    it into an HTTP 503 rather than a 200 with a default.
    """

    query_id: int
    prediction: Prediction
    latency_s: float
    refused: bool = False


# --------------------------------------------------------------------------- per batch


@dataclass(frozen=True, slots=True, kw_only=True)
class SendBatch:
    """Instruction: run ``inputs`` on ``replica`` and report back with ``batch_id``.

    ``padded_size`` is larger than ``len(inputs)`` when the batching policy pads to an
    allowed size (TF-Serving style); the driver should charge the padded size.
    """

    replica: ReplicaId
    batch_id: int
    inputs: tuple[Any, ...]
    reason: str
    padded_size: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchDone:
    """Event: a replica finished a batch; ``outputs`` align with the batch's inputs."""

    replica: ReplicaId
    batch_id: int
    outputs: tuple[Any, ...] | list[Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchFailed:
    """Event: a replica could not run a batch (the model raised, the container died)."""

    replica: ReplicaId
    batch_id: int
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Feedback:
    """Event: the true label for an input (Clipper's ``/update``).

    Give ``query_id`` when known: the engine then updates the models that answered that
    query.  Otherwise the engine asks the policy which predictions it needs and fetches
    them from the cache, or from the models for what the cache lacks.
    """

    feedback_id: int
    app: str
    label: Any
    input: Any = None
    input_key: Hashable | None = None
    context: Hashable | None = None
    query_id: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedbackApplied:
    """Instruction: feedback ``feedback_id`` has updated the selection state."""

    feedback_id: int
    losses: dict[str, float]
    from_cache: int
    computed: int


Instruction = SendBatch | Reply | FeedbackApplied


# Positional builders for the per-batch dataclasses.  Each fills a plain slotted twin of
# the frozen class (the same slots in the same order, so the same layout) with ordinary
# attribute stores, then gives the object the frozen class: no keyword parsing, no frozen
# __setattr__ detour, no call per slot.  SendBatch 1.18 -> 0.48 us with a slot setter
# call per field, 0.48 -> 0.26 us this way (measured on CPython 3.11).  For the hot
# paths of the engine and drivers.
_new = object.__new__
if hasattr(SendBatch, "__post_init__") or hasattr(BatchDone, "__post_init__"):  # pragma: no cover
    raise TypeError("send_batch_of/batch_done_of skip __post_init__: build with keywords")


class _SendBatchSlots:
    __slots__ = SendBatch.__slots__
    replica: ReplicaId
    batch_id: int
    inputs: tuple[Any, ...]
    reason: str
    padded_size: int


class _BatchDoneSlots:
    __slots__ = BatchDone.__slots__
    replica: ReplicaId
    batch_id: int
    outputs: tuple[Any, ...] | list[Any]


def send_batch_of(
    replica: ReplicaId, batch_id: int, inputs: tuple[Any, ...], reason: str, padded_size: int
) -> SendBatch:
    """``SendBatch(replica=..., batch_id=..., inputs=..., reason=..., padded_size=...)``."""
    o = _new(_SendBatchSlots)
    o.replica = replica
    o.batch_id = batch_id
    o.inputs = inputs
    o.reason = reason
    o.padded_size = padded_size
    o.__class__ = SendBatch  # type: ignore[assignment]
    return o  # type: ignore[return-value]


def batch_done_of(
    replica: ReplicaId, batch_id: int, outputs: tuple[Any, ...] | list[Any]
) -> BatchDone:
    """``BatchDone(replica=..., batch_id=..., outputs=...)``."""
    o = _new(_BatchDoneSlots)
    o.replica = replica
    o.batch_id = batch_id
    o.outputs = outputs
    o.__class__ = BatchDone  # type: ignore[assignment]
    return o  # type: ignore[return-value]
