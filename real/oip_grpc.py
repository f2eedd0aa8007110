"""The Open Inference Protocol (KServe v2) over gRPC, so ``tritonclient.grpc`` works.

Theory of operation: ``inference.GRPCInferenceService`` served by ``grpc.aio`` on the
server's own event loop (``grpc_port``, Triton's 8001 by default), so every handler runs
on the loop thread that owns the engine, exactly like an HTTP handler: the engine is
single-threaded and is never called from another thread.  ``ModelInfer`` goes the HTTP
handler's way (``clipperlab.real.oip``): the tensor is checked by ``parse_tensor`` and cut
into queries by ``OipHandler.rows``, each query goes through the driver, and the replies
become the ``output`` and ``default`` tensors of ``output_arrays``, sent as
``raw_output_contents`` (the binary tensor data: little-endian elements, BYTES elements
each after its 4-byte length), which is what Triton sends.

The service's messages are those ``tritonclient`` ships (``tritonclient.grpc.service_pb2``
and ``service_pb2_grpc``, generated from Triton's ``grpc_service.proto``): the client and
the server then speak one schema, and pip pins the protobuf runtime they were generated
for (no protoc step at build time).

Rules:
- An OIP *model* is a clipperlab *application*, version ``"1"`` (as over HTTP).
- Inputs: exactly one tensor, in ``contents`` (``int_contents``, ``fp64_contents``,
  ``bytes_contents``...) or in ``raw_input_contents``; fields checked as over HTTP, a bad
  one is ``INVALID_ARGUMENT`` naming the field.  Statuses: unknown model or version
  ``NOT_FOUND``; more rows than ``max_batch_items`` ``RESOURCE_EXHAUSTED``; overload or a
  server shutting down ``UNAVAILABLE``; an answer that cannot be encoded ``INTERNAL``.
- ``ServerReady`` is the HTTP ``/v2/health/ready``: accepting, and every application with
  linked models has a replica connected; ``ModelReady`` is false for an unknown model.
- ``ModelConfig``, ``ModelStatistics`` and ``RepositoryIndex`` answer what the HTTP
  routes answer (one dict, parsed into the message).  ``ModelStreamInfer`` answers each
  request in turn, errors in ``error_message``.
- Not supported, answered ``UNIMPLEMENTED`` with the reason: repository load/unload (an
  OIP model is deployed through the admin API), system and CUDA shared memory (tensors
  travel in the request), trace and log settings.
- Messages up to ``max_body_bytes`` each way (gRPC's own default is 4 MiB).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any, NoReturn

# The server forks only to exec container processes at once: gRPC's fork handlers have
# nothing to protect, and with them on every start logged "skipping fork() handlers".
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc  # noqa: E402 - after the setting above, which gRPC reads when it loads
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from clipperlab.engine import Application, Reply

from .inputs import BadInput
from .oip import REPOSITORY_CONTROL, output_arrays, parse_tensor, server_metadata, tensor_bytes

if TYPE_CHECKING:
    from .frontend import QueryFrontend

__all__ = ["GrpcInferenceService", "start_grpc"]

log = logging.getLogger("clipperlab.oip_grpc")

_CODE_OF_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
}
# the contents field that carries each datatype (FP16 has none: it travels raw)
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_SHARED_MEMORY = (
    "shared memory is not supported: send the tensors in the request (contents or"
    " raw_input_contents)"
)


def _unimplemented(reason: str) -> Callable[[Any, Any, Any], Coroutine[Any, Any, NoReturn]]:
    """A service method that answers UNIMPLEMENTED with ``reason``."""

    async def method(self: Any, request: Any, context: Any) -> NoReturn:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, reason)
        raise AssertionError("unreachable")  # abort raises

    return method


class _Failed(Exception):
    """A request that gets a gRPC status instead of an answer."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class GrpcInferenceService(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """The service; each call runs on the event loop that owns the engine."""

    def __init__(self, fe: QueryFrontend) -> None:
        self.fe = fe
        self.oip = fe.oip
        self.engine = fe.engine

    # -- health and metadata
    async def ServerLive(self, request: Any, context: Any) -> Any:  # noqa: N802
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        return pb.ServerReadyResponse(ready=self.fe.accepting and self.oip.server_ready())

    async def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        app = self.engine.registry.apps.get(request.name)
        ok = app is not None and request.version in ("", "1") and self.oip.ready(app)
        return pb.ModelReadyResponse(ready=ok)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        return json_format.ParseDict(server_metadata(), pb.ServerMetadataResponse())

    async def ModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        app = await self._app(request.name, request.version, context)
        return json_format.ParseDict(self.oip.metadata(app), pb.ModelMetadataResponse())

    async def ModelConfig(self, request: Any, context: Any) -> Any:  # noqa: N802
        app = await self._app(request.name, request.version, context)
        config = json_format.ParseDict(self.oip.model_config(app), model_config_pb2.ModelConfig())
        return pb.ModelConfigResponse(config=config)

    async def ModelStatistics(self, request: Any, context: Any) -> Any:  # noqa: N802
        app = await self._app(request.name, request.version, context) if request.name else None
        return json_format.ParseDict(self.oip.statistics(app), pb.ModelStatisticsResponse())

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:  # noqa: N802
        rows = self.oip.repository_index()
        if request.ready:
            rows = [r for r in rows if r["state"] == "READY"]
        return json_format.ParseDict({"models": rows}, pb.RepositoryIndexResponse())

    async def _app(self, name: str, version: str, context: Any) -> Application:
        try:
            return self._find(name, version)
        except _Failed as e:
            await context.abort(e.code, str(e))
            raise  # abort raises; this line is for the type checker

    def _find(self, name: str, version: str) -> Application:
        app = self.engine.registry.apps.get(name)
        if app is None:
            raise _Failed(grpc.StatusCode.NOT_FOUND, f"model {name!r} does not exist")
        if version not in ("", "1"):
            raise _Failed(grpc.StatusCode.NOT_FOUND,
                          f"model {name!r} has no version {version!r}; it has ['1']")
        return app

    # -- inference
    async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
        try:
            return await self.infer(request)
        except _Failed as e:
            await context.abort(e.code, str(e))

    async def ModelStreamInfer(  # noqa: N802
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        async for request in request_iterator:
            try:
                yield pb.ModelStreamInferResponse(infer_response=await self.infer(request))
            except _Failed as e:
                yield pb.ModelStreamInferResponse(error_message=str(e))

    async def infer(self, request: Any) -> Any:
        """One ``ModelInferRequest``: checked, queried through the engine, answered."""
        if not self.fe.accepting:
            raise _Failed(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        app = self._find(request.model_name, request.model_version)
        try:
            rows = self._rows(app, request)
            wanted = self._wanted(request)
        except BadInput as e:
            self.fe.errors += 1
            raise _Failed(_CODE_OF_STATUS.get(e.status, grpc.StatusCode.INVALID_ARGUMENT),
                          str(e)) from None
        done: asyncio.Future[list[Reply]] = asyncio.get_running_loop().create_future()

        def finish(replies: list[Reply]) -> None:
            if not done.done():
                done.set_result(replies)

        self.oip.query_rows(app, rows, finish)
        replies = await done
        refused = [r for r in replies if r.refused]
        if refused:
            raise _Failed(grpc.StatusCode.UNAVAILABLE,
                          refused[0].prediction.explanation or "overloaded")
        try:
            return self._response(app, request, replies, wanted)
        except (TypeError, ValueError, OverflowError) as e:  # outputs numpy cannot hold
            log.error("cannot encode the gRPC answer for %s: %s", app.name, e)
            self.fe.refused["handler_error"] += 1
            raise _Failed(grpc.StatusCode.INTERNAL,
                          f"internal error: the answer cannot be encoded: {e}") from None

    def _rows(self, app: Application, request: Any) -> list[Any]:
        """The request's one input tensor as queries, through the HTTP path's checks."""
        if len(request.inputs) != 1:
            raise BadInput(
                f"inputs: inference request needs exactly one input tensor for {app.name!r},"
                f" got {len(request.inputs)}"
            )
        t = request.inputs[0]
        raw = list(request.raw_input_contents)
        if len(raw) > 1:
            raise BadInput(f"raw_input_contents: {len(raw)} entries for one input tensor")
        doc: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        if raw:
            doc["parameters"] = {"binary_data_size": len(raw[0])}
            binary = memoryview(raw[0])
        else:
            binary = memoryview(b"")
            field = _CONTENTS.get(t.datatype)
            if field is not None:
                doc["data"] = list(getattr(t.contents, field))
        if t.datatype in _CONTENTS and not raw and t.datatype != "BYTES":
            other = [f for f in set(_CONTENTS.values()) - {_CONTENTS[t.datatype]}
                     if len(getattr(t.contents, f))]
            if other:
                raise BadInput(f"input {t.name!r}: contents.{other[0]} holds data for a"
                               f" {t.datatype} tensor; use contents.{_CONTENTS[t.datatype]}")
        tensor = parse_tensor(doc, request.ByteSize(), len(binary))
        if tensor.data is None and tensor.binary_size is None:
            raise BadInput(f"input {t.name!r} has no data (contents or raw_input_contents)")
        rows: list[Any] = self.oip.rows(app, tensor, binary)
        return rows

    @staticmethod
    def _wanted(request: Any) -> list[str]:
        names = [o.name for o in request.outputs] or ["output", "default"]
        for i, n in enumerate(names):
            if n not in ("output", "default"):
                raise BadInput(f"outputs[{i}].name {n!r} is unknown; outputs are output, default")
        return names

    @staticmethod
    def _response(app: Application, request: Any, replies: list[Reply],
                  wanted: list[str]) -> Any:
        resp = pb.ModelInferResponse(model_name=app.name, model_version="1", id=request.id)
        for name, dt, arr in output_arrays(replies, wanted):
            resp.outputs.add(name=name, datatype=dt, shape=list(arr.shape))
            resp.raw_output_contents.append(tensor_bytes(dt, arr))
        return resp

    # -- not supported here: UNIMPLEMENTED with the reason (grpc looks each up by name)
    RepositoryModelLoad = _unimplemented(REPOSITORY_CONTROL)
    RepositoryModelUnload = _unimplemented(REPOSITORY_CONTROL)
    SystemSharedMemoryStatus = _unimplemented(_SHARED_MEMORY)
    SystemSharedMemoryRegister = _unimplemented(_SHARED_MEMORY)
    SystemSharedMemoryUnregister = _unimplemented(_SHARED_MEMORY)
    CudaSharedMemoryStatus = _unimplemented(_SHARED_MEMORY)
    CudaSharedMemoryRegister = _unimplemented(_SHARED_MEMORY)
    CudaSharedMemoryUnregister = _unimplemented(_SHARED_MEMORY)
    TraceSetting = _unimplemented("trace settings are not supported: see /metrics for timings")
    LogSettings = _unimplemented("log settings are not supported: set --log-level at start")


async def start_grpc(fe: QueryFrontend, host: str, port: int, max_message_bytes: int
                     ) -> tuple[grpc.aio.Server, int]:
    """Serve ``GRPCInferenceService`` for ``fe`` on the running loop; returns the server
    and the port bound (``port`` 0: one the kernel picks)."""
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
    ])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(GrpcInferenceService(fe), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"gRPC: cannot listen on {address} (grpc_port {port} in use?)")
    await server.start()
    return server, bound
