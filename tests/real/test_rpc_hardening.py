"""The container RPC under attack (issue 11): a request that cannot be encoded as a batch,
forged results, outputs a reply cannot carry, frames and silence before authentication,
malformed HELLOs, the secret's proof, the secret from a file, and TLS.

Containers are played by hand over raw sockets (``FakeContainer``), speaking the
protocol of ``clipperlab.real.protocol``."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clipperlab.real import protocol as p
from clipperlab.real.client import AdminClient, QueryClient
from clipperlab.real.config import ConfigError, load_config
from clipperlab.real.container import ContainerError, add_arguments, config_from_args
from tests.servers import hello, start_server

Answer = Callable[[int, Any], bytes]


def echo_noop(bid: int, inputs: Any) -> bytes:
    """A well-behaved model: answers 0 for each input."""
    return p.encode_batch(p.RESULT, bid, np.zeros(len(inputs), dtype=np.int64))


def _read_frame(s: socket.socket, dec: p.FrameDecoder, buf: list[tuple[int, bytes]]) -> tuple[
    int, bytes
]:
    while not buf:
        data = s.recv(1 << 16)
        if not data:
            raise ConnectionError("closed")
        buf += dec.feed(data)
    return buf.pop(0)


class FakeContainer:
    """A container played over a raw socket: HELLO (and PROOF when challenged), then each
    BATCH is answered with the frame ``answer(batch_id, inputs)`` returns, heartbeats
    included.  ``batches`` records the batch ids it was sent, ``closed`` is set when the
    frontend closes the connection."""

    def __init__(
        self,
        port: int,
        model: str = "m",
        *,
        answer: Answer = echo_noop,
        secret: str = "",
        ordinal: int | None = None,
    ) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.settimeout(10)
        self.answer = answer
        self.batches: list[int] = []
        self.closed = threading.Event()
        self.lock = threading.Lock()
        self.dec = p.FrameDecoder()
        self.buf: list[tuple[int, bytes]] = []
        fields: dict[str, Any] = {"input_type": "doubles"}
        if ordinal is not None:
            fields["ordinal"] = ordinal
        frame = hello(model, **fields)
        self.sock.sendall(frame)
        kind, payload = _read_frame(self.sock, self.dec, self.buf)
        if kind == p.CHALLENGE:
            nonce = bytes.fromhex(p.decode_json(payload)["nonce"])
            proof = p.proof_of(secret, nonce, frame[5:])
            self.sock.sendall(p.encode_json(p.PROOF, {"proof": proof}))
            kind, payload = _read_frame(self.sock, self.dec, self.buf)
        assert kind == p.WELCOME, p.decode_json(payload)
        self.welcome = p.decode_json(payload)
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()
        threading.Thread(target=self._beat, daemon=True).start()

    def send(self, frame: bytes) -> None:
        with self.lock:
            self.sock.sendall(frame)

    def _beat(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self.send(p.encode_frame(p.HEARTBEAT))
            except OSError:
                return

    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                kind, payload = _read_frame(self.sock, self.dec, self.buf)
                if kind == p.BATCH:
                    bid = p.batch_id_of(payload)
                    self.batches.append(bid)
                    inputs = p.decode_values(payload, 8)
                    self.send(self.answer(bid, inputs))
        except (OSError, ConnectionError, p.ProtocolError):
            pass
        finally:
            self.closed.set()

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Any]:
    st = start_server(tmp_path, manage_containers=False)
    yield st
    st.stop()


def _clients(st: Any) -> tuple[AdminClient, QueryClient]:
    return AdminClient(f"127.0.0.1:{st.ports['admin']}"), QueryClient(
        f"127.0.0.1:{st.ports['query']}"
    )


def _metric(st: Any, name: str) -> float:
    for line in QueryClient(f"127.0.0.1:{st.ports['query']}").metrics().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not exported")


def _deploy(st: Any, app: str = "app", model: str = "m", slo_ms: int = 3000) -> AdminClient:
    a, _ = _clients(st)
    a.add_app(app, slo_ms=slo_ms, default_output=-1)
    a.add_model(model, kind="noop", replicas=0, app=app)
    return a


def _wait(cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    until = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < until, "condition not met in time"
        time.sleep(0.02)


def _nested(depth: int) -> Any:
    x: Any = [1.0]
    for _ in range(depth - 1):
        x = [x]
    return x


# ----------------------------------------------------------------- defect 1


def test_an_input_too_deep_for_one_array_does_not_wedge_the_model(tmp_path: Path) -> None:
    """An input nested 64 deep (numpy's limit: a batch of it would need 65 dimensions;
    the HTTP nesting limit is raised so that it reaches the RPC) is answered, and the
    model keeps answering the next queries (its replica is not left busy for ever)."""
    st = start_server(tmp_path, manage_containers=False, max_nesting=80)
    try:
        _deploy(st)
        fc = FakeContainer(st.ports["rpc"])
        _, q = _clients(st)
        r = q.predict("app", _nested(64))
        assert "output" in r
        for i in range(3):
            r = q.predict("app", [float(i)])
            assert r["default"] is False and r["output"] == 0, r
        fc.close()
    finally:
        st.stop()


# ----------------------------------------------------------------- defect 2


def test_results_for_batches_sent_elsewhere_are_not_taken(server: Any) -> None:
    """A second container (a replica of another, unlinked model) answers every batch id
    the first one is sent, before it does: no query gets its output, the forger is
    dropped, and the genuine answers arrive."""
    a = _deploy(server)
    a.add_model("other", kind="noop", replicas=0)
    forger = FakeContainer(server.ports["rpc"], "other")
    stolen: list[int] = []

    def honest(bid: int, inputs: Any) -> bytes:
        try:  # the forger answers first, with the id read off the wire
            forger.send(p.encode_batch(p.RESULT, bid, np.full(len(inputs), 999)))
            stolen.append(bid)
        except OSError:
            pass
        time.sleep(0.01)
        return p.encode_batch(p.RESULT, bid, np.full(len(inputs), 7))

    fc = FakeContainer(server.ports["rpc"], answer=honest)
    try:
        _, q = _clients(server)
        outs = [q.predict("app", [float(i)])["output"] for i in range(5)]
        assert stolen, "the forger never tried"
        assert outs == [7] * 5
        assert forger.closed.wait(5)
        assert _metric(server, "clipperlab_real_rpc_garbage_frames_total") >= 1
        assert not fc.closed.is_set()
    finally:
        fc.close()
        forger.close()


# ----------------------------------------------------------------- defect 3


def _raw_result(bid: int, values_payload: bytes) -> bytes:
    return p.encode_frame(p.RESULT, struct.pack("<Q", bid) + values_payload)


def _array_payload(a: np.ndarray[Any, Any]) -> bytes:
    """``K_ARRAY`` as the protocol lays it out, for any dtype (the encoder refuses some)."""
    dt = a.dtype.str.encode()
    head = bytes((0, len(dt))) + dt + bytes((a.ndim,)) + struct.pack(f"<{a.ndim}Q", *a.shape)
    return head + a.tobytes()


def _json_payload(text: str) -> bytes:
    return bytes((3,)) + text.encode()


ODD_OUTPUTS: dict[str, Callable[[int], bytes]] = {
    "int beyond 64 bits": lambda n: _json_payload(json.dumps([2**70] * n)),
    "complex": lambda n: _array_payload(np.full(n, 1 + 2j)),
    "datetime64": lambda n: _array_payload(np.full(n, np.datetime64("2024-01-01T00:00:00"))),
    "list/scalar mix": lambda n: _json_payload(json.dumps([[1, [2.5, "x"]], 3, None][:n] +
                                                           [3] * max(0, n - 3))),
    "bytes": lambda n: p.encode_values([b"\x00\xffraw"] * n),
    "NaN in JSON": lambda n: _json_payload("[NaN" + ", 1" * (n - 1) + "]"),
    "nested 200 deep": lambda n: _json_payload(json.dumps([_nested(200)] * n)),
}


@pytest.mark.parametrize("what", list(ODD_OUTPUTS))
def test_odd_outputs_are_still_answered(server: Any, what: str) -> None:
    """Whatever a container returns, each query (single and input_batch) is answered
    (200 with an output or an explained default, or an error naming the problem), the
    container's connection is kept, and the model keeps serving."""
    _deploy(server)
    odd = [True]

    def answer(bid: int, inputs: Any) -> bytes:
        if odd[0]:
            return _raw_result(bid, ODD_OUTPUTS[what](len(inputs)))
        return echo_noop(bid, inputs)

    fc = FakeContainer(server.ports["rpc"], answer=answer)
    try:
        a, q = _clients(server)
        r = q.predict("app", [1.0])
        assert r["default"] is False or r.get("default_explanation"), r
        rs = q.predict_batch("app", [[1.0], [2.0], [3.0]])
        assert len(rs) == 3
        assert all(x["default"] is False or x.get("default_explanation") for x in rs), rs
        odd[0] = False
        r = q.predict("app", [5.0])
        assert r["output"] == 0 and r["default"] is False
        assert not fc.closed.is_set() and len(a.inspect()["replicas_connected"]) == 1
        assert server.server.driver.reply_errors == 0
    finally:
        fc.close()


