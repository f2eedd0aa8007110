"""A Ray Serve deployment of a TorchScript model with ``@serve.batch``, for figure 11.

    python -m clipperlab.calibration.rayserve --model resnet.pt --port 8100 --max-batch-size 32 \\
        --batch-wait-s 0.005 --ready-file /tmp/ray.ready

It answers the same request the load generator sends for ``--api oip``
(``POST /v2/models/{name}/infer`` with one binary tensor row), so both servers get
byte-identical traffic.  One replica, one torch thread (as a clipperlab container), a
local Ray with ``--num-cpus`` CPUs.  Writes the port to ``--ready-file`` when it answers,
and serves until SIGTERM.  Needs ``pip install 'ray[serve]'`` (an optional extra).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["available", "main"]


def available() -> tuple[bool, str]:
    """Whether Ray Serve can be imported here, and why not."""
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means "skip"
        return False, f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    return True, ""


def _app(model_path: str, max_batch_size: int, batch_wait_s: float) -> Any:
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import Response

    @serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 1},
                      max_ongoing_requests=10_000)
    class TorchModel:
        def __init__(self) -> None:
            import torch

            torch.set_num_threads(1)
            self.torch = torch
            self.model = torch.jit.load(model_path)  # type: ignore[no-untyped-call]
            self.model.eval()

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_s)
        async def predict(self, rows: list[Any]) -> list[int]:
            import numpy as np

            x = self.torch.from_numpy(np.stack(rows))
            with self.torch.no_grad():
                y = self.model(x)
            return [int(v) for v in y.argmax(dim=-1).tolist()]

        async def __call__(self, request: Request) -> Response:
            import numpy as np

            body = await request.body()
            n = int(request.headers.get("inference-header-content-length", len(body)))
            head = json.loads(body[:n])
            t = head["inputs"][0]
            dt = {"FP32": np.float32, "FP64": np.float64}[t["datatype"]]
            x = np.frombuffer(body[n:], dtype=dt).reshape(t["shape"])[0].astype(np.float32)
            out = await self.predict(x)
            doc = {"outputs": [{"name": "output", "datatype": "INT64", "shape": [1],
                                "data": [out]},
                               {"name": "default", "datatype": "BOOL", "shape": [1],
                                "data": [False]}]}
            return Response(json.dumps(doc), media_type="application/json")

    return TorchModel.bind()  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="TorchScript file")
    ap.add_argument("--name", default="m", help="model name in the URL")
    ap.add_argument("--port", type=int, default=8100)
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--batch-wait-s", type=float, default=0.005)
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--ready-file", default="")
    a = ap.parse_args(argv)
    import ray
    from ray import serve

    ray.init(num_cpus=a.num_cpus, include_dashboard=False, logging_level=40,
             log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": a.port})
    serve.run(_app(a.model, a.max_batch_size, a.batch_wait_s), name="fig11",
              route_prefix=f"/v2/models/{a.name}/infer")
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    # health: the route answers once the proxy and the replica are up
    url = f"http://127.0.0.1:{a.port}/-/healthz"
    for _ in range(600):
        try:
            with urllib.request.urlopen(url, timeout=2):
                break
        except OSError:
            time.sleep(0.1)
    if a.ready_file:
        Path(a.ready_file).write_text(str(a.port))
    while not stop[0]:
        time.sleep(0.2)
    ray.shutdown()  # stops the local cluster it started (serve.shutdown() can hang)
    return 0


if __name__ == "__main__":
    sys.exit(main())
