"""The prediction cache: throughput and latency against the cache hit rate, and feedback
processing with the cache on and off (the paper's prototype measured feedback joined
with cached predictions 1.6x to 3x faster than recomputing the predictions).

Hit rate: queries draw inputs from a universe of ``universe`` distinct inputs (digit
``j % N`` of the zoo's pool with salt ``j``: same image and label, a different cache key)
with Zipf popularity ``p(rank r) ~ r ** -skew``; ``skew = 0`` is uniform, higher skews
repeat popular inputs more.  One random forest (the zoo's predictions, the paper
prototype's random-forest latency profile), AIMD, 20 ms objective, offered ``rate_qps``
(above what the model alone can serve; queries beyond ``max_queue`` queued are refused at
once, so those admitted can meet the objective), cache on; ``cache off`` is the same
stream without cache keys.  Throughput counts answers that are not defaults or refusals.
Arrivals ramp up over ``ramp_s`` (AIMD starts at a batch of one) and the first
``warmup_s`` seconds are left out of the measures.

Feedback: an Exp4 application of two models; every query is followed by its label
``feedback_delay_ms`` later.  The engine is told to remember no answers
(``remember_queries = 0``), so feedback is joined with cached predictions (cache on) or
the models compute them again (cache off: no cache keys), competing with queries, at a
load the models can carry either way.  The stream repeats inputs (``feedback_skew``) as a
real stream would.  In the simulator a join with the cache costs no simulated time, so
the time-to-apply ratio there is not comparable with the prototype's 1.6-3x; the real
mode measures it (each update timed end to end over HTTP, sequentially).

Modes: ``sim`` as above; ``real`` runs the same shape, shorter, through the real server
with the random forest as a real scikit-learn container: client threads send the Zipf
stream per skew (a fresh server each, so the cache starts cold; salt added to a pixel as
``1e-9 * j``); and a stream of ``POST /{app}/update`` with the input (no query id) against
servers with the cache on and off, timing each update.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipperlab.engine import Application, BatchingConfig
from clipperlab.report.latency import latency_ms
from clipperlab.report.plots import grid, save, style_axis
from clipperlab.report.progress import track
from clipperlab.simulator import Simulation
from clipperlab.workloads import ConstantRate, FeedbackStream, Trace, Workload
from clipperlab.workloads.zoo import cache_dir, load_zoo

from ._sim import ramp_times
from .config import knob
from .framework import Claim, Results
from .measures import latency_stats
from .selection_common import check_mode, deployment

NAME = "cache"
TITLE = "Prediction cache: throughput and latency vs hit rate; feedback with the cache on/off"
PROFILES = {"random_forest": "prototype-random-forest", "logreg": "prototype-logistic-regression"}


@dataclass(frozen=True, kw_only=True)
class Config:
    seed: int = knob(0, "random seed of the workload and the simulation (>= 0)")
    mode: str = knob("sim", "where to run: sim (simulator), real (real server, loopback), both")
    skews: tuple[float, ...] = knob(
        (0.0, 0.6, 0.9, 1.1, 1.3, 1.6), "Zipf skews of input popularity to run, joined with "
        "'+' (0: uniform)"
    )
    universe: int = knob(1_000_000, "distinct inputs the queries draw from")
    n_queries: int = knob(150_000, "queries per simulated run")
    rate_qps: float = knob(
        30_000.0, "offered load of the hit-rate runs, above what the model alone serves "
        "(queries/s)"
    )
    slo_ms: float = knob(20.0, "latency objective of the application (ms)")
    max_queue: int = knob(200, "queued queries beyond which new ones are refused at once")
    ramp_s: float = knob(1.0, "the offered load ramps up from 0 over this long (s)")
    warmup_s: float = knob(1.5, "first seconds left out of the measures (s)")
    feedback_rate_qps: float = knob(3_000.0, "offered load of the feedback runs (queries/s)")
    feedback_queries: int = knob(
        30_000, "queries of the feedback runs, each followed by its label"
    )
    feedback_skew: float = knob(1.1, "Zipf skew of the feedback runs' inputs")
    feedback_delay_ms: float = knob(50.0, "delay from an answer to its label's feedback (ms)")
    real_queries: int = knob(1_500, "queries per skew in real mode")
    real_updates: int = knob(400, "feedback updates per server in real mode")
    real_threads: int = knob(4, "client threads sending the real-mode stream")


def default_config(quick: bool) -> Config:
    if quick:
        return Config(skews=(0.0, 1.1, 1.6), n_queries=60_000, feedback_queries=9_000,
                      real_queries=300, real_updates=100)
    return Config()


def zipf_indices(n: int, universe: int, skew: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` draws from ``range(universe)`` with ``p(rank r) ~ r ** -skew`` (ranks shuffled
    over the universe, so popular inputs are not the low indices)."""
    if skew <= 0:
        return rng.integers(0, universe, n, dtype=np.int64)
    p = np.arange(1, universe + 1, dtype=np.float64) ** -skew
    p /= p.sum()
    ranks = rng.choice(universe, size=n, p=p)
    perm = rng.permutation(universe)
    return perm[ranks].astype(np.int64)


