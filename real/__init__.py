"""clipperlab's real mode: the engine behind real sockets, with model processes.

``real/`` only translates between the network and the engine; every decision stays in
``engine/``.  Map (one concept per module):

- ``server``: ``Server`` wires everything on one uvloop event loop; ``ServerThread`` runs
  it in a background thread (tests, notebooks); ``clipperlab serve`` runs it.
- ``driver``: ``EngineDriver`` feeds the engine (``time.monotonic()``), arms its one timer,
  carries out ``SendBatch``/``Reply``/``FeedbackApplied``.
- ``http``: the HTTP/1.1 protocol (httptools; keep-alive, pipelining, 413, fair parsing).
- ``frontend``: Clipper's REST API and ``/metrics``; ``oip``: Open Inference Protocol v2;
  ``inputs``: checks inputs against the application's type and shape.
- ``admin``: the admin API; ``client``: ``AdminClient`` and ``QueryClient``.
- ``protocol``: the container RPC's frames; ``rpc``: the frontend's end of it;
  ``container`` and ``models``: the container's end (``python -m clipperlab.real.container``,
  or ``clipperlab container``); ``manager``: starts, watches and restarts local containers.
- ``store``: SQLite persistence; ``config``: ``deploy.toml``; ``metrics``: Prometheus.

Measuring the server and checking the simulator against it is ``clipperlab.calibration``.
"""

from __future__ import annotations

from pathlib import Path


def compiled_modules() -> list[str]:
    """The modules this install runs compiled (C extensions built by mypyc:
    ``CLIPPERLAB_COMPILE=1 pip install .``), as ``real.http``, ``engine.core``...;
    empty in a pure-Python install.  The import system takes an extension before the
    ``.py`` beside it."""
    import clipperlab.engine

    found = set()
    for pkg, folder in (("engine", Path(clipperlab.engine.__file__).parent),
                        ("real", Path(__file__).parent)):
        found |= {f"{pkg}.{p.name.split('.')[0]}" for p in folder.iterdir()
                  if p.suffix in (".so", ".pyd")}
    return sorted(found)


def build_description(names: bool = False) -> str:
    """A few words for ``--version`` (``names``: and the modules, for the server's log):
    how the real path runs here."""
    mods = compiled_modules()
    if not mods:
        return "real path interpreted"
    return (f"real path compiled with mypyc ({len(mods)} modules"
            + (f": {', '.join(mods)})" if names else ")"))
