"""Per-user contexts for personalization (paper fig. 10): user groups whose inputs differ in
a learnable way, and one model specialised for each group.

Rules:
- Group ``g`` sees the digits through its own transformation (``GROUP_TRANSFORMS``, in
  order): as they are, mirrored left-right, with inverted intensity (16 - pixel), rotated
  a quarter turn, flipped upside down, transposed.  The label is the digit (or the
  binary task's label) whatever the transformation.
- User ``u`` belongs to group ``u % n_groups``; each query of user ``u`` is a pool image
  drawn uniformly, seen through the user's group's transformation.
- The input pool is the zoo's held-out pool (``clipperlab.workloads.zoo.split``) once per group:
  row ``g * N + i`` is pool image ``i`` in group ``g``'s view; a trace's ``input_index``
  points there, so recorded predictions replay per row.
- Specialists: ``specialist-g`` is the zoo's ``base_model`` (default a logistic
  regression) trained on the training split seen through group ``g``'s transformation.
  It is accurate on its own group and poor on the others (a mirrored 2 is not a 2 to a
  model that never saw one), so which model fits a user is learnable from feedback, and no
  single model fits everyone.
- Predictions of every specialist on every pool row are recorded as ``.npy`` files in the
  zoo's cache directory (``clipperlab.workloads.zoo.cache_dir``).
"""

from __future__ import annotations

import functools
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import WorkloadError
from .inputs import InputSource
from .spec import Trace
from .zoo import cache_dir, digits, n_classes, predict, split, task_labels, train

__all__ = ["GROUP_TRANSFORMS", "UserGroups", "UserInputs", "transform"]

GROUP_TRANSFORMS: tuple[str, ...] = (
    "identity", "mirror", "invert", "rotate90", "flip", "transpose",
)


def transform(x: np.ndarray, name: str) -> np.ndarray:
    """Rows of 64 pixels (8x8, values 0-16) seen through transformation ``name``."""
    img = np.asarray(x, dtype=np.float64).reshape(-1, 8, 8)
    if name == "identity":
        out = img
    elif name == "mirror":
        out = img[:, :, ::-1]
    elif name == "invert":
        out = 16.0 - img
    elif name == "rotate90":
        out = np.rot90(img, 1, axes=(1, 2))
    elif name == "flip":
        out = img[:, ::-1, :]
    elif name == "transpose":
        out = img.transpose(0, 2, 1)
    else:
        raise WorkloadError(f"group transform {name!r} is unknown; expected one of "
                            f"{GROUP_TRANSFORMS}")
    return np.ascontiguousarray(out.reshape(-1, 64))


@dataclass(frozen=True, slots=True)
class UserInputs(InputSource):
    """Every group's view of the zoo pool, stacked: row ``g * N + i``."""

    n_groups: int = 4
    task: str = "digits-10"
    seed: int = 0
    train_size: int = 500

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        return _pool(self.n_groups, self.task, self.seed, self.train_size)

    @property
    def input_bytes(self) -> int:
        return 64 * 8

    @property
    def n_classes(self) -> int:
        return n_classes(self.task)


