"""Latency profiles: how long a model container takes for a batch of ``b`` inputs.

Rules:
- A profile is data: for each measured batch size, the latency distribution as values at
  quantile ``levels`` (0 = fastest seen, 1 = slowest seen), or raw samples (turned into a
  fine quantile grid on load).  Tags say where the numbers come from (``hardware``,
  ``software``, ``source``); ``kind`` is the container kind, ``cpu`` or ``gpu``.
- Sampling draws ``u ~ U(0,1)`` and returns the inverse CDF at ``u``, linear between the
  stored levels and exact at every one of them (no coarser table: a level of 0.99999
  keeps its value): the right tail comes from the data (the 0.99, 0.999 and max levels),
  not from a parametric guess.  Between
  measured sizes the inverse CDFs of the two neighbours are interpolated linearly in the
  batch size (at the same ``u``).  Outside the measured range the nearest measured
  distribution is scaled by the ratio of the fitted line ``alpha*b + beta`` (at quantile
  ``fit_quantile``): the line is used only to extrapolate.
- ``from_line`` synthesises a profile from a p99 line and a ratio p99/mean (a lognormal
  shape; the prototype's logs show p99 about 1.2-1.5x the mean, clipper-facts.md); that is
  how the six prototype fits are shipped.
- Files: JSON, ``format = "clipperlab-profile/1"``; ``load_profile`` validates every field
  and names the file and field on error; shipped profiles live in ``simulator/profiles/``
  and are listed by ``list_profiles()``.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from .errors import ProfileError

__all__ = [
    "PROFILE_DIR",
    "LatencyProfile",
    "ProfileSampler",
    "list_profiles",
    "load_profile",
    "save_profile",
]

FORMAT = "clipperlab-profile/1"
PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
KINDS = ("cpu", "gpu")
# Quantile levels used when a profile is synthesised or built from raw samples.
SAMPLE_LEVELS: tuple[float, ...] = tuple(
    [i / 100 for i in range(100)] + [0.995, 0.999, 1.0]
)
LINE_LEVELS: tuple[float, ...] = (
    0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1.0
)


def _lognormal_sigma(p99_over_mean: float) -> float:
    """sigma of a mean-1 lognormal whose 0.99 quantile is ``p99_over_mean``."""
    z = NormalDist().inv_cdf(0.99)
    target = math.log(p99_over_mean)
    # solve z*s - s^2/2 = target for the smaller root (s < z)
    disc = z * z - 2.0 * target
    if disc < 0:
        raise ProfileError(f"p99_over_mean {p99_over_mean} is too large for a lognormal shape")
    return z - math.sqrt(disc)


@dataclass(frozen=True)
class LatencyProfile:
    """Batch latency distributions per batch size (seconds)."""

    name: str
    batch_sizes: tuple[int, ...]
    levels: tuple[float, ...]
    latency_s: tuple[tuple[float, ...], ...]
    kind: str = "cpu"
    tags: Mapping[str, str] = field(default_factory=dict)
    fit: tuple[float, float] | None = None  # (alpha_s per item, beta_s) at fit_quantile
    fit_quantile: float = 0.99
    description: str = ""
    # Recorded outputs of the real model on a data set, per task name
    # (clipperlab.simulator.outputs).
    predictions: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _validate(self, "<profile>")
        if self.fit is None:
            object.__setattr__(self, "fit", self._fit_line())

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_line(
        cls,
        name: str,
        alpha_s: float,
        beta_s: float,
        *,
        p99_over_mean: float = 1.35,
        kind: str = "cpu",
        tags: Mapping[str, str] | None = None,
        batch_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
        description: str = "",
    ) -> LatencyProfile:
        """A profile whose p99 at size ``b`` is ``alpha_s*b + beta_s`` and whose shape is a
        lognormal with the given p99/mean ratio (levels 0 and 1 are the 1e-4 and 1 - 1e-4
        quantiles)."""
        s = _lognormal_sigma(p99_over_mean)
        mu = -0.5 * s * s
        nd = NormalDist()
        mult = []
        for q in LINE_LEVELS:
            qq = min(max(q, 1e-4), 1 - 1e-4)
            mult.append(math.exp(mu + s * nd.inv_cdf(qq)))
        rows = []
        for b in batch_sizes:
            mean = (alpha_s * b + beta_s) / p99_over_mean
            rows.append(tuple(mean * m for m in mult))
        return cls(
            name=name,
            batch_sizes=tuple(int(b) for b in batch_sizes),
            levels=LINE_LEVELS,
            latency_s=tuple(rows),
            kind=kind,
            tags=dict(tags or {}),
            fit=(float(alpha_s), float(beta_s)),
            fit_quantile=0.99,
            description=description,
        )

    @classmethod
    def from_samples(
        cls,
        name: str,
        samples_s: Mapping[int, Sequence[float]],
        *,
        kind: str = "cpu",
        tags: Mapping[str, str] | None = None,
        description: str = "",
        predictions: Mapping[str, Sequence[int]] | None = None,
    ) -> LatencyProfile:
        """A profile from raw latency samples per batch size (kept as a 103-level grid)."""
        sizes = sorted(int(b) for b in samples_s)
        rows = []
        for b in sizes:
            arr = np.asarray(samples_s[b], dtype=np.float64)
            if arr.size == 0:
                raise ProfileError(f"{name}: batch size {b} has no samples")
            rows.append(tuple(float(v) for v in np.quantile(arr, SAMPLE_LEVELS)))
        return cls(
            name=name,
            batch_sizes=tuple(sizes),
            levels=SAMPLE_LEVELS,
            latency_s=tuple(rows),
            kind=kind,
            tags=dict(tags or {}),
            description=description,
            predictions={k: tuple(int(x) for x in v) for k, v in (predictions or {}).items()},
        )

    def _fit_line(self) -> tuple[float, float]:
        """Least-squares line through the ``fit_quantile`` latency of each size."""
        q = np.array([self._inv_measured(i, self.fit_quantile) for i in
                      range(len(self.batch_sizes))])
        b = np.asarray(self.batch_sizes, dtype=np.float64)
        if b.size < 2:
            return 0.0, float(q[0])
        alpha, beta = np.polyfit(b, q, 1)
        alpha = max(float(alpha), 0.0)
        beta = max(float(np.mean(q - alpha * b)), 0.0)
        return alpha, beta

    # ------------------------------------------------------------------ queries
    def _inv_measured(self, i: int, u: float) -> float:
        return float(np.interp(u, self.levels, self.latency_s[i]))

    def line_s(self, batch_size: int) -> float:
        """The fitted line at ``batch_size`` (used only to extrapolate)."""
        assert self.fit is not None
        a, b = self.fit
        return a * batch_size + b

    def inverse_cdf(self, batch_size: int, u: np.ndarray | float) -> np.ndarray:
        """Latency (s) at quantile(s) ``u`` for ``batch_size``, per the module rules."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        uu = np.asarray(u, dtype=np.float64)
        sizes = self.batch_sizes
        j = int(np.searchsorted(sizes, batch_size))
        if j < len(sizes) and sizes[j] == batch_size:
            return np.interp(uu, self.levels, self.latency_s[j])
        if j == 0 or j == len(sizes):
            k = 0 if j == 0 else len(sizes) - 1
            base = np.interp(uu, self.levels, self.latency_s[k])
            ref = self.line_s(sizes[k])
            ratio = self.line_s(batch_size) / ref if ref > 0 else 1.0
            return base * ratio
        b0, b1 = sizes[j - 1], sizes[j]
        w = (batch_size - b0) / (b1 - b0)
        lo = np.interp(uu, self.levels, self.latency_s[j - 1])
        hi = np.interp(uu, self.levels, self.latency_s[j])
        return lo + w * (hi - lo)

    def quantile_s(self, batch_size: int, q: float) -> float:
        return float(self.inverse_cdf(batch_size, q))

    def mean_s(self, batch_size: int) -> float:
        """The mean latency (s): exact for the inverse CDF linear between the levels."""
        lv = np.asarray(self.levels, dtype=np.float64)
        v = self.inverse_cdf(batch_size, lv)
        return float(np.sum(np.diff(lv) * (v[1:] + v[:-1])) / 2)

    def sample(self, batch_size: int, rng: np.random.Generator) -> float:
        """One latency draw (seconds) for a batch of ``batch_size``."""
        return float(self.inverse_cdf(batch_size, rng.random()))

    def sampler(self, rng: np.random.Generator) -> ProfileSampler:
        """A fast sampler (tables built lazily per batch size, uniforms drawn in chunks)."""
        return ProfileSampler(self, rng)

    def with_tags(self, **tags: str) -> LatencyProfile:
        return replace(self, tags={**self.tags, **tags})

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        assert self.fit is not None
        d: dict[str, Any] = {
            "format": FORMAT,
            "name": self.name,
            "kind": self.kind,
            "tags": dict(self.tags),
            "description": self.description,
            "batch_sizes": list(self.batch_sizes),
            "levels": list(self.levels),
            "latency_s": [list(r) for r in self.latency_s],
            "fit": {"alpha_s": self.fit[0], "beta_s": self.fit[1],
                    "quantile": self.fit_quantile},
        }
        if self.predictions:
            d["predictions"] = {k: list(v) for k, v in self.predictions.items()}
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "<dict>") -> LatencyProfile:
        return _from_dict(data, where)