def test_a_healthy_replica_is_not_hurt_by_another_ones_odd_output(tmp_path: Path) -> None:
    """Two models combined in one application: one answers complex numbers, the other
    is healthy.  The healthy one's connection stays up (no abort, no restart) and every
    query is answered."""
    st = start_server(tmp_path, manage_containers=False)
    try:
        a, q = _clients(st)
        a.add_app("app", slo_ms=3000, default_output=-1)
        a.add_model("good", kind="noop", replicas=0)
        a.add_model("bad", kind="noop", replicas=0)
        a.link("app", ["good", "bad"])
        bad = FakeContainer(
            st.ports["rpc"], "bad",
            answer=lambda bid, x: _raw_result(bid, _array_payload(np.full(len(x), 1j))),
        )
        good = FakeContainer(st.ports["rpc"], "good")
        for i in range(5):
            r = q.predict("app", [float(i)])
            assert "output" in r
        assert not good.closed.is_set()
        assert st.server.driver.reply_errors == 0
        bad.close()
        good.close()
    finally:
        st.stop()


def test_the_container_refuses_to_send_what_a_reply_cannot_carry() -> None:
    """The container's encoder: integers beyond 64 bits (once an endless recursion),
    complex numbers and dates are a ``ValueError`` naming the problem (the container
    answers ERROR for that batch); 64-bit integers in JSON still go."""
    assert p.decode_values(p.encode_values([{"a": 2**63}, 1])) == [{"a": 2**63}, 1]
    for bad in ([2**70, 1], [[2**70]], [1j], np.array([1j]), [np.datetime64("2024-01-01")],
                [__import__("datetime").date(2024, 1, 1)]):
        with pytest.raises(ValueError, match="cannot be sent"):
            p.encode_values(bad)
    with pytest.raises(p.ProtocolError, match="complex"):
        p.decode_values(_array_payload(np.zeros(2, dtype=complex)))


