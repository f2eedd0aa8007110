"""``scripts/chaos.py`` end to end: a few seconds of open-loop load while one container is
SIGKILLed; every query the server accepted is answered (a prediction or an explained
default), none is lost."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_chaos_kill_loses_no_accepted_query(tmp_path: Path) -> None:
    """A SIGKILLed replica: its batch goes to the other replica or to the default."""
    out = tmp_path / "chaos"
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "chaos.py"), "--duration-s", "4",
         "--rate", "100", "--faults", "kill", "--seed", "1", "--out", str(out),
         "--store", str(tmp_path / "store")],
        capture_output=True, text=True, timeout=240,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    with open(out / "summary.csv") as f:
        (summary,) = list(csv.DictReader(f))
    with open(out / "faults.csv") as f:
        faults = list(csv.DictReader(f))
    assert [x["fault"] for x in faults] == ["kill"]
    assert faults[0]["detail"].startswith("SIGKILL pid"), faults
    assert int(summary["sent"]) > 100
    assert int(summary["lost"]) == 0, summary
    assert int(summary["prediction"]) > 0, summary
