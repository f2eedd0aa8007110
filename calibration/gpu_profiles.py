"""Latency profiles of the torch models on a GPU (issue 13, item 6): what the simulator's
``measured-gpu-*`` profiles are, and the command that made them.

    python -m clipperlab.calibration.gpu_profiles --out DIR [--models mnist-cnn,cifar-cnn]
        [--batch-sizes 1,2,...,1024] [--budget-s 1.0] [--samples 200] [--rpc]
        [--device cuda|cpu]

For each model of ``calibration.torch_models`` (built here, random or briefly trained
weights, nothing downloaded; saved as TorchScript as the containers load it):

1. **In process** (``measured-gpu-<model>.json``): the container's own predict function
   (``real.models.load_model("torch", path, {"output": "argmax"})``: the host array to the
   device, the forward pass, argmax, the answers back on the host, which waits for the
   GPU) is timed with ``time.perf_counter`` on batches of each size drawn from a pool of
   synthetic inputs, after ``WARMUP`` untimed calls (cuDNN picks its kernels on a shape's
   first call), until ``--samples`` samples or ``--budget-s`` seconds, never fewer than
   ``MIN_SAMPLES``.  Inputs come as the container gets them: the MNIST conv net takes
   784 doubles (the paper's 6,272-byte queries; the wrapper casts them to float32 on the
   device), the others float32.  No RPC and no serialisation: like the other
   ``measured-*`` profiles, the model's own time, so a simulated deployment adds the
   network (figure 5's links) without counting it twice.
2. **Over the container RPC** (``--rpc``, ``rpc-gpu-<model>.json``): the same model behind
   ``clipperlab container``, timed by ``calibration.profiler.profile_model`` from the
   BATCH frame written to the RESULT frame read over loopback (what a frontend on the
   same host waits for), at the sizes whose batch fits the RPC's frame limit.

``--device cuda`` (the default) refuses to run without a GPU (exit 2): a CPU timing saved
under a GPU profile's name would be a lie.  ``--device cpu`` hides the GPU from the
container's wrapper (one torch thread, as the containers run on CPUs) and names the files
``measured-cpu-*``/``rpc-cpu-*``; the tests use it.  Each profile's tags record the GPU
and CPU, the library and CUDA versions, the date and the load average before and after.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MIN_SAMPLES", "WARMUP", "gpu_name", "main", "measure_in_process", "profile_rpc"]

WARMUP = 5
MIN_SAMPLES = 15
POOL = 8  # distinct input batches per size, cycled
POOL_BYTES = 1 << 30  # ... fewer where a batch is large: the pool holds at most 1 GiB
RPC_MAX_BATCH_BYTES = 200 << 20  # under the RPC's 256 MiB frame limit, with room to spare
DEFAULT_SIZES = tuple(1 << k for k in range(11))  # 1 .. 1024


def _dtype(model: str) -> str:
    from .torch_models import TORCH_MODELS

    return TORCH_MODELS[model].dtype


def _input_type(model: str) -> str:
    return {"float64": "doubles", "float32": "floats"}[_dtype(model)]


def gpu_name() -> str:
    """The CUDA device's name and CUDA version, or ``""`` without one."""
    import torch

    if not torch.cuda.is_available():
        return ""
    return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"


def _tags(model: str, device: str, source: str, load_before: str) -> dict[str, str]:
    from .profiler import hardware_tag, load_average_text, software_tag

    gpu = gpu_name() if device == "cuda" else ""
    return {
        "hardware": (f"{gpu}; host {hardware_tag()}" if gpu
                     else f"{hardware_tag()}, 1 torch thread"),
        "software": software_tag(),
        "source": source,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "model": f"{model} (clipperlab.calibration.torch_models), argmax answers",
        "inputs": f"synthetic {_dtype(model)}, shape {_shape(model)}",
        "load_average": f"{load_before} before, {load_average_text()} after",
    }


def _shape(model: str) -> tuple[int, ...]:
    from .torch_models import TORCH_MODELS

    return TORCH_MODELS[model].input_shape


