"""Big frames over the container RPC: a batch of images, with the C library's defaults
beside ``--malloc-keep-mb`` (the container's) and ``malloc_keep_mb`` (the frontend's;
``real/gctune.tune_malloc``).

    python3 bench/rpc_frames.py [--sizes 8,16,32,64,128] [--shape 3x224x224]
                                [--rounds 3] [--repeats 15] [--keep-mb 256]

A no-op model behind ``clipperlab container`` on loopback, timed by
``calibration.profiler.profile_model`` from the BATCH frame written to the RESULT frame
read (what a frontend on the same host waits for), at each batch size of float32 images
of ``--shape``.  Per round, the container runs once with ``--malloc-keep-mb 0`` (glibc as
it is: the baseline) and once with ``--keep-mb``, alternated; the table has the median
over the rounds of each one's p50 and p99 per size, and their ratio.  Then the
frontend's side: a batch of the same images made into one BATCH frame as the frontend
makes it (``np.array`` of the inputs, ``encode_batch``), in a process of its own with each
setting, alternated.

What it showed (2026-12-04, ``results/bench/rpc_frames.md``): on this 2-core VM (load
average 0.7-1.0, 5 rounds) p50 of a 64-image batch (38.5 MB) 74.4 ms with glibc's
defaults against 14.9 ms kept, 128 images 140.9 against 32.6 ms; on the H200 machine's
16-core host 82.7 against 25.2 and 158.2 against 48.6 ms; below 32 images 1.0-1.7x.
The frontend made a 64-image frame in 45.7 ms with glibc's defaults and 9.2 ms kept
(5.0x; 8 images 6.5 against 0.5 ms).
glibc maps a buffer over its dynamic threshold (at most 32 MiB) afresh and unmaps it when
freed, so each receive of a big frame paid a page fault and a zeroed page per 4 KiB, in
every buffer the frame went through.  On the H200 machine the ResNet at 64 images had
taken 105 ms over the RPC against 7.5 ms on the GPU (``results/gpu-profiles/``).  A
receive straight into a buffer of the frame's size (no growing buffer) was tried beside
it and measured no different once buffers are kept, so it was not kept.
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from clipperlab.real.gctune import MALLOC_KEEP_MB, MALLOC_KEEP_MB_MAX  # noqa: E402

# The frontend's side, in a process of its own (the C library's settings are per process):
# a batch of images made into one BATCH frame as ``ContainerConnection.send_batch`` makes it
# (``np.array`` of the inputs, ``encode_batch``), median of 15 per size.
_ENCODE = """
import sys, time, numpy as np
from clipperlab.real import protocol as p
from clipperlab.real.gctune import tune_malloc
keep, shape, sizes = int(sys.argv[1]), tuple(map(int, sys.argv[2].split("x"))), sys.argv[3]
tune_malloc(keep)
pool = [np.random.default_rng(i).random(shape, dtype=np.float32) for i in range(64)]
for n in map(int, sizes.split(",")):
    ts = []
    for k in range(15):
        inputs = tuple(pool[(k * n + i) % 64] for i in range(n))
        t = time.perf_counter()
        frame = p.encode_batch(p.BATCH, k, np.array(inputs))
        ts.append(time.perf_counter() - t)
        del frame
    print(n, sorted(ts)[7] * 1e3)
"""


def _encode_ms(keep_mb: int, shape: str, sizes: list[int]) -> dict[int, float]:
    out = subprocess.run([sys.executable, "-c", _ENCODE, str(keep_mb), shape,
                          ",".join(map(str, sizes))], capture_output=True, text=True,
                         check=True, timeout=600).stdout.split("\n")
    return {int(b): float(ms) for b, ms in (line.split() for line in out if line.strip())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="8,16,32,64,128", help="batch sizes (default %(default)s)")
    ap.add_argument("--shape", default="3x224x224",
                    help="one image's shape, float32 (default %(default)s: 602 KB)")
    ap.add_argument("--rounds", type=int, default=3, help="alternated rounds (default 3)")
    ap.add_argument("--repeats", type=int, default=15,
                    help="timed batches per size and run (default 15)")
    ap.add_argument("--keep-mb", type=int, default=MALLOC_KEEP_MB,
                    help="the container's --malloc-keep-mb against 0 (default %(default)s, MiB)")
    args = ap.parse_args(argv)
    from clipperlab.calibration.profiler import ProfileSpec, parse_batch_sizes, profile_model
    from clipperlab.workloads import SyntheticTensors

    try:
        sizes = parse_batch_sizes(args.sizes)
        shape = tuple(int(x) for x in args.shape.split("x"))
    except ValueError as e:
        print(f"rpc_frames: {e}", file=sys.stderr)
        return 2
    if args.rounds < 1 or args.repeats < 1 or not 1 <= args.keep_mb <= MALLOC_KEEP_MB_MAX:
        print(f"rpc_frames: --rounds and --repeats must be >= 1, --keep-mb in"
              f" [1, {MALLOC_KEEP_MB_MAX}]", file=sys.stderr)
        return 2
    item_mb = 4 * math.prod(shape) / 1e6
    settings = {"glibc": 0, "kept": args.keep_mb}
    got: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for r in range(args.rounds):
        for label, keep in settings.items():
            spec = ProfileSpec(
                model="noop", input_type="floats", batch_sizes=tuple(sizes), warmup=3,
                repeats=args.repeats, min_repeats=min(5, args.repeats), max_s_per_size=10.0,
                busy="off", inputs=SyntheticTensors(shape=shape, dtype="float32", pool=256),
                container_args=("--malloc-keep-mb", str(keep)),
            )
            prof = profile_model(spec)
            for b in sizes:
                got.setdefault((label, b), []).append(
                    (prof.quantile_s(b, 0.5) * 1e3, prof.quantile_s(b, 0.99) * 1e3))
            print(f"round {r + 1}/{args.rounds}: {label} done", file=sys.stderr, flush=True)

    def med(label: str, b: int, k: int) -> float:
        return statistics.median(x[k] for x in got[(label, b)])

    print(f"no-op container, float32 images {args.shape}, median of {args.rounds} rounds;"
          f" baseline: --malloc-keep-mb 0 (glibc's defaults)")
    print(f"{'batch':>5} {'MB':>7} {'glibc p50':>10} {'p99':>8} {'kept p50':>9} {'p99':>8}"
          f" {'speedup':>8}")
    for b in sizes:
        g50, k50 = med("glibc", b, 0), med("kept", b, 0)
        print(f"{b:>5} {b * item_mb:>7.1f} {g50:>9.1f}ms {med('glibc', b, 1):>7.1f}ms"
              f" {k50:>8.1f}ms {med('kept', b, 1):>7.1f}ms {g50 / k50:>7.2f}x")
    enc: dict[str, list[dict[int, float]]] = {"glibc": [], "kept": []}
    for _ in range(args.rounds):
        for label, keep in settings.items():
            enc[label].append(_encode_ms(keep, args.shape, sizes))
    print(f"\nthe frontend making the BATCH frame (np.array of the inputs, encode_batch),"
          f" median of {args.rounds} rounds of 15")
    print(f"{'batch':>5} {'MB':>7} {'glibc':>9} {'kept':>9} {'speedup':>8}")
    for b in sizes:
        g = statistics.median(r[b] for r in enc["glibc"])
        k = statistics.median(r[b] for r in enc["kept"])
        print(f"{b:>5} {b * item_mb:>7.1f} {g:>7.1f}ms {k:>7.1f}ms {g / k:>7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
