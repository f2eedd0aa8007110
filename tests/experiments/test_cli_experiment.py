"""``clipperlab experiment`` keeps results safe and says what it does: quick runs go to their
own marked folder, config keys are listed with types and defaults, usage errors come from
the subcommand's parser, and committed runs re-plot without re-running."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from clipperlab.cli import main
from clipperlab.experiments.framework import EXPERIMENTS, load_experiment
from clipperlab.report import progress
from clipperlab.simulator.parallel import pmap

REPO = Path(__file__).resolve().parents[2]
FIG2 = ["--set", "profiles=prototype-noop+measured-noop", "--no-progress"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_quick_run_leaves_the_full_run_alone_and_marks_every_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A full run, then --quick: the full folder is byte for byte the same, the quick one
    is results/quick/NAME and every file in it says quick."""
    monkeypatch.chdir(tmp_path)
    assert main(["experiment", "fig2", *FIG2]) == 0
    full = tmp_path / "results" / "fig2"
    before = _snapshot(full)
    assert json.loads((full / "config.json").read_text())["run"] == "full"
    assert main(["experiment", "fig2", "--quick", *FIG2]) == 0
    assert _snapshot(full) == before
    quick = tmp_path / "results" / "quick" / "fig2"
    assert "results/quick/fig2/" in capsys.readouterr().out
    assert set(_snapshot(quick)) == {"fig2.csv", "fig2.png", "summary.md", "config.json"}
    table = pd.read_csv(quick / "fig2.csv")
    assert list(table.columns)[0] == "run" and set(table["run"]) == {"quick"}
    summary = (quick / "summary.md").read_text()
    assert summary.startswith("# fig2: ")
    assert "QUICK RUN" in summary.splitlines()[2]
    assert json.loads((quick / "config.json").read_text())["run"] == "quick"
    with Image.open(quick / "fig2.png") as im:
        assert "QUICK RUN" in im.info.get("Description", "")
    with Image.open(full / "fig2.png") as im:
        assert "QUICK RUN" not in im.info.get("Description", "")


def test_quick_run_refuses_a_folder_with_a_full_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--quick --out at a full run's folder: one line, exit 2, nothing written."""
    monkeypatch.chdir(tmp_path)
    assert main(["experiment", "fig2", *FIG2]) == 0
    before = _snapshot(tmp_path / "results" / "fig2")
    capsys.readouterr()
    assert main(["experiment", "fig2", "--quick", "--out", "results/fig2", *FIG2]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a full run of fig2" in err[0]
    assert _snapshot(tmp_path / "results" / "fig2") == before


def test_every_config_key_is_documented() -> None:
    """Each experiment's Config fields carry a doc (--list and --help show it)."""
    for name in EXPERIMENTS:
        cfg = load_experiment(name).Config
        missing = [f.name for f in dataclasses.fields(cfg) if not f.metadata.get("doc")]
        assert not missing, f"{name}: undocumented config keys {missing}"


def test_list_shows_every_key_with_type_default_and_meaning(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["experiment", "--list"]) == 0
    out = capsys.readouterr().out
    assert "(undocumented)" not in out
    assert "    wait_ms (float+...; default 0+1+2+3+4+5+6+7+8+9+10, --quick 0+2+4+6+8+10)" in out
    assert "        delayed-batching wait timeouts to run, joined with '+' (ms)" in out
    for name in EXPERIMENTS:
        for f in dataclasses.fields(load_experiment(name).Config):
            assert f"    {f.name} (" in out


def test_help_after_a_name_shows_that_experiments_keys(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["experiment", "fig4", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: clipperlab experiment")
    assert "fig4: Delayed batching" in out
    assert "    rate_qps (float; default 20000)\n        offered load" in out


def test_unknown_flag_is_the_subcommands_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """experiment fig4 --bogus: exit 2, the experiment command's usage and one error."""
    assert main(["experiment", "fig4", "--bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: clipperlab experiment ")
    assert err.strip().splitlines()[-1] == (
        "clipperlab experiment: error: unrecognized arguments: --bogus"
    )


def test_an_unknown_log_level_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """serve --log-level bogus: exit 2 naming the levels (it used to fall back to INFO)."""
    assert main(["serve", "--log-level", "bogus"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("clipperlab serve: error: argument --log-level: invalid level")
    assert "DEBUG, INFO, WARNING, ERROR, CRITICAL" in last


@pytest.mark.parametrize("name", ["fig2", "fig8", "fig11"])
def test_replot_draws_from_the_committed_data(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--replot redraws a committed run's figures from its CSV and config.json alone (no
    raw tables, no simulation) and leaves the data as it was."""
    src = REPO / "results" / name
    if not (src / f"{name}.csv").exists():
        pytest.skip(f"no committed results/{name}")
    out = tmp_path / name
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("raw"))
    data = {p: (out / p).read_bytes() for p in (f"{name}.csv", "config.json")}
    pngs = sorted(out.glob("*.png"))
    for p in pngs:
        p.unlink()
    assert main(["experiment", name, "--replot", "--out", str(out)]) == 0
    assert sorted(out.glob("*.png")) == pngs and pngs
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {p: (out / p).read_bytes() for p in data} == data
    assert "replotted" in capsys.readouterr().out


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _square(x: int) -> int:
    return x * x


def test_progress_bars_only_when_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """pmap draws a bar on a terminal's stderr inside progress.bars(), nothing outside."""
    term = _Terminal()
    monkeypatch.setattr("sys.stderr", term)
    assert pmap(_square, [1, 2, 3]) == [1, 4, 9]
    assert term.getvalue() == ""
    with progress.bars():
        assert pmap(_square, [1, 2, 3], desc="demo") == [1, 4, 9]
    assert "demo" in term.getvalue() and "3/3" in term.getvalue()