# ----------------------------------------------------------------- defect 7 and 10


def test_a_big_frame_before_hello_is_refused_at_its_header(server: Any) -> None:
    """A peer announcing a 256 MiB frame before HELLO is dropped as soon as the header
    arrives (nothing is buffered) and counted as a garbage frame."""
    s = socket.create_connection(("127.0.0.1", server.ports["rpc"]))
    s.settimeout(10)
    s.sendall(struct.pack("<IB", 256 << 20, p.HELLO) + b"x" * 1000)
    assert s.recv(100) == b""  # closed by the frontend
    s.close()
    assert _metric(server, "clipperlab_real_rpc_garbage_frames_total") == 1


def test_heartbeats_without_hello_are_not_kept(tmp_path: Path) -> None:
    """A connection that never says HELLO (only heartbeats) is refused when the HELLO
    deadline passes."""
    st = start_server(tmp_path, manage_containers=False, rpc_hello_timeout_s=0.5)
    try:
        s = socket.create_connection(("127.0.0.1", st.ports["rpc"]))
        s.settimeout(0.1)
        kinds: list[int] = []
        dec = p.FrameDecoder()
        closed = False
        until = time.monotonic() + 9
        while not closed and time.monotonic() < until:
            try:
                s.sendall(p.encode_frame(p.HEARTBEAT))
                data = s.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                data = b""
            closed = not data
            kinds += [k for k, _ in dec.feed(data)]
        s.close()
        assert closed  # a heartbeat before HELLO breaks the protocol
        silent = socket.create_connection(("127.0.0.1", st.ports["rpc"]))
        silent.settimeout(10)
        frames = p.FrameDecoder().feed(silent.recv(4096))
        assert frames and frames[0][0] == p.REFUSE
        assert "rpc_hello_timeout_s" in p.decode_json(frames[0][1])["error"]
        silent.close()
        assert not st.server.rpc.all_conns
    finally:
        st.stop()


