"""Model wrappers that run inside a container process.

A wrapper turns a batch of inputs (a numpy array whose first dimension is the batch, or a
list of bytes/str) into a list or array of outputs, one per input.  Kinds:

- ``noop``: answers ``output`` (default ``0``) for every input, after sleeping
  ``delay_s + per_item_s * batch size`` (default 0): the paper's no-op container, and a
  deterministic model with a known latency line for comparisons with the simulator.
- ``python``: a callable taking the batch, named ``package.module:function`` or stored as a
  pickle file (the function must be importable by reference in the container).
- ``sklearn``: an estimator saved with ``joblib``/``pickle``; calls ``predict``.
- ``torch``: a TorchScript file (``torch.jit.save``) or a pickled ``nn.Module``
  (``torch.save``); runs under ``torch.no_grad()`` on CUDA when available, else the CPU with
  ``torch.set_num_threads(1)`` (one core per container, as in the paper).  Outputs: the
  argmax over the last dimension when ``output = "argmax"``, else the raw rows.
"""

from __future__ import annotations

import importlib
import pickle
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["MODEL_KINDS", "load_model"]

MODEL_KINDS = ("noop", "python", "sklearn", "torch")

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
    raise ValueError(f"model kind {kind!r} is unknown; expected one of {MODEL_KINDS}")


def _noop(delay_s: float, per_item_s: float, output: Any) -> Predict:
    if isinstance(output, int) and not isinstance(output, bool):
        value = np.int64(output)

        def make(n: int) -> Any:
            return np.full(n, value, dtype=np.int64)
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
