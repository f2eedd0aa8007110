"""Real-mode runs of the selection experiments: a real server on loopback, zoo models as
real containers, queries over ``POST /{app}/predict`` and labels over ``POST /{app}/update``.

Rules:
- The server runs in this process (``clipperlab.real.server.ServerThread``) on 127.0.0.1 with
  ephemeral ports and a temporary store, removed afterwards; model containers are real
  processes started by its container manager.  Heartbeats every second: a loaded 2-core
  machine misses tighter ones and the server drops busy containers.
- Zoo models deploy as what they are: scikit-learn estimators with ``deploy_sklearn``, the
  torch CNN with ``deploy_torch`` (argmax output), a ``clipperlab.workloads.zoo.Switchable`` (a
  model
  that can be made to fail from outside, through a flag file) with ``deploy_python``.
- ``stream`` sends one application's queries in order from one client connection; with
  ``feedback=True`` each answer's label follows at once with the answer's ``query_id``
  (the engine joins it with the predictions it remembers).  Several applications run
  side by side in threads (``run_streams``), each with its own connection.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipperlab.real.client import AdminClient, QueryClient
from clipperlab.real.config import load_config
from clipperlab.real.server import ServerThread
from clipperlab.workloads.zoo import Switchable, TorchPredictor

__all__ = ["Rig", "deploy", "real_server", "run_streams", "stream"]


@dataclass
class Rig:
    """A running server and clients for it."""

    server: ServerThread
    admin: AdminClient
    query_address: str
    tmp: Path

    def client(self) -> QueryClient:
        return QueryClient(self.query_address, timeout_s=60.0)


@contextlib.contextmanager
def real_server(*, cache: bool = True, remember_queries: int = 50_000,
                seed: int = 0) -> Iterator[Rig]:
    """A server on loopback with ephemeral ports; stopped and cleaned up on exit.
    ``cache=False`` turns the frontend's cache keys off *and* gives the engine's cache no
    room (the frontend still keys ``/update`` inputs, which would otherwise be cached)."""
    tmp = Path(tempfile.mkdtemp(prefix="clipperlab-sel-"))
    cfg = load_config(None, query_port=0, admin_port=0, rpc_port=0, store=str(tmp / "store"),
                      heartbeat_interval_s=1.0, cache=cache, remember_queries=remember_queries,
                      seed=seed, save_state_every_s=3600.0,
                      cache_capacity_bytes=(32 << 20) if cache else 0)
    st = ServerThread(cfg).start()
    try:
        yield Rig(st, AdminClient(f"127.0.0.1:{st.ports['admin']}", timeout_s=60.0),
                  f"127.0.0.1:{st.ports['query']}", tmp)
    finally:
        st.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def deploy(admin: AdminClient, name: str, model: Any, **kw: Any) -> None:
    """Deploy one zoo model as a real container (no application link)."""
    if isinstance(model, Switchable):
        admin.deploy_python(name, model, **kw)
    elif isinstance(model, TorchPredictor):
        admin.deploy_torch(name, model.module, output="argmax", **kw)
    else:
        admin.deploy_sklearn(name, model, **kw)


def stream(
    client: QueryClient,
    app: str,
    xs: np.ndarray,
    labels: np.ndarray,
    *,
    feedback: bool = True,
    users: Sequence[Any] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Send ``xs`` to ``app`` in order; return one record per query (reply fields, label,
    latency, and the update's answer)."""
    out: list[dict[str, Any]] = []
    for i in range(len(xs)):
        if on_step is not None:
            on_step(i)
        uid = users[i] if users is not None else None
        t0 = time.perf_counter()
        r = client.predict(app, xs[i], uid=uid)
        lat = time.perf_counter() - t0
        rec = {"i": i, "output": r.get("output"), "default": bool(r.get("default")),
               "confidence": float(r.get("confidence", np.nan) or 0.0),
               "models": ",".join(r.get("models", [])), "label": int(labels[i]),
               "latency_s": lat, "query_id": r.get("query_id")}
        if feedback:
            u = client.update(app, int(labels[i]), query_id=r["query_id"], uid=uid)
            rec["losses"] = u.get("losses", {})
        out.append(rec)
    return out


def run_streams(
    rig: Rig,
    apps: Sequence[str],
    xs: np.ndarray,
    labels: np.ndarray,
    *,
    feedback: bool = True,
    users: Sequence[Any] | Mapping[str, Sequence[Any] | None] | None = None,
    barrier_at: Callable[[int], None] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """``stream`` for every app at once, one thread and connection each, kept in step:
    all apps send query ``i`` before any sends ``i + 1`` (so a failure window given in
    query numbers is the same for all); ``barrier_at(i)`` runs once before step ``i``.
    ``users`` is one user id per query, or a mapping app -> such a list (None: no uid)."""
    n = len(xs)
    results: dict[str, list[dict[str, Any]]] = {}
    errors: list[BaseException] = []
    bar = threading.Barrier(len(apps), action=None)
    step = [0]
    lock = threading.Lock()

    def sync(i: int) -> None:
        k = bar.wait()
        if k == 0 and barrier_at is not None:
            with lock:
                barrier_at(i)
                step[0] = i
        bar.wait()

    def work(app: str) -> None:
        c = rig.client()
        try:
            u = users.get(app) if isinstance(users, Mapping) else users
            results[app] = stream(c, app, xs, labels, feedback=feedback, users=u,
                                  on_step=sync)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
            bar.abort()
        finally:
            c.close()

    threads = [threading.Thread(target=work, args=(a,), daemon=True) for a in apps]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"real-mode stream failed: {errors[0]!r}") from errors[0]
    assert all(len(results[a]) == n for a in apps)
    return results