@functools.lru_cache(maxsize=4)
def _pool(n_groups: int, task: str, seed: int, train_size: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = digits()
    _, pool = split(seed, train_size)
    xs = np.concatenate([transform(x[pool], GROUP_TRANSFORMS[g]) for g in range(n_groups)])
    ys = np.tile(task_labels(y[pool], task), n_groups)
    xs.setflags(write=False)
    ys.setflags(write=False)
    return xs, ys


@dataclass(frozen=True, slots=True)
class UserGroups:
    """``n_users`` users in ``n_groups`` groups, with one specialist model per group."""

    n_groups: int = 4
    n_users: int = 40
    task: str = "digits-10"
    base_model: str = "logreg"
    seed: int = 0
    train_size: int = 500

    def __post_init__(self) -> None:
        if not 2 <= self.n_groups <= len(GROUP_TRANSFORMS):
            raise WorkloadError(f"UserGroups.n_groups must be in [2, {len(GROUP_TRANSFORMS)}],"
                                f" got {self.n_groups}")
        if self.n_users < self.n_groups:
            raise WorkloadError(f"UserGroups.n_users must be >= n_groups ({self.n_groups}), "
                                f"got {self.n_users}")

    @property
    def inputs(self) -> UserInputs:
        return UserInputs(self.n_groups, self.task, self.seed, self.train_size)

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(f"specialist-{g}" for g in range(self.n_groups))

    @property
    def pool_size(self) -> int:
        """Images per group (N)."""
        return int(split(self.seed, self.train_size)[1].size)

    def group_of(self, user: np.ndarray | int) -> Any:
        return np.asarray(user) % self.n_groups

    def specialists(self) -> dict[str, Any]:
        """The fitted specialist of each group (trained once, then cached on disk)."""
        return _specialists(self)[0]

    def prediction_paths(self) -> dict[str, Path]:
        """Recorded predictions of each specialist over every pool row (``.npy``)."""
        return _specialists(self)[1]

    def predictions(self) -> dict[str, np.ndarray]:
        return {m: np.load(p) for m, p in self.prediction_paths().items()}

    def accuracy_matrix(self) -> np.ndarray:
        """``[model g, group h]``: accuracy of specialist ``g`` on group ``h``'s inputs."""
        _, y = self.inputs.load()
        n = self.pool_size
        preds = self.predictions()
        out = np.zeros((self.n_groups, self.n_groups))
        for g, m in enumerate(self.model_names):
            ok = preds[m] == y
            for h in range(self.n_groups):
                out[g, h] = ok[h * n:(h + 1) * n].mean()
        return out

    def trace(self, arrival_at: np.ndarray, *, seed: int, app: str = "digits",
              feedback_delay_s: float | None = 0.0, personal: bool = True) -> Trace:
        """Queries at ``arrival_at`` from users drawn uniformly; every query is followed by
        its label after ``feedback_delay_s`` (None: no feedback).  ``personal=False`` drops
        the context (one global selection state) but keeps the same inputs."""
        rng = np.random.default_rng([seed, 1013])
        n = int(np.asarray(arrival_at).size)
        users = rng.integers(0, self.n_users, n, dtype=np.int64)
        img = rng.integers(0, self.pool_size, n, dtype=np.int64)
        idx = self.group_of(users) * self.pool_size + img
        _, y = self.inputs.load()
        t = np.asarray(arrival_at, dtype=np.float64)
        if feedback_delay_s is None:
            fb_at, fb_q = np.zeros(0), np.zeros(0, np.int64)
        else:
            fb_at, fb_q = t + feedback_delay_s, np.arange(n, dtype=np.int64)
        return Trace(app=app, arrival_at=t, input_index=idx.astype(np.int64),
                     label=y[idx].astype(np.int64), context=users if personal else None,
                     feedback_at=fb_at, feedback_query=fb_q, input_bytes=64 * 8,
                     cacheable=False, task=f"users-{self.task}", n_classes=n_classes(self.task))


@functools.lru_cache(maxsize=4)
def _specialists(ug: UserGroups) -> tuple[dict[str, Any], dict[str, Path]]:
    x, y_digit = digits()
    y = task_labels(y_digit, ug.task)
    tr, _ = split(ug.seed, ug.train_size)
    pool_x, _ = ug.inputs.load()
    k = n_classes(ug.task)
    d = cache_dir() / "users" / (
        f"{ug.task}-{ug.base_model}-g{ug.n_groups}-s{ug.seed}-n{ug.train_size}-v1")
    d.mkdir(parents=True, exist_ok=True)
    models: dict[str, Any] = {}
    paths: dict[str, Path] = {}
    for g, name in enumerate(ug.model_names):
        m_path, p_path = d / f"{name}.pkl", d / f"{name}.npy"
        try:
            with open(m_path, "rb") as f:
                models[name] = pickle.load(f)  # noqa: S301 - our own cache
            if not p_path.exists():
                raise OSError(p_path)
        except (OSError, ValueError, EOFError, pickle.UnpicklingError, AttributeError):
            models[name] = train(ug.base_model, transform(x[tr], GROUP_TRANSFORMS[g]), y[tr],
                                 k, ug.seed + g)
            tmp = d / f".{name}.{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                pickle.dump(models[name], f)
            os.replace(tmp, m_path)
            tmp_npy = d / f".{name}.{os.getpid()}.tmp.npy"
            np.save(tmp_npy, predict(models[name], pool_x))
            os.replace(tmp_npy, p_path)
        paths[name] = p_path
    return models, paths
