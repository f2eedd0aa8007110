"""Model wrappers that run inside a container process.

A wrapper turns a batch of inputs (a numpy array whose first dimension is the batch, or a
list of bytes/str) into a list or array of outputs, one per input.  Kinds:

- ``noop``: answers ``output`` (default ``0``) for every input, after sleeping
  ``delay_s + per_item_s * batch size`` (default 0): the paper's no-op container, and a
  deterministic model with a known latency line for comparisons with the simulator.
  An integer ``output`` comes as a read-only int64 array, one kept per batch size.
- ``python``: a callable taking the batch, named ``package.module:function`` or stored as a
  pickle file (the function must be importable by reference in the container).
- ``sklearn``: an estimator saved with ``joblib``/``pickle``; calls ``predict``.
- ``torch``: a TorchScript file (``torch.jit.save``) or a pickled ``nn.Module``
  (``torch.save``); runs under ``torch.no_grad()`` on CUDA when available, else the CPU with
  ``torch.set_num_threads(1)`` (one core per container, as in the paper).  Outputs: the
  argmax over the last dimension when ``output = "argmax"``, else the raw rows.
- ``replay``: an emulated model (a GPU one on a CPU-only machine, ten replicas on two
  cores): it waits (``time.sleep``) a batch latency drawn from a latency profile and
  answers recorded outputs.  ``path`` is a replay file (JSON, ``format =
  "clipperlab-replay/1"``, written from a simulator profile by
  ``clipperlab.calibration.replay``; ``real/`` never imports the simulator): the batch
  sizes measured, the quantile ``levels`` and ``latency_s`` per size, the fitted line
  ``fit = [alpha_s, beta_s]``, and the outputs: ``predictions`` (one per input of the
  ``inputs`` source, e.g. ``{ kind = "digits", binary = true }``: an input is looked up
  by its float64 bytes) and/or ``output`` (the answer for any other input; default 0).
  Sampling is the simulator's: ``u ~ U(0, 1)``, the inverse CDF linear between the stored
  levels; between measured sizes the two neighbours' inverse CDFs are interpolated
  linearly in the batch size at the same ``u``; outside the measured range the nearest
  size is scaled by the line's ratio.  ``options.seed`` seeds the draws (default: fresh
  entropy); ``options.speed`` divides every latency (default 1).
"""

from __future__ import annotations

import importlib
import json
import pickle
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MODEL_KINDS", "REPLAY_FORMAT", "ReplaySampler", "load_model", "read_replay"]

MODEL_KINDS = ("noop", "python", "sklearn", "torch", "replay")
REPLAY_FORMAT = "clipperlab-replay/1"

Predict = Callable[[Any], Any]


def load_model(kind: str, path: str = "", options: dict[str, Any] | None = None) -> Predict:
    """A batch predict function for a model of ``kind`` stored at ``path``."""
    options = options or {}
    if kind == "noop":
        return _noop(
            float(options.get("delay_s", 0.0)),
            float(options.get("per_item_s", 0.0)),
            options.get("output", 0),
        )
    if kind == "python":
        return _python(path)
    if kind == "sklearn":
        return _sklearn(path)
    if kind == "torch":
        return _torch(path, str(options.get("output", "raw")))
    if kind == "replay":
        return _replay(path, options)
    raise ValueError(f"model kind {kind!r} is unknown; expected one of {MODEL_KINDS}")


def _noop(delay_s: float, per_item_s: float, output: Any) -> Predict:
    if isinstance(output, int) and not isinstance(output, bool):
        value = np.int64(output)
        made: dict[int, Any] = {}

        def make(n: int) -> Any:
            # one read-only array per batch size: np.full costs 2.2 us for 8, a lookup 0.05
            a = made.get(n)
            if a is None:
                a = np.full(n, value, dtype=np.int64)
                a.flags.writeable = False
                if len(made) < 4096:
                    made[n] = a
            return a
    else:

        def make(n: int) -> Any:
            return [output] * n

    if delay_s <= 0 and per_item_s <= 0:
        return lambda batch: make(len(batch))

    def predict(batch: Any) -> Any:
        time.sleep(delay_s + per_item_s * len(batch))
        return make(len(batch))

    return predict


def _python(path: str) -> Predict:
    if ":" in path and not path.endswith((".pkl", ".pickle")):
        mod, _, attr = path.partition(":")
        fn = getattr(importlib.import_module(mod), attr)
    else:
        with open(path, "rb") as f:
            fn = pickle.load(f)  # noqa: S301 - the operator deployed this file
    if not callable(fn):
        raise ValueError(f"{path!r} does not hold a callable")
    return fn  # type: ignore[no-any-return]


def _sklearn(path: str) -> Predict:
    import joblib  # type: ignore[import-untyped]

    est = joblib.load(path)
    if not hasattr(est, "predict"):
        raise ValueError(f"{path!r} holds a {type(est).__name__}, which has no predict()")

    def predict(batch: Any) -> Any:
        return est.predict(np.asarray(batch))

    return predict


def _torch(path: str, output: str) -> Predict:
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        module = torch.jit.load(path, map_location=device)  # type: ignore[no-untyped-call]
    except (RuntimeError, ValueError):
        module = torch.load(path, map_location=device, weights_only=False)
    module.eval()

    def predict(batch: Any) -> Any:
        x = torch.as_tensor(np.asarray(batch)).to(device)
        if x.dtype == torch.float64:
            x = x.float()
        with torch.no_grad():
            y = module(x)
        if output == "argmax":
            y = y.argmax(dim=-1)
        return y.cpu().numpy()

    return predict


