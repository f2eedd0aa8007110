"""Why the server sheds more than the twin: every admission decision and batch, both sides.

    python3 results/validation/diagnostics-forest-sheds/admission_probe.py \
        results/validation/quiet-2026-12-04-zb/forest-aimd 7400 2 OUTDIR STALLS.json \
        > output.txt

Records, in the engine of the real server and of the twin (run 29's prediction twin
replaying the three stored steps nearest RATE, each at its recorded speed), every
admission-control decision (``Engine._predicted_late``: time, queue ahead, the AIMD cap,
the latency line, when the busy replica frees, shed or not) and every batch the AIMD
controller observes (time, size, latency, cap before).  The real server runs the
setting's model as the fidelity run serves it, warmed up at half RATE, then three runs of
SECONDS at RATE; a ``sitecustomize`` on the server's ``PYTHONPATH`` installs the probe in
its process.  Then, per run:
- the shed share, and the sheds within 30 ms after a *cap collapse* (the cap falling to
  half or less between two decisions: AIMD steps from the size just sent, so one batch
  of 1 sets the cap to 3);
- the frontend's arrival gaps (between two decisions) over 3, 4 and 5 ms, and the batches
  sent to an idle replica with no arrival during the previous batch's flight (a lull
  longer than a batch: the replica drains, the next batch has one query).
Last, the same stored steps replayed eight times each (draws 1-8) by the twin as it was
and by the twin with the cores' stalls of STALLS.json (``quiet --stalls-out``): the mean
share of defaults and of queries answered in time.
"""

from __future__ import annotations

import glob
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REC: list[tuple[float, ...]] = []
OBS: list[tuple[float, ...]] = []
_INF = float("inf")

SITECUSTOMIZE = f"""
import os, sys
if os.environ.get("ADMISSION_PROBE_OUT"):
    sys.path.insert(0, {str(HERE)!r})
    import admission_probe
    admission_probe.install(os.environ["ADMISSION_PROBE_OUT"])
"""


def install(out: str | None) -> None:
    """Wrap ``Engine._predicted_late`` and ``AIMDController.observe`` to record; with
    ``out``, save both at exit (the server process)."""
    import atexit

    from clipperlab.engine import batching, core

    late = core.Engine._predicted_late

    def probe(self: Any, task: Any, ver: Any, now: float) -> bool:
        res = late(self, task, ver, now)
        a = b = 0.0
        cap = 1
        free_in = _INF
        line = None
        for rep in ver.replicas.values():
            line = rep.ctrl.latency.coefficients()
            if line is None:
                break
            a, b = line
            cap = rep.ctrl.cap
            if rep.batch is None:
                free_in = 0.0
            elif free_in > 0.0:
                left = rep.batch.assembly_at + (a * len(rep.batch.requests) + b) - now
                free_in = min(free_in, max(left, 0.0))
        REC.append((now, len(ver.queue), task.deadline - now, a, b, cap,
                    free_in if line is not None else -1.0, float(res)))
        return res

    observe = batching.AIMDController.observe

    def obs(self: Any, size: int, latency_s: float, now: float) -> None:
        OBS.append((now, size, latency_s, self._cap))
        observe(self, size, latency_s, now)

    core.Engine._predicted_late = probe  # type: ignore[method-assign]
    batching.AIMDController.observe = obs  # type: ignore[method-assign]
    if out:
        def dump() -> None:
            pid = os.getpid()
            if REC:
                np.save(f"{out}/decisions-{pid}.npy", np.asarray(REC))
            if OBS:
                np.save(f"{out}/batches-{pid}.npy", np.asarray(OBS))
        atexit.register(dump)


def describe(tag: str, dec: np.ndarray, bat: np.ndarray) -> None:
    t, cap, shed = dec[:, 0], dec[:, 5], dec[:, 7] > 0
    drop = np.flatnonzero((np.diff(cap) < 0) & (cap[1:] <= 0.5 * cap[:-1]))
    near = np.zeros(len(t), dtype=bool)
    for i in drop:
        near |= (t >= t[i + 1]) & (t < t[i + 1] + 0.03)
    gaps = np.diff(t) * 1e3
    b = bat[(bat[:, 0] > t[0] + 0.05) & (bat[:, 0] <= t[-1])]
    ret, lat = b[:, 0], b[:, 2]
    lull = np.searchsorted(t, ret) - np.searchsorted(t, ret - lat) == 0
    print(f"{tag}: {len(t)} queries, shed {shed.mean():.4f}; cap collapses {len(drop)}, "
          f"sheds within 30 ms after one {int((shed & near).sum())} of {int(shed.sum())}; "
          f"arrival gaps >3/4/5 ms {int((gaps > 3).sum())}/{int((gaps > 4).sum())}/"
          f"{int((gaps > 5).sum())}; batches {len(b)} (mean size {b[:, 1].mean():.1f}), "
          f"after a lull longer than a batch {int(lull.sum())}, batches over 15 ms "
          f"{int((lat > 0.015).sum())}")


