"""A model container: connects to a frontend, says hello, computes batches.

Run one as ``python -m clipperlab.real.container --model KIND[:PATH] ...`` (what the
container manager and the profiler start) or ``clipperlab container ...`` (the same
arguments).

Rules:
- One process per replica, one batch at a time (the paper's containers); the model runs on
  the main thread and a heartbeat thread keeps the connection alive during long batches.
- The container connects to the frontend (not the other way round), so it can run on
  another host: ``--frontend HOST:PORT``.  The shared secret (``--secret-file PATH`` or
  ``$CLIPPERLAB_RPC_SECRET``; ``--secret S`` still works but shows in ``ps``) is never
  sent: when the frontend answers HELLO with a CHALLENGE, the container answers a PROOF
  (``protocol.proof_of``).  ``--tls-ca FILE`` speaks TLS and checks the frontend's
  certificate against that CA (and ``--tls-server-name``, default the frontend's host).
- One socket, one lock: the main thread receives (in slices of half a heartbeat
  interval) and sends results, the heartbeat thread sends beats, each holding the lock,
  so a TLS connection is never used by two threads at once.
- A model that raises answers ``ERROR`` for that batch and keeps serving; outputs that do
  not match the batch length are reported the same way.
- When the frontend goes away the container exits, unless ``reconnect_s`` > 0: then it
  retries for that long (a frontend restart).
- Several frontends (``--store redis://...`` instead of ``--frontend``): the container reads
  the frontends registered in the store every second (``real/sync.py``), keeps one
  connection to each (a thread apiece, as above), answers each batch on the connection it
  came from, and runs the model for one batch at a time across them.  A frontend that goes
  away takes only its connection; one that refuses the container is tried again 5 s later
  (it may not have heard of the model yet).  It serves until stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from . import protocol as p
from .gctune import MALLOC_KEEP_MB, MALLOC_KEEP_MB_MAX, tune_gc, tune_malloc
from .models import MODEL_KINDS, load_model

__all__ = [
    "ContainerConfig",
    "ContainerError",
    "ContainerRefused",
    "add_arguments",
    "config_from_args",
    "main",
    "run_container",
]

log = logging.getLogger("clipperlab.container")


class ContainerError(Exception):
    """A container that cannot start: bad arguments, a model that does not load, or a
    frontend that refused it (the message says which)."""


class ContainerRefused(ContainerError):
    """The frontend refused the handshake (the message says why)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerConfig:
    name: str
    version: str = "1"
    kind: str = "noop"
    path: str = ""
    options: dict[str, Any] | None = None
    input_type: str = "doubles"
    host: str = "127.0.0.1"
    port: int = 7000
    secret: str = ""
    ordinal: int | None = None
    reconnect_s: float = 0.0
    tls_ca: str = ""
    tls_server_name: str = ""
    store: str = ""  # redis://...: serve every frontend registered there
    tune_gc: bool = True  # freeze the loaded model's heap (``gctune``); off: --no-tune-gc
    malloc_keep_mb: int = MALLOC_KEEP_MB  # big buffers kept (``gctune.tune_malloc``); 0: off


def run_container(cfg: ContainerConfig, predict: Any = None) -> int:
    """Serve until the frontend goes away (and does not come back within reconnect_s);
    with ``cfg.store``, serve every frontend registered there until stopped."""
    if predict is None:
        predict = load_model(cfg.kind, cfg.path, cfg.options)
    if cfg.store:
        return _follow_frontends(cfg, predict)
    tls = None
    if cfg.tls_ca:
        tls = ssl.create_default_context(cafile=cfg.tls_ca)
        tls.minimum_version = ssl.TLSVersion.TLSv1_2
    give_up_at = None
    while True:
        try:
            sock = socket.create_connection((cfg.host, cfg.port), timeout=5.0)
            if tls is not None:
                try:
                    sock = tls.wrap_socket(sock, server_hostname=cfg.tls_server_name or cfg.host)
                except ssl.SSLCertVerificationError as e:
                    sock.close()
                    raise ContainerRefused(f"the frontend's TLS certificate: {e}") from None
        except OSError as e:
            if give_up_at is None:
                give_up_at = time.monotonic() + cfg.reconnect_s
            if time.monotonic() >= give_up_at:
                log.error("cannot reach frontend %s:%d: %s", cfg.host, cfg.port, e)
                return 1
            time.sleep(0.2)
            continue
        give_up_at = None
        try:
            _serve(sock, cfg, predict)
        except ContainerRefused:
            raise
        except (OSError, p.ProtocolError) as e:
            log.warning("connection to frontend lost: %s", e)
        finally:
            sock.close()
        if cfg.reconnect_s <= 0:
            return 0
        give_up_at = time.monotonic() + cfg.reconnect_s


