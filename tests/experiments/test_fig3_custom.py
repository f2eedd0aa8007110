"""Figure 3 takes batching controllers of one's own by ``file.py:Class``."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipperlab.experiments import fig3

ROOT = Path(__file__).resolve().parents[2]
POW2 = f"{ROOT / 'examples' / 'custom_controller.py'}:PowerOfTwo"


def test_fig3_runs_a_custom_controller() -> None:
    """The example controller runs beside AIMD; its batches are powers of two."""
    cfg = fig3.Config(models=("linear-svm",), policies=("aimd", POW2), n_queries=3000, jobs=1)
    res = fig3.run(cfg)
    row = res.table[res.table["policy"] == POW2].iloc[0]
    assert row["processed_qps"] > 0
    sizes = set(res.raw["batches"].query("policy == @POW2")["size"])
    assert all(s & (s - 1) == 0 for s in sizes)
    assert any("PowerOfTwo (yours)" in c.what for c in fig3.claims(res, cfg))


def test_fig3_refuses_a_bad_name() -> None:
    with pytest.raises(ValueError, match=r"policies: batching policy 'nosuch:X': no module"):
        fig3.check_config(fig3.Config(policies=("aimd", "nosuch:X")))
