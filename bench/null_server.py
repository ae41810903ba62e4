"""A null Open Inference Protocol server: answers ModelInfer at once with a canned response
shaped like the demo models' (label INT64[1], probabilities FP32[1, 2]), doing no work. Its
ModelMetadata names the demo's input, or the one `--input` gives (a real model's: the sweep's
ceiling probe sends the rows it sends that model).

It measures what the load generator and Python gRPC cost on this machine: no real server
can beat it with the same client, so it is the ceiling printed next to scorewire's numbers.

    python -m bench.null_server [--port N]     # prints "null server on 127.0.0.1:PORT"
    python -m bench.null_server --stall-after-s 2 --stall-s 1   # freezes once, for the
                                                  # coordinated-omission test
    python -m bench.null_server --service-ms 20   # answers one at a time, 20 ms each: a server
                                                  # of known capacity (50/s), for the sweep's tests
"""

from __future__ import annotations

import argparse
import asyncio
import time

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb


def canned_response() -> bytes:
    response = pb.ModelInferResponse(model_name="null", model_version="1")
    response.outputs.add(name="label", datatype="INT64", shape=[1])
    response.raw_output_contents.append(np.zeros(1, np.int64).tobytes())
    response.outputs.add(name="probabilities", datatype="FP32", shape=[1, 2])
    response.raw_output_contents.append(np.zeros(2, np.float32).tobytes())
    return response.SerializeToString()


async def serve(port: int, stall_after_s: float | None = None, stall_s: float = 1.0,
                input_spec: str = "float_input:FP32:-1,32", outputs: str = "", service_s: float = 0.0) -> None:
    answer = canned_response()
    input_name, input_type, input_shape = input_spec.rsplit(":", 2)
    first = []

    async def infer(request: bytes, context) -> bytes:
        if stall_after_s is not None:
            now = time.monotonic()
            if not first:
                first.append(now)
            elif len(first) == 1 and now - first[0] >= stall_after_s:
                first.append(now)
                time.sleep(stall_s)  # the whole server freezes once: nothing is answered meanwhile
        if service_s:
            time.sleep(service_s)  # the whole server waits: one answer at a time
        return answer

    async def metadata(request, context):
        return pb.ServerMetadataResponse(name="null-oip-server", version="0")

    async def model_metadata(request, context):
        response = pb.ModelMetadataResponse(name=request.name or "null", versions=["1"], platform="null")
        response.inputs.add(name=input_name, datatype=input_type, shape=[int(d) for d in input_shape.split(",")])
        response.outputs.add(name="label", datatype="INT64", shape=[-1])
        response.outputs.add(name="probabilities", datatype="FP32", shape=[-1, 2])
        for name in filter(None, outputs.split(",")):  # a real model's, named (what it answers is the canned)
            if name not in ("label", "probabilities"):
                response.outputs.add(name=name, datatype="FP32", shape=[-1])
        return response

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(
            infer, request_deserializer=lambda b: b, response_serializer=lambda b: b),
        "ServerMetadata": grpc.unary_unary_rpc_method_handler(
            metadata, request_deserializer=pb.ServerMetadataRequest.FromString,
            response_serializer=pb.ServerMetadataResponse.SerializeToString),
        "ModelMetadata": grpc.unary_unary_rpc_method_handler(
            model_metadata, request_deserializer=pb.ModelMetadataRequest.FromString,
            response_serializer=pb.ModelMetadataResponse.SerializeToString),
    }),))
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"null server on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--stall-after-s", type=float, help="freeze once, this long after the first request")
    parser.add_argument("--stall-s", type=float, default=1.0, help="how long the freeze lasts")
    parser.add_argument("--input", default="float_input:FP32:-1,32", help="the input its ModelMetadata names, "
                        "NAME:DATATYPE:SHAPE (a real model's, so that the same rows can be sent to it)")
    parser.add_argument("--outputs", default="", help="more output names its ModelMetadata lists (comma-separated)")
    parser.add_argument("--service-ms", type=float, default=0.0, help="each answer takes this long, one at a "
                        "time (the whole server waits): its capacity is 1000/ms requests/s")
    args = parser.parse_args()
    try:
        import uvloop  # the same event loop scorewire uses, for a like-for-like ceiling

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    asyncio.run(serve(args.port, args.stall_after_s, args.stall_s, args.input, args.outputs, args.service_ms / 1000))


if __name__ == "__main__":
    main()