def _salted_predictions(model: str, universe: int, seed: int) -> Path:
    zoo = load_zoo("digits-10", seed)
    path = cache_dir() / "zoo" / f"salted-{model}-u{universe}-s{seed}.npy"
    if not path.exists():
        preds = zoo.predictions[model]
        tmp = path.with_suffix(f".{id(path)}.tmp.npy")
        np.save(tmp, np.resize(preds, universe))
        tmp.replace(path)
    return path


def _trace(cfg: Config, n: int, rate: float, skew: float, *, cacheable: bool,
           feedback: FeedbackStream | None) -> Trace:
    zoo = load_zoo("digits-10", cfg.seed)
    wl = Workload(ConstantRate(rate), n_queries=n, inputs=zoo.inputs(), cacheable=cacheable,
                  feedback=feedback)
    t = wl.generate(cfg.seed)
    idx = zipf_indices(n, cfg.universe, skew, np.random.default_rng([cfg.seed, 77]))
    arr = ramp_times(t.arrival_at, cfg.ramp_s)
    fb_at = t.feedback_at
    if fb_at.size:
        fb_at = arr[t.feedback_query] + cfg.feedback_delay_ms / 1e3
    return dataclasses.replace(t, arrival_at=arr, feedback_at=fb_at, input_index=idx,
                               label=zoo.pool_y[idx % zoo.pool_y.size])


def _stats(res: Any, cfg: Config) -> dict[str, Any]:
    q = res.queries
    return latency_stats(q["arrival_at"].to_numpy(), q["latency_s"].to_numpy(),
                         q["default"].to_numpy(dtype=bool), warmup_frac=0.0,
                         warmup_s=cfg.warmup_s)


def _hit_rate(res: Any) -> float:
    h = res.metrics.total("clipperlab_cache_hits_total")
    m = res.metrics.total("clipperlab_cache_misses_total")
    return float(h / (h + m)) if h + m else 0.0


def _sim_hits(cfg: Config, raw: list[pd.DataFrame]) -> list[dict[str, Any]]:
    path = _salted_predictions("random_forest", cfg.universe, cfg.seed)
    batching = BatchingConfig(policy="aimd", wait_timeout_s=0.001, max_queue=cfg.max_queue)
    app = Application(name="digits", slo_s=cfg.slo_ms / 1e3, default_output=-1)
    dep = deployment([app], {"digits": ("random_forest",)}, {"random_forest": path},
                     batching=batching, profile_of=PROFILES)
    rows = []
    points = [(s, True) for s in cfg.skews] + [(cfg.skews[-1], False)]
    for skew, on in track(points, desc=f"{NAME} sim", unit="run"):
        tr = _trace(cfg, cfg.n_queries, cfg.rate_qps, skew, cacheable=on, feedback=None)
        res = Simulation(dep, tr, seed=cfg.seed).run()
        raw.append(res.batches.assign(skew=skew, cache=on))
        s = _stats(res, cfg)
        rows.append({"mode": "sim", "part": "hit_rate", "skew": skew,
                     "cache": "on" if on else "off", "hit_rate": _hit_rate(res),
                     "throughput_qps": s["throughput_qps"], "mean_ms": s["mean_ms"],
                     "p99_ms": s["p99_ms"], "default_rate": s["default_share"]})
    return rows