class ProfileSampler:
    """Draws latencies fast and exactly: per batch size seen, the inverse CDF at the
    profile's own stored levels (one row, built once: interpolation in the batch size and
    extrapolation are linear at a fixed ``u``, so the row is exact), and each draw is that
    row interpolated linearly at ``u`` (``bisect`` on the levels).  A draw equals
    ``profile.inverse_cdf(b, u)``: levels finer than any table (0.999, 0.9999, 0.99999)
    keep their values.  Uniforms are pre-drawn 8,192 at a time from the injected
    generator, one stream for every size.  When a block is drawn, the draws of the whole
    block are also computed in numpy for the size asked for then (the same bisection and
    arithmetic, so the same values), and later draws of that size in the block are read
    from them (the small-batch case, one size throughout: 0.4 us per draw less, measured)."""

    __slots__ = ("profile", "rng", "_levels", "_rows", "_u", "_pos", "_vsize", "_vals")

    def __init__(self, profile: LatencyProfile, rng: np.random.Generator) -> None:
        self.profile = profile
        self.rng = rng
        self._levels: list[float] = [float(x) for x in profile.levels]
        # batch size -> (value at each level, slope of each segment)
        self._rows: dict[int, tuple[list[float], list[float]]] = {}
        self._u: list[float] = []
        self._pos = 0
        self._vsize = 0  # the batch size whose draws of this block are in _vals
        self._vals: list[float] = []

    def row(self, batch_size: int) -> tuple[list[float], list[float]]:
        """The inverse CDF of ``batch_size`` at the stored levels, and each segment's slope."""
        r = self._rows.get(batch_size)
        if r is None:
            lv = np.asarray(self._levels)
            v = self.profile.inverse_cdf(batch_size, lv)
            r = self._rows[batch_size] = (v.tolist(), (np.diff(v) / np.diff(lv)).tolist())
        return r

    def uniform(self) -> float:
        pos = self._pos
        if pos >= len(self._u):
            self._u = self.rng.random(8192).tolist()
            self._vals = []  # a new block: no draws computed for it yet
            pos = 0
        self._pos = pos + 1
        return self._u[pos]

    def __call__(self, batch_size: int) -> float:
        pos = self._pos
        if batch_size == self._vsize and pos < len(self._vals):
            self._pos = pos + 1
            return self._vals[pos]
        r = self._rows.get(batch_size)
        if r is None:
            r = self.row(batch_size)
        us = self._u  # self.uniform(), inlined: a call per batch less
        if pos >= len(us):
            u_block = self.rng.random(8192)
            us = self._u = u_block.tolist()
            pos = 0
            lv_block = np.asarray(self._levels)
            i_block = np.searchsorted(lv_block, u_block, side="right") - 1  # bisect_right
            v0, sl = np.asarray(r[0]), np.asarray(r[1])
            self._vals = (v0[i_block] + (u_block - lv_block[i_block]) * sl[i_block]).tolist()
            self._vsize = batch_size
        self._pos = pos + 1
        u = us[pos]
        lv = self._levels
        i = bisect_right(lv, u) - 1  # u in [0, 1): a segment [lv[i], lv[i + 1])
        return r[0][i] + (u - lv[i]) * r[1][i]


