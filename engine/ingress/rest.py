"""Open Inference Protocol over HTTP/REST (KServe v2), on the gRPC servicer's data plane.

uvicorn (httptools parser) serves a bare ASGI callable on the server's own event loop;
bench/http_candidates.py measured it against aiohttp.web with the same client. Requests go
through the front door (engine/frontdoor.py) as ModelInfer's do: the same admission (bytes in
flight included), drain, ids, deadlines and counts; errors are JSON `{"error": message}`
with an HTTP status.

    GET  /v2/health/live | /v2/health/ready       200 or 503
    GET  /v2                                      server metadata
    GET  /v2/models/NAME[/versions/V]             model metadata
    GET  /v2/models/NAME[/versions/V]/ready       200 or 503 (404: unknown)
    POST /v2/models/NAME[/versions/V]/infer       JSON, or the binary tensor data extension
    POST /v2/models/NAME/feedback                 labels of earlier requests (engine/performance/)
"""

from __future__ import annotations

import contextlib
import logging
import socket

import orjson
import uvicorn

import engine
from engine.codec.oip_json import HEADER_LENGTH, decode_json_request, encode_json_response
from engine.errors import MAX_MESSAGE, EngineError, ErrorCode, cannot_bind, clip
from engine.frontdoor import FrontDoor
from engine.ingress import triton

log = logging.getLogger(__name__)

HTTP_STATUS = {
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.RESOURCE_EXHAUSTED: 429,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}
_JSON = [(b"content-type", b"application/json")]
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})  # without a token when auth.open_health


