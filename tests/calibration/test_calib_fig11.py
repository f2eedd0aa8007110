"""Figure 11 and the fidelity table in miniature: the models build and trace, fig11's
simulated mode runs end to end on a measured profile, and the fidelity goal table reads a
validation table (no timing assertions)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from clipperlab.calibration.fidelity import goal_rows, markdown
from clipperlab.calibration.torch_models import TORCH_MODELS, build_torch, save_torch
from clipperlab.experiments import fig11


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", ["mnist-cnn", "digits-cnn", "cifar-cnn"])
def test_models_trace_and_answer(name: str, tmp_path: Path) -> None:
    """Each figure-11 model saves as TorchScript and answers a batch with 10+ classes."""
    path = save_torch(name, tmp_path)
    m = torch.jit.load(str(path))
    with torch.no_grad():
        y = m(torch.zeros((3, *TORCH_MODELS[name].input_shape)))
    assert y.shape[0] == 3 and y.shape[1] >= 10


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_gpu_profiles_command_writes_both_profiles(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU-profile command, run on the CPU (--device cpu): per model one in-process
    profile and one over the container RPC, each at the sizes asked, tagged with the
    hardware and the load; the MNIST net takes the paper's 784 doubles."""
    from clipperlab.calibration import gpu_profiles
    from clipperlab.simulator import load_profile

    # --device cpu hides the GPU through the environment: restored after the test
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", ""))

    rc = gpu_profiles.main(["--out", str(tmp_path), "--models", "mnist-cnn",
                            "--batch-sizes", "2,1", "--budget-s", "0.01", "--samples", "15",
                            "--rpc", "--device", "cpu"])
    assert rc == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "measured-cpu-mnist-cnn.json", "rpc-cpu-mnist-cnn.json"]
    for f in tmp_path.iterdir():
        prof = load_profile(f)
        assert prof.kind == "cpu" and prof.batch_sizes == (1, 2)
        assert prof.quantile_s(2, 0.5) > 0
        assert "load_average" in prof.tags and prof.tags["hardware"]
    assert "float64" in load_profile(tmp_path / "measured-cpu-mnist-cnn.json").tags["inputs"]


