"""What the real server saw, read from its ``/metrics`` (Prometheus text format).

Rules:
- ``scrape`` sums the ``_sum`` and ``_count`` of three histograms over their labels: the
  query latency inside the server, the engine's batch latency and the batch size.  A
  server that does not answer gives NaN for all of them, never an error.
- ``in_situ`` is the difference of two scrapes: the means (and counts) over a run, and
  per model (the histograms' ``model`` label) its batches (``batches:<model>``) and the
  queries in them (``items:<model>``): a container's CPU is fitted per batch and per item;
  and the defaults answered per reason (``defaults:<reason>``, summed over applications:
  ``shed_predicted_late``, ``deadline``, ...), which say why a run missed its objective.
- ``slowdown`` and ``batch_extra_s`` set the in-situ batch latency beside the latency
  profile's at the in-situ mean batch size (one model: its profile; several: their
  average): their ratio, and their difference (>= 0, seconds).
"""

from __future__ import annotations

import contextlib
import math
import re
import urllib.request
from collections.abc import Mapping

import numpy as np

from clipperlab.simulator import LatencyProfile

__all__ = ["batch_extra_s", "defaults_note", "in_situ", "parse", "scrape", "slowdown"]

HISTOGRAMS = ("clipperlab_query_latency_seconds", "clipperlab_batch_latency_seconds",
              "clipperlab_batch_size")
_KEYS = tuple(f"{n}_{k}" for n in HISTOGRAMS for k in ("sum", "count"))
_MODEL = re.compile(r'model="([^"]*)"')
_PER_MODEL = {"clipperlab_batch_size_count": "batches", "clipperlab_batch_size_sum": "items"}
_DEFAULTS = "clipperlab_defaults_total"
_REASON = re.compile(r'reason="([^"]*)"')


def scrape(url: str) -> dict[str, float]:
    """Sums and counts of the server's query latency, batch latency and batch size
    histograms (``/metrics``), summed over labels; the batch size's also per model
    (``batches:<model>``, ``items:<model>``); the defaults per reason
    (``defaults:<reason>``)."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return dict.fromkeys(_KEYS, math.nan)
    return parse(text)


def parse(text: str) -> dict[str, float]:
    """``scrape``'s numbers from a ``/metrics`` text."""
    out = dict.fromkeys(_KEYS, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name == _DEFAULTS:
            r = _REASON.search(line)
            if r is not None:
                with contextlib.suppress(ValueError, IndexError):
                    key = f"defaults:{r.group(1)}"
                    out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
        elif name in out:
            with contextlib.suppress(ValueError, IndexError):
                v = float(line.rsplit(" ", 1)[1])
                out[name] += v
                m = _MODEL.search(line) if name in _PER_MODEL else None
                if m is not None:
                    key = f"{_PER_MODEL[name]}:{m.group(1)}"
                    out[key] = out.get(key, 0.0) + v
    return out


def in_situ(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """What the server saw between two scrapes: mean query latency inside the server,
    mean batch latency and mean batch size; per model its batches and items, and the
    defaults per reason."""
    def mean(n: str) -> float:
        c = after[f"{n}_count"] - before[f"{n}_count"]
        return (after[f"{n}_sum"] - before[f"{n}_sum"]) / c if c > 0 else math.nan

    def count(n: str) -> float:
        return after[f"{n}_count"] - before[f"{n}_count"]

    per_model = {k: after[k] - before.get(k, 0.0) for k in after
                 if k.startswith(("batches:", "items:", "defaults:"))}
    return {"server_mean_ms": mean("clipperlab_query_latency_seconds") * 1e3,
            "batch_mean_ms": mean("clipperlab_batch_latency_seconds") * 1e3,
            "batch_size_mean": mean("clipperlab_batch_size"),
            "queries": count("clipperlab_query_latency_seconds"),
            "batches": count("clipperlab_batch_size"), **per_model}


def defaults_note(seen: Mapping[str, float], queries: int) -> str:
    """``in_situ``'s defaults per reason as a clause of a log line, each a share of
    ``queries``, most first (``", defaults 3.1%: shed_predicted_late 2.9%, deadline
    0.2%"``); empty when the server answered none."""
    by = sorted(((v, k.split(":", 1)[1]) for k, v in seen.items()
                 if k.startswith("defaults:") and v > 0), reverse=True)
    if not by or queries <= 0:
        return ""
    total = sum(v for v, _ in by)
    return (f", defaults {total / queries:.1%}: "
            + ", ".join(f"{k} {v / queries:.1%}" for v, k in by))


def _profile_s(seen: Mapping[str, float], profiles: Mapping[str, LatencyProfile]) -> float:
    """The profiles' mean batch latency at the in-situ mean batch size (one model: its
    profile; several: their average; nan when the server saw no batch)."""
    b = seen.get("batch_size_mean", math.nan)
    if not math.isfinite(b) or not profiles:
        return math.nan
    size = max(int(round(b)), 1)
    return float(np.mean([p.mean_s(size) for p in profiles.values()]))


def slowdown(seen: Mapping[str, float], profiles: Mapping[str, LatencyProfile]) -> float:
    """In-situ mean batch latency over the profile's mean at the in-situ mean batch size."""
    prof_s = _profile_s(seen, profiles)
    return seen["batch_mean_ms"] / 1e3 / prof_s if prof_s > 0 else math.nan


def batch_extra_s(seen: Mapping[str, float], profiles: Mapping[str, LatencyProfile]) -> float:
    """In-situ mean batch latency minus the profile's mean at that size (>= 0, seconds)."""
    extra = seen.get("batch_mean_ms", math.nan) / 1e3 - _profile_s(seen, profiles)
    return extra if math.isfinite(extra) and extra > 0 else 0.0
