"""A by-hand re-simulation of a fidelity run's copy with the stored calibration and the
host CPU model's newidle balance on (1) or off (0); ``resim-newidle.txt`` beside it.

    python3 results/validation/quiet-2026-12-05-b/resim_newidle.py COPY_OF_A_RUN 1
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from clipperlab.calibration.fidelity import workload
from clipperlab.calibration.fit import Calibration
from clipperlab.calibration.resimulate import resimulate


def main() -> None:
    flag = sys.argv[2] == "1"

    def adjust(c: Calibration) -> Calibration:
        return dataclasses.replace(c, newidle=flag) if c.host_cpus > 0 else c

    rs = resimulate(Path(sys.argv[1]), workload(), refit=False, adjust=adjust,
                    log=lambda s: print(s, flush=True))
    t = rs.table
    print(t[t["mode"] == "sim+host"][["batching", "level", "p50_ms", "p99_ms"]].to_string())


if __name__ == "__main__":
    main()
