"""The hand-written floor: what one engineer writes in an afternoon to serve an ONNX model over
the Open Inference Protocol, with nothing between the wire and onnxruntime. grpc.aio for
ModelInfer (raw tensor contents in and out, np.frombuffer, no copy) and aiohttp for the REST
route (orjson), one process, one onnxruntime session (1 thread), no batching: every request is
one `session.run`. No server can do the same work for less, so peers_bench reads every other
server's CPU per request as a multiple of this one's.

Run by bench/peers_bench.py in scorewire's own environment (it needs grpcio, tritonclient's
generated messages, aiohttp, orjson, onnxruntime, uvloop); it imports nothing of the bench or
the engine.

    python bench/peers/floor_server.py --model mlp.onnx --http-port P --grpc-port Q
"""

import argparse
import asyncio

import grpc
import numpy as np
import onnxruntime as ort
import orjson
from tritonclient.grpc import service_pb2 as pb

DTYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64", np.dtype(np.float64): "FP64",
          np.dtype(np.int32): "INT32"}


def session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def answer(s: ort.InferenceSession, name: str, outputs: list[str], request: pb.ModelInferRequest) -> pb.ModelInferResponse:
    """One ModelInfer, the floor's whole work: the raw input viewed, session.run, raw outputs
    (bench/overhead_bench.py times it beside scorewire's path)."""
    shape = list(request.inputs[0].shape)
    x = np.frombuffer(request.raw_input_contents[0], np.float32).reshape(shape)
    response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
    for out, value in zip(outputs, s.run(outputs, {name: x})):
        response.outputs.add(name=out, datatype=DTYPES[value.dtype], shape=value.shape)
        response.raw_output_contents.append(value.tobytes())
    return response


async def main(args) -> None:
    from aiohttp import web

    s = session(args.model)
    name = s.get_inputs()[0].name
    outputs = [o.name for o in s.get_outputs()]

    async def infer(request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        return answer(s, name, outputs, request)

    async def ready(request, context):
        return pb.ModelReadyResponse(ready=True)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(
            infer, request_deserializer=pb.ModelInferRequest.FromString,
            response_serializer=pb.ModelInferResponse.SerializeToString),
        "ModelReady": grpc.unary_unary_rpc_method_handler(
            ready, request_deserializer=pb.ModelReadyRequest.FromString,
            response_serializer=pb.ModelReadyResponse.SerializeToString),
    }),))
    server.add_insecure_port(f"127.0.0.1:{args.grpc_port}")
    await server.start()

    async def rest(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        tensor = body["inputs"][0]
        x = np.asarray(tensor["data"], np.float32).reshape(tensor["shape"])
        tensors = [{"name": out, "datatype": DTYPES[value.dtype], "shape": list(value.shape),
                   "data": value.ravel().tolist()} for out, value in zip(outputs, s.run(outputs, {name: x}))]
        return web.Response(body=orjson.dumps({"model_name": request.match_info["model"], "outputs": tensors}),
                            content_type="application/json")

    app = web.Application()
    app.router.add_post("/v2/models/{model}/infer", rest)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.http_port).start()
    print("ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--grpc-port", type=int, required=True)
    import uvloop

    uvloop.run(main(p.parse_args()))