def test_gpu_profiles_command_refuses_bad_input(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown model or too few samples is a usage error; --device cuda without a GPU
    exits 2 naming the problem rather than saving CPU times under a GPU name."""
    from clipperlab.calibration import gpu_profiles

    for argv in (["--models", "inception"], ["--samples", "3"], ["--batch-sizes", "0"]):
        with pytest.raises(SystemExit) as e:
            gpu_profiles.main(["--out", str(tmp_path), *argv])
        assert e.value.code == 2
    if not torch.cuda.is_available():
        assert gpu_profiles.main(["--out", str(tmp_path), "--models", "digits-cnn"]) == 2
        assert "sees no GPU" in capsys.readouterr().err
        assert not list(tmp_path.glob("*.json"))


def test_resnet_shape() -> None:
    """The ResNet-18-shaped net maps 224x224x3 to 1,000 classes."""
    net = build_torch("resnet18-w16")
    with torch.no_grad():
        assert net(torch.zeros((1, 3, 224, 224))).shape == (1, 1000)


def test_fig11_sim_mode_runs(tmp_path: Path) -> None:
    """fig11 in simulated mode: a profile measured over the RPC, a ramp per system, a
    table row per (model, mode, system), a plot and claims."""
    cfg = dataclasses.replace(
        fig11.default_config(quick=True), batch_sizes=(1, 4), profile_repeats=5,
        step_s=0.2, max_steps=3)
    res = fig11.run(cfg)
    t = res.table
    assert set(t["system"]) == {"clipperlab-aimd", "clipperlab-tfserving"}
    assert (t["mode"] == "sim").all() and (t["peak_qps"] > 0).all()
    assert fig11.plot(res, tmp_path)[0].exists()
    assert fig11.claims(res, cfg)


def test_fig11_rejects_bad_config() -> None:
    """An unknown model is a ValueError naming it."""
    cfg = dataclasses.replace(fig11.default_config(quick=True), models=("vgg",))
    with pytest.raises(ValueError, match="vgg"):
        fig11.check_config(cfg)


def test_fidelity_goal_rows() -> None:
    """The goal: throughput and p50 within 10%, p99 within 20% up to 60% load."""
    rows = []
    for level, sim_p99 in ((0.3, 1.3), (0.9, 5.0)):
        for mode, f in (("real", 1.0), ("sim", 0.5), ("sim+frontend", 1.05)):
            rows.append({"model": "m", "batching": "aimd", "level": level, "mode": mode,
                         "throughput_qps": 100 * f, "p50_ms": 1.0 * f,
                         "p99_ms": sim_p99 * f if mode != "real" else 1.0,
                         "load_avg": 1.0})
    goals = goal_rows(pd.DataFrame(rows))
    cal = goals[goals["mode"] == "sim+frontend"].set_index("level")
    assert not cal.loc[0.3, "goal_met"]  # p99 +36.5% at 30% load
    assert np.isclose(cal.loc[0.3, "err_p99"], 1.3 * 1.05 - 1)
    assert cal.loc[0.9, "goal_met"]  # p99 is not judged above 60% load
    assert "| m | aimd | 30% |" in markdown(goals)


def test_fidelity_noise_floor_and_report_only(tmp_path: Path) -> None:
    """A row misses the goal but is "within noise" when the real server's second run was
    further from the first; ``--report-only`` rebuilds the report from the CSV (and says
    so in one line when there is none)."""
    from clipperlab.calibration.fidelity import main as fidelity_main

    rows = []
    for mode, thr, p50, p99 in (("real", 100, 1.0, 1.0), ("real again", 100, 1.0, 1.5),
                                ("sim+frontend", 100, 1.05, 1.365)):
        rows.append({"model": "m", "batching": "aimd", "level": 0.3, "mode": mode,
                     "throughput_qps": thr, "p50_ms": p50, "p99_ms": p99, "load_avg": 1.0})
    table = pd.DataFrame(rows)
    goals = goal_rows(table).set_index("mode")
    assert not goals.loc["sim+frontend", "goal_met"]
    assert goals.loc["sim+frontend", "within_noise"]  # +36.5% p99 < the floor's +50%
    assert goals.loc["real again", "within_noise"]
    table.to_csv(tmp_path / "fidelity.csv", index=False)
    assert fidelity_main(["--out", str(tmp_path), "--report-only"]) == 0
    assert "| m | aimd | 30% |" in (tmp_path / "fidelity.md").read_text()
    assert (tmp_path / "fidelity.png").exists()
    assert fidelity_main(["--out", str(tmp_path / "none"), "--report-only"]) == 2


def test_fig11_sim_with_the_frontend_is_the_calibrated_twin() -> None:
    """sim+frontend runs the twin told the real run's measured CPU a query: the frontend's
    event loop (half in, half out), the load generator's, and the machine's cores shared
    by them and the container; a frontend dear enough bounds the peak near 1 / its cost,
    which the plain simulation (no frontend) goes well past."""
    from clipperlab.simulator import LatencyProfile

    prof = LatencyProfile.from_line("fast", 5e-6, 100e-6, batch_sizes=(1, 2, 4, 8, 16, 32, 64))
    cfg = dataclasses.replace(fig11.default_config(quick=True), step_s=0.5, max_steps=8,
                              start_qps=500.0)
    dep = fig11._twin(cfg, "digits-cnn", 20.0, "clipperlab-aimd", prof, 400e-6, 30e-6)
    assert dep.frontend_cpu is not None and dep.host_cpu is not None
    assert dep.frontend_cpu.query_s + dep.frontend_cpu.reply_s == pytest.approx(400e-6)
    assert dep.host_cpu.cpus == (os.cpu_count() or 1)
    assert dep.host_cpu.loadgen_cpu_per_query_s == pytest.approx(30e-6)
    twin, _ = fig11._sim_peak(cfg, "digits-cnn", 20.0, "clipperlab-aimd", prof, 20_000.0,
                              (400e-6, 30e-6))
    plain, _ = fig11._sim_peak(cfg, "digits-cnn", 20.0, "clipperlab-aimd", prof, 20_000.0)
    assert 0 < twin["good_qps"] <= 1 / 400e-6 * 1.05  # the frontend's loop is the bound
    assert plain["good_qps"] > 1.5 * twin["good_qps"]
