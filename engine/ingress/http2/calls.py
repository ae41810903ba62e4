"""gRPC calls (the gRPC over HTTP/2 protocol) on scorewire's own HTTP/2 connections: a call's
headers, its length-prefixed messages (gzip and deflate taken), its deadline (`grpc-timeout`),
its handler and its status in the trailers.

Handlers are grpcio's `RpcMethodHandler`s and interceptors grpcio's `ServerInterceptor`s, so
the servicers written for grpc.aio (engine/ingress/grpc.py, grpc_health, auth.py's TokenAuth)
run unchanged. A call is the handler's context too: it has the part of
`grpc.aio.ServicerContext` they use (abort, time_remaining, write, invocation_metadata, ...).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import zlib
from collections import deque
from urllib.parse import quote

import grpc

from engine.ingress.http2.connection import STREAM_WINDOW, Connection, Stream
from engine.ingress.http2.hpack import CONTENT_TYPE_GRPC, STATUS_200, literal

log = logging.getLogger(__name__)

GRANT = STREAM_WINDOW // 4  # credit goes back in pieces at least this large
RESPONSE_HEADERS = STATUS_200 + CONTENT_TYPE_GRPC + literal(b"grpc-accept-encoding", b"identity,deflate,gzip")
_TIMEOUT_UNITS = {ord("H"): 3600.0, ord("M"): 60.0, ord("S"): 1.0, ord("m"): 1e-3, ord("u"): 1e-6, ord("n"): 1e-9}
_WBITS = {b"gzip": 31, b"deflate": 15}
_SEEN = 256  # header blocks whose meaning is kept (a client repeats a few)


def trailers(code: grpc.StatusCode, details: str | None = None) -> bytes:
    block = literal(b"grpc-status", str(code.value[0]).encode())
    if details:  # percent-encoded, as the gRPC protocol says
        block += literal(b"grpc-message", quote(details, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode())
    return block


OK_TRAILERS = trailers(grpc.StatusCode.OK)


class _Refusal(Exception):
    def __init__(self, code: grpc.StatusCode, details: str):
        self.code, self.details = code, details


class _Details:
    """What an interceptor sees (grpc.HandlerCallDetails)."""

    __slots__ = ("method", "invocation_metadata")

    def __init__(self, method: str, metadata):
        self.method, self.invocation_metadata = method, metadata


class Call:
    """One call, and its handler's context."""

    __slots__ = ("conn", "stream", "handler", "path", "headers", "deadline", "encoding", "body", "inbox",
                 "waiter", "task", "timer", "code_", "details_", "ended", "calls", "held")

    def __init__(self, calls, conn: Connection, stream: Stream, handler, path: str, headers, encoding: bytes | None):
        self.calls, self.conn, self.stream, self.handler = calls, conn, stream, handler
        self.path, self.headers, self.encoding = path, headers, encoding
        self.deadline = None
        self.body = None  # bytes, then a bytearray if the request comes in pieces
        self.inbox: deque | None = None  # a streaming request's messages not yet taken
        self.waiter: asyncio.Future | None = None
        self.task = self.timer = None
        self.code_ = self.details_ = None
        self.ended = False
        self.held = 0  # request bytes buffered, counted in calls.buffered

    # -- grpc.aio.ServicerContext ----------------------------------------------------------
    def time_remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - self.conn.loop.time())

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()) -> None:
        self.code_, self.details_ = code, details
        raise grpc.aio.AbortError(f"aborted with {code}")

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code_ = code

    def set_details(self, details: str) -> None:
        self.details_ = details

    def code(self):
        return self.code_

    def details(self):
        return self.details_

    def invocation_metadata(self) -> tuple:
        return _metadata(self.headers)

    def peer(self) -> str:
        host, port = (self.conn.peer or ("", 0))[:2]
        return f"ipv6:[{host}]:{port}" if ":" in str(host) else f"ipv4:{host}:{port}"

    def cancelled(self) -> bool:
        return self.stream.closed and not self.ended

    def done(self) -> bool:
        return self.stream.closed

    async def write(self, message) -> None:
        await self.send(message)

    async def read(self):
        return await self.__anext__()

    # -- messages ----------------------------------------------------------------------------
    async def send(self, message) -> None:
        serialize = self.handler.response_serializer
        payload = serialize(message) if serialize is not None else message
        stream = self.stream
        if not stream.headers_sent and not stream.closed:
            self.conn.send_headers(stream, RESPONSE_HEADERS)
        await self.conn.send(stream, b"\x00" + len(payload).to_bytes(4, "big") + payload)

    def __aiter__(self):
        return self

    async def __anext__(self):
        while not self.inbox:
            if self.stream.remote_closed or self.stream.closed:
                raise StopAsyncIteration
            self.waiter = self.conn.loop.create_future()
            await self.waiter
        message = self.inbox.popleft()
        if len(self.inbox) <= 1 and self.stream.owed >= GRANT:
            self.conn.grant(self.stream)
        parse = self.handler.request_deserializer
        return parse(message) if parse is not None else message

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def end(self, code: grpc.StatusCode, details: str | None = None) -> None:
        """The status; with no message sent before it, the headers too (Trailers-Only)."""
        if self.ended:
            return
        self.ended = True
        self.calls.release(self)
        if self.timer is not None:
            self.timer.cancel()
        block = trailers(code, details) if code is not grpc.StatusCode.OK or details else OK_TRAILERS
        stream = self.stream
        self.conn.finish(stream, block if stream.headers_sent else STATUS_200 + CONTENT_TYPE_GRPC + block)


