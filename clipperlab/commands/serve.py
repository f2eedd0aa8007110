"""``clipperlab serve [--config deploy.toml]``: run the serving system on uvloop.

Prints the bound ports (``--query-port 0`` etc. pick free ones) as one JSON line, and
writes them to ``--ports-file`` when given.  Ctrl-C or SIGTERM: stop accepting, answer the
queries in flight, save selection state, stop the containers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal

from clipperlab.engine import EngineError
from clipperlab.errors import CLIError
from clipperlab.real.config import ConfigError, ServerConfig, load_config

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="deploy.toml (optional; defaults are embedded)")
    parser.add_argument("--host", help="query frontend host (default 127.0.0.1)")
    parser.add_argument("--query-port", type=int, help="query port (default 1337; 0 = any)")
    parser.add_argument("--admin-port", type=int, help="admin port (default 1338; 0 = any)")
    parser.add_argument("--rpc-port", type=int, help="container RPC port (default 7000; 0 = any)")
    parser.add_argument(
        "--store",
        help="store folder (default ./clipperlab-store), or redis://HOST:PORT/DB: a store"
        " several frontends share",
    )
    parser.add_argument(
        "--store-dir",
        help="with a Redis store: the folder of model files and logs (a shared folder"
        " when containers run on other hosts; default ./clipperlab-store)",
    )
    parser.add_argument(
        "--rpc-advertise",
        help="HOST:PORT containers on other hosts dial for this frontend (with a Redis"
        " store; default the RPC host and port)",
    )
    parser.add_argument(
        "--rpc-secret-file",
        help="file holding the containers' shared secret (default: server.rpc_secret_file,"
        " else $CLIPPERLAB_RPC_SECRET; none: loopback containers only)",
    )
    parser.add_argument("--rpc-tls-cert", help="TLS certificate file for the RPC port (PEM)")
    parser.add_argument("--rpc-tls-key", help="TLS private key file for the RPC port (PEM)")
    parser.add_argument("--ports-file", help="write the bound ports here as JSON")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")




async def _serve(cfg: ServerConfig, ports_file: str | None) -> None:
    from clipperlab.real.server import Server, tune_gc, tune_malloc

    server = Server(cfg)
    ports = await server.start()
    if cfg.tune_gc:
        tune_gc()  # the process is ours: keep full collections off the query path
    tune_malloc(cfg.malloc_keep_mb)  # and page faults off big batches' buffers
    line = json.dumps({"ports": ports, "store": server.store.location})
    print(line, flush=True)
    if ports_file:
        with open(ports_file, "w") as f:
            f.write(line)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logging.getLogger("clipperlab.server").info("shutting down")
    await server.stop()


def run(args: argparse.Namespace) -> int:
    import uvloop

    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        cfg = load_config(
            args.config,
            host=args.host,
            query_port=args.query_port,
            admin_port=args.admin_port,
            rpc_port=args.rpc_port,
            store=args.store,
            store_dir=args.store_dir,
            rpc_advertise=args.rpc_advertise,
            rpc_secret_file=args.rpc_secret_file,
            rpc_tls_cert=args.rpc_tls_cert,
            rpc_tls_key=args.rpc_tls_key,
        )
    except (ConfigError, TypeError) as e:
        raise CLIError(str(e)) from None
    try:
        uvloop.run(_serve(cfg, args.ports_file))
    except (EngineError, ValueError) as e:
        raise CLIError(f"bad deployment in the config: {e}") from None
    except OSError as e:
        raise CLIError(f"cannot listen: {e}") from None
    return 0

