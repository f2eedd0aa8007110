"""``clipperlab experiment --mode``: a shorthand for ``--set mode=`` where there is one."""

from __future__ import annotations

import pytest

from clipperlab.cli import main


def test_mode_on_a_simulator_only_experiment_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["experiment", "fig4", "--mode", "real"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "clipperlab experiment: error: fig4 runs in the simulator only; it has no --mode"
    ]


def test_mode_needs_one_experiment(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["experiment", "all", "--mode", "sim"]) == 2
    assert "--mode applies to one experiment" in capsys.readouterr().err
