"""gRPC calls (the gRPC over HTTP/2 protocol) on scorewire's own HTTP/2 connections: what a
call's headers ask for (`:path`, `grpc-timeout`, `grpc-encoding`), its request as it comes in,
its handler, and its answer.

Handlers are grpcio's `RpcMethodHandler`s and interceptors grpcio's `ServerInterceptor`s, so
the servicers written for grpc.aio (engine/ingress/grpc.py, grpc_health, auth.py's TokenAuth)
run unchanged; a call is its handler's context (call.py). With interceptors (bearer tokens),
a call is checked when its headers arrive, before its request is taken.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

import grpc

from engine.ingress.http2.call import GRANT, OK_TRAILERS, RESPONSE_HEADERS, WBITS, Call, Refusal, metadata
from engine.ingress.http2.connection import Connection, Stream

log = logging.getLogger(__name__)

_TIMEOUT_UNITS = {ord("H"): 3600.0, ord("M"): 60.0, ord("S"): 1.0, ord("m"): 1e-3, ord("u"): 1e-6, ord("n"): 1e-9}
_SEEN = 64  # header lists whose meaning is kept (a client repeats a few)


class _Details:
    """What an interceptor sees (grpc.HandlerCallDetails)."""

    __slots__ = ("method", "invocation_metadata")

    def __init__(self, method: str, metadata_):
        self.method, self.invocation_metadata = method, metadata_


class Calls:
    """Every connection's calls: the server's handlers, interceptors and limits."""

    def __init__(self, lookup, interceptors=(), max_receive: int = 4 << 20, max_buffered: int = 1 << 30):
        self.lookup = lookup  # path -> grpc.RpcMethodHandler | None
        self.interceptors = tuple(interceptors)
        self.max_receive = max_receive
        self.max_buffered = max_buffered
        self.buffered = 0  # bytes of requests coming in or waiting for their handler, every connection's
        self._seen: dict = {}

    # -- request bytes held --------------------------------------------------------------------
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

    def taken(self, call: Call, size: int) -> None:
        self.buffered -= size
        call.held -= size

    def release(self, call: Call) -> None:
        self.buffered -= call.held
        call.held = 0

    # -- from the connection -----------------------------------------------------------------
    def _read_headers(self, headers) -> tuple:
        """(path, handler, grpc-timeout, grpc-encoding, refusal) of a header list, kept by list."""
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
        elif handler is None and not self.interceptors:
            refusal = (grpc.StatusCode.UNIMPLEMENTED, f"Method not found: {path_s[:200]}")
        elif encoding is not None and encoding != b"identity" and encoding not in WBITS:
            refusal = (grpc.StatusCode.UNIMPLEMENTED, f"grpc-encoding {encoding[:50].decode('latin-1')!r} is not "
                                                      "supported (identity, gzip, deflate are)")
        if encoding == b"identity":
            encoding = None
        seconds = None
        if timeout is not None:
            try:
                if not timeout[:-1].isdigit() or len(timeout) > 9:
                    raise ValueError
                seconds = int(timeout[:-1]) * _TIMEOUT_UNITS[timeout[-1]]
            except (ValueError, KeyError, IndexError):
                refusal = refusal or (grpc.StatusCode.INTERNAL, f"a malformed grpc-timeout {timeout[:20]!r}")
        seen = (path_s, handler, seconds, encoding, refusal)
        if len(self._seen) >= _SEEN:
            self._seen.clear()
        self._seen[headers] = seen
        return seen

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
        if handler is not None and handler.request_streaming:
            call.inbox = deque()
            call.body = bytearray()
        # with interceptors, checked now, before any of the request is taken
        if self.interceptors or call.inbox is not None or stream.remote_closed:
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
            self._request_in(call)
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
            self._request_in(call)
        elif stream.owed >= GRANT:
            call.conn.grant(stream)

    def _request_in(self, call: Call) -> None:
        if call.task is None:
            call.task = call.conn.loop.create_task(self._run(call))
        else:  # its interceptors ran first: it waits for the request
            call.wake()

    def reset(self, stream: Stream) -> None:
        """The client reset the stream, or the connection is gone."""
        call = stream.call
        if call is None:
            return
        call.ended = call.reset = True
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
        """A streaming request's bytes: whole messages to its inbox, as sent; they stay counted
        in `buffered` until the handler takes them."""
        if payload and not self.hold(call, len(payload)):
            return
        body = call.body
        body += payload
        at = 0
        while len(body) - at >= 5:
            size = int.from_bytes(body[at + 1:at + 5], "big")
            if size > self.max_receive:
                call.end(grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"Received message larger than max ({size} vs. {self.max_receive})")
                call.task.cancel()
                return
            if len(body) - at < 5 + size:
                break
            call.inbox.append((body[at], bytes(body[at + 5:at + 5 + size])))
            at += 5 + size
        del body[:at]
        if end and body:
            call.end(grpc.StatusCode.INTERNAL, f"the stream ended inside a message ({len(body)} bytes of it)")
            call.task.cancel()
            return
        if len(call.inbox) <= 1 and call.stream.owed >= GRANT:
            call.conn.grant(call.stream)
        call.wake()

    async def _unary_request(self, call: Call):
        while not call.stream.remote_closed:  # its interceptors ran before the request was in
            call.waiter = call.conn.loop.create_future()
            await call.waiter
        body = call.body or b""
        if len(body) < 5:
            raise Refusal(grpc.StatusCode.INTERNAL, "the call ended without a request message")
        size = int.from_bytes(body[1:5], "big")
        if size > self.max_receive:
            raise Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"Received message larger than max ({size} vs. {self.max_receive})")
        if len(body) != 5 + size:
            raise Refusal(grpc.StatusCode.INTERNAL, "a unary call carried more or less than one message "
                                                    f"({len(body)} bytes, the first message {size})")
        call.body = None
        self.release(call)
        message = bytes(body[5:]) if type(body) is not bytes else body[5:]
        return await call.payload(body[0], message) if body[0] else message

    # -- the handler -------------------------------------------------------------------------
    async def _run(self, call: Call) -> None:
        handler = call.handler
        try:
            if self.interceptors:
                found, handler = handler, await self._intercepted(call)
                call.handler = handler
                if handler is not found and handler.request_deserializer is None:
                    # put in the method's place by an interceptor (auth.py's refusal): it answers
                    # at once, without the request, which is not read
                    call.body = None
                    self.release(call)
                    request = None
                elif handler.request_streaming:
                    if call.inbox is None:
                        call.inbox, call.body = deque(), bytearray(call.body or b"")
                        self._messages(call, b"", call.stream.remote_closed)
                    request = call
                else:
                    request = await self._request(call, handler)
            elif handler.request_streaming:
                request = call
            else:
                request = await self._request(call, handler)
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
        except Refusal as exc:
            call.end(exc.code, exc.details)
        except asyncio.CancelledError:
            pass  # reset by the client, or past its deadline (answered by the timer)
        except Exception as exc:
            log.exception("gRPC: %s failed", call.path)
            call.end(grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc)}: {exc}")

    async def _request(self, call: Call, handler):
        message = await self._unary_request(call)
        parse = handler.request_deserializer
        try:
            return parse(message) if parse is not None else message
        except Exception:
            log.exception("gRPC: a request did not deserialize (%s)", call.path)
            raise Refusal(grpc.StatusCode.INTERNAL, "Exception deserializing request!") from None

    async def _intercepted(self, call: Call):
        details = _Details(call.path, metadata(call.headers))

        async def found(details_):
            return self.lookup(details_.method)

        continuation = found
        for interceptor in reversed(self.interceptors):
            continuation = _chained(interceptor, continuation)
        handler = await continuation(details)
        if handler is None:
            raise Refusal(grpc.StatusCode.UNIMPLEMENTED, f"Method not found: {call.path[:200]}")
        return handler


def _chained(interceptor, continuation):
    async def next_(details):
        return await interceptor.intercept_service(continuation, details)

    return next_
