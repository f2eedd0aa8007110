"""Real mode's pieces without sockets: RPC framing and values, input checks, config, store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clipperlab.engine import Application, Engine, ModelSpec, PolicyState
from clipperlab.real import protocol as p
from clipperlab.real.config import ConfigError, load_config
from clipperlab.real.inputs import BadInput, convert
from clipperlab.real.store import Store


def test_frames_split_anywhere_decode_the_same() -> None:
    """Frames fed one byte at a time come out whole and in order."""
    data = (
        p.encode_json(p.HELLO, {"a": 1})
        + p.encode_frame(p.HEARTBEAT)
        + p.encode_batch(p.BATCH, 7, np.arange(6.0).reshape(3, 2))
    )
    dec = p.FrameDecoder()
    frames = []
    for i in range(len(data)):
        frames += dec.feed(data[i : i + 1])
    assert [k for k, _ in frames] == [p.HELLO, p.HEARTBEAT, p.BATCH]
    bid, arr = p.decode_batch(frames[2][1])
    assert bid == 7 and arr.tolist() == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]


@pytest.mark.parametrize(
    "values",
    [
        np.arange(12, dtype=np.float32).reshape(4, 3),
        np.array([1, 2, 3], dtype=np.int64),
        [b"ab", b"", b"\x00\xff"],
        ["héllo", "", "x"],
        [1, 2, 3],
        [[1, 2], [3]],
        [{"a": 1}, None],
    ],
)
def test_values_round_trip(values: object) -> None:
    got = p.decode_values(p.encode_values(values))
    want = values.tolist() if isinstance(values, np.ndarray) else values
    got = got.tolist() if isinstance(got, np.ndarray) else got
    assert got == want


@pytest.mark.parametrize(
    "frame,words",
    [
        (b"\x00\x00\x00\x00\x01", "frame length 0"),
        (b"\x05\x00\x00\x00\x63abcd", "unknown frame type 99"),
        (b"\xff\xff\xff\xff\x05", "frame length"),
    ],
)
def test_garbage_frames_raise(frame: bytes, words: str) -> None:
    with pytest.raises(p.ProtocolError, match=words):
        p.FrameDecoder().feed(frame)


def test_truncated_array_raises() -> None:
    payload = p.encode_batch(p.RESULT, 1, np.zeros(4))[5:-3]
    with pytest.raises(p.ProtocolError, match="needs 32 bytes"):
        p.decode_batch(payload)


def test_convert_inputs() -> None:
    app = Application(name="a", input_type="integers", input_shape=(-1, 2))
    assert convert(app, [[1, 2], [3, 4]]).dtype == np.int64
    with pytest.raises(BadInput, match="non-integers"):
        convert(app, [[1.5, 2], [3, 4]])
    with pytest.raises(BadInput, match=r"shape \[3\]; application 'a' takes \[-1, 2\]"):
        convert(app, [1, 2, 3])
    s = Application(name="s", input_type="strings")
    assert convert(s, "hi") == "hi"
    with pytest.raises(BadInput, match="must be a string"):
        convert(s, [1])
    b = Application(name="b", input_type="bytes")
    assert convert(b, "AAE=") == b"\x00\x01"
    with pytest.raises(BadInput, match="base64"):
        convert(b, "***")


@pytest.mark.parametrize("input_type", ["doubles", "floats", "integers"])
@pytest.mark.parametrize("value", [[True, 1.5], [1, False], [1.0, True, 2.0],
                                   [[1.0, 2.0], [True, 3.0]], [[1, 2], [3, False]],
                                   [[[1, 2]], [[3, True]]]])
def test_convert_refuses_booleans_among_numbers(input_type: str, value: Any) -> None:
    """JSON true/false are not numbers beside numbers either (numpy would read them as
    1 and 0 and the query would run on a number the client never sent)."""
    app = Application(name="a", input_type=input_type)
    with pytest.raises(BadInput, match="holds booleans; application 'a' takes"):
        convert(app, value)


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[server]\nquery_port = 99999\n")
    with pytest.raises(ConfigError, match="query_port = 99999"):
        load_config(f)
    f.write_text("[servr]\n")
    with pytest.raises(ConfigError, match="servr"):
        load_config(f)
    f.write_text('[server]\nadmin_host = "0.0.0.0"\n')
    with pytest.raises(ConfigError, match="admin_token"):
        load_config(f)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    assert load_config(None).query_port == 1337


def test_store_round_trip(tmp_path: Path) -> None:
    """Everything the store keeps comes back into a fresh engine."""
    eng = Engine()
    eng.add_application(Application(name="a", policy="exp3", default_output=-1), now=0.0)
    eng.add_model(ModelSpec(name="m", metadata={"kind": "noop"}), now=0.0)
    eng.add_model(ModelSpec(name="m", version="2"), now=0.0)
    eng.add_model(ModelSpec(name="n"), now=0.0)
    eng.set_model_version("m", "2", now=0.0)
    eng.link("a", ["m", "n"], now=0.0)
    st = PolicyState(["m", "n"], [0.25, 4.0])
    eng.load_selection_state("a", ("user", 1), st, now=0.0)
    store = Store(tmp_path)
    reg = eng.registry
    for app in reg.apps.values():
        store.put_app(app)
    for spec in (reg.model("m", "1"), reg.model("m", "2"), reg.model("n")):
        store.put_model(spec)
    for name, hist in reg.history.items():
        store.put_history(name, hist)
    store.put_links("a", reg.links["a"])
    store.put_replicas("m", 3)
    store.save_selection(eng)
    store.close()
    fresh = Engine()
    wanted = Store(tmp_path).load_into(fresh, now=0.0)
    assert wanted == {"m": 3}
    assert fresh.registry.to_dict() == reg.to_dict()
    assert fresh.selection_state("a", ("user", 1)).weights == [0.25, 4.0]


class _FakeTransport:
    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer
        self.written = b""
        self.closed = False

    def get_extra_info(self, key: str) -> object:
        return self.peer if key == "peername" else None

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


def test_rpc_refuses_non_loopback_container_without_secret() -> None:
    """Without a shared secret only loopback peers may connect; with one, anyone who
    proves it (a PROOF answering the CHALLENGE)."""
    from unittest.mock import MagicMock

    from clipperlab.real.rpc import RpcServer

    eng = Engine()
    eng.add_model(ModelSpec(name="m"), now=0.0)
    driver = MagicMock()
    driver.engine = eng
    hello = p.encode_json(p.HELLO, {"protocol": p.PROTOCOL_VERSION, "model": "m", "version": "1"})
    for secret, peer, proved, want in [
        ("", "10.0.0.5", "", "need a shared secret"),
        ("", "127.0.0.1", "", None),
        ("s", "10.0.0.5", "wrong", "wrong shared secret"),
        ("s", "10.0.0.5", "s", None),
    ]:
        srv = RpcServer(driver, secret=secret)
        conn = srv.protocol()
        t = _FakeTransport((peer, 4000))
        conn.connection_made(t)  # type: ignore[arg-type]
        conn.data_received(hello)
        if secret:  # challenged: answer with the proof of the secret ``proved``
            [(kind, payload)] = p.FrameDecoder().feed(t.written)
            assert kind == p.CHALLENGE
            nonce = bytes.fromhex(p.decode_json(payload)["nonce"])
            t.written = b""
            proof = p.proof_of(proved, nonce, hello[5:])
            conn.data_received(p.encode_json(p.PROOF, {"proof": proof}))
        [(kind, payload)] = p.FrameDecoder().feed(t.written)
        if want is None:
            assert kind == p.WELCOME and not t.closed
        else:
            assert kind == p.REFUSE and want in p.decode_json(payload)["error"] and t.closed
