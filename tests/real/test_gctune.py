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
    monkeypatch.setattr(container, "tune_malloc", lambda mb: calls.append(f"malloc {mb}"))

    def serve(cfg: Any, predict: Any = None) -> int:
        calls.append("serve" if predict is not None else "serve without the model")
        return 0

    monkeypatch.setattr(container, "run_container", serve)
    assert container.run_from_args(_args(*argv)) == 0
    assert calls == (["load", "tune", "malloc 256", "serve"] if tuned
                     else ["load", "malloc 256", "serve"])


def test_the_container_keeps_big_buffers_as_told(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--malloc-keep-mb`` reaches ``tune_malloc``; a value out of range is refused
    with one line naming the flag."""
    kept: list[int] = []
    monkeypatch.setattr(container, "load_model", lambda *a: (lambda x: x))
    monkeypatch.setattr(container, "tune_gc", lambda: None)
    monkeypatch.setattr(container, "tune_malloc", kept.append)
    monkeypatch.setattr(container, "run_container", lambda cfg, predict=None: 0)
    assert container.run_from_args(_args("--malloc-keep-mb", "0")) == 0
    assert container.run_from_args(_args("--malloc-keep-mb", "64")) == 0
    assert kept == [0, 64]
    for bad in ("-1", "513"):
        with pytest.raises(container.ContainerError, match="--malloc-keep-mb"):
            container.run_from_args(_args("--malloc-keep-mb", bad))


_MAPPED = (
    "import ctypes, sys\n"
    "from clipperlab.real.gctune import tune_malloc\n"
    "class M(ctypes.Structure):\n"
    "    _fields_ = [(n, ctypes.c_size_t) for n in ('arena', 'ordblks', 'smblks', 'hblks',"
    " 'hblkhd', 'usmblks', 'fsmblks', 'uordblks', 'fordblks', 'keepcost')]\n"
    "libc = ctypes.CDLL(None)\n"
    "if not hasattr(libc, 'mallinfo2'): print('none'); sys.exit()\n"
    "libc.mallinfo2.restype = M\n"
    "print(tune_malloc(int(sys.argv[1])))\n"
    "out = []\n"
    "for _ in range(3):\n"
    "    b = bytearray(40 << 20)\n"
    "    out.append(libc.mallinfo2().hblkhd >> 20)\n"
    "    del b\n"
    "print(*out)\n"
)


@pytest.mark.parametrize("keep_mb", [0, 64])
def test_tune_malloc_serves_big_buffers_from_the_heap(keep_mb: int) -> None:
    """In a fresh process: with glibc's defaults a 40 MiB buffer is mapped afresh each
    time (glibc's threshold stops at 32 MiB); kept (64 MiB), it comes from the heap,
    and the one freed serves the next."""
    out = subprocess.run([sys.executable, "-c", _MAPPED, str(keep_mb)], capture_output=True,
                         text=True, check=True, timeout=60).stdout.split()
    if out == ["none"]:
        pytest.skip("not glibc (no mallinfo2)")
    tuned, *mapped_mb = out
    assert tuned == str(keep_mb > 0)
    if keep_mb:
        assert all(int(m) < 40 for m in mapped_mb)
    else:
        assert all(int(m) >= 40 for m in mapped_mb)


def test_tune_malloc_refuses_a_size_out_of_range() -> None:
    from clipperlab.real.gctune import MALLOC_KEEP_MB_MAX, tune_malloc

    with pytest.raises(ValueError, match="malloc_keep_mb"):
        tune_malloc(MALLOC_KEEP_MB_MAX + 1)
    assert tune_malloc(0) is False


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