def _follow_frontends(cfg: ContainerConfig, predict: Any, every_s: float = 1.0) -> int:
    """One connection per frontend registered in ``cfg.store``, following the list."""
    from clipperlab.engine import ConfigError

    from .store_redis import connect
    from .sync import frontends

    try:
        r = connect(cfg.store)
    except ConfigError as e:
        raise ContainerError(f"--store: {e}") from None
    lock = threading.Lock()

    def one_at_a_time(inputs: Any) -> Any:
        with lock:
            return predict(inputs)

    live: dict[str, threading.Thread] = {}
    retry_at: dict[str, float] = {}

    def serve(address: str) -> None:
        host, _, port = address.rpartition(":")
        one = replace(cfg, host=host, port=int(port), store="", reconnect_s=0.0)
        try:
            run_container(one, one_at_a_time)
        except ContainerRefused as e:
            log.warning("frontend %s refused this container: %s", address, e)
            retry_at[address] = time.monotonic() + 5.0
        except Exception:  # noqa: BLE001 - one frontend's trouble leaves the others served
            log.exception("serving frontend %s failed", address)
            retry_at[address] = time.monotonic() + 5.0

    cut_off = False
    while True:
        try:
            listed = set(frontends(r).values())
            cut_off = False
        except Exception as e:  # noqa: BLE001 - Redis away: keep serving who we serve
            if not cut_off:
                log.warning("cannot read the frontends from the store (%s); retrying", e)
            cut_off, listed = True, set()
        for address in sorted(listed):
            t = live.get(address)
            if (t is None or not t.is_alive()) and retry_at.get(address, 0.0) <= time.monotonic():
                host, _, port = address.rpartition(":")
                if not host or not port.isdigit():
                    log.warning("ignoring frontend address %r (not HOST:PORT)", address)
                    continue
                live[address] = t = threading.Thread(
                    target=serve, args=(address,), daemon=True, name=f"frontend {address}")
                t.start()
        time.sleep(every_s)


def _recv_frames(
    sock: socket.socket, dec: p.FrameDecoder, into: memoryview | None = None
) -> list[tuple[int, bytes]]:
    """The frames completed by one receive, into the buffer ``into`` when given."""
    # 64 KiB: recv(1 MiB) maps and unmaps its buffer on every call (23 us against 3.5 us,
    # 52% of a no-op container's samples); a bigger frame just takes more calls.
    # recv_into a buffer kept for the connection: no allocation (1.9 us against 2.4 us).
    if into is None:
        data: bytes | memoryview = sock.recv(1 << 16)
    else:
        data = into[: sock.recv_into(into)]
    if not data:
        raise OSError("frontend closed the connection")
    return dec.feed(data)


def _handshake_frame(
    sock: socket.socket, dec: p.FrameDecoder, frames: list[tuple[int, bytes]]
) -> tuple[int, bytes]:
    """The next frame during the handshake (REFUSE raises ``ContainerRefused``)."""
    while not frames:
        frames += _recv_frames(sock, dec)
    kind, payload = frames.pop(0)
    if kind == p.REFUSE:
        raise ContainerRefused(str(p.decode_json(payload).get("error", "refused")))
    return kind, payload


def _handshake(
    sock: socket.socket, cfg: ContainerConfig, dec: p.FrameDecoder
) -> tuple[dict[str, Any], list[tuple[int, bytes]]]:
    """HELLO, then PROOF when challenged; the WELCOME and the frames read after it."""
    hello = {
        "protocol": p.PROTOCOL_VERSION,
        "model": cfg.name,
        "version": cfg.version,
        "input_type": cfg.input_type,
        "ordinal": cfg.ordinal,
    }
    hello_payload = json.dumps(hello).encode()
    sock.sendall(p.encode_frame(p.HELLO, hello_payload))
    frames: list[tuple[int, bytes]] = []
    kind, payload = _handshake_frame(sock, dec, frames)
    if kind == p.CHALLENGE:
        if not cfg.secret:
            raise ContainerRefused(
                "the frontend asks for the shared secret; give --secret-file PATH or set"
                " CLIPPERLAB_RPC_SECRET"
            )
        nonce = p.decode_json(payload).get("nonce")
        try:
            nonce_bytes = bytes.fromhex(str(nonce))
        except ValueError:
            raise p.ProtocolError(f"CHALLENGE nonce {nonce!r} is not hex") from None
        proof = p.proof_of(cfg.secret, nonce_bytes, hello_payload)
        sock.sendall(p.encode_json(p.PROOF, {"proof": proof}))
        kind, payload = _handshake_frame(sock, dec, frames)
    if kind != p.WELCOME:
        raise p.ProtocolError(f"expected WELCOME, got frame type {kind}")
    return p.decode_json(payload), frames


