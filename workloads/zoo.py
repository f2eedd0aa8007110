"""The model zoo: several genuinely different models on scikit-learn's bundled digits.

Rules:
- The 1,797 digits are split once per ``seed`` (stratified) into a training set of
  ``train_size`` images and a held-out *pool*; queries are drawn from the pool only, so
  recorded predictions are honest test-set predictions (no model has seen its queries).
- Models (``ZOO_MODELS``), all trained offline in seconds on one core: logistic
  regression, linear SVM, RBF-kernel SVM, a small random forest, k-nearest neighbours,
  Gaussian naive Bayes, a shallow decision tree and a small torch CNN.  They differ in kind,
  so they make different mistakes (accuracy from about 80% to 98% on ten digits): that is
  what ensembles (figs. 6-7) and selection (fig. 8) need.  Hyper-parameters are plain
  textbook settings, chosen for speed, not tuned.
- Two tasks: ``digits-10`` (ten classes) and the paper's binary ``digits-binary-3``
  ("is it a 3?").
- Predictions on the pool are recorded as ``.npy`` files (one int64 per pool input) in a
  cache directory (``$CLIPPERLAB_CACHE`` or ``~/.cache/clipperlab``), generated on first
  use; ``simulator.ReplayOutputs(source=path)`` replays them.  Nothing is downloaded.
- ``ZooInputs`` is the pool as a ``workloads`` input source, so a ``Workload`` draws queries
  from it and the real mode sends the same images.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import WorkloadError
from .inputs import InputSource

__all__ = [
    "TASKS",
    "ZOO_MODELS",
    "Switchable",
    "TorchPredictor",
    "Zoo",
    "ZooInputs",
    "cache_dir",
    "digits",
    "load_zoo",
    "split",
    "task_labels",
]

ZOO_MODELS: tuple[str, ...] = (
    "logreg", "linear_svm", "rbf_svm", "random_forest", "knn", "naive_bayes",
    "decision_tree", "torch_cnn",
)
TASKS: tuple[str, ...] = ("digits-10", "digits-binary-3")
_VERSION = "zoo-v1"  # bump when a model's recipe changes: old cached files are ignored


def cache_dir() -> Path:
    """Where recorded predictions live: ``$CLIPPERLAB_CACHE`` or ``~/.cache/clipperlab``."""
    base = os.environ.get("CLIPPERLAB_CACHE") or str(Path.home() / ".cache" / "clipperlab")
    return Path(base)


@functools.lru_cache(maxsize=1)
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: (1797, 64) float64 in [0, 16], int64 labels."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.int64)


def task_labels(y: np.ndarray, task: str) -> np.ndarray:
    """Labels of ``task`` for digit labels ``y``."""
    if task == "digits-10":
        return y
    if task.startswith("digits-binary-"):
        d = int(task.rsplit("-", 1)[1])
        out: np.ndarray = (y == d).astype(np.int64)
        return out
    raise WorkloadError(f"zoo task {task!r} is unknown; expected one of {TASKS}")


def n_classes(task: str) -> int:
    return 10 if task == "digits-10" else 2


@functools.lru_cache(maxsize=8)
def split(seed: int = 0, train_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, pool indices) into the digits, stratified by digit."""
    from sklearn.model_selection import train_test_split

    _, y = digits()
    if not 50 <= train_size <= y.size - 100:
        raise WorkloadError(f"zoo train_size must be in [50, {y.size - 100}], got {train_size}")
    tr, te = train_test_split(np.arange(y.size), train_size=train_size, stratify=y,
                              random_state=seed)
    return np.sort(tr), np.sort(te)