BAD_HELLOS: list[tuple[dict[str, Any], str]] = [
    ({"model": 123}, "'model'"),
    ({"model": ["m"]}, "'model'"),
    ({"model": ""}, "'model'"),
    ({"model": "m" * 10_000}, "'model'"),
    ({"version": {"a": 1}}, "'version'"),
    ({"version": 1}, "'version'"),
    ({"ordinal": "x"}, "'ordinal'"),
    ({"ordinal": -1}, "'ordinal'"),
    ({"ordinal": 2**80}, "'ordinal'"),
    ({"ordinal": 1.5}, "'ordinal'"),
    ({"ordinal": True}, "'ordinal'"),
    ({"input_type": 5}, "'input_type'"),
    ({"input_type": "tensors"}, "'input_type'"),
    ({"protocol": "2"}, "protocol version"),
    ({"protocol": True}, "protocol version"),
    ({"protocol": 2.0}, "protocol version"),
    ({"extra": 1}, "unknown"),
]


@pytest.mark.parametrize(("fields", "words"), BAD_HELLOS)
def test_malformed_hello_fields_are_refused_by_name(
    server: Any, fields: dict[str, Any], words: str
) -> None:
    """Each bad HELLO field gets REFUSE naming it and the connection closes; the
    server keeps serving containers."""
    _deploy(server)
    s = socket.create_connection(("127.0.0.1", server.ports["rpc"]))
    s.settimeout(10)
    h = {"protocol": p.PROTOCOL_VERSION, "model": "m", "version": "1", **fields}
    s.sendall(p.encode_json(p.HELLO, h))
    kind, payload = _read_frame(s, p.FrameDecoder(), [])
    assert kind == p.REFUSE and words in p.decode_json(payload)["error"]
    assert s.recv(100) == b""
    s.close()
    for junk in (b"\xff\xfe", b"[1, 2]", b"null"):
        s = socket.create_connection(("127.0.0.1", server.ports["rpc"]))
        s.settimeout(10)
        s.sendall(p.encode_frame(p.HELLO, junk))
        kind, payload = _read_frame(s, p.FrameDecoder(), [])
        assert kind == p.REFUSE and "HELLO" in p.decode_json(payload)["error"]
        s.close()
    fc = FakeContainer(server.ports["rpc"])
    try:
        assert QueryClient(f"127.0.0.1:{server.ports['query']}").predict("app", [1.0])[
            "output"
        ] == 0
    finally:
        fc.close()


