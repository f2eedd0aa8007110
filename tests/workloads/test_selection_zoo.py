"""The model zoo and the user groups: trained offline, genuinely different, learnable."""

from __future__ import annotations

import itertools
import pickle
from pathlib import Path

import numpy as np
import pytest

from clipperlab.workloads import ConstantRate, Workload, WorkloadError
from clipperlab.workloads.users import UserGroups, transform
from clipperlab.workloads.zoo import ZOO_MODELS, ZooInputs, load_zoo, split


def test_split_is_disjoint_and_covers_the_digits() -> None:
    """Queries come from a held-out pool that no zoo model trained on."""
    tr, pool = split(0, 500)
    assert tr.size == 500 and np.intersect1d(tr, pool).size == 0
    assert tr.size + pool.size == 1797


@pytest.mark.parametrize("task", ["digits-10", "digits-binary-3"])
def test_zoo_models_train_and_really_differ(task: str) -> None:
    """Five or more models, all better than chance, with different accuracies and
    different mistakes (pairwise disagreement), and recorded predictions on disk."""
    zoo = load_zoo(task)
    assert len(zoo.names) >= 5 and set(zoo.names) == set(ZOO_MODELS)
    acc = zoo.accuracy()
    chance = 0.1 if task == "digits-10" else 0.5
    assert all(a > chance + 0.2 for a in acc.values())
    assert max(acc.values()) - min(acc.values()) > 0.02
    for a, b in itertools.combinations(zoo.names, 2):
        pa, pb = zoo.predictions[a], zoo.predictions[b]
        assert (pa != pb).any(), f"{a} and {b} answer identically"
    for m, p in zoo.paths.items():
        assert np.array_equal(np.load(p), zoo.predictions[m])
    x, y = ZooInputs(task=task).load()
    assert x.shape == (zoo.pool_y.size, 64) and np.array_equal(y, zoo.pool_y)


def test_zoo_models_predict_what_was_recorded() -> None:
    """The fitted models (deployed as real containers) answer what the simulator replays."""
    zoo = load_zoo("digits-10")
    for m in ("rbf_svm", "torch_cnn"):
        model = zoo.models[m]
        fn = model.predict if hasattr(model, "predict") else model
        assert np.array_equal(np.asarray(fn(zoo.pool_x[:50])), zoo.predictions[m][:50])


def test_zoo_workload_draws_from_the_pool() -> None:
    t = Workload(ConstantRate(100), n_queries=200, inputs=ZooInputs()).generate(1)
    _, y = ZooInputs().load()
    assert t.input_index.max() < y.size and np.array_equal(t.label, y[t.input_index])


def test_user_groups_are_learnable() -> None:
    """Each group's specialist fits its own group well and the others badly."""
    ug = UserGroups(n_groups=4, n_users=8)
    acc = ug.accuracy_matrix()
    diag = np.diag(acc)
    off = acc[~np.eye(4, dtype=bool)]
    assert diag.min() > 0.85
    assert off.max() < 0.6 and off.mean() < 0.3


def test_user_trace_matches_groups() -> None:
    """A user's queries are images seen through the user's group's transformation."""
    ug = UserGroups(n_groups=3, n_users=6)
    t = ug.trace(np.arange(300) / 100.0, seed=2)
    assert t.context is not None
    assert np.array_equal(t.input_index // ug.pool_size, t.context % 3)
    x, y = ug.inputs.load()
    assert np.array_equal(t.label, y[t.input_index])
    g = ug.trace(np.arange(300) / 100.0, seed=2, personal=False)
    assert g.context is None and np.array_equal(g.input_index, t.input_index)
    assert t.feedback_at.size == 300


def test_transforms_and_bad_values() -> None:
    x = np.arange(64, dtype=float).reshape(1, 64)
    assert np.array_equal(transform(transform(x, "mirror"), "mirror"), x)
    assert not np.array_equal(transform(x, "rotate90"), x)
    with pytest.raises(WorkloadError, match="unknown"):
        transform(x, "spin")
    with pytest.raises(WorkloadError, match="n_groups"):
        UserGroups(n_groups=1)
    with pytest.raises(WorkloadError, match="unknown"):
        load_zoo("digits-10", 0, 500, ("gpt",))


def test_a_cache_from_another_layout_is_trained_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pickled model whose classes no longer import (the packages were renamed) is
    trained again instead of failing."""
    monkeypatch.setenv("CLIPPERLAB_CACHE", str(tmp_path))
    load_zoo.cache_clear()  # this process's memo, not the files
    first = load_zoo(models=("logreg",))
    pkl = next(tmp_path.rglob("logreg.pkl"))
    # a pickle of a class in a module that does not exist
    pkl.write_bytes(b"cworkloads.gone\nLogisticRegression\n.")
    with pytest.raises(ImportError):
        pickle.loads(pkl.read_bytes())
    load_zoo.cache_clear()
    again = load_zoo(models=("logreg",))
    load_zoo.cache_clear()
    assert np.array_equal(again.predictions["logreg"], first.predictions["logreg"])
    assert pickle.loads(pkl.read_bytes()) is not None