def twin(setting: Path, rate: float) -> None:
    from clipperlab.calibration.fidelity import workload
    from clipperlab.calibration.fit import as_run
    from clipperlab.calibration.resimulate import stored_setting
    from clipperlab.calibration.twin import sim_deployment
    from clipperlab.simulator import Simulation

    install(None)
    wl = workload()
    calib, profiles, dep, runs = stored_setting(setting, wl)
    for run in sorted(runs, key=lambda x: abs(x.rate - rate))[:3]:
        REC.clear()
        OBS.clear()
        dep_run = sim_deployment(dep, wl.app, profiles, calibration=as_run(calib, run))
        Simulation(dep_run, run.trace, seed=0).run()
        describe(f"twin, stored step {run.rate:,.0f} q/s at x{run.speed_factor:.2f}",
                 np.asarray(REC), np.asarray(OBS))


def with_stalls(setting: Path, rate: float, stalls_json: Path, draws: int = 8) -> None:
    import dataclasses

    from clipperlab.calibration.fidelity import workload
    from clipperlab.calibration.fit import as_run
    from clipperlab.calibration.quiet import HostStalls
    from clipperlab.calibration.resimulate import stored_setting
    from clipperlab.calibration.twin import sim_deployment
    from clipperlab.calibration.validation import stall_fields
    from clipperlab.simulator import Simulation

    st = HostStalls.from_json(stalls_json.read_text())
    print(f"the twin with {st.describe()}")
    wl = workload()
    calib, profiles, dep, runs = stored_setting(setting, wl)
    for run in sorted(runs, key=lambda x: abs(x.rate - rate))[:3]:
        line = []
        for c in (calib, dataclasses.replace(calib, **stall_fields(st))):
            d = sim_deployment(dep, wl.app, profiles, calibration=as_run(c, run))
            got = []
            for seed in range(1, draws + 1):
                q = Simulation(d, run.trace, seed=seed).run().queries
                ok = ~q["default"] & (q["latency_s"] <= 0.02)
                got.append((float(q["default"].mean()), float(ok.mean())))
            line.append(f"defaults {np.mean([g[0] for g in got]):.4f}, in time "
                        f"{np.mean([g[1] for g in got]):.4f}")
        print(f"twin, stored step {run.rate:,.0f} q/s at x{run.speed_factor:.2f}, "
              f"{draws} draws: as it was {line[0]}; with the stalls {line[1]}")


def real(setting: Path, rate: float, seconds: float, out: Path) -> None:
    from clipperlab.calibration.fidelity import workload
    from clipperlab.calibration.loadgen import run_load
    from clipperlab.calibration.runs import retime
    from clipperlab.calibration.server import ServerProcess, real_deployment
    from clipperlab.calibration.torch_models import save_sklearn

    wl = workload()
    tmp = Path(tempfile.mkdtemp(prefix="admission-probe-"))
    toml = (setting / "deploy.toml").read_text()
    for name in re.findall(r'path\s*=\s*"([^"]+)"', toml):
        save_sklearn(Path(name).stem, tmp)
    (tmp / "deploy.toml").write_text(toml)
    (tmp / "sitecustomize.py").write_text(SITECUSTOMIZE)
    out.mkdir(parents=True, exist_ok=True)
    for f in glob.glob(str(out / "*.npy")):
        os.remove(f)
    os.environ["ADMISSION_PROBE_OUT"] = str(out)
    os.environ["PYTHONPATH"] = f"{tmp}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    pool = np.asarray(wl.inputs.load()[0])
    sizes = []
    with ServerProcess(real_deployment(tmp / "deploy.toml"), cache=False) as srv:
        srv.wait_ready(wl.app)
        warm = run_load(retime(wl, rate / 2, 2.0, 1), pool, srv.url, connections=8)
        sizes.append(len(warm))
        for k in range(3):
            t = run_load(retime(wl, rate, seconds, 2 + k), pool, srv.url, connections=8)
            sizes.append(len(t))
            ok = (t["status"] == 200) & ~t["default"]
            print(f"real, {rate:,.0f} q/s run {k + 1}: defaults "
                  f"{float(t['default'].mean()):.4f}, in time "
                  f"{float((ok & (t['latency_s'] <= 0.02)).mean()):.4f}")
    del os.environ["ADMISSION_PROBE_OUT"]
    dec = np.concatenate([np.load(f) for f in glob.glob(str(out / "decisions-*.npy"))])
    bat = np.concatenate([np.load(f) for f in glob.glob(str(out / "batches-*.npy"))])
    dec, bat = dec[np.argsort(dec[:, 0])], bat[np.argsort(bat[:, 0])]
    parts = np.split(dec, np.cumsum(sizes)[:-1])[1:]  # one decision per query, in order
    for k, p in enumerate(parts):
        describe(f"real, {rate:,.0f} q/s run {k + 1}", p, bat)


if __name__ == "__main__":
    where, qps, secs, outdir = (Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]),
                                Path(sys.argv[4]))
    twin(where, qps)
    real(where, qps, secs, outdir)
    if len(sys.argv) > 5:
        with_stalls(where, qps, Path(sys.argv[5]))