def _serve(sock: socket.socket, cfg: ContainerConfig, predict: Any) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    dec = p.FrameDecoder()
    welcome, frames = _handshake(sock, cfg, dec)
    interval_s = float(welcome.get("heartbeat_interval_s", 0.5))
    dec.max_frame_bytes = int(welcome.get("max_frame_bytes", p.MAX_FRAME_BYTES))
    log.info("connected as replica %s", welcome.get("replica"))
    lock = threading.Lock()  # one sender at a time (results, heartbeats)
    stop = threading.Event()
    tls = sock if isinstance(sock, ssl.SSLSocket) else None
    sock.settimeout(None)

    def send(data: bytes) -> None:
        with lock:
            sock.sendall(data)

    def beat() -> None:  # keeps the connection alive during long batches too
        frame = p.encode_frame(p.HEARTBEAT)
        while not stop.wait(interval_s):
            try:
                send(frame)
            except OSError:
                return

    into = memoryview(bytearray(1 << 16))

    def receive() -> list[tuple[int, bytes]]:
        if tls is None:  # a plain socket may send on one thread while it receives on another
            return _recv_frames(sock, dec, into)
        # An SSL socket is used by one thread at a time: wait for data outside the lock
        # (the heartbeat thread sends meanwhile), then read under it.
        if not tls.pending() and not poller.poll(max(interval_s / 2, 0.001) * 1e3):
            return []
        with lock:
            return _recv_frames(sock, dec, into)

    poller = select.poll()
    poller.register(sock, select.POLLIN)
    threading.Thread(target=beat, daemon=True, name="heartbeat").start()
    batch, heartbeat = p.BATCH, p.HEARTBEAT
    try:
        if tls is None:
            # A plain socket: the loop below with send() and receive() inlined, no call
            # of either per batch (with decode_batch's id read inline: 5.5-6.1 against
            # 6.3-7.3 us a batch, the loop over a fake socket, alternated, measured)
            recv_into, sendall, feed = sock.recv_into, sock.sendall, dec.feed
            while True:
                for kind, payload in frames:
                    if kind == batch:
                        data = _compute(payload, predict)
                        with lock:
                            sendall(data)
                    elif kind != heartbeat:
                        raise p.ProtocolError(f"unexpected frame type {kind} from the frontend")
                n = recv_into(into)
                if not n:
                    raise OSError("frontend closed the connection")
                frames = feed(into[:n])
        while True:
            for kind, payload in frames:
                if kind == batch:
                    send(_compute(payload, predict))
                elif kind != heartbeat:
                    raise p.ProtocolError(f"unexpected frame type {kind} from the frontend")
            frames = receive()
    finally:
        stop.set()


