"""How well does the real server's measured capacity repeat, run to run and ramp to ramp?

    python3 results/validation/diagnostics-capacity-repeatability/repeatability.py [REF]

Every stored fidelity run (``results/validation/quiet-*``) whose server-side code is
the same as commit ``REF``'s (default: run 42's, 360490c): ``git diff`` over the paths
that decide what the real server does and what a ramp measures (``real/``, ``engine/``,
``workloads/``, the load generator, the server process, the model containers' models,
the real ramp's procedure: ``calibration/capacity.py``'s ``ramp`` and ``ramp_start``)
shows nothing (a default such as the ramp's resolution may differ).  For
each model and batching setting: each such run's measured capacity (the median of its
four ramps), its 90% interval, and its ramps; then how far apart the runs and the ramps
are.  Writes ``capacity_runs.csv`` (one row per run and setting) and
``capacity_repeatability.csv`` (one row per setting) beside this file and prints both.
Reads only committed files; takes a second.
"""

from __future__ import annotations

import ast
import itertools
import subprocess
import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
RUNS = HERE.parent
# what the real server and the ramp's measurement are made of
SERVER_PATHS = ["real", "engine", "workloads", "calibration/loadgen.py",
                "calibration/server.py", "calibration/runs.py", "calibration/torch_models.py"]
# the real ramp's procedure: these functions of it must be the same (a default such as
# its resolution, x1.1 until run 42 and x1.05 from it, may differ)
RAMP_PATH = "calibration/capacity.py"
RAMP_FUNCTIONS = ("ramp", "ramp_start")
REF = "360490c2c1138ca0d505c2036171571a7b2c8fda"  # run 42 (quiet-2026-12-06-b)


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)


def _commit(run: Path) -> str | None:
    f = run / "machine.txt"
    if not f.exists():
        return None
    for line in f.read_text().splitlines():
        if line.startswith("commit "):
            return line.split()[1]
    return None


def _functions(commit: str, path: str, names: tuple[str, ...]) -> list[str]:
    """The source of functions ``names`` in ``path`` at ``commit`` (docstrings dropped)."""
    tree = ast.parse(_git("show", f"{commit}:{path}").stdout)
    out = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in names:
            if ast.get_docstring(node) is not None:
                node.body = node.body[1:]
            out.append(ast.unparse(node))
    return out


def same_server(commit: str, ref: str, ref_ramp: list[str]) -> bool:
    """``commit``'s server-side code is ``ref``'s, and so is the real ramp's procedure
    (``capacity.ramp`` and ``ramp_start``, ``ref_ramp`` at ``ref``; their default
    resolution aside)."""
    if _git("diff", "--quiet", commit, ref, "--", *SERVER_PATHS).returncode != 0:
        return False
    return _functions(commit, RAMP_PATH, RAMP_FUNCTIONS) == ref_ramp


def ramp_capacities(run: Path) -> dict[tuple[str, str], list[float]]:
    """Each setting's measured ramp capacities, from the run's ``fidelity.csv``
    (``ramp_capacities_qps``: the ramps' capacities joined by ";")."""
    table = pd.read_csv(run / "fidelity.csv")
    first = table.groupby(["model", "batching"], sort=False)["ramp_capacities_qps"].first()
    return {k: [float(x) for x in str(v).split(";")] for k, v in first.items()}


def main(argv: list[str]) -> int:
    ref = argv[0] if argv else REF
    rows = []
    ref_ramp = _functions(ref, RAMP_PATH, RAMP_FUNCTIONS)
    for run in sorted(RUNS.glob("quiet-*")):
        commit = _commit(run)
        cap = run / "fidelity_capacity.csv"
        if commit is None or not cap.exists() or not same_server(commit, ref, ref_ramp):
            continue
        each = ramp_capacities(run)
        for _, r in pd.read_csv(cap).iterrows():
            ramps = each[(r["model"], r["batching"])]
            c = r["capacity_qps"]
            rows.append({"setting": f"{r['model']}-{r['batching']}", "run": run.name,
                         "commit": commit[:7], "capacity_qps": r["capacity_qps"],
                         "lo_qps": r["capacity_qps_lo"], "hi_qps": r["capacity_qps_hi"],
                         "ramps_qps": " ".join(f"{x:.0f}" for x in ramps),
                         "ramps_max_over_min": max(ramps) / min(ramps),
                         "interval_within_10pct": (r["capacity_qps_lo"] >= 0.9 * c
                                                   and r["capacity_qps_hi"] <= 1.1 * c),
                         "predicted_qps": r["sim_capacity_qps"],
                         "prediction_err": r["err_capacity"]})
    if not rows:
        print("no stored run has the reference's server code", file=sys.stderr)
        return 1
    runs = pd.DataFrame(rows)
    summary = []
    for setting, g in runs.groupby("setting", sort=False):
        caps = g["capacity_qps"].tolist()
        pairs = list(itertools.combinations(caps, 2))
        summary.append({
            "setting": setting, "runs": len(g),
            "capacities_qps": " ".join(f"{c:.0f}" for c in caps),
            "runs_max_over_min": max(caps) / min(caps),
            "run_pairs_within_10pct": f"{sum(max(a, b) / min(a, b) <= 1.1 for a, b in pairs)}"
                                      f"/{len(pairs)}",
            "ramps_max_over_min_median": g["ramps_max_over_min"].median(),
            "intervals_within_10pct": f"{int(g['interval_within_10pct'].sum())}/{len(g)}",
            "predictions_within_10pct": f"{int((g['prediction_err'].abs() <= 0.1).sum())}"
                                        f"/{len(g)}"})
    summ = pd.DataFrame(summary)
    runs.to_csv(HERE / "capacity_runs.csv", index=False, float_format="%.4f")
    summ.to_csv(HERE / "capacity_repeatability.csv", index=False, float_format="%.4f")
    with pd.option_context("display.width", 200, "display.max_columns", 20,
                           "display.max_colwidth", 60):
        print(runs.drop(columns=["lo_qps", "hi_qps"]).to_string(index=False))
        print()
        print(summ.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