class Calls:
    """Every connection's calls: the server's handlers, interceptors and limits."""

    def __init__(self, lookup, interceptors=(), max_receive: int = 4 << 20, max_buffered: int = 1 << 30):
        self.lookup = lookup  # path -> grpc.RpcMethodHandler | None
        self.interceptors = tuple(interceptors)
        self.max_receive = max_receive
        self.max_buffered = max_buffered
        self.buffered = 0  # bytes of requests still coming in, every connection's
        self._seen: dict = {}

    def hold(self, call: Call, size: int) -> bool:
        """Count `size` more bytes of a request coming in; False (and the call refused) past
        max_buffered, unless nothing else is held: many large requests sent slowly at once
        cannot add up past it, as the front door's max_inflight_bytes bounds parsed ones."""
        if self.buffered and self.buffered + size > self.max_buffered:
            call.end(grpc.StatusCode.RESOURCE_EXHAUSTED,
                     f"requests coming in hold {self.buffered} bytes; {size} more would pass "
                     f"server.max_inflight_bytes = {self.max_buffered}; retry later")
            if call.task is not None:
                call.task.cancel()
            return False
        self.buffered += size
        call.held += size
        return True

    def release(self, call: Call) -> None:
        self.buffered -= call.held
        call.held = 0

    def _read_headers(self, headers) -> tuple:
        """(path, handler, grpc-timeout, grpc-encoding, refusal) of a header block, kept by block."""
        seen = self._seen.get(headers)
        if seen is not None:
            return seen
        method = path = ctype = timeout = encoding = None
        for name, value in headers:
            if name == b":path":
                path = value
            elif name == b":method":
                method = value
            elif name == b"content-type":
                ctype = value
            elif name == b"grpc-timeout":
                timeout = value
            elif name == b"grpc-encoding":
                encoding = value
        refusal = None
        path_s = (path or b"").decode("latin-1")
        handler = self.lookup(path_s) if path else None
        if method != b"POST":
            refusal = (grpc.StatusCode.UNIMPLEMENTED, f"gRPC needs POST, not {method!r}")
        elif ctype is None or not ctype.startswith(b"application/grpc"):
            refusal = (grpc.StatusCode.UNIMPLEMENTED, f"not a gRPC call (content-type {ctype!r})")
        elif handler is None:
            refusal = (grpc.StatusCode.UNIMPLEMENTED, f"Method not found: {path_s}")
        elif encoding is not None and encoding != b"identity" and encoding not in _WBITS:
            refusal = (grpc.StatusCode.UNIMPLEMENTED, f"grpc-encoding {encoding.decode('latin-1')!r} is not "
                                                      "supported (identity, gzip, deflate are)")
        if encoding == b"identity":
            encoding = None
        seconds = None
        if timeout is not None:
            try:
                seconds = int(timeout[:-1]) * _TIMEOUT_UNITS[timeout[-1]]
                if not timeout[:-1].isdigit() or len(timeout) > 9:
                    raise ValueError
            except (ValueError, KeyError, IndexError):
                refusal = refusal or (grpc.StatusCode.INTERNAL, f"a malformed grpc-timeout {timeout!r}")
        seen = (path_s, handler, seconds, encoding, refusal)
        if len(self._seen) >= _SEEN:
            self._seen.clear()
        self._seen[headers] = seen
        return seen

    # -- from the connection -----------------------------------------------------------------
    def start(self, conn: Connection, stream: Stream, headers, too_large: str | None = None) -> None:
        path, handler, seconds, encoding, refusal = self._read_headers(headers)
        if too_large is not None:
            refusal = (grpc.StatusCode.RESOURCE_EXHAUSTED, f"the call's metadata is too large: {too_large}")
        call = Call(self, conn, stream, handler, path, headers, encoding)
        stream.call = call
        if refusal is not None:
            call.end(*refusal)
            return
        if seconds is not None:
            call.deadline = conn.loop.time() + seconds
            call.timer = conn.loop.call_at(call.deadline, self._expire, call)
        if handler.request_streaming:
            call.inbox = deque()
            call.body = bytearray()
            call.task = conn.loop.create_task(self._run(call))
        elif stream.remote_closed:
            call.task = conn.loop.create_task(self._run(call))

    def data(self, stream: Stream, payload: bytes, end: bool) -> None:
        call = stream.call
        if call is None or call.ended:
            return
        if call.inbox is not None:
            self._messages(call, payload, end)
            return
        if end and call.body is None:  # the whole request in one frame: handed on at once
            call.body = payload
            call.task = call.conn.loop.create_task(self._run(call))
            return
        if payload and not self.hold(call, len(payload)):
            return
        body = call.body
        if body is None:
            call.body = body = payload
        elif payload:
            if type(body) is bytes:
                call.body = body = bytearray(body)
            body += payload
        if len(body) >= 5:
            size = int.from_bytes(body[1:5], "big")
            if size > self.max_receive:
                call.end(grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"Received message larger than max ({size} vs. {self.max_receive})")
                return
            if len(body) > 5 + size:
                call.end(grpc.StatusCode.INTERNAL, "a unary call carried more than one message")
                return
        if end:
            call.task = call.conn.loop.create_task(self._run(call))
        elif stream.owed >= GRANT:
            call.conn.grant(stream)

    def reset(self, stream: Stream) -> None:
        """The client reset the stream, or the connection is gone."""
        call = stream.call
        if call is None:
            return
        call.ended = True
        self.release(call)
        if call.timer is not None:
            call.timer.cancel()
        if call.task is not None:
            call.task.cancel()
        call.wake()

    def _expire(self, call: Call) -> None:
        if not call.ended:
            call.end(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            if call.task is not None:
                call.task.cancel()
            call.wake()

    def _messages(self, call: Call, payload: bytes, end: bool) -> None:
        if payload and not self.hold(call, len(payload)):
            return
        body = call.body
        body += payload
        while len(body) >= 5:
            size = int.from_bytes(body[1:5], "big")
            if size > self.max_receive:
                call.end(grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"Received message larger than max ({size} vs. {self.max_receive})")
                call.task.cancel()
                return
            if len(body) < 5 + size:
                break
            try:
                message = self._payload(call, body[0], bytes(body[5:5 + size]))
            except _Refusal as exc:
                call.end(exc.code, exc.details)
                call.task.cancel()
                return
            del body[:5 + size]
            self.buffered -= 5 + size
            call.held -= 5 + size
            call.inbox.append(message)
        if end and body:
            call.end(grpc.StatusCode.INTERNAL, f"the stream ended inside a message ({len(body)} bytes of it)")
            call.task.cancel()
            return
        if len(call.inbox) <= 1 and call.stream.owed >= GRANT:
            call.conn.grant(call.stream)
        call.wake()

    def _payload(self, call: Call, flag: int, data: bytes) -> bytes:
        if not flag:
            return data
        if call.encoding is None:
            raise _Refusal(grpc.StatusCode.INTERNAL, "a compressed message on a call with no grpc-encoding")
        inflate = zlib.decompressobj(_WBITS[call.encoding])
        try:
            data = inflate.decompress(data, self.max_receive + 1)
        except zlib.error as exc:
            raise _Refusal(grpc.StatusCode.INTERNAL, f"a message that does not decompress ({exc})") from None
        if len(data) > self.max_receive or inflate.unconsumed_tail:
            raise _Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"Received message larger than max (over {self.max_receive} decompressed)")
        return data

    def _unary_request(self, call: Call):
        body = call.body or b""
        if len(body) < 5:
            raise _Refusal(grpc.StatusCode.INTERNAL, "the call ended without a request message")
        size = int.from_bytes(body[1:5], "big")
        if size > self.max_receive:
            raise _Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"Received message larger than max ({size} vs. {self.max_receive})")
        if len(body) != 5 + size:
            raise _Refusal(grpc.StatusCode.INTERNAL, "a unary call carried more or less than one message "
                                                     f"({len(body)} bytes, the first message {size})")
        call.body = None
        self.release(call)
        return self._payload(call, body[0], bytes(body[5:]) if type(body) is not bytes else body[5:])

    # -- the handler -------------------------------------------------------------------------
    async def _run(self, call: Call) -> None:
        handler = call.handler
        try:
            if self.interceptors:
                handler = call.handler = await self._intercepted(call)
            if handler.request_streaming:
                request = call
            else:
                message = self._unary_request(call)
                parse = handler.request_deserializer
                try:
                    request = parse(message) if parse is not None else message
                except Exception:
                    log.exception("gRPC: a request did not deserialize (%s)", call.path)
                    raise _Refusal(grpc.StatusCode.INTERNAL, "Exception deserializing request!") from None
            if not handler.response_streaming:
                fn = handler.unary_unary if not handler.request_streaming else handler.stream_unary
                response = await fn(request, call)
                if call.code_ is not None and call.code_ is not grpc.StatusCode.OK:
                    call.end(call.code_, call.details_)
                    return
                if call.ended:
                    return
                serialize = handler.response_serializer
                payload = serialize(response) if serialize is not None else response
                call.ended = True
                if call.timer is not None:
                    call.timer.cancel()
                call.conn.respond(call.stream, RESPONSE_HEADERS,
                                  b"\x00" + len(payload).to_bytes(4, "big") + payload, OK_TRAILERS)
                return
            fn = handler.unary_stream if not handler.request_streaming else handler.stream_stream
            result = fn(request, call)
            if hasattr(result, "__aiter__"):
                async for response in result:
                    await call.send(response)
            else:
                await result
            call.end(call.code_ or grpc.StatusCode.OK, call.details_)
        except grpc.aio.AbortError:
            call.end(call.code_ or grpc.StatusCode.UNKNOWN, call.details_)
        except _Refusal as exc:
            call.end(exc.code, exc.details)
        except asyncio.CancelledError:
            pass  # reset by the client, or past its deadline (answered by the timer)
        except Exception as exc:
            log.exception("gRPC: %s failed", call.path)
            call.end(grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc)}: {exc}")

    async def _intercepted(self, call: Call):
        details = _Details(call.path, _metadata(call.headers))

        async def found(details_):
            return self.lookup(details_.method)

        continuation = found
        for interceptor in reversed(self.interceptors):
            continuation = _chained(interceptor, continuation)
        handler = await continuation(details)
        if handler is None:
            raise _Refusal(grpc.StatusCode.UNIMPLEMENTED, f"Method not found: {call.path}")
        return handler


def _chained(interceptor, continuation):
    async def next_(details):
        return await interceptor.intercept_service(continuation, details)

    return next_


def _metadata(headers) -> tuple:
    """The call's metadata as grpc.aio gives it: str keys, str values (bytes for `-bin` keys),
    no pseudo-headers and none of the transport's own."""
    out = []
    for name, value in headers:
        if name[:1] == b":" or name in (b"content-type", b"te", b"grpc-timeout", b"grpc-encoding",
                                        b"grpc-accept-encoding"):
            continue
        key = name.decode("latin-1")
        if key.endswith("-bin"):
            out.append((key, base64.b64decode(value + b"=" * (-len(value) % 4))))
        else:
            out.append((key, value.decode("latin-1")))
    return tuple(out)