def _sim_feedback(cfg: Config, raw: list[pd.DataFrame]) -> list[dict[str, Any]]:
    models = ("random_forest", "logreg")
    paths = {m: _salted_predictions(m, cfg.universe, cfg.seed) for m in models}
    app = Application(name="digits", slo_s=cfg.slo_ms / 1e3, default_output=-1, policy="exp4")
    batching = BatchingConfig(policy="aimd", wait_timeout_s=0.001, max_queue=cfg.max_queue)
    dep = deployment([app], {"digits": models}, paths, profile_of=PROFILES, batching=batching)
    rows = []
    for on in (True, False):
        tr = _trace(cfg, cfg.feedback_queries, cfg.feedback_rate_qps, cfg.feedback_skew,
                    cacheable=on, feedback=FeedbackStream(1.0, cfg.feedback_delay_ms / 1e3))
        res = Simulation(dep, tr, seed=cfg.seed, engine_options={"remember_queries": 0}).run()
        raw.append(res.batches.assign(part="feedback", cache=on))
        fb = res.feedback
        applied_at = np.array([t for t, _ in fb])
        ids = np.array([f.feedback_id for _, f in fb], dtype=np.int64)
        lat = applied_at - tr.feedback_at[ids]
        span = float(applied_at.max() - tr.feedback_at.min()) if len(fb) else np.nan
        s = _stats(res, cfg)
        rows.append({"mode": "sim", "part": "feedback", "skew": cfg.feedback_skew,
                     "cache": "on" if on else "off", "hit_rate": _hit_rate(res),
                     "throughput_qps": s["throughput_qps"], "mean_ms": s["mean_ms"],
                     "p99_ms": s["p99_ms"], "default_rate": s["default_share"],
                     "feedback_per_s": len(fb) / span if span else np.nan,
                     "feedback_mean_ms": latency_ms(lat)["mean_ms"],
                     "feedback_p99_ms": latency_ms(lat)["p99_ms"],
                     "from_cache_share": float(np.mean([f.from_cache / max(1, f.from_cache +
                                                        f.computed) for _, f in fb]))})
    return rows


def _salted(x: np.ndarray, j: int) -> np.ndarray:
    out = np.array(x, dtype=np.float64)
    out[0] += 1e-9 * j
    return out