# ---------------------------------------------------------------------------- replay


class ReplaySampler:
    """Batch latencies (seconds) drawn from a replay file's profile (see the module's
    rules); ``draw(b)`` is one draw, ``inverse_cdf(b, u)`` the latency at quantile ``u``."""

    def __init__(self, spec: Mapping[str, Any], rng: np.random.Generator) -> None:
        self.sizes = np.asarray(spec["batch_sizes"], dtype=np.int64)
        self.levels = np.asarray(spec["levels"], dtype=np.float64)
        self.table = np.asarray(spec["latency_s"], dtype=np.float64)
        self.alpha_s, self.beta_s = (float(x) for x in spec["fit"])
        self.rng = rng
        self._rows: dict[int, np.ndarray] = {}

    def row(self, batch_size: int) -> np.ndarray:
        """The inverse CDF of ``batch_size`` at the stored levels (exact: interpolation in
        the batch size and extrapolation are linear at a fixed ``u``)."""
        r = self._rows.get(batch_size)
        if r is not None:
            return np.asarray(r)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        sizes = self.sizes
        j = int(np.searchsorted(sizes, batch_size))
        if j < sizes.size and sizes[j] == batch_size:
            r = self.table[j]
        elif j == 0 or j == sizes.size:
            k = 0 if j == 0 else sizes.size - 1
            ref = self.alpha_s * float(sizes[k]) + self.beta_s
            ratio = (self.alpha_s * batch_size + self.beta_s) / ref if ref > 0 else 1.0
            r = self.table[k] * ratio
        else:
            w = (batch_size - sizes[j - 1]) / (sizes[j] - sizes[j - 1])
            r = self.table[j - 1] + w * (self.table[j] - self.table[j - 1])
        self._rows[batch_size] = r
        return np.asarray(r)

    def inverse_cdf(self, batch_size: int, u: Any) -> np.ndarray:
        return np.asarray(np.interp(np.asarray(u, dtype=np.float64), self.levels,
                                    self.row(batch_size)))

    def draw(self, batch_size: int) -> float:
        return float(self.inverse_cdf(batch_size, self.rng.random()))


def read_replay(path: str) -> dict[str, Any]:
    """A replay file's content, checked; ``ValueError`` naming the file and field."""
    try:
        spec = json.loads(Path(path).read_text())
    except OSError as e:
        raise ValueError(f"replay file {path!r}: cannot read it ({e.strerror})") from None
    except ValueError as e:
        raise ValueError(f"replay file {path!r}: not valid JSON ({e})") from None
    if not isinstance(spec, dict) or spec.get("format") != REPLAY_FORMAT:
        raise ValueError(f"replay file {path!r}: format: expected {REPLAY_FORMAT!r}")
    try:
        sizes = np.asarray(spec["batch_sizes"], dtype=np.int64)
        levels = np.asarray(spec["levels"], dtype=np.float64)
        table = np.asarray(spec["latency_s"], dtype=np.float64)
        fit = [float(x) for x in spec["fit"]]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"replay file {path!r}: expected batch_sizes, levels, latency_s "
                         f"and fit ({e})") from None
    ok = (sizes.ndim == 1 and sizes.size >= 1 and bool(np.all(np.diff(sizes) > 0))
          and int(sizes[0]) >= 1 and levels.ndim == 1 and levels.size >= 2
          and levels[0] == 0.0 and levels[-1] == 1.0 and bool(np.all(np.diff(levels) > 0))
          and table.shape == (sizes.size, levels.size) and bool(np.all(table >= 0))
          and bool(np.all(np.diff(table, axis=1) >= 0)) and len(fit) == 2)
    if not ok:
        raise ValueError(f"replay file {path!r}: expected increasing batch sizes >= 1, "
                         "levels rising from 0 to 1, one non-decreasing row of latencies "
                         "(s) >= 0 per size and fit = [alpha_s, beta_s]")
    return spec


def _replay(path: str, options: Mapping[str, Any]) -> Predict:
    if not path:
        raise ValueError("a replay model needs path = its replay file "
                         "(clipperlab.calibration.replay writes one from a profile)")
    spec = read_replay(path)
    seed = options.get("seed")
    sampler = ReplaySampler(spec, np.random.default_rng(seed))
    speed = float(options.get("speed", 1.0))
    if not speed > 0:
        raise ValueError(f"replay: options.speed must be > 0, got {speed!r}")
    default = spec.get("output", 0)
    lookup: dict[bytes, Any] = {}
    if spec.get("predictions") is not None:
        from clipperlab.workloads.config import kinded
        from clipperlab.workloads.spec import INPUT_KINDS

        pool, _ = kinded(spec.get("inputs") or {"kind": "digits"}, "replay inputs",
                         INPUT_KINDS).load()
        preds = list(spec["predictions"])
        pool = np.asarray(pool, dtype=np.float64)
        for i in range(min(len(preds), pool.shape[0])):
            lookup.setdefault(pool[i].tobytes(), preds[i])

    def predict(batch: Any) -> Any:
        n = len(batch)
        time.sleep(sampler.draw(n) / speed)
        if not lookup:
            return [default] * n
        rows = np.asarray(batch, dtype=np.float64).reshape(n, -1)
        return [lookup.get(r.tobytes(), default) for r in rows]

    return predict
