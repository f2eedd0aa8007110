"""The container RPC: length-prefixed binary frames between the frontend and containers.

Rules:
- A frame is ``u32 length (little-endian) | u8 type | payload``; ``length`` counts the type
  byte and the payload.  A frame longer than ``MAX_FRAME_BYTES`` (256 MiB) or of an unknown
  type is a protocol error: the receiver drops that connection and nothing else.
- The container speaks first: ``HELLO`` (JSON: protocol version, model name and version,
  input type, optional shared secret, replica ordinal).  The frontend answers ``WELCOME``
  (JSON, with the heartbeat interval) or ``REFUSE`` (JSON ``{"error": ...}``) and closes.
- Either side sends ``HEARTBEAT`` (empty) every ``heartbeat_interval_s``; the frontend marks
  a container dead after ``missed_heartbeats`` intervals of silence.
- ``BATCH`` (frontend -> container): ``u64 batch_id`` then the inputs.  ``RESULT``
  (container -> frontend): ``u64 batch_id`` then the outputs.  ``ERROR``: ``u64 batch_id``
  then a UTF-8 message.
- Values (inputs or outputs) are encoded as one of: a raw numpy array (``K_ARRAY``: dtype
  string, shape, C-order bytes; the first dimension is the batch), a list of byte strings
  (``K_BYTES``), a list of str (``K_STR``), or a JSON list (``K_JSON``, only for outputs that
  are none of these, such as dicts).  Nothing is JSON per item on the array path.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "BATCH",
    "ERROR",
    "HEARTBEAT",
    "HELLO",
    "MAX_FRAME_BYTES",
    "PROTOCOL_VERSION",
    "REFUSE",
    "RESULT",
    "WELCOME",
    "FrameDecoder",
    "ProtocolError",
    "decode_batch",
    "decode_error",
    "decode_json",
    "decode_values",
    "encode_batch",
    "encode_error",
    "encode_frame",
    "encode_json",
    "encode_values",
]

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 256 << 20

HELLO = 1
WELCOME = 2
REFUSE = 3
HEARTBEAT = 4
BATCH = 5
RESULT = 6
ERROR = 7
_TYPES = frozenset((HELLO, WELCOME, REFUSE, HEARTBEAT, BATCH, RESULT, ERROR))

K_ARRAY = 0
K_BYTES = 1
K_STR = 2
K_JSON = 3

_HEAD = struct.Struct("<IB")
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


class ProtocolError(Exception):
    """A frame that breaks the rules above; the connection that sent it is dropped."""


def encode_frame(kind: int, payload: bytes = b"") -> bytes:
    return _HEAD.pack(len(payload) + 1, kind) + payload


def encode_json(kind: int, obj: Any) -> bytes:
    return encode_frame(kind, json.dumps(obj).encode())


def decode_json(payload: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(f"handshake payload is not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("handshake payload must be a JSON object")
    return obj


class FrameDecoder:
    """Incremental frame parser: ``feed(data)`` returns the complete ``(type, payload)``s."""

    __slots__ = ("_buf", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self._buf = bytearray()
        self.max_frame_bytes = max_frame_bytes

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf
        buf += data
        out: list[tuple[int, bytes]] = []
        pos = 0
        n = len(buf)
        while n - pos >= 5:
            length, kind = _HEAD.unpack_from(buf, pos)
            if length < 1 or length > self.max_frame_bytes:
                raise ProtocolError(f"frame length {length} outside [1, {self.max_frame_bytes}]")
            if kind not in _TYPES:
                raise ProtocolError(f"unknown frame type {kind}")
            end = pos + 4 + length
            if end > n:
                break
            out.append((kind, bytes(buf[pos + 5 : end])))
            pos = end
        if pos:
            del buf[:pos]
        return out


# --------------------------------------------------------------------------- values


def encode_values(values: Any) -> bytes:
    """Encode a batch of values (see the module rules for the kinds)."""
    if isinstance(values, np.ndarray):
        a = np.ascontiguousarray(values)
        if a.dtype.hasobject:
            return encode_values(a.tolist())
        dt = a.dtype.str.encode()
        head = bytes((K_ARRAY, len(dt))) + dt + bytes((a.ndim,))
        head += struct.pack(f"<{a.ndim}Q", *a.shape)
        return head + a.tobytes()
    seq = list(values)
    if seq and all(isinstance(v, bytes | bytearray | memoryview) for v in seq):
        parts = [bytes((K_BYTES,)), _U32.pack(len(seq))]
        for v in seq:
            parts.append(_U32.pack(len(v)))
            parts.append(bytes(v))
        return b"".join(parts)
    if seq and all(isinstance(v, str) for v in seq):
        return _encode_str(seq)
    if seq and all(isinstance(v, bool | int | float | np.number) for v in seq):
        return encode_values(np.asarray(seq))
    if seq and all(isinstance(v, np.ndarray) for v in seq):
        try:
            return encode_values(np.stack(seq))
        except ValueError:
            pass  # ragged: fall through to JSON
    return bytes((K_JSON,)) + json.dumps(_jsonable(seq)).encode()


def _encode_str(seq: Sequence[str]) -> bytes:
    parts = [bytes((K_STR,)), _U32.pack(len(seq))]
    for s in seq:
        b = s.encode()
        parts.append(_U32.pack(len(b)))
        parts.append(b)
    return b"".join(parts)


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, bytes):
        return x.decode("latin-1")
    return x


def decode_values(buf: bytes | memoryview, pos: int = 0) -> Any:
    """Decode what ``encode_values`` wrote: an ndarray, or a list of bytes/str/JSON values."""
    mv = memoryview(buf)
    try:
        kind = mv[pos]
        pos += 1
        if kind == K_ARRAY:
            ld = mv[pos]
            dt = np.dtype(bytes(mv[pos + 1 : pos + 1 + ld]).decode())
            pos += 1 + ld
            ndim = mv[pos]
            pos += 1
            shape = struct.unpack_from(f"<{ndim}Q", mv, pos)
            pos += 8 * ndim
            count = int(np.prod(shape)) if ndim else 1
            if len(mv) - pos != count * dt.itemsize:
                raise ProtocolError(
                    f"array of shape {shape} and dtype {dt} needs {count * dt.itemsize} bytes,"
                    f" got {len(mv) - pos}"
                )
            return np.frombuffer(mv[pos:], dtype=dt).reshape(shape)
        if kind in (K_BYTES, K_STR):
            (n,) = _U32.unpack_from(mv, pos)
            pos += 4
            out: list[Any] = []
            for _ in range(n):
                (ln,) = _U32.unpack_from(mv, pos)
                pos += 4
                b = bytes(mv[pos : pos + ln])
                if len(b) != ln:
                    raise ProtocolError("truncated byte string")
                pos += ln
                out.append(b.decode() if kind == K_STR else b)
            return out
        if kind == K_JSON:
            v = json.loads(bytes(mv[pos:]))
            if not isinstance(v, list):
                raise ProtocolError("JSON values must be a list")
            return v
    except ProtocolError:
        raise
    except (struct.error, ValueError, TypeError, IndexError, UnicodeDecodeError) as e:
        raise ProtocolError(f"bad values encoding: {e}") from None
    raise ProtocolError(f"unknown value kind {kind}")


def encode_batch(kind: int, batch_id: int, values: Any) -> bytes:
    """A ``BATCH`` or ``RESULT`` frame."""
    return encode_frame(kind, _U64.pack(batch_id) + encode_values(values))


def decode_batch(payload: bytes) -> tuple[int, Any]:
    if len(payload) < 9:
        raise ProtocolError(f"batch frame of {len(payload)} bytes is too short")
    (bid,) = _U64.unpack_from(payload, 0)
    return bid, decode_values(payload, 8)


def encode_error(batch_id: int, message: str) -> bytes:
    return encode_frame(ERROR, _U64.pack(batch_id) + message.encode())


def decode_error(payload: bytes) -> tuple[int, str]:
    if len(payload) < 8:
        raise ProtocolError("error frame is too short")
    (bid,) = _U64.unpack_from(payload, 0)
    return bid, payload[8:].decode(errors="replace")