def measure_in_process(model: str, path: Path, sizes: Sequence[int], *, budget_s: float,
                       max_samples: int, device: str, seed: int = 0,
                       log: Callable[[str], None] = print) -> Any:
    """Time the container's predict function on ``path`` in this process (module rules)."""
    from clipperlab.real.models import load_model
    from clipperlab.simulator import LatencyProfile

    from .profiler import load_average_text

    load_before = load_average_text()
    predict = load_model("torch", str(path), {"output": "argmax"})
    rng = np.random.default_rng(seed)
    shape, dtype = _shape(model), _dtype(model)
    samples: dict[int, list[float]] = {}
    for b in sizes:
        batch_bytes = b * int(np.prod(shape)) * np.dtype(dtype).itemsize
        pool = [rng.random((b, *shape), dtype=np.float32).astype(dtype, copy=False)
                for _ in range(max(1, min(POOL, POOL_BYTES // batch_bytes)))]
        for i in range(WARMUP):
            out = predict(pool[i % len(pool)])
        if np.asarray(out).shape[0] != b:
            raise RuntimeError(f"{model}: {b} inputs gave {np.asarray(out).shape[0]} answers")
        got: list[float] = []
        t_end = time.perf_counter() + budget_s
        while len(got) < max_samples and (len(got) < MIN_SAMPLES
                                          or time.perf_counter() < t_end):
            x = pool[len(got) % len(pool)]
            t0 = time.perf_counter()
            predict(x)
            got.append(time.perf_counter() - t0)
        samples[b] = got
        log(f"  {model} in process, batch {b:>5}: p50 {np.median(got) * 1e3:8.3f} ms, "
            f"p99 {np.quantile(got, 0.99) * 1e3:8.3f} ms ({len(got)} samples)")
    n = sum(map(len, samples.values()))
    return LatencyProfile.from_samples(
        f"measured-{'gpu' if device == 'cuda' else 'cpu'}-{model}", samples,
        kind="gpu" if device == "cuda" else "cpu",
        tags=_tags(model, device, "measured in process by python -m "
                   f"clipperlab.calibration.gpu_profiles (the container's predict, host "
                   f"array in, answers back on the host); {n} samples, back to back",
                   load_before),
        description=f"{model} on the {'GPU' if device == 'cuda' else 'CPU'}: the "
                    "container's predict timed in process (no RPC)",
    )


def profile_rpc(model: str, path: Path, sizes: Sequence[int], *, budget_s: float,
                max_samples: int, device: str,
                log: Callable[[str], None] = print) -> Any:
    """The same model behind ``clipperlab container``, over the RPC (module rules)."""
    from clipperlab.workloads import SyntheticTensors

    from .profiler import ProfileSpec, profile_model

    item = int(np.prod(_shape(model))) * np.dtype(_dtype(model)).itemsize
    fit = tuple(b for b in sizes if b * item <= RPC_MAX_BATCH_BYTES)
    if len(fit) < len(sizes):
        log(f"  {model} over the RPC: sizes above {fit[-1] if fit else 0} left out "
            f"(a batch over {RPC_MAX_BATCH_BYTES >> 20} MiB)")
    if not fit:
        raise ValueError(f"{model}: no batch size fits the RPC's frame ({item} bytes/input)")
    prof = profile_model(ProfileSpec(
        model=f"torch:{path}", name=model, input_type=_input_type(model),
        options={"output": "argmax"},
        inputs=SyntheticTensors(shape=_shape(model), dtype=_dtype(model), pool=64),
        batch_sizes=fit, repeats=max_samples, min_repeats=MIN_SAMPLES,
        max_s_per_size=budget_s, busy="warn",
        profile_name=f"rpc-{'gpu' if device == 'cuda' else 'cpu'}-{model}",
    ), log=log)
    if device == "cuda":
        prof = dataclasses.replace(
            prof, tags={**prof.tags, "hardware": f"{gpu_name()}; host {prof.tags['hardware']}"})
    return prof


def main(argv: list[str] | None = None) -> int:
    from clipperlab.calibration.errors import CalibrationError

    from .profiler import parse_batch_sizes
    from .torch_models import TORCH_MODELS, save_torch

    ap = argparse.ArgumentParser(
        prog="python -m clipperlab.calibration.gpu_profiles",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder for the profile files")
    ap.add_argument("--models", default=",".join(TORCH_MODELS),
                    help="comma-separated torch models (default %(default)s)")
    ap.add_argument("--batch-sizes", default=",".join(map(str, DEFAULT_SIZES)),
                    help="comma-separated batch sizes (default %(default)s)")
    ap.add_argument("--budget-s", type=float, default=1.0,
                    help="timing per batch size at most, in seconds (default %(default)s s)")
    ap.add_argument("--samples", type=int, default=200,
                    help="timed batches per size at most (default %(default)s)")
    ap.add_argument("--rpc", action="store_true",
                    help="also profile each model over the container RPC (rpc-*.json)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cuda refuses to run without a GPU (default %(default)s)")
    args = ap.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in TORCH_MODELS:
            ap.error(f"--models: unknown model {m!r}; known: {', '.join(TORCH_MODELS)}")
    if args.budget_s <= 0 or args.samples < MIN_SAMPLES:
        ap.error(f"--budget-s must be > 0 and --samples >= {MIN_SAMPLES}")
    try:
        sizes = parse_batch_sizes(args.batch_sizes)
    except CalibrationError as e:
        ap.error(str(e))
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: torch sees no GPU here (torch "
              f"{torch.__version__}); --device cpu times the CPU instead", file=sys.stderr)
        return 2
    if args.device == "cpu":
        # before CUDA's first use: this process's wrapper and its containers see no GPU
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    from clipperlab.simulator import save_profile

    from .profiler import summary_rows

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="clipperlab-gpu-profiles-") as d:
        for m in models:
            path = save_torch(m, d)
            print(f"{m}: {TORCH_MODELS[m].description}", flush=True)
            profs = [measure_in_process(m, path, sizes, budget_s=args.budget_s,
                                        max_samples=args.samples, device=args.device,
                                        log=lambda s: print(s, flush=True))]
            if args.rpc:
                try:
                    profs.append(profile_rpc(m, path, sizes, budget_s=args.budget_s,
                                             max_samples=args.samples, device=args.device,
                                             log=lambda s: print(s, flush=True)))
                except CalibrationError as e:
                    print(f"error: {m} over the RPC: {e}", file=sys.stderr)
                    return 1
            for prof in profs:
                out = save_profile(prof, args.out / f"{prof.name}.json")
                print("\n".join(summary_rows(prof)))
                print(f"wrote {out} ({prof.tags['hardware']})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
