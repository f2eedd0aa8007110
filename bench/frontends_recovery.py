"""Fig. 8-style recovery with one frontend and with two on one Redis store (README "Running on
several machines").

Two no-op models behind an ``exp3_discounted`` application: ``a`` answers 1, ``b`` answers
0.  Feedback at ``--rate`` items/s, spread round-robin over the frontends (as a load
balancer would), says 1 for ``--learn`` items (``a`` is right), then 0 (``a`` has degraded,
``b`` is right).  Reported: feedback items and seconds after the switch until every
frontend gives ``b`` a probability of at least ``--threshold``.

    python3 bench/frontends_recovery.py --rate 100 --merge-every-s 1.0
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clipperlab.real.client import AdminClient, QueryClient
from clipperlab.real.server import ServerThread

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.*: the repository's

from tests.servers import start_server  # noqa: E402
from tests.services import redis_server  # noqa: E402


def _container(url: str, name: str, output: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "clipperlab.real.container", "--model", "noop", "--name", name,
         "--options", f'{{"output": {output}}}', "--store", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def run(n_frontends: int, args: argparse.Namespace, folder: Path) -> tuple[int, float]:
    with redis_server(folder / "redis") as r:
        fronts: list[ServerThread] = [
            start_server(r.url, store_dir=str(folder / "files"), manage_containers=False,
                         selection_merge_every_s=args.merge_every_s, seed=i)
            for i in range(n_frontends)
        ]
        procs = []
        try:
            admin = AdminClient(f"127.0.0.1:{fronts[0].ports['admin']}")
            admin.add_model("a", replicas=0)
            admin.add_model("b", replicas=0)
            admin.add_app("app", slo_ms=1000, default_output=-1, policy="exp3_discounted",
                          models=["a", "b"])
            procs = [_container(r.url, "a", 1), _container(r.url, "b", 0)]
            for st in fronts:
                AdminClient(f"127.0.0.1:{st.ports['admin']}").wait_ready(app="app", timeout_s=60)
            clients = [QueryClient(f"127.0.0.1:{st.ports['query']}") for st in fronts]
            gap_s = 1.0 / args.rate
            t0 = time.monotonic()
            i = 0

            def send(label: int) -> None:
                nonlocal i
                clients[i % len(clients)].update("app", label, input=[float(i)])
                i += 1
                wait = t0 + i * gap_s - time.monotonic()
                if wait > 0:
                    time.sleep(wait)

            for _ in range(args.learn):
                send(1)
            switch_i, switch_at = i, time.monotonic()
            while True:
                send(0)
                p = [st.call(lambda s=st: s.server.engine.probabilities("app")["b"])
                     for st in fronts]
                if min(p) >= args.threshold:
                    return i - switch_i, time.monotonic() - switch_at
                if i - switch_i > args.cap:
                    return -1, time.monotonic() - switch_at
        finally:
            for p in procs:
                p.terminate()
                p.wait(10)
            for st in fronts:
                st.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()),
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--rate", type=float, default=100.0, help="feedback items/s")
    ap.add_argument("--learn", type=int, default=500, help="items before the switch")
    ap.add_argument("--threshold", type=float, default=0.9,
                    help="the probability of b that counts as recovered, on every frontend")
    ap.add_argument("--merge-every-s", type=float, default=1.0,
                    help="the frontends' selection_merge_every_s (s)")
    ap.add_argument("--cap", type=int, default=5000,
                    help="items after the switch before giving up")
    ap.add_argument("--repeats", type=int, default=1, help="runs per frontend count")
    args = ap.parse_args()
    print(f"rate {args.rate:g}/s, merge every {args.merge_every_s:g} s,"
          f" threshold {args.threshold:g}")
    print("| frontends | feedback items to recover | seconds |")
    print("|---|---|---|")
    for n in (1, 2):
        for k in range(args.repeats):
            with tempfile.TemporaryDirectory() as d:
                items, secs = run(n, args, Path(d))
            print(f"| {n} (run {k + 1}) | {items} | {secs:.2f} |", flush=True)


if __name__ == "__main__":
    main()