class TorchPredictor:
    """A picklable batch predictor around the zoo's CNN: rows of 64 pixels -> labels.

    Pickles as (number of classes, state dict) and rebuilds the network on load, so the
    network class need not be importable by name."""

    def __init__(self, module: Any, k: int) -> None:
        self.module = module
        self.k = k

    def __getstate__(self) -> dict[str, Any]:
        return {"k": self.k, "state": self.module.state_dict()}

    def __setstate__(self, d: dict[str, Any]) -> None:
        self.k = d["k"]
        self.module = _cnn(self.k)
        self.module.load_state_dict(d["state"])
        self.module.eval()

    def __call__(self, batch: Any) -> np.ndarray:
        import torch

        with torch.no_grad():
            x = torch.as_tensor(np.asarray(batch, dtype=np.float32))
            return np.asarray(self.module(x).argmax(dim=-1).numpy(), dtype=np.int64)


def _cnn(k: int) -> Any:
    import torch
    from torch import nn

    class SmallCNN(nn.Module):
        """Two 3x3 conv layers on the 8x8 image, then a linear layer; input: 64 pixels."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
            self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
            self.fc = nn.Linear(16 * 4 * 4, k)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = x.reshape(-1, 1, 8, 8) / 16.0
            h = torch.relu(self.conv1(h))
            h = torch.max_pool2d(torch.relu(self.conv2(h)), 2)
            out: torch.Tensor = self.fc(h.flatten(1))
            return out

    return SmallCNN()


def _train_torch(x: np.ndarray, y: np.ndarray, k: int, seed: int) -> TorchPredictor:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        net = _cnn(k)
        opt = torch.optim.Adam(net.parameters(), lr=0.01)
        xt = torch.as_tensor(x, dtype=torch.float32)
        yt = torch.as_tensor(y, dtype=torch.int64)
        g = torch.Generator().manual_seed(seed)
        for _ in range(25):  # epochs of mini-batches of 64
            perm = torch.randperm(xt.shape[0], generator=g)
            for i in range(0, xt.shape[0], 64):
                b = perm[i:i + 64]
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(net(xt[b]), yt[b])
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
        net.eval()
        return TorchPredictor(net, k)
    finally:
        torch.set_num_threads(threads)


def make_estimator(name: str, seed: int) -> Any:
    """An untrained scikit-learn estimator for zoo model ``name`` (not ``torch_cnn``)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler
    from sklearn.svm import SVC, LinearSVC
    from sklearn.tree import DecisionTreeClassifier

    makers: dict[str, Callable[[], Any]] = {
        "logreg": lambda: make_pipeline(MinMaxScaler(), LogisticRegression(max_iter=1000)),
        "linear_svm": lambda: LinearSVC(C=0.01, max_iter=5000, random_state=seed),
        "rbf_svm": lambda: SVC(gamma=0.001),
        "random_forest": lambda: RandomForestClassifier(20, max_depth=6, random_state=seed),
        "knn": lambda: KNeighborsClassifier(5),
        "naive_bayes": lambda: GaussianNB(),
        "decision_tree": lambda: DecisionTreeClassifier(max_depth=8, random_state=seed),
    }
    if name not in makers:
        raise WorkloadError(f"zoo model {name!r} is unknown; expected one of {ZOO_MODELS}")
    return makers[name]()


def train(name: str, x: np.ndarray, y: np.ndarray, k: int, seed: int) -> Any:
    """A fitted model: a scikit-learn estimator, or a ``TorchPredictor`` for ``torch_cnn``."""
    if name == "torch_cnn":
        return _train_torch(x, y, k, seed)
    return make_estimator(name, seed).fit(x, y)


def predict(model: Any, x: np.ndarray) -> np.ndarray:
    """Labels from a zoo model (estimator or callable)."""
    fn = model.predict if hasattr(model, "predict") else model
    return np.asarray(fn(np.asarray(x)), dtype=np.int64)


@dataclass
class Zoo:
    """Trained models for one task and split, with their recorded pool predictions."""

    task: str
    seed: int
    train_size: int
    models: dict[str, Any]
    predictions: dict[str, np.ndarray]
    pool_x: np.ndarray
    pool_y: np.ndarray
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.models)

    def accuracy(self) -> dict[str, float]:
        return {m: float((p == self.pool_y).mean()) for m, p in self.predictions.items()}

    def best(self) -> str:
        acc = self.accuracy()
        return max(acc, key=lambda m: acc[m])

    def inputs(self) -> ZooInputs:
        return ZooInputs(task=self.task, seed=self.seed, train_size=self.train_size)


