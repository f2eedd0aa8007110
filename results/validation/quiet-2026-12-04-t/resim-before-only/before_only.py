"""Copy a fidelity run and cut each setting's runs.npz to the runs before the levels.

    python3 before_only.py RUN COPY   # each RUN/<setting>/after.txt: runs kept after them
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from clipperlab.calibration.fidelity import workload
from clipperlab.calibration.resimulate import load_runs, save_runs


def main(src: Path, dst: Path) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    for sub in sorted(p for p in dst.iterdir() if p.is_dir()):
        runs, low, seen, q = load_runs(sub / "runs.npz", workload())
        n = len(runs) - int((sub / "after.txt").read_text())
        print(sub.name, "runs", len(runs), "kept before the levels", n)
        save_runs(sub / "runs.npz", runs[:n], low, seen, q)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
