"""Run 21: the server's and the twin's latencies at the forest's fast passing ramp steps,
and why the twin answers by default (``python3 twin_sheds.py [FOLDER]``, default: this
run's forest-aimd; the twin replays each step's recorded speed, as ``--steps`` does)."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from ramp_replay import (  # noqa: E402
    Simulation,
    as_run,
    model_specs,
    sim_deployment,
    split_ramps,
    stored_setting,
    workload,
)

if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "forest-aimd")
    wl = workload()
    calib, profiles, dep, runs = stored_setting(folder, wl)
    app, _ = model_specs(dep, wl.app)
    qs = [0.5, 0.9, 0.95, 0.97, 0.99]
    print(f"SLO {app.slo_s * 1e3:g} ms; quantiles {qs} in ms")
    for r in split_ramps(runs)[0]:
        if r.overloaded or r.rate < 1000:
            continue
        lat = np.nan_to_num(np.asarray(r.latency_s, float), nan=np.inf)
        c = as_run(calib, r)
        q = Simulation(sim_deployment(dep, wl.app, profiles, calibration=c), r.trace,
                       seed=0).run().queries
        tl = np.nan_to_num(q["latency_s"].to_numpy(), nan=np.inf) + c.overhead_s
        reasons = q.loc[q["default"], "default_reason"].value_counts().to_dict()
        print(f"{r.rate:7,.0f} q/s (speed x{r.speed_factor:.2f}): server "
              f"{np.round(np.quantile(lat, qs) * 1e3, 1)}, predictions "
              f"{np.mean(r.predicted):.3f}; twin {np.round(np.quantile(tl, qs) * 1e3, 1)}, "
              f"predictions {1 - q['default'].mean():.3f}, defaults {reasons}")