def test_the_secret_is_proved_never_sent(tmp_path: Path) -> None:
    """With a secret the frontend challenges with a fresh nonce per connection; the right
    proof is welcomed, a wrong one or a replayed one (another connection's nonce) is
    refused; a HELLO carrying the secret itself is refused naming the field."""
    st = start_server(tmp_path, manage_containers=False, rpc_secret="s3cret")
    try:
        _deploy(st)
        port = st.ports["rpc"]
        nonces = []
        for proof_secret, ok in (("s3cret", True), ("wrong", False)):
            s = socket.create_connection(("127.0.0.1", port))
            s.settimeout(10)
            frame = hello("m", ordinal=5 if ok else 6)
            s.sendall(frame)
            dec, buf = p.FrameDecoder(), []
            kind, payload = _read_frame(s, dec, buf)
            assert kind == p.CHALLENGE
            nonce = bytes.fromhex(p.decode_json(payload)["nonce"])
            nonces.append(nonce)
            s.sendall(p.encode_json(p.PROOF, {"proof": p.proof_of(proof_secret, nonce, frame[5:])}))
            kind, payload = _read_frame(s, dec, buf)
            assert kind == (p.WELCOME if ok else p.REFUSE), p.decode_json(payload)
            if not ok:
                assert "secret" in p.decode_json(payload)["error"]
            s.close()
        assert nonces[0] != nonces[1] and len(nonces[0]) == 32
        # a proof made for an earlier nonce does not open another connection
        s = socket.create_connection(("127.0.0.1", port))
        s.settimeout(10)
        frame = hello("m", ordinal=7)
        s.sendall(frame)
        dec, buf = p.FrameDecoder(), []
        assert _read_frame(s, dec, buf)[0] == p.CHALLENGE
        s.sendall(p.encode_json(p.PROOF, {"proof": p.proof_of("s3cret", nonces[0], frame[5:])}))
        assert _read_frame(s, dec, buf)[0] == p.REFUSE
        s.close()
        s = socket.create_connection(("127.0.0.1", port))
        s.settimeout(10)
        s.sendall(hello("m", secret="s3cret"))
        kind, payload = _read_frame(s, p.FrameDecoder(), [])
        assert kind == p.REFUSE and "'secret'" in p.decode_json(payload)["error"]
        s.close()
    finally:
        st.stop()


def _container_args(*argv: str) -> Any:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--model", "noop", *argv])