def _key(*parts: Any) -> str:
    return hashlib.sha1(repr((_VERSION, *parts)).encode()).hexdigest()[:12]


@functools.lru_cache(maxsize=8)
def load_zoo(task: str = "digits-10", seed: int = 0, train_size: int = 500,
             models: Sequence[str] = ZOO_MODELS) -> Zoo:
    """Train (or load from the cache directory) the zoo for ``task``; record predictions.

    Trained models are pickled beside the predictions, so a second call (another process,
    a real-mode container deploy) costs a file read.
    """
    models = tuple(models)
    for m in models:
        if m not in ZOO_MODELS:
            raise WorkloadError(f"zoo model {m!r} is unknown; expected one of {ZOO_MODELS}")
    x, y_digit = digits()
    y = task_labels(y_digit, task)
    tr, pool = split(seed, train_size)
    k = n_classes(task)
    d = cache_dir() / "zoo" / f"{task}-s{seed}-n{train_size}-{_key(task, seed, train_size)}"
    d.mkdir(parents=True, exist_ok=True)
    fitted: dict[str, Any] = {}
    preds: dict[str, np.ndarray] = {}
    paths: dict[str, Path] = {}
    for m in models:
        p_path, m_path = d / f"{m}.npy", d / f"{m}.pkl"
        try:
            with open(m_path, "rb") as f:
                fitted[m] = pickle.load(f)  # noqa: S301 - our own cache
            preds[m] = np.load(p_path)
        # a cache from another version (e.g. classes pickled under names that have moved)
        # is trained again
        except (OSError, ValueError, EOFError, pickle.UnpicklingError, AttributeError,
                ImportError):
            fitted[m] = train(m, x[tr], y[tr], k, seed)
            preds[m] = predict(fitted[m], x[pool])
            tmp = d / f".{m}.{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                pickle.dump(fitted[m], f)
            os.replace(tmp, m_path)
            tmp_npy = d / f".{m}.{os.getpid()}.tmp.npy"
            np.save(tmp_npy, preds[m])
            os.replace(tmp_npy, p_path)
        paths[m] = p_path
    return Zoo(task, seed, train_size, fitted, preds, x[pool], y[pool], paths)


@dataclass(frozen=True, slots=True)
class ZooInputs(InputSource):
    """The zoo's held-out pool as an input source (labels of ``task``)."""

    task: str = "digits-10"
    seed: int = 0
    train_size: int = 500

    def __post_init__(self) -> None:
        if self.task not in TASKS and not self.task.startswith("digits-binary-"):
            raise WorkloadError(f"ZooInputs.task {self.task!r} is unknown; expected one of "
                                f"{TASKS}")

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        x, y = digits()
        _, pool = split(self.seed, self.train_size)
        return x[pool], task_labels(y[pool], self.task)

    @property
    def input_bytes(self) -> int:
        return 64 * 8

    @property
    def n_classes(self) -> int:
        return n_classes(self.task)


class Switchable:
    """A batch predictor that answers wrong while a flag file exists (real-mode failures).

    ``model`` is a zoo model; while ``flag_path`` exists every answer is replaced by a
    uniformly random wrong class out of ``k`` (the simulator's ``Degrade`` at accuracy 0).
    Picklable by reference to this class, so ``AdminClient.deploy_python`` can ship it.
    """

    def __init__(self, model: Any, flag_path: str, k: int, seed: int = 0) -> None:
        self.model = model
        self.flag_path = flag_path
        self.k = k
        self.rng = np.random.default_rng(seed)

    def __call__(self, batch: Any) -> np.ndarray:
        out = predict(self.model, np.asarray(batch, dtype=np.float64))
        if os.path.exists(self.flag_path):
            out = (out + self.rng.integers(1, self.k, out.size)) % self.k
        return out