# ---------------------------------------------------------------------- validation


def _validate(p: LatencyProfile, where: str) -> None:
    def bad(fld: str, expect: str, got: Any) -> ProfileError:
        return ProfileError(f"{where}: {fld}: expected {expect}, got {got!r}")

    if not isinstance(p.name, str) or not p.name:
        raise bad("name", "a non-empty string", p.name)
    if p.kind not in KINDS:
        raise bad("kind", f"one of {KINDS}", p.kind)
    sizes = p.batch_sizes
    if not sizes or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in sizes):
        raise bad("batch_sizes", "a non-empty list of integers >= 1", list(sizes))
    if any(b1 <= b0 for b0, b1 in zip(sizes, sizes[1:], strict=False)):
        raise bad("batch_sizes", "strictly increasing sizes", list(sizes))
    lv = p.levels
    if len(lv) < 2 or lv[0] != 0.0 or lv[-1] != 1.0 or any(
        b <= a for a, b in zip(lv, lv[1:], strict=False)
    ):
        raise bad("levels", "strictly increasing quantile levels from 0.0 to 1.0", list(lv))
    if len(p.latency_s) != len(sizes):
        raise bad("latency_s", f"one row per batch size ({len(sizes)} rows)",
                  f"{len(p.latency_s)} rows")
    for i, row in enumerate(p.latency_s):
        if len(row) != len(lv):
            raise bad(f"latency_s[{i}]", f"{len(lv)} values (one per level)", f"{len(row)} values")
        if any(not (isinstance(v, int | float) and math.isfinite(v) and v >= 0) for v in row):
            raise bad(f"latency_s[{i}]", "finite latencies >= 0 in seconds", list(row))
        if any(b < a for a, b in zip(row, row[1:], strict=False)):
            raise bad(f"latency_s[{i}]", "values non-decreasing with the level", list(row))
    if p.fit is not None:
        a, b = p.fit
        if not (math.isfinite(a) and math.isfinite(b) and a >= 0 and b >= 0 and a + b > 0):
            raise bad("fit", "alpha_s >= 0 and beta_s >= 0, not both 0", {"alpha_s": a,
                                                                         "beta_s": b})
    if not 0 < p.fit_quantile < 1:
        raise bad("fit.quantile", "a number in (0, 1)", p.fit_quantile)