def test_secret_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both ends read the secret from a file or $CLIPPERLAB_RPC_SECRET; the manager gives
    it to its containers through the environment, never on the command line."""
    f = tmp_path / "secret"
    f.write_text("from-file\n")
    monkeypatch.delenv("CLIPPERLAB_RPC_SECRET", raising=False)
    assert config_from_args(_container_args("--secret-file", str(f))).secret == "from-file"
    assert config_from_args(_container_args()).secret == ""
    monkeypatch.setenv("CLIPPERLAB_RPC_SECRET", "from-env")
    assert config_from_args(_container_args()).secret == "from-env"
    assert load_config(None).resolved_rpc_secret() == "from-env"
    monkeypatch.delenv("CLIPPERLAB_RPC_SECRET")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ContainerError, match="empty"):
        config_from_args(_container_args("--secret-file", str(tmp_path / "empty")))
    with pytest.raises(ConfigError, match="rpc_secret_file"):
        load_config(None, rpc_secret_file=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="both set"):
        load_config(None, rpc_secret="x", rpc_secret_file=str(f))
    st = start_server(tmp_path / "store", rpc_secret_file=str(f))
    try:
        a, q = _clients(st)
        a.add_app("app", slo_ms=3000, default_output=-1)
        a.add_model("m", kind="noop", app="app")
        a.wait_ready("app")  # the managed container proved the secret from its environment
        assert q.predict("app", [1.0])["default"] is False
        manager = st.server.manager
        assert manager is not None
        argv = " ".join(manager.procs[next(iter(manager.procs))].argv)
        assert "from-file" not in argv and "--secret" not in argv
    finally:
        st.stop()


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"rpc_hello_timeout_s": 0}, "rpc_hello_timeout_s"),
        ({"rpc_max_hello_frame_bytes": 10}, "rpc_max_hello_frame_bytes"),
        ({"rpc_max_frame_bytes": 1 << 40}, "rpc_max_frame_bytes"),
        ({"malloc_keep_mb": 1024}, "malloc_keep_mb"),
        ({"malloc_keep_mb": -1}, "malloc_keep_mb"),
        ({"rpc_tls_cert": "/nonexistent.pem"}, "go together"),
        ({"rpc_tls_cert": "/nonexistent.pem", "rpc_tls_key": "/nonexistent.key"},
         "rpc_tls_cert"),
    ],
)
def test_rpc_settings_are_checked(settings: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load_config(None, **settings)


# ----------------------------------------------------------------- TLS


def _self_signed(tmp_path: Path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1/localhost: ``cryptography`` if installed,
    else the ``openssl`` command, else the test is skipped."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    try:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor the openssl command is here")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
             "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
            check=True, capture_output=True,
        )
        return str(cert), str(key)
    k = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    c = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(k.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(k, hashes.SHA256())
    )
    cert.write_bytes(c.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        k.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert), str(key)


def test_tls_between_frontend_and_containers(tmp_path: Path) -> None:
    """With a certificate and key the RPC port speaks TLS: the managed container (told to
    trust the certificate) connects and answers; a plaintext HELLO gets no WELCOME; a
    container trusting another CA refuses the frontend."""
    cert, key = _self_signed(tmp_path)
    st = start_server(tmp_path / "store", rpc_tls_cert=cert, rpc_tls_key=key,
                      rpc_secret="s3cret", rpc_hello_timeout_s=2.0)
    try:
        a, q = _clients(st)
        a.add_app("app", slo_ms=3000, default_output=-1)
        a.add_model("m", kind="noop", app="app")
        a.wait_ready("app")
        assert q.predict("app", [1.0])["default"] is False
        plain = socket.create_connection(("127.0.0.1", st.ports["rpc"]))
        plain.settimeout(10)
        plain.sendall(hello("m", ordinal=9))
        try:
            got = plain.recv(4096)
        except OSError:
            got = b""
        assert p.WELCOME not in [k for k, _ in _frames_or_none(got)]
        plain.close()
        ctx = ssl.create_default_context(cafile=cert)
        with socket.create_connection(("127.0.0.1", st.ports["rpc"])) as raw, ctx.wrap_socket(
            raw, server_hostname="127.0.0.1"
        ) as s:
            s.settimeout(10)
            s.sendall(hello("m", ordinal=9))
            assert _read_frame(s, p.FrameDecoder(), [])[0] == p.CHALLENGE
        (tmp_path / "other").mkdir()
        other, _ = _self_signed(tmp_path / "other")
        proc = subprocess.run(
            [sys.executable, "-m", "clipperlab.real.container", "--model", "noop",
             "--name", "m", "--frontend", f"127.0.0.1:{st.ports['rpc']}", "--tls-ca", other],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "CLIPPERLAB_RPC_SECRET": "s3cret"},
        )
        assert proc.returncode == 2 and "certificate" in proc.stderr
    finally:
        st.stop()


def _frames_or_none(data: bytes) -> list[tuple[int, bytes]]:
    try:
        return p.FrameDecoder().feed(data)
    except p.ProtocolError:
        return []


def test_serve_and_container_take_the_new_flags() -> None:
    """``clipperlab container`` has --secret-file and --tls-ca; ``--secret`` still works."""
    args = _container_args("--secret", "s", "--tls-server-name", "x")
    assert config_from_args(args).secret == "s"
    with pytest.raises(ContainerError, match="--tls-ca"):
        config_from_args(_container_args("--tls-ca", "/nonexistent-ca.pem"))
    with pytest.raises(ContainerError, match="both"):
        config_from_args(_container_args("--secret", "s", "--secret-file", "/x"))