def _compute(payload: bytes, predict: Any) -> bytes:
    bid, inputs = p.decode_batch(payload)
    try:
        outputs = predict(inputs)
        n = len(outputs)
        if n != len(inputs):
            return p.encode_error(bid, f"model returned {n} outputs for {len(inputs)} inputs")
        if not isinstance(outputs, np.ndarray):
            outputs = list(outputs)
        return p.encode_batch(p.RESULT, bid, outputs)
    except Exception as e:  # noqa: BLE001 - a failing model answers ERROR and keeps serving
        log.exception("model failed on batch %d", bid)
        return p.encode_error(bid, f"{type(e).__name__}: {e}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The container's command-line arguments (``clipperlab container`` uses them too)."""
    parser.add_argument(
        "--model",
        required=True,
        help=f"KIND[:PATH], KIND one of {', '.join(MODEL_KINDS)}"
        " (python:package.module:function also works)",
    )
    parser.add_argument("--name", help="model name (default: the KIND)")
    parser.add_argument("--version", default="1", help="model version (default: 1)")
    parser.add_argument("--input-type", default="doubles", help="input type (default: doubles)")
    parser.add_argument(
        "--frontend",
        default="127.0.0.1:7000",
        help="HOST:PORT of the RPC port (default: %(default)s)",
    )
    parser.add_argument(
        "--secret-file",
        default="",
        help="file holding the shared secret, if the frontend has one"
        " (default: $CLIPPERLAB_RPC_SECRET)",
    )
    parser.add_argument(
        "--secret",
        default="",
        help="the shared secret itself (discouraged: every user sees it in ps;"
        " use --secret-file or $CLIPPERLAB_RPC_SECRET)",
    )
    parser.add_argument(
        "--tls-ca",
        default="",
        help="CA certificate file: connect over TLS and check the frontend against it",
    )
    parser.add_argument(
        "--tls-server-name",
        default="",
        help="name the frontend's certificate must carry (default: the --frontend host)",
    )
    parser.add_argument(
        "--store",
        default="",
        help="redis://HOST:PORT/DB: serve every frontend registered in this store, following"
        " the list as frontends come and go (instead of --frontend)",
    )
    parser.add_argument("--ordinal", type=int, default=None, help="replica number (optional)")
    parser.add_argument("--options", default="{}",
                        help="JSON options for the wrapper (default: none)")
    parser.add_argument(
        "--reconnect-s",
        type=float,
        default=0.0,
        help="keep retrying this long if disconnected, seconds (default: 0)",
    )
    parser.add_argument(
        "--no-tune-gc",
        dest="tune_gc",
        action="store_false",
        help="leave the garbage collector as Python sets it (default: after loading the"
        " model, freeze its heap and make full collections 10x rarer, so that no batch"
        " waits for a full pass over the model's objects)",
    )
    parser.add_argument(
        "--malloc-keep-mb",
        type=int,
        default=MALLOC_KEEP_MB,
        help="buffers up to this size come from the heap and freed ones are kept for the"
        f" next batch instead of mapped afresh (glibc), MiB in [0, {MALLOC_KEEP_MB_MAX}];"
        f" 0 leaves the C library as it is (default: {MALLOC_KEEP_MB}; a batch of 64"
        " images, 38.5 MB, is received in a third of the time: bench/rpc_frames.py)",
    )


def config_from_args(args: argparse.Namespace) -> ContainerConfig:
    """Check the arguments; raises ``ContainerError`` naming the bad one."""
    kind, _, path = args.model.partition(":")
    if kind not in MODEL_KINDS:
        raise ContainerError(f"--model {args.model!r}: kind {kind!r} is not one of {MODEL_KINDS}")
    host, _, port = args.frontend.rpartition(":")
    if not host or not port.isdigit():
        raise ContainerError(f"--frontend {args.frontend!r} must be HOST:PORT")
    try:
        options = json.loads(args.options)
    except ValueError as e:
        raise ContainerError(f"--options is not JSON: {e}") from None
    if args.store and not args.store.startswith(("redis://", "rediss://", "unix://")):
        raise ContainerError(f"--store {args.store!r} must be a redis:// URL")
    if args.tls_ca and not os.path.isfile(args.tls_ca):
        raise ContainerError(f"--tls-ca {args.tls_ca!r} is not a readable file")
    if not 0 <= args.malloc_keep_mb <= MALLOC_KEEP_MB_MAX:
        raise ContainerError(
            f"--malloc-keep-mb {args.malloc_keep_mb} must be in [0, {MALLOC_KEEP_MB_MAX}]"
        )
    return ContainerConfig(
        name=args.name or kind,
        version=args.version,
        kind=kind,
        path=path,
        options=options,
        input_type=args.input_type,
        host=host,
        port=int(port),
        secret=_secret(args),
        ordinal=args.ordinal,
        reconnect_s=args.reconnect_s,
        tls_ca=args.tls_ca,
        tls_server_name=args.tls_server_name,
        store=args.store,
        tune_gc=args.tune_gc,
        malloc_keep_mb=args.malloc_keep_mb,
    )


def _secret(args: argparse.Namespace) -> str:
    """The shared secret: ``--secret-file``, else ``--secret`` (with a warning), else
    ``$CLIPPERLAB_RPC_SECRET``, else none."""
    if args.secret_file and args.secret:
        raise ContainerError("--secret-file and --secret are both given; give one")
    if args.secret_file:
        try:
            with open(args.secret_file) as f:
                text = f.read().rstrip()
        except (OSError, UnicodeDecodeError) as e:
            raise ContainerError(f"--secret-file {args.secret_file!r}: cannot read it ({e})"
                                 ) from None
        if not text:
            raise ContainerError(f"--secret-file {args.secret_file!r} is empty")
        return text
    if args.secret:
        log.warning(
            "--secret shows the shared secret to every user of this host (ps);"
            " use --secret-file or CLIPPERLAB_RPC_SECRET"
        )
        return str(args.secret)
    return os.environ.get("CLIPPERLAB_RPC_SECRET", "")


def run_from_args(args: argparse.Namespace) -> int:
    """Configure logging, check the arguments, serve; every failure is a ``ContainerError``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s container %(message)s")
    cfg = config_from_args(args)
    try:
        predict = load_model(cfg.kind, cfg.path, cfg.options)
        if cfg.tune_gc:
            tune_gc()  # the process is ours: the model's heap is never scanned again
        tune_malloc(cfg.malloc_keep_mb)  # ours too: big batches reuse their buffers
        return run_container(cfg, predict)
    except ContainerRefused as e:
        raise ContainerError(f"the frontend refused this container: {e}") from None
    except (OSError, ValueError, ImportError) as e:
        raise ContainerError(f"cannot load model {args.model!r}: {e}") from None


def main(argv: list[str] | None = None) -> int:
    """The container process: one line on stderr and exit code 2 for a bad start."""
    parser = argparse.ArgumentParser(prog="python -m clipperlab.real.container")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_from_args(args)
    except KeyboardInterrupt:
        return 130
    except ContainerError as e:
        print(f"container: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
