"""Open Inference Protocol gRPC servicer (grpc.aio) and the standard health service.

Translation only: protobuf -> arrays (codec), the front door (engine/frontdoor.py: admission,
drain, ids, deadlines, counts), arrays -> protobuf, and ErrorCode -> grpc.StatusCode. Requests
larger than `max_message_bytes`, or past `max_inflight_bytes`, are refused before they are
parsed (the deserializer only measures them).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import engine
from engine.codec.oip import decode_request, encode_response
from engine.errors import MAX_MESSAGE, EngineError, ErrorCode, clip
from engine.frontdoor import FrontDoor
from engine.ingress import triton
from engine.ingress._pb import open_inference_grpc_pb2 as pb

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"

STATUS = {
    ErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
}


class _Refused:
    """Stands in for a request refused before it was parsed (too large, past the bytes in
    flight, or not a ModelInferRequest)."""

    __slots__ = ("error",)

    def __init__(self, error: EngineError):
        self.error = error

    def decode(self):
        raise self.error


class _Held:
    """A parsed request. Its bytes count towards server.max_inflight_bytes until it is
    answered or refused (`done`), or gone (dropped by the transport before the handler ran)."""

    __slots__ = ("message", "release", "__weakref__")

    def __init__(self, message: pb.ModelInferRequest):
        self.message = message
        self.release = None  # a weakref.finalize: runs once, when called or when this is gone

    def done(self) -> None:
        """Answered or refused: its message goes now, whatever still refers to this holder (a
        traceback kept by the transport, say), and so does its count."""
        self.message = None
        if self.release is not None:
            self.release()


def _message(request):
    return request.message if isinstance(request, _Held) else request


def _param(value) -> pb.InferParameter:
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=value)
    return pb.InferParameter(string_param=str(value))


def model_parameters(served) -> dict:
    """ModelMetadata's parameters (gRPC and REST): how the version is served."""
    model = served.model
    batching = model.settings.batching
    return {
        "execution_provider": model.provider,
        "instances": model.settings.instances,
        "max_batch_size": batching.max_batch_size,
        "dispatch": batching.dispatch,
        "max_queue_delay_us": batching.max_queue_delay_us,
        "max_rows_per_request": served.limits.max_rows,
        "execution": "inline" if model.inline else "threads",
        "io_binding": model.io_binding or "off",
        "io_binding_staging": model.staging or "none",
    }


