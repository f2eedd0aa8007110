"""Measure batch-latency profiles of real models on this machine, in-process.

    python -m clipperlab.simulator.measure_profiles [--out DIR] [--models noop,linear-svm,...]
                                         [--budget-s 1.5] [--max-batch 1024]

What it does, per model (scikit-learn no-op = ``DummyClassifier``, linear SVM =
``LinearSVC``, logistic regression, random forest with 50 trees of depth 16, RBF kernel
SVM, and a small torch CNN run with ``torch.set_num_threads(1)``):

1. trains on scikit-learn's bundled digits for the paper's binary task "is it a 3?";
2. times ``predict`` on batches of 1, 2, 4, ..., ``--max-batch`` rows drawn at random
   from digits (a fresh draw per call), after 5 warm-up calls, until ``--budget-s``
   seconds or ``--samples`` samples per size (at least 15), with ``time.perf_counter``;
3. records out-of-fold predictions (5-fold ``cross_val_predict``, or the same folds by hand
   for the CNN) on every digit for the tasks ``digits-binary-3`` and ``digits-10``, so the
   simulator can replay what the real model would have answered (``ReplayOutputs``);
4. writes ``measured-<model>.json`` (a 103-level quantile grid per batch size; the right
   tail is the measured one) tagged with the CPU, library versions and the date.

The numbers are in-process compute times: no RPC and no serialisation (the real-mode
profiler adds those by measuring over the container RPC).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .profiles import PROFILE_DIR, LatencyProfile, save_profile

__all__ = ["MODELS", "main", "measure"]

MODELS = ("noop", "linear-svm", "logistic-regression", "random-forest", "kernel-svm",
          "torch-cnn")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _sklearn_model(name: str) -> Any:
    from sklearn.dummy import DummyClassifier
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC, LinearSVC

    if name == "noop":
        return DummyClassifier(strategy="most_frequent")
    if name == "linear-svm":
        return LinearSVC(C=0.1, max_iter=5000)
    if name == "logistic-regression":
        return LogisticRegression(max_iter=2000)
    if name == "random-forest":
        return RandomForestClassifier(n_estimators=50, max_depth=16, n_jobs=1, random_state=0)
    if name == "kernel-svm":
        return SVC(kernel="rbf", gamma="scale")
    raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")


class TorchCNN:
    """A small conv net on 8x8 digits: conv(1->8,3) relu conv(8->16,3) relu pool fc(64,k).
    Trained with Adam for a few epochs; ``predict`` returns class indices."""

    def __init__(self, epochs: int = 30, seed: int = 0) -> None:
        self.epochs = epochs
        self.seed = seed
        self.net: Any = None

    def fit(self, x: np.ndarray, y: np.ndarray) -> TorchCNN:
        import torch
        from torch import nn

        torch.manual_seed(self.seed)
        k = int(y.max()) + 1
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 4 * 4, max(k, 2)),
        )
        xt = torch.as_tensor(x / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
        yt = torch.as_tensor(y, dtype=torch.long)
        opt = torch.optim.Adam(self.net.parameters(), lr=3e-3)
        loss = nn.CrossEntropyLoss()
        gen = torch.Generator().manual_seed(self.seed)
        for _ in range(self.epochs):
            perm = torch.randperm(xt.shape[0], generator=gen)
            for s in range(0, xt.shape[0], 64):
                idx = perm[s:s + 64]
                opt.zero_grad()
                loss(self.net(xt[idx]), yt[idx]).backward()
                opt.step()
        self.net.eval()
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            xt = torch.as_tensor(x / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
            out: np.ndarray = self.net(xt).argmax(1).numpy()
            return out


def _make(name: str) -> Any:
    return TorchCNN() if name == "torch-cnn" else _sklearn_model(name)


def _oof_predictions(name: str, x: np.ndarray, y: np.ndarray) -> list[int]:
    from sklearn.model_selection import StratifiedKFold

    out = np.zeros(y.size, dtype=np.int64)
    for tr, te in StratifiedKFold(5, shuffle=True, random_state=0).split(x, y):
        out[te] = _make(name).fit(x[tr], y[tr]).predict(x[te])
    return out.tolist()


def _time_batches(predict: Callable[[np.ndarray], Any], x: np.ndarray, sizes: list[int],
                  budget_s: float, rng: np.random.Generator,
                  max_samples: int = 1000) -> dict[int, list[float]]:
    samples: dict[int, list[float]] = {}
    for b in sizes:
        for _ in range(5):
            predict(x[rng.integers(0, x.shape[0], b)])
        got: list[float] = []
        t_end = time.perf_counter() + budget_s
        while len(got) < max_samples and (len(got) < 15 or time.perf_counter() < t_end):
            batch = x[rng.integers(0, x.shape[0], b)]
            t0 = time.perf_counter()
            predict(batch)
            got.append(time.perf_counter() - t0)
        samples[b] = got
    return samples


def measure(name: str, *, budget_s: float = 1.5, max_batch: int = 1024,
            seed: int = 0, max_samples: int = 1000) -> LatencyProfile:
    """Train ``name`` on digits ("is it a 3?"), time it, record predictions."""
    import sklearn
    import torch
    from sklearn.datasets import load_digits

    torch.set_num_threads(1)
    d = load_digits()
    x = np.asarray(d.data, dtype=np.float64)
    y10 = np.asarray(d.target, dtype=np.int64)
    y2 = (y10 == 3).astype(np.int64)
    model = _make(name).fit(x, y2)
    sizes = [1 << k for k in range(max_batch.bit_length()) if (1 << k) <= max_batch]
    load_before = os.getloadavg()[0]
    samples = _time_batches(model.predict, x, sizes, budget_s, np.random.default_rng(seed),
                            max_samples)
    load_after = os.getloadavg()[0]
    preds = {"digits-binary-3": _oof_predictions(name, x, y2),
             "digits-10": _oof_predictions(name, x, y10)}
    software = (f"python {platform.python_version()}, numpy {np.__version__}, "
                + (f"torch {torch.__version__} (1 thread)" if name == "torch-cnn"
                   else f"scikit-learn {sklearn.__version__}"))
    return LatencyProfile.from_samples(
        f"measured-{name}",
        samples,
        kind="cpu",
        tags={
            "hardware": f"{_cpu_name()} ({platform.machine()}), 1 thread",
            "software": software,
            "source": "measured in-process by python -m clipperlab.simulator.measure_profiles on "
            f"{_dt.date.today().isoformat()}; {sum(map(len, samples.values()))} samples",
            "model": name,
            "task": "digits, is it a 3? (64 float64 features)",
            "load_average": f"{load_before:.2f} before, {load_after:.2f} after timing "
            f"({os.cpu_count()} CPUs; other processes add to the tail)",
        },
        description=f"{name} trained on digits ('is it a 3?'), predict() timed in-process",
        predictions=preds,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clipperlab.simulator.measure_profiles",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=PROFILE_DIR)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--budget-s", type=float, default=1.5)
    p.add_argument("--max-batch", type=int, default=1024)
    p.add_argument("--samples", type=int, default=1000, help="most samples per batch size")
    args = p.parse_args(argv)
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name not in MODELS:
            p.error(f"--models: unknown model {name!r}; expected some of {', '.join(MODELS)}")
        t0 = time.perf_counter()
        prof = measure(name, budget_s=args.budget_s, max_batch=args.max_batch,
                       max_samples=args.samples)
        path = save_profile(prof, args.out / f"{prof.name}.json")
        acc = np.mean(np.asarray(prof.predictions["digits-binary-3"]) ==
                      (np.asarray(__import__("sklearn.datasets").datasets.load_digits().target)
                       == 3))
        print(f"{prof.name:<32} p50(1)={prof.quantile_s(1, .5) * 1e3:7.3f} ms "
              f"p99(1)={prof.quantile_s(1, .99) * 1e3:7.3f} ms "
              f"p50({args.max_batch})={prof.quantile_s(args.max_batch, .5) * 1e3:8.3f} ms  "
              f"oof acc(is-3)={acc:.3f}  -> {path}  ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