def _drive(rig: Any, idx: np.ndarray, pool_x: np.ndarray, threads: int) -> dict[str, Any]:
    """Send the salted inputs ``idx`` from ``threads`` client threads; time each query."""
    n_pool = pool_x.shape[0]
    lats: list[float] = []
    ok = [0]
    lock = threading.Lock()

    def work(rows_: np.ndarray) -> None:
        c = rig.client()
        for r in rows_.tolist():
            j = int(idx[r])
            t0 = time.perf_counter()
            rep = c.predict("cache", _salted(pool_x[j % n_pool], j))
            dt = time.perf_counter() - t0
            with lock:
                lats.append(dt)
                ok[0] += 0 if rep.get("default") else 1
        c.close()

    t0 = time.perf_counter()
    ts = [threading.Thread(target=work, args=(p,))
          for p in np.array_split(np.arange(idx.size), threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.array(lats)
    summary = latency_ms(lat)
    return {"throughput_qps": ok[0] / wall, "mean_ms": summary["mean_ms"],
            "p99_ms": summary["p99_ms"],
            "default_rate": 1 - ok[0] / lat.size}


def _real(cfg: Config) -> list[dict[str, Any]]:
    from .selection_real import deploy, real_server

    zoo = load_zoo("digits-10", cfg.seed)
    n_pool = zoo.pool_y.size
    rows: list[dict[str, Any]] = []
    points = [(s, True) for s in cfg.skews] + [(cfg.skews[-1], False)]
    for skew, on in track(points, desc=f"{NAME} sim", unit="run"):
        idx = zipf_indices(cfg.real_queries, cfg.universe, skew,
                           np.random.default_rng([cfg.seed, 77]))
        with real_server(cache=on, seed=cfg.seed) as rig:
            deploy(rig.admin, "random_forest", zoo.models["random_forest"])
            rig.admin.add_app("cache", slo_ms=1000, default_output=-1, input_shape=[64])
            rig.admin.link("cache", ["random_forest"])
            rig.admin.wait_ready(app="cache", timeout_s=120)
            stats = _drive(rig, idx, zoo.pool_x, cfg.real_threads)
            m = rig.admin.metrics()
        h = sum(v for k, v in m.items() if k.startswith("clipperlab_cache_hits_total"))
        mi = sum(v for k, v in m.items() if k.startswith("clipperlab_cache_misses_total"))
        rows.append({"mode": "real", "part": "hit_rate", "skew": skew,
                     "cache": "on" if on else "off",
                     "hit_rate": float(h / (h + mi)) if h + mi else 0.0, **stats})
    # feedback: updates carrying the input (no query id), cache on vs off
    models = ("random_forest", "logreg")
    idx = zipf_indices(cfg.real_updates, cfg.universe, cfg.feedback_skew,
                       np.random.default_rng([cfg.seed, 78]))
    for on in (True, False):
        with real_server(cache=on, remember_queries=1, seed=cfg.seed) as rig:
            for name in models:
                deploy(rig.admin, name, zoo.models[name])
            rig.admin.add_app("fb", slo_ms=1000, default_output=-1, policy="exp4",
                              input_shape=[64])
            rig.admin.link("fb", list(models))
            rig.admin.wait_ready(app="fb", timeout_s=120)
            c = rig.client()
            xs = [_salted(zoo.pool_x[int(j) % n_pool], int(j)) for j in idx]
            for x in xs:  # the queries whose predictions feedback may find in the cache
                c.predict("fb", x)
            lat_l: list[float] = []
            from_cache = computed = 0
            t_all = time.perf_counter()
            for k, x in enumerate(xs):
                t0 = time.perf_counter()
                u = c.update("fb", int(zoo.pool_y[int(idx[k]) % n_pool]), input=x)
                lat_l.append(time.perf_counter() - t0)
                from_cache += int(u.get("from_cache", 0))
                computed += int(u.get("computed", 0))
            wall = time.perf_counter() - t_all
            c.close()
        lat = np.array(lat_l)
        rows.append({"mode": "real", "part": "feedback", "skew": cfg.feedback_skew,
                     "cache": "on" if on else "off", "feedback_per_s": lat.size / wall,
                     "feedback_mean_ms": latency_ms(lat)["mean_ms"],
                     "feedback_p99_ms": latency_ms(lat)["p99_ms"],
                     "from_cache_share": from_cache / max(1, from_cache + computed)})
    return rows


def run(cfg: Config) -> Results:
    check_mode(cfg.mode)
    if cfg.universe < 1 or any(s < 0 for s in cfg.skews):
        raise ValueError("universe must be >= 1 and skews >= 0")
    rows: list[dict[str, Any]] = []
    raw: list[pd.DataFrame] = []
    if cfg.mode in ("sim", "both"):
        rows += _sim_hits(cfg, raw) + _sim_feedback(cfg, raw)
    if cfg.mode in ("real", "both"):
        rows += _real(cfg)
    return Results(table=pd.DataFrame(rows),
                   raw={"batches": pd.concat(raw, ignore_index=True)} if raw else {})


def plot(results: Results, out_dir: Path) -> list[Path]:
    t = results.table
    fig, axes = grid(4, 4, width_in=3.5, height_in=3.0)
    for mode, tm in t.groupby("mode", sort=False):
        h = tm[(tm["part"] == "hit_rate") & (tm["cache"] == "on")].sort_values("hit_rate")
        off = tm[(tm["part"] == "hit_rate") & (tm["cache"] == "off")]
        for ax, col in zip(axes[:3], ("throughput_qps", "mean_ms", "p99_ms"), strict=True):
            line = ax.plot(h["hit_rate"] * 100, h[col], marker="o", label=f"{mode}, cache on")
            if len(off):
                ax.axhline(float(off[col].iloc[0]), ls="--", color=line[0].get_color(),
                           label=f"{mode}, cache off")
        f = tm[tm["part"] == "feedback"]
        if len(f):
            x = np.where(f["cache"].to_numpy() == "on", 0.0, 1.0) + (0.0 if mode == "sim"
                                                                       else 0.4)
            axes[3].bar(x, f["feedback_mean_ms"], 0.35, label=str(mode))
    style_axis(axes[0], title="throughput vs hit rate", xlabel="cache hit rate (%)",
               ylabel="answers/s (not default, log)")
    style_axis(axes[1], title="mean latency", xlabel="cache hit rate (%)", ylabel="ms")
    style_axis(axes[2], title="p99 latency", xlabel="cache hit rate (%)", ylabel="ms")
    style_axis(axes[3], title="feedback: mean time to apply", ylabel="ms")
    axes[3].set_xticks([0.2, 1.2], ["cache on", "cache off"])
    axes[0].set_yscale("log")
    return [save(fig, out_dir / "cache.png", suptitle="Prediction cache: Zipf-popular inputs; "
                 "feedback joined with cached predictions", legend_axes=axes)]


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}x" if b > 0.01 else "unbounded (a cache join costs no simulated time)"


def claims(results: Results, cfg: Config) -> list[Claim]:
    t = results.table
    out = []
    for mode in t["mode"].unique():
        h = t[(t["mode"] == mode) & (t["part"] == "hit_rate")]
        on = h[h["cache"] == "on"].sort_values("hit_rate")
        off = h[h["cache"] == "off"]
        if len(on) and len(off):
            out.append(Claim(
                f"[{mode}] throughput at hit rate {on['hit_rate'].iloc[0] * 100:.0f}% -> "
                f"{on['hit_rate'].iloc[-1] * 100:.0f}% (cache off: "
                f"{float(off['throughput_qps'].iloc[0]):,.0f}/s)",
                "grows with the hit rate (hits skip the model)",
                f"{on['throughput_qps'].iloc[0]:,.0f} -> {on['throughput_qps'].iloc[-1]:,.0f}"
                " answers/s"))
        f = t[(t["mode"] == mode) & (t["part"] == "feedback")]
        fon, foff = f[f["cache"] == "on"], f[f["cache"] == "off"]
        if len(fon) and len(foff):
            a, b = fon.iloc[0], foff.iloc[0]
            out.append(Claim(
                f"[{mode}] feedback processing, cache on vs off (mean time to apply; rate)",
                "1.6x to 3x faster with the cache (prototype logs)",
                f"{_ratio(b['feedback_mean_ms'], a['feedback_mean_ms'])} faster "
                f"({a['feedback_mean_ms']:.2f} vs {b['feedback_mean_ms']:.2f} ms); "
                f"{a['feedback_per_s'] / b['feedback_per_s']:.2f}x the rate "
                f"({a['feedback_per_s']:,.0f} vs {b['feedback_per_s']:,.0f}/s); "
                f"{a['from_cache_share'] * 100:.0f}% vs {b['from_cache_share'] * 100:.0f}% "
                "from cache"))
    return out
