"""The workload spec: one seeded object that both drivers use unchanged.

Rules:
- A ``Workload`` is plain data: an arrival process, how many queries (``n_queries``) or for
  how long (``duration_s``), an input source with labels, the application the queries go
  to, whether inputs may hit the prediction cache, an optional feedback stream and optional
  per-user contexts.
- ``generate(seed)`` returns a ``Trace`` of numpy arrays.  The same seed gives the same
  trace, bit for bit; independent streams for arrivals, inputs, contexts and feedback are
  spawned from one ``numpy.random.SeedSequence(seed)``, so changing the feedback fraction
  does not move the arrivals.
- Query ids are positions in the trace (0..n-1).  ``cacheable=False`` is the paper's
  setting ("cache salted so that it never hits"): the driver sends no cache key.
- Feedback for query ``i`` (a ``fraction`` of queries, drawn at random) arrives
  ``delay_s`` after query ``i``; it carries the label and the query id (the engine joins
  it with the answer it remembers) and the input (used when the engine has forgotten).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .arrivals import MMPP, ArrivalProcess, ConstantRate, Gamma, Poisson, TraceReplay
from .config import build_dataclass, check_value, kinded, plain
from .errors import WorkloadError
from .inputs import DigitsInputs, InputSource, SyntheticTensors

__all__ = ["FeedbackStream", "Trace", "UserContexts", "Workload"]


@dataclass(frozen=True, slots=True)
class FeedbackStream:
    """Labels fed back for a ``fraction`` of queries, ``delay_s`` after they arrived."""

    fraction: float = 1.0
    delay_s: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise WorkloadError(f"feedback.fraction must be in [0, 1], got {self.fraction!r}")
        if not (math.isfinite(self.delay_s) and self.delay_s >= 0):
            raise WorkloadError(f"feedback.delay_s must be a finite number >= 0, got "
                                f"{self.delay_s!r}")


@dataclass(frozen=True, slots=True)
class UserContexts:
    """Each query comes from one of ``n_users`` users (its selection context): uniformly,
    or Zipf-distributed with exponent ``zipf_a`` (> 1) when given."""

    n_users: int
    zipf_a: float | None = None

    def __post_init__(self) -> None:
        if self.n_users < 1:
            raise WorkloadError(f"contexts.n_users must be >= 1, got {self.n_users!r}")
        if self.zipf_a is not None and not self.zipf_a > 1.0:
            raise WorkloadError(f"contexts.zipf_a must be > 1, got {self.zipf_a!r}")

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.zipf_a is None:
            return rng.integers(0, self.n_users, n, dtype=np.int64)
        ranks = np.arange(1, self.n_users + 1, dtype=np.float64)
        p = ranks ** -self.zipf_a
        return rng.choice(self.n_users, size=n, p=p / p.sum()).astype(np.int64)


@dataclass(frozen=True, slots=True, eq=False)
class Trace:
    """A generated workload: row ``i`` is query ``query_offset + i``.

    ``context`` is None when the workload has no users.  ``feedback_at`` (sorted) and
    ``feedback_query`` (row numbers) describe the feedback stream (empty without one).
    ``task`` names the prediction task (e.g. ``digits-binary-3``, for replayed outputs) and
    ``n_classes`` its number of classes (0: unknown, taken from the labels).
    Compare traces with ``is``: ``==`` would compare numpy arrays.
    """

    app: str
    arrival_at: np.ndarray
    input_index: np.ndarray
    label: np.ndarray
    context: np.ndarray | None
    feedback_at: np.ndarray
    feedback_query: np.ndarray
    input_bytes: int
    cacheable: bool
    query_offset: int = 0
    task: str = ""
    n_classes: int = 0

    def __len__(self) -> int:
        return int(self.arrival_at.size)

    @property
    def duration_s(self) -> float:
        return float(self.arrival_at[-1]) if self.arrival_at.size else 0.0


@dataclass(frozen=True, slots=True)
class Workload:
    """What is sent: when, which inputs, to which application, with what feedback.

    Give exactly one of ``n_queries`` and ``duration_s``.
    """

    arrivals: ArrivalProcess
    n_queries: int | None = None
    duration_s: float | None = None
    inputs: InputSource = field(default_factory=DigitsInputs)
    app: str = "digits"
    cacheable: bool = False
    feedback: FeedbackStream | None = None
    contexts: UserContexts | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.arrivals, ArrivalProcess):
            raise WorkloadError(
                f"arrivals must be an arrival process (ConstantRate, Poisson, Gamma, MMPP, "
                f"TraceReplay), got {self.arrivals!r}"
            )
        if (self.n_queries is None) == (self.duration_s is None):
            raise WorkloadError("give exactly one of n_queries and duration_s")
        if self.n_queries is not None and not (
            isinstance(self.n_queries, int) and self.n_queries >= 1
        ):
            raise WorkloadError(f"n_queries must be an integer >= 1, got {self.n_queries!r}")
        if self.duration_s is not None and not (
            math.isfinite(self.duration_s) and self.duration_s > 0
        ):
            raise WorkloadError(f"duration_s must be a finite number > 0, got "
                                f"{self.duration_s!r}")
        if not self.app:
            raise WorkloadError("app must be a non-empty application name")

    @property
    def input_bytes(self) -> int:
        """Bytes of one query's input on the wire."""
        return self.inputs.input_bytes

    def generate(self, seed: int = 0) -> Trace:
        """The trace for ``seed``: same seed, same arrays."""
        s_arr, s_in, s_ctx, s_fb = np.random.SeedSequence(seed).spawn(4)
        r_arr = np.random.default_rng(s_arr)
        if self.n_queries is not None:
            t = self.arrivals.times(self.n_queries, r_arr)
        else:
            assert self.duration_s is not None
            want = int(self.arrivals.mean_qps * self.duration_s * 1.2) + 16
            while True:
                t = self.arrivals.times(want, np.random.default_rng(s_arr))
                if t.size < want or t[-1] > self.duration_s:
                    break
                want *= 2
            t = t[t <= self.duration_s]
        n = int(t.size)
        t = np.asarray(t, dtype=np.float64)
        idx = self.inputs.draw(n, np.random.default_rng(s_in))
        _, y = self.inputs.load()
        labels = np.asarray(y, dtype=np.int64)[idx]
        ctx = (
            self.contexts.draw(n, np.random.default_rng(s_ctx))
            if self.contexts is not None
            else None
        )
        if self.feedback is not None and self.feedback.fraction > 0:
            r_fb = np.random.default_rng(s_fb)
            rows = np.flatnonzero(r_fb.random(n) < self.feedback.fraction)
            fb_at = t[rows] + self.feedback.delay_s
            order = np.argsort(fb_at, kind="stable")
            fb_at, rows = fb_at[order], rows[order]
        else:
            fb_at = np.zeros(0, dtype=np.float64)
            rows = np.zeros(0, dtype=np.int64)
        return Trace(
            app=self.app,
            arrival_at=t,
            input_index=idx,
            label=labels,
            context=ctx,
            feedback_at=fb_at,
            feedback_query=rows.astype(np.int64),
            input_bytes=self.input_bytes,
            cacheable=self.cacheable,
            task=str(getattr(self.inputs, "task", "")),
            n_classes=int(self.inputs.n_classes),
        )

    # ------------------------------------------------------------------ config files
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "workload") -> Workload:
        """Build from a config table; errors name ``where`` and the field.  See
        ``clipperlab.workloads.config`` for the accepted keys."""
        if not isinstance(data, Mapping):
            raise WorkloadError(f"{where} must be a table, got {data!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise WorkloadError(f"{where}: unknown field(s) {unknown}; expected some of "
                                f"{sorted(known)}")
        if "arrivals" not in data:
            raise WorkloadError(f"{where}.arrivals: missing (required), e.g. "
                                "{ kind = \"constant\", qps = 20000 }")
        kw: dict[str, Any] = {"arrivals": kinded(data["arrivals"], f"{where}.arrivals",
                                                 ARRIVAL_KINDS)}
        if "inputs" in data:
            kw["inputs"] = kinded(data["inputs"], f"{where}.inputs", INPUT_KINDS)
        if data.get("feedback") is not None:
            kw["feedback"] = build_dataclass(FeedbackStream, data["feedback"],
                                             f"{where}.feedback")
        if data.get("contexts") is not None:
            kw["contexts"] = build_dataclass(UserContexts, data["contexts"],
                                             f"{where}.contexts")
        hints = typing.get_type_hints(cls)
        for name in ("n_queries", "duration_s", "app", "cacheable"):
            if name in data:
                kw[name] = check_value(f"{where}.{name}", hints[name], data[name])
        try:
            return cls(**kw)
        except WorkloadError as e:
            raise WorkloadError(f"{where}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        """The config table ``from_dict`` reads back."""
        out: dict[str, Any] = {
            "app": self.app,
            "cacheable": self.cacheable,
            "arrivals": plain(self.arrivals, ARRIVAL_KINDS),
            "inputs": plain(self.inputs, INPUT_KINDS),
        }
        if self.n_queries is not None:
            out["n_queries"] = self.n_queries
        if self.duration_s is not None:
            out["duration_s"] = self.duration_s
        if self.feedback is not None:
            out["feedback"] = plain(self.feedback)
        if self.contexts is not None:
            out["contexts"] = plain(self.contexts)
        return out


ARRIVAL_KINDS: dict[str, type[ArrivalProcess]] = {
    "constant": ConstantRate,
    "poisson": Poisson,
    "gamma": Gamma,
    "mmpp": MMPP,
    "trace": TraceReplay,
}
INPUT_KINDS: dict[str, type[InputSource]] = {"digits": DigitsInputs, "synthetic": SyntheticTensors}
