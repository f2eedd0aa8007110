"""The collector's tuning in the processes that are ours: the frontend (``clipperlab
serve``) and every model container freeze the heap they start with, so that no query waits
for a full pass over the model's and the libraries' objects (``real/gctune.py``)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from typing import Any

import pytest

import clipperlab.real.container as container


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    container.add_arguments(parser)
    return parser.parse_args(["--model", "noop", *argv])


@pytest.mark.parametrize(("argv", "tuned"), [((), True), (("--no-tune-gc",), False)])
def test_the_container_process_tunes_the_collector_after_loading_its_model(
        monkeypatch: pytest.MonkeyPatch, argv: tuple[str, ...], tuned: bool) -> None:
    """The container loads its model, then (unless ``--no-tune-gc``) tunes the collector,
    then serves that model."""
    calls: list[str] = []
    monkeypatch.setattr(container, "load_model",
                        lambda *a: calls.append("load") or (lambda x: x))
    monkeypatch.setattr(container, "tune_gc", lambda: calls.append("tune"))

    def serve(cfg: Any, predict: Any = None) -> int:
        calls.append("serve" if predict is not None else "serve without the model")
        return 0

    monkeypatch.setattr(container, "run_container", serve)
    assert container.run_from_args(_args(*argv)) == 0
    assert calls == (["load", "tune", "serve"] if tuned else ["load", "serve"])


def test_tune_gc_freezes_the_heap_and_makes_full_passes_rarer() -> None:
    """In a fresh process (the test's own collector is left alone): after ``tune_gc`` the
    objects alive are frozen and full collections wait 100 second-generation passes."""
    code = ("import gc, numpy; from clipperlab.real.gctune import tune_gc; "
            "before = gc.get_freeze_count(); tune_gc(); "
            "print(before, gc.get_freeze_count(), *gc.get_threshold())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    before, frozen, g0, _, g2 = (int(x) for x in out)
    assert before == 0 and frozen > 1000
    assert g0 >= 5000 and g2 == 100