class _Embedded(uvicorn.Server):
    """uvicorn inside scorewire's event loop: the App handles the signals, not uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


class RestIngress:
    def __init__(self, front: FrontDoor, host: str, port: int, reuse_port: bool = False, tls=None, auth=None,
                 open_health: bool = True, on_denied=None):
        self.front = front
        self.registry = front.registry
        self.host, self.port, self.reuse_port = host, port, reuse_port
        self.tls = tls  # [server.tls]: the same certificate (and client CA) as gRPC
        self.auth = auth  # a TokenAuth (its token check), or None
        self.open_health = open_health
        self.on_denied = on_denied
        self._server: _Embedded | None = None
        self._task = None

    # -- lifecycle -------------------------------------------------------------------------------
    def _socket(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host.strip("[]") else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.reuse_port:  # workers share the port: the kernel spreads connections over them
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((self.host.strip("[]"), self.port))
        except OSError as exc:
            sock.close()
            raise cannot_bind("HTTP", self.host, self.port, "http_port", exc) from None
        sock.listen(1024)
        sock.setblocking(False)
        return sock

    async def start(self) -> int:
        import asyncio

        sock = self._socket()
        self.port = sock.getsockname()[1]
        tls = {}
        if self.tls is not None:
            import ssl

            tls = {"ssl_certfile": str(self.tls.cert_file), "ssl_keyfile": str(self.tls.key_file)}
            if self.tls.client_ca_file:
                tls |= {"ssl_ca_certs": str(self.tls.client_ca_file), "ssl_cert_reqs": ssl.CERT_REQUIRED}
        config = uvicorn.Config(self, loop="none", http="httptools", lifespan="off", access_log=False,
                                log_level="warning", server_header=False, date_header=False,
                                timeout_keep_alive=30, timeout_graceful_shutdown=5, **tls)
        self._server = _Embedded(config)
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.005)
        return self.port

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await self._task

    # -- ASGI ------------------------------------------------------------------------------------
    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"].rstrip("/"), scope["method"]
        try:
            if self.auth is not None and not (self.open_health and path in OPEN_PATHS):
                token = [(k.decode("latin-1"), v) for k, v in scope["headers"] if k == b"authorization"]
                if not self.auth.valid(token):
                    if self.on_denied is not None:
                        self.on_denied()
                    return await _reply(send, 401, {"error": "missing or invalid bearer token (send the header "
                                                             "'Authorization: Bearer <token>')"})
            if method == "POST" and path.endswith("/infer"):
                return await self._infer(scope, receive, send, path)
            if method == "POST" and path.endswith("/feedback"):
                return await self._feedback(receive, send, path)
            if method == "POST" and path == "/v2/repository/index":  # Triton's repository extension
                return await _reply(send, 200, triton.repository_index(self.registry.all()))
            status, body = self._get(path)
            if method != "GET" and status != 404:  # a path that exists, by GET
                return await _reply(send, 405, {"error": f"{method} {clip(path)}: use GET"})
            return await _reply(send, status, body)
        except Exception as exc:  # a bug, not bad input: the traceback stays in the server log
            log.exception("REST %s %s failed unexpectedly", method, clip(path))
            return await _reply(send, 500, {"error": clip(f"internal error: {exc!r}", MAX_MESSAGE)})

    def _get(self, path: str) -> tuple[int, dict | None]:
        front = self.front
        if path == "/v2/health/live":
            return 200, None
        if path == "/v2/health/ready":
            return (200 if front.ready else 503), None
        if path == "/v2":
            return 200, {"name": "scorewire", "version": engine.__version__, "extensions": list(triton.EXTENSIONS)}
        if path == "/v2/models/stats":  # Triton's statistics extension: every version served
            return 200, triton.as_json(triton.model_statistics(front, self.registry.all()))
        parts = path.split("/")
        if len(parts) >= 4 and parts[:3] == ["", "v2", "models"]:
            name, rest = parts[3], parts[4:]
            version = ""
            if rest[:1] == ["versions"] and len(rest) >= 2:
                version, rest = rest[1], rest[2:]
            if rest in ([], ["ready"], ["config"], ["stats"]):
                try:
                    served = front.pipeline.router.answering(name, version)
                except EngineError as exc:
                    return HTTP_STATUS[exc.code], {"error": exc.message}
                if rest == ["ready"]:
                    return (200 if front.ready else 503), None
                if rest == ["config"]:
                    return 200, triton.as_json(triton.model_config(served))
                if rest == ["stats"]:
                    return 200, triton.as_json(triton.model_statistics(front, [served]))
                return 200, _metadata(served)
        return 404, {"error": f"no such path: {clip(path)} (served: GET /v2, /v2/health/live|ready, "
                            "/v2/models/NAME[/versions/V][/ready|/config|/stats], /v2/models/stats; "
                            "POST /v2/models/NAME[/versions/V]/infer, /v2/models/NAME/feedback, /v2/repository/index)"}

    async def _feedback(self, receive, send, path: str) -> None:
        """POST /v2/models/NAME/feedback: labels for the rows of earlier requests (by request id)."""
        parts = path.split("/")
        if len(parts) != 5 or parts[:3] != ["", "v2", "models"]:
            return await _reply(send, 404, {"error": f"no such path: {clip(path)} (labels go to "
                                                     "/v2/models/NAME/feedback)"})
        body = await _read(receive, self.front.max_message_bytes)
        if body is None:
            return await _reply(send, 400, {"error": f"the request body is more than server.max_message_bytes = "
                                                     f"{self.front.max_message_bytes} bytes"})
        try:
            taken, errors = self.front.feedback(parts[3], body)
        except EngineError as exc:
            return await _reply(send, HTTP_STATUS[exc.code], {"error": exc.message})
        await _feedback_reply(send, taken, errors)

    async def _infer(self, scope, receive, send, path: str) -> None:
        parts = path.split("/")  # /v2/models/NAME[/versions/V]/infer
        if len(parts) == 5 and parts[:3] == ["", "v2", "models"]:
            name, version = parts[3], ""
        elif len(parts) == 7 and parts[:3] == ["", "v2", "models"] and parts[4] == "versions":
            name, version = parts[3], parts[5]
        else:
            return await _reply(send, 404, {"error": f"no such path: {clip(path)}"})
        headers = dict(scope["headers"])
        front = self.front
        limit = front.max_message_bytes
        if headers.get(b"content-encoding", b"identity") not in (b"identity", b""):
            front.count(name, ErrorCode.INVALID_ARGUMENT.name)
            return await _reply(send, 415, {"error": "compressed request bodies are not supported; send them "
                                                     "uncompressed"})
        body = await _read(receive, limit)
        if body is None:
            front.count(name, ErrorCode.INVALID_ARGUMENT.name)
            return await _reply(send, 400, {"error": f"the request body is more than server.max_message_bytes = "
                                                     f"{limit} bytes"})
        size = len(body)
        refused = front.over_budget(size)
        if refused is not None:
            front.count(name, refused.code.name)
            return await _reply(send, HTTP_STATUS[refused.code], {"error": refused.message})
        front.hold(size)
        try:
            raw_length = headers.get(HEADER_LENGTH.encode())
            binary = {}  # the requested outputs' binary flags, read with the request

            def decode():
                try:
                    header_length = int(raw_length) if raw_length is not None else None
                except ValueError:
                    raise EngineError(ErrorCode.INVALID_ARGUMENT, f"bad {HEADER_LENGTH} header") from None
                decoded, flags = decode_json_request(body, header_length, name, version)
                binary.update(flags)
                return decoded

            served, request_id, outputs = await front.infer(name, decode, None)
            body, json_length = encode_json_response(served.name, served.version, request_id, outputs, binary)
        except EngineError as exc:
            return await _reply(send, HTTP_STATUS[exc.code], {"error": exc.message})
        finally:
            front.release(size)
        headers_out = list(_JSON) if json_length is None else [
            (b"content-type", b"application/octet-stream"), (HEADER_LENGTH.encode(), str(json_length).encode())]
        await send({"type": "http.response.start", "status": 200,
                    "headers": headers_out + [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


async def _feedback_reply(send, taken: int, errors: list) -> None:
    if not errors:
        return await _reply(send, 200, {"accepted": taken})
    listed = [{"index": i, "error": e} for i, e in errors]
    await _reply(send, 400, {"error": f"{len(errors)} of the labels were refused: {errors[0][1]}", "accepted": taken,
                             "refused": listed})


def _metadata(served) -> dict:
    from engine.ingress.grpc import model_parameters

    schema = served.model.schema
    return {"name": served.name, "versions": [served.version], "platform": "onnxruntime_onnx",
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in schema.inputs],
            "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in schema.outputs],
            "parameters": model_parameters(served)}


async def _read(receive, limit: int) -> bytes | None:
    """The whole body; None once it passes `limit` bytes (the rest is not kept)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            while message.get("more_body"):  # read it out without keeping it
                message = await receive()
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _reply(send, status: int, body: dict | None) -> None:
    payload = b"" if body is None else orjson.dumps(body)
    await send({"type": "http.response.start", "status": status,
                "headers": _JSON + [(b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})

