"""The forest's batch latency tail: the real server against the twin (run 29's setting).

    python3 results/validation/quiet-2026-12-04-zb/batch_tail.py \
        results/validation/quiet-2026-12-04-zb/forest-aimd 4000 4 > batch_tail.txt

The engine's batch latency histogram (assembly to result, ``clipperlab_batch_latency_
seconds``), as the share of batches over 5, 7.5, 10, 15 and 20 ms:
- twin: the prediction's twin replaying the three stored steps of the setting nearest
  RATE, each at the speed recorded while it went;
- real: the setting's model served as the fidelity run serves it, warmed up at half the
  rate, then three runs of SECONDS at RATE, the histogram scraped before and after each;
  with each run's share of defaults and of queries answered in time (20 ms).
The real runs are new ones, so the machine's speed is not the stored steps'.
"""

from __future__ import annotations

import re
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from clipperlab.calibration.fidelity import workload
from clipperlab.engine.metrics import LATENCY_BUCKETS_S

EDGES = (0.005, 0.0075, 0.01, 0.015, 0.02)


def tail(counts: Any) -> tuple[float, dict[str, float]]:
    """Batches counted and the share over each of ``EDGES`` (``counts``: per bucket,
    the histogram's bounds then +Inf)."""
    c = np.asarray(counts, dtype=float)
    n = float(c.sum())
    cum = np.cumsum(c)
    return n, {f">{e * 1e3:g}ms": round(float(1 - cum[LATENCY_BUCKETS_S.index(e)] / n), 4)
               for e in EDGES}


def twin(setting: Path, rate: float) -> None:
    from clipperlab.calibration.fit import as_run
    from clipperlab.calibration.resimulate import stored_setting
    from clipperlab.calibration.twin import sim_deployment
    from clipperlab.simulator import Simulation

    wl = workload()
    calib, profiles, dep, runs = stored_setting(setting, wl)
    for run in sorted(runs, key=lambda x: abs(x.rate - rate))[:3]:
        dep_run = sim_deployment(dep, wl.app, profiles, calibration=as_run(calib, run))
        res = Simulation(dep_run, run.trace, seed=0).run()
        total = np.zeros(len(LATENCY_BUCKETS_S) + 1)
        for smp in res.metrics.samples():
            if smp.name == "clipperlab_batch_latency_seconds":
                smp.metric.fold()
                total += np.asarray(smp.metric._counts)
        n, shares = tail(total)
        print(f"twin, stored step {run.rate:,.0f} q/s at x{run.speed_factor:.2f}: "
              f"{n:.0f} batches, {shares}")


def scrape_counts(url: str) -> np.ndarray:
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    cum: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith("clipperlab_batch_latency_seconds_bucket"):
            m = re.search(r'le="([^"]+)"', line)
            if m is not None:
                le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
                cum[le] = cum.get(le, 0.0) + float(line.rsplit(" ", 1)[1])
    return np.diff([0.0] + [cum[k] for k in sorted(cum)])


def real(setting: Path, rate: float, seconds: float) -> None:
    from clipperlab.calibration.loadgen import run_load
    from clipperlab.calibration.runs import retime
    from clipperlab.calibration.server import ServerProcess, real_deployment
    from clipperlab.calibration.torch_models import save_sklearn

    wl = workload()
    tmp = Path(tempfile.mkdtemp(prefix="batch-tail-"))
    toml = (setting / "deploy.toml").read_text()
    for name in re.findall(r'path\s*=\s*"([^"]+)"', toml):
        save_sklearn(Path(name).stem, tmp)
    (tmp / "deploy.toml").write_text(toml)
    pool = np.asarray(wl.inputs.load()[0])
    with ServerProcess(real_deployment(tmp / "deploy.toml"), cache=False) as srv:
        srv.wait_ready(wl.app)
        run_load(retime(wl, rate / 2, 2.0, 1), pool, srv.url, connections=8)
        for k in range(3):
            before = scrape_counts(srv.url)
            t = run_load(retime(wl, rate, seconds, 2 + k), pool, srv.url, connections=8)
            n, shares = tail(scrape_counts(srv.url) - before)
            ok = (t["status"] == 200) & ~t["default"]
            good = float((ok & (t["latency_s"] <= 0.02)).mean())
            print(f"real, {rate:,.0f} q/s run {k + 1}: {n:.0f} batches, {shares}, "
                  f"defaults {float(t['default'].mean()):.4f}, in time {good:.4f}")


if __name__ == "__main__":
    where, qps, secs = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    twin(where, qps)
    real(where, qps, secs)
