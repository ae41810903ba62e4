"""One gRPC call on an HTTP/2 stream, and its handler's context: the part of
`grpc.aio.ServicerContext` the servicers use (abort, time_remaining, write, read,
invocation_metadata, ...), its request messages (length-prefixed, gzip and deflate taken),
and its status in the trailers."""

from __future__ import annotations

import asyncio
import base64
import zlib
from collections import deque
from urllib.parse import quote

import grpc

from engine.ingress.http2.connection import Connection, Stream
from engine.ingress.http2.frames import STREAM_WINDOW
from engine.ingress.http2.hpack import CONTENT_TYPE_GRPC, STATUS_200, literal

GRANT = STREAM_WINDOW // 4  # credit goes back in pieces at least this large
RESPONSE_HEADERS = STATUS_200 + CONTENT_TYPE_GRPC + literal(b"grpc-accept-encoding", b"identity,deflate,gzip")
WBITS = {b"gzip": 31, b"deflate": 15}
INFLATE_STEP = 1 << 20  # a compressed message is inflated this much per turn of the event loop
MAX_DETAILS = 1024  # characters of grpc-message


def trailers(code: grpc.StatusCode, details: str | None = None) -> bytes:
    block = literal(b"grpc-status", str(code.value[0]).encode())
    if details:  # percent-encoded, as the gRPC protocol says
        if len(details) > MAX_DETAILS:
            details = details[:MAX_DETAILS - 3] + "..."
        block += literal(b"grpc-message", quote(details, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode())
    return block


OK_TRAILERS = trailers(grpc.StatusCode.OK)


class Refusal(Exception):
    def __init__(self, code: grpc.StatusCode, details: str):
        self.code, self.details = code, details


class Call:
    """One call, and its handler's context."""

    __slots__ = ("conn", "stream", "handler", "path", "headers", "deadline", "encoding", "body", "inbox",
                 "waiter", "task", "timer", "code_", "details_", "ended", "calls", "held", "reset")

    def __init__(self, calls, conn: Connection, stream: Stream, handler, path: str, headers, encoding: bytes | None):
        self.calls, self.conn, self.stream, self.handler = calls, conn, stream, handler
        self.path, self.headers, self.encoding = path, headers, encoding
        self.deadline = None
        self.body = None  # bytes, then a bytearray if the request comes in pieces
        self.inbox: deque | None = None  # a streaming request's (flag, message) not yet taken, as sent
        self.waiter: asyncio.Future | None = None
        self.task = self.timer = None
        self.code_ = self.details_ = None
        self.ended = False
        self.reset = False  # ended by the client (RST_STREAM, or its connection gone)
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
        return metadata(self.headers)

    def peer(self) -> str:
        host, port = (self.conn.peer or ("", 0))[:2]
        return f"ipv6:[{host}]:{port}" if ":" in str(host) else f"ipv4:{host}:{port}"

    def cancelled(self) -> bool:
        return self.reset

    def done(self) -> bool:
        return self.stream.closed

    async def write(self, message) -> None:
        await self.send(message)

    async def read(self):
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            return grpc.aio.EOF

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
        flag, message = self.inbox.popleft()
        self.calls.taken(self, 5 + len(message))
        if len(self.inbox) <= 1 and self.stream.owed >= GRANT:
            self.conn.grant(self.stream)
        message = await self.payload(flag, message)
        parse = self.handler.request_deserializer
        return parse(message) if parse is not None else message

    async def payload(self, flag: int, data: bytes) -> bytes:
        """A message as sent (flag 1: compressed with the call's grpc-encoding), inflated a
        step per turn of the event loop and no further than the largest message taken."""
        if not flag:
            return data
        if self.encoding is None:
            raise Refusal(grpc.StatusCode.INTERNAL, "a compressed message on a call with no grpc-encoding")
        limit = self.calls.max_receive
        inflate = zlib.decompressobj(WBITS[self.encoding])
        pieces, size = [], 0
        try:
            while data:
                piece = inflate.decompress(data, INFLATE_STEP)
                data = inflate.unconsumed_tail
                size += len(piece)
                if size > limit:
                    raise Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  f"Received message larger than max (over {limit} decompressed)")
                pieces.append(piece)
                if data:
                    await asyncio.sleep(0)  # other calls go on meanwhile
            pieces.append(inflate.flush())
        except zlib.error as exc:
            raise Refusal(grpc.StatusCode.INTERNAL, f"a message that does not decompress ({exc})") from None
        return b"".join(pieces)

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


def metadata(headers) -> tuple:
    """The call's metadata as grpc.aio gives it: str keys, str values (bytes for `-bin` keys),
    no pseudo-headers and none of the transport's own."""
    out = []
    for name, value in headers:
        if name[:1] == b":" or name in (b"content-type", b"te", b"grpc-timeout", b"grpc-encoding",
                                        b"grpc-accept-encoding"):
            continue
        key = name.decode("latin-1")
        if key.endswith("-bin"):
            try:
                out.append((key, base64.b64decode(value + b"=" * (-len(value) % 4))))
            except ValueError:  # binascii.Error: not base64, left out
                continue
        else:
            out.append((key, value.decode("latin-1")))
    return tuple(out)