class InferenceServicer:
    def __init__(self, front: FrontDoor, stream_max_in_flight: int):
        self.front = front
        self.registry = front.registry
        self.stream_max_in_flight = stream_max_in_flight

    # -- wiring --------------------------------------------------------------------------
    def _parse_infer(self, data: bytes):
        size = len(data)
        front = self.front
        refused = front.too_large(size) or front.over_budget(size)  # not parsed: its bytes go now
        if refused is not None:
            return _Refused(refused)
        try:
            held = _Held(pb.ModelInferRequest.FromString(data))
        except DecodeError as exc:
            return _Refused(EngineError(ErrorCode.INVALID_ARGUMENT, f"the {size} request bytes are not a valid "
                                        f"inference.ModelInferRequest ({exc})"))
        front.hold(size)
        held.release = weakref.finalize(held, front.release, size)
        return held

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(fn, req_type, resp_type):
            """A method whose request bytes that do not parse get INVALID_ARGUMENT (the
            transport's own answer to a deserializer that raises is UNKNOWN)."""

            def parse(data: bytes):
                try:
                    return req_type.FromString(data)
                except DecodeError as exc:
                    return _Refused(EngineError(ErrorCode.INVALID_ARGUMENT, f"the {len(data)} request bytes are "
                                                f"not a valid inference.{req_type.__name__} ({exc})"))

            async def checked(request, context):
                if isinstance(request, _Refused):
                    await context.abort(STATUS[request.error.code], request.error.message)
                return await fn(request, context)

            return grpc.unary_unary_rpc_method_handler(
                checked, request_deserializer=parse, response_serializer=resp_type.SerializeToString
            )

        methods = {
            "ServerLive": unary(self.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
            "ServerReady": unary(self.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
            "ModelReady": unary(self.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
            "ServerMetadata": unary(self.server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
            "ModelMetadata": unary(self.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
            "ModelInfer": grpc.unary_unary_rpc_method_handler(
                self.model_infer,
                request_deserializer=self._parse_infer,
                response_serializer=pb.ModelInferResponse.SerializeToString,
            ),
            "ModelConfig": unary(self.model_config, pb.ModelConfigRequest, pb.ModelConfigResponse),
            "ModelStatistics": unary(self.model_statistics, pb.ModelStatisticsRequest, pb.ModelStatisticsResponse),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
                self.model_stream_infer,
                request_deserializer=self._parse_infer,
                response_serializer=_serialized,
            ),
        }
        return grpc.method_handlers_generic_handler(SERVICE, methods)

    # -- health and metadata -------------------------------------------------------------
    async def server_live(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request, context):
        return pb.ServerReadyResponse(ready=self.front.ready)

    async def model_ready(self, request, context):
        try:
            self.front.pipeline.router.answering(request.name, request.version)
        except EngineError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.front.ready)

    async def server_metadata(self, request, context):
        return pb.ServerMetadataResponse(name="scorewire", version=engine.__version__,
                                         extensions=triton.EXTENSIONS)

    async def _served(self, request, context):
        """The version a metadata-like request names; NOT_FOUND (with the message) otherwise."""
        try:
            return self.front.pipeline.router.answering(request.name, request.version)
        except EngineError as exc:
            await context.abort(STATUS[exc.code], exc.message)

    async def model_metadata(self, request, context):
        served = await self._served(request, context)
        model = served.model
        meta = pb.ModelMetadataResponse.TensorMetadata
        params = model_parameters(served)
        return pb.ModelMetadataResponse(
            name=served.name,
            versions=[served.version],
            platform="onnxruntime_onnx",
            inputs=[meta(name=t.name, datatype=t.datatype, shape=t.shape) for t in model.schema.inputs],
            outputs=[meta(name=t.name, datatype=t.datatype, shape=t.shape) for t in model.schema.outputs],
            parameters={k: _param(v) for k, v in params.items()},
        )

    # -- Triton's extensions ---------------------------------------------------------------
    async def model_config(self, request, context):
        return pb.ModelConfigResponse(config=triton.model_config(await self._served(request, context)))

    async def model_statistics(self, request, context):
        versions = [await self._served(request, context)] if request.name else list(self.registry.all())
        return triton.model_statistics(self.front, versions)

    # -- inference -----------------------------------------------------------------------
    async def _infer(self, request, deadline_ns: int | None) -> pb.ModelInferResponse:
        try:
            if isinstance(request, _Refused):
                return await self.front.infer("", request.decode, deadline_ns)
            message = request.message
            served, request_id, outputs = await self.front.infer(
                message.model_name, lambda: decode_request(message), deadline_ns)
            return encode_response(served.name, served.version, request_id, outputs)
        finally:
            if isinstance(request, _Held):
                request.done()

    async def model_infer(self, request, context: grpc.aio.ServicerContext):
        remaining = context.time_remaining()
        deadline_ns = None if remaining is None else time.monotonic_ns() + int(remaining * 1e9)
        name = getattr(_message(request), "model_name", "")
        try:
            return await self._infer(request, deadline_ns)
        except EngineError as exc:
            status, message = STATUS[exc.code], exc.message
        except Exception as exc:  # a bug, not bad input: keep the traceback in the server log
            log.exception("ModelInfer failed unexpectedly")
            self.front.count(name, ErrorCode.INTERNAL.name)
            status, message = grpc.StatusCode.INTERNAL, clip(f"internal error: {exc!r}", MAX_MESSAGE)
        # Aborted outside the except: the transport keeps its abort's exception as long as the
        # call's state lives, and chained to ours it would keep the request's frames (and the
        # arrays decoded from it) alive with it.
        del request
        await context.abort(status, message)

    async def model_stream_infer(self, request_iterator, context: grpc.aio.ServicerContext):
        """Requests of a stream are scored concurrently; each response carries its request's id;
        an error is a message, and the stream goes on. At most stream_max_in_flight requests are
        read and not yet answered on the wire: a client that stops reading its responses stops
        the server reading its requests (no unbounded buffering)."""
        slots = asyncio.Semaphore(self.stream_max_in_flight)
        done: asyncio.Queue = asyncio.Queue()
        tasks: set[asyncio.Task] = set()

        async def one(request) -> None:
            parsed = isinstance(request, _Held)  # what an error echoes, read before the request is let go
            name, version, rid = ((request.message.model_name, request.message.model_version, request.message.id)
                                  if parsed else ("", "", ""))
            try:
                response = await self._infer(request, None)
                done.put_nowait(_stream_answer(response.SerializeToString()))
            except Exception as exc:
                message = exc.message if isinstance(exc, EngineError) else clip(f"internal error: {exc}", MAX_MESSAGE)
                code = exc.code.name if isinstance(exc, EngineError) else "INTERNAL"
                if not isinstance(exc, EngineError):
                    log.error("ModelStreamInfer: a request failed unexpectedly", exc_info=exc)
                    self.front.count(name, code)
                echo = pb.ModelInferResponse(id=rid, model_name=name, model_version=version)
                done.put_nowait(
                    pb.ModelStreamInferResponse(error_message=f"[{code}] request '{clip(rid)}': {message}", infer_response=echo)
                )

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await slots.acquire()
                    task = asyncio.get_running_loop().create_task(one(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if tasks:
                    await asyncio.gather(*list(tasks), return_exceptions=True)
            finally:
                done.put_nowait(None)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while True:
                item = await done.get()
                if item is None:
                    break
                yield item  # returns once gRPC has taken the message (flow control: a client not reading stalls it)
                slots.release()  # a slot is a request read and not yet sent back: memory stays bounded
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()


def _stream_answer(response: bytes) -> bytes:
    """A ModelStreamInferResponse holding `response` (a serialized ModelInferResponse) as its
    infer_response (field 2), written as protobuf would, without copying the message into a
    wrapper first."""
    n, size = len(response), bytearray()
    while n >= 0x80:
        size.append((n & 0x7F) | 0x80)
        n >>= 7
    size.append(n)
    return b"\x12" + bytes(size) + response


def _serialized(message) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


def build_health() -> health.aio.HealthServicer:
    return health.aio.HealthServicer()


async def set_health(servicer: health.aio.HealthServicer, serving: bool, names: list[str]) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ["", SERVICE, *names]:
        await servicer.set(name, status)


def add_health(server: grpc.aio.Server, servicer) -> None:
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