def _from_dict(data: Mapping[str, Any], where: str) -> LatencyProfile:
    def bad(fld: str, expect: str, got: Any) -> ProfileError:
        return ProfileError(f"{where}: {fld}: expected {expect}, got {got!r}")

    if not isinstance(data, Mapping):
        raise ProfileError(f"{where}: expected a JSON object, got {type(data).__name__}")
    fmt = data.get("format", FORMAT)
    if fmt != FORMAT:
        raise bad("format", repr(FORMAT), fmt)
    known = {"format", "name", "kind", "tags", "description", "batch_sizes", "levels",
             "latency_s", "samples_s", "fit", "predictions"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ProfileError(f"{where}: unknown field(s) {unknown}; expected some of "
                           f"{sorted(known)}")
    if "name" not in data:
        raise ProfileError(f"{where}: name: missing (required)")
    tags = data.get("tags", {})
    if not isinstance(tags, Mapping) or not all(isinstance(v, str) for v in tags.values()):
        raise bad("tags", "an object of strings (hardware, software, source)", tags)
    preds = data.get("predictions", {})
    if not isinstance(preds, Mapping) or not all(
        isinstance(v, list) and all(isinstance(x, int) for x in v) for v in preds.values()
    ):
        raise bad("predictions", "an object mapping task name to a list of integers",
                  "something else")
    common: dict[str, Any] = {
        "kind": data.get("kind", "cpu"),
        "tags": dict(tags),
        "description": data.get("description", ""),
    }
    if "samples_s" in data:
        s = data["samples_s"]
        if not isinstance(s, Mapping) or not s:
            raise bad("samples_s", 'an object {"<batch size>": [latencies in seconds]}', s)
        conv: dict[int, list[float]] = {}
        for k, v in s.items():
            try:
                b = int(k)
            except ValueError:
                raise bad("samples_s", "batch sizes as keys", k) from None
            if not isinstance(v, list) or not v or not all(
                isinstance(x, int | float) and math.isfinite(x) and x >= 0 for x in v
            ):
                raise bad(f"samples_s[{k}]", "a non-empty list of latencies >= 0 (s)", v)
            conv[b] = v
        prof = LatencyProfile.from_samples(str(data["name"]), conv, **common,
                                           predictions=preds)
        return _with_fit(prof, data, where)
    for fld in ("batch_sizes", "levels", "latency_s"):
        if fld not in data:
            raise ProfileError(f"{where}: {fld}: missing (required unless samples_s is given)")
        if not isinstance(data[fld], list):
            raise bad(fld, "a list", data[fld])
    rows = data["latency_s"]
    if not all(isinstance(r, list) for r in rows):
        raise bad("latency_s", "a list of lists (one per batch size)", rows)
    fit, fq = _fit_of(data, where)
    try:
        prof = LatencyProfile(
            name=str(data["name"]),
            batch_sizes=tuple(data["batch_sizes"]),
            levels=tuple(float(x) if isinstance(x, int | float) else x for x in data["levels"]),
            latency_s=tuple(tuple(r) for r in rows),
            fit=fit,
            fit_quantile=fq,
            predictions={k: tuple(v) for k, v in preds.items()},
            **common,
        )
    except ProfileError as e:
        raise ProfileError(str(e).replace("<profile>", where, 1)) from None
    return prof


def _fit_of(data: Mapping[str, Any], where: str) -> tuple[tuple[float, float] | None, float]:
    f = data.get("fit")
    if f is None:
        return None, 0.99
    if not isinstance(f, Mapping) or "alpha_s" not in f or "beta_s" not in f:
        raise ProfileError(f"{where}: fit: expected {{\"alpha_s\": ..., \"beta_s\": ..., "
                           f"\"quantile\": 0.99}}, got {f!r}")
    vals = []
    for k in ("alpha_s", "beta_s"):
        v = f[k]
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ProfileError(f"{where}: fit.{k}: expected a number of seconds, got {v!r}")
        vals.append(float(v))
    q = f.get("quantile", 0.99)
    if isinstance(q, bool) or not isinstance(q, int | float):
        raise ProfileError(f"{where}: fit.quantile: expected a number in (0, 1), got {q!r}")
    return (vals[0], vals[1]), float(q)


def _with_fit(prof: LatencyProfile, data: Mapping[str, Any], where: str) -> LatencyProfile:
    fit, fq = _fit_of(data, where)
    if fit is None:
        return prof
    return replace(prof, fit=fit, fit_quantile=fq)


# ---------------------------------------------------------------------- registry / files


def list_profiles() -> list[str]:
    """Names of the profiles shipped in ``simulator/profiles/`` (file stems)."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.json"))


_CACHE: dict[str, tuple[float, LatencyProfile]] = {}


def load_profile(name_or_path: str | Path) -> LatencyProfile:
    """A shipped profile by name (see ``list_profiles()``) or a JSON file by path."""
    p = Path(name_or_path)
    if p.suffix != ".json" and not p.exists():
        shipped = PROFILE_DIR / f"{name_or_path}.json"
        if not shipped.exists():
            raise ProfileError(
                f"profile {str(name_or_path)!r}: not a file and not a shipped profile; "
                f"shipped: {', '.join(list_profiles())}"
            )
        p = shipped
    key = str(p.resolve())
    try:
        mtime = p.stat().st_mtime
    except OSError as e:
        raise ProfileError(f"{p}: cannot read the profile ({e.strerror})") from None
    hit = _CACHE.get(key)
    if hit is not None and hit[0] == mtime:
        return hit[1]
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ProfileError(f"{p}: not valid JSON (line {e.lineno}: {e.msg})") from None
    prof = _from_dict(data, str(p))
    _CACHE[key] = (mtime, prof)
    return prof


def save_profile(profile: LatencyProfile, path: str | Path) -> Path:
    """Write ``profile`` as JSON (compact rows, 9 significant digits)."""
    p = Path(path)
    d = profile.to_dict()
    d["latency_s"] = [[float(f"{v:.9g}") for v in r] for r in d["latency_s"]]
    lines = []
    for k, v in d.items():
        if k in ("latency_s", "predictions") and v:
            if isinstance(v, dict):
                inner = ",\n".join(f"  {json.dumps(kk)}: {json.dumps(vv)}" for kk, vv in v.items())
                lines.append(f" {json.dumps(k)}: {{\n{inner}\n }}")
            else:
                inner = ",\n".join(f"  {json.dumps(r)}" for r in v)
                lines.append(f" {json.dumps(k)}: [\n{inner}\n ]")
        else:
            lines.append(f" {json.dumps(k)}: {json.dumps(v)}")
    text = "{\n" + ",\n".join(lines) + "\n}"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text + "\n")
    return p
