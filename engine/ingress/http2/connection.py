"""One HTTP/2 connection (RFC 9113) on the event loop: frames in, frames out, flow control,
SETTINGS, PING and GOAWAY. What a stream carries is the gRPC layer's (calls.py): it is told of
a stream's headers and data, and answers through `respond`, `send` and `finish`.

Flow control, both ways. The server grants each stream STREAM_WINDOW bytes and the connection
CONNECTION_WINDOW, gives back what it has read, and refuses DATA past what it granted. A
streaming call's credit is held back while its handler has more than one message waiting (a
handler that stops reading stops its client). Sending, a stream waits for the client's
windows; a handler sending on a stream waits until its message is on its way; and while the
socket's buffer is full the server reads nothing more from that client.

Frames written in one turn of the event loop leave together, in one send.
"""

from __future__ import annotations

import asyncio
import logging

from engine.ingress.http2.frames import (
    ACK, CANCEL, COMPRESSION_ERROR, CONNECTION_WINDOW, CONTINUATION, DATA, END_HEADERS, END_STREAM,
    ENHANCE_YOUR_CALM, FLOW_CONTROL_ERROR, FRAME, FRAME_SIZE_ERROR, GOAWAY, HEADERS, MAX_HEADER_BLOCK,
    MAX_HEADER_LIST, MAX_WINDOW, NO_ERROR, PADDED, PING, PREFACE, PREFACE_TIMEOUT_S, PRIORITY, PRIORITY_FLAG,
    PROTOCOL_ERROR, PUSH_PROMISE, RECEIVE_FRAME_SIZE, REFUSED_STREAM, RESETS_ALLOWED, RST_STREAM, S_ENABLE_PUSH,
    S_INITIAL_WINDOW_SIZE, S_MAX_CONCURRENT_STREAMS, S_MAX_FRAME_SIZE, S_MAX_HEADER_LIST_SIZE, SETTING, SETTINGS,
    STREAM_CLOSED, STREAM_WINDOW, U32, WINDOW_UPDATE, ConnectionError_, frame, header_frames, unpad,
)
from engine.ingress.http2.hpack import Decoder, HeadersTooLarge, HpackError

log = logging.getLogger(__name__)

GOAWAY_PING = b"scorewir"  # the PING that closes the first GOAWAY's window (RFC 9113 6.8)


class Stream:
    """A stream's state on both sides; `call` belongs to the gRPC layer."""

    __slots__ = ("id", "credit", "recv_left", "out", "trailers", "headers_sent", "remote_closed", "closed",
                 "owed", "call", "waiters")

    def __init__(self, stream_id: int):
        self.id = stream_id
        self.credit = 0  # its send window less the client's initial window (which SETTINGS may change)
        self.recv_left = STREAM_WINDOW  # what the client may still send on it
        self.out = bytearray()  # DATA bytes waiting for window
        self.trailers: bytes | None = None  # the last header block, sent once `out` is
        self.headers_sent = False
        self.remote_closed = False
        self.closed = False
        self.owed = 0  # bytes read and not yet given back to the client's window for it
        self.call = None
        self.waiters: list[asyncio.Future] = []  # senders waiting for `out` to empty


class Connection(asyncio.Protocol):
    def __init__(self, server):
        self.server = server  # engine.ingress.http2.server.Server
        self.calls = server.calls  # engine.ingress.http2.calls.Calls
        self.loop = asyncio.get_event_loop()
        self.transport: asyncio.Transport | None = None
        self.decoder = Decoder(max_list=MAX_HEADER_LIST)
        self.buffer = bytearray()
        self.need = 0  # bytes the buffered frame needs in all: no parse before they are in
        self.preface = True
        self.streams: dict[int, Stream] = {}
        self.last_stream = 0  # the highest stream id the client opened
        self.opened = self.resets = 0  # streams the client opened, and reset itself
        self.send_window = 65535
        self.peer_stream_window = 65535
        self.peer_frame = 16384
        self.recv_left = CONNECTION_WINDOW  # what the client may still send on the connection
        self.owed = 0  # connection-level bytes read, not yet given back
        self.waiting: set[Stream] = set()  # streams with bytes waiting for a window
        self.paused: asyncio.Future | None = None  # the socket's buffer is full
        self.headers_of = 0  # a header block being continued (CONTINUATION)
        self.block = bytearray()
        self.block_flags = 0
        self.going_away = 0  # 1: the first GOAWAY is out (PING sent); 2: the final one
        self.peer_left = False  # the client sent GOAWAY
        self.goaway_last = MAX_WINDOW
        self.peer = None
        self.max_streams = server.max_concurrent_streams
        self.pending: list[bytes] = []  # frames written in this turn of the loop
        self.timer: asyncio.TimerHandle | None = None

    # -- the transport -------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        if not self.pending:
            self.loop.call_soon(self._send)
        self.pending.append(data)

    def _send(self) -> None:
        if self.pending and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.pending) if len(self.pending) > 1 else self.pending[0])
        self.pending.clear()

    def _close(self) -> None:
        self._send()
        self.transport.close()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.peer = transport.get_extra_info("peername")
        settings = b"".join(SETTING.pack(k, v) for k, v in (
            (S_MAX_CONCURRENT_STREAMS, self.max_streams), (S_INITIAL_WINDOW_SIZE, STREAM_WINDOW),
            (S_MAX_FRAME_SIZE, RECEIVE_FRAME_SIZE), (S_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST),
            (S_ENABLE_PUSH, 0)))
        self._write(frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, U32.pack(CONNECTION_WINDOW - 65535)))
        self.timer = self.loop.call_later(PREFACE_TIMEOUT_S, self._no_preface)
        self.server.opened(self)

    def _no_preface(self) -> None:
        if self.preface and self.transport is not None:
            self._fail(PROTOCOL_ERROR, f"no HTTP/2 preface within {PREFACE_TIMEOUT_S:g} s")

    def connection_lost(self, exc) -> None:
        if self.timer is not None:
            self.timer.cancel()
        for stream in list(self.streams.values()):
            self._forget(stream)
            self.calls.reset(stream)
        if self.paused is not None and not self.paused.done():
            self.paused.set_result(None)
        self.server.closed(self)

    def pause_writing(self) -> None:
        """The socket's buffer is full: read nothing more from this client until it drains
        (a client that sends and never reads cannot make the server buffer its answers)."""
        if self.paused is None or self.paused.done():
            self.paused = self.loop.create_future()
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.paused is not None and not self.paused.done():
            self.paused.set_result(None)
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.buffer:
            self.buffer += data
            if len(self.buffer) < self.need:  # a large frame coming in pieces
                return
            data = bytes(self.buffer)
            self.buffer.clear()
        try:
            used = self._frames(data)
        except ConnectionError_ as exc:
            self._fail(exc.code, str(exc))
            return
        if used < len(data):
            rest = data[used:]
            self.buffer += rest
            self.need = 9 + ((rest[0] << 16) | (rest[1] << 8) | rest[2]) if len(rest) >= 9 and not self.preface else 0

    def _frames(self, data: bytes) -> int:
        i, n = 0, len(data)
        if self.preface:
            if n < len(PREFACE):
                if not PREFACE.startswith(data):
                    raise ConnectionError_(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return 0
            if not data.startswith(PREFACE):
                raise ConnectionError_(PROTOCOL_ERROR, "not an HTTP/2 connection preface (gRPC needs HTTP/2)")
            self.preface = False
            i = len(PREFACE)
        while n - i >= 9:
            high, low, kind, flags, stream_id = FRAME.unpack_from(data, i)
            length = (high << 8) | low
            if length > RECEIVE_FRAME_SIZE:
                raise ConnectionError_(FRAME_SIZE_ERROR, f"a frame of {length} bytes, over {RECEIVE_FRAME_SIZE}")
            end = i + 9 + length
            if end > n:
                break
            stream_id &= MAX_WINDOW
            payload = data[i + 9:end]
            i = end
            if self.headers_of and kind != CONTINUATION:
                raise ConnectionError_(PROTOCOL_ERROR, "a header block interrupted by another frame")
            if kind == DATA:
                self._data(stream_id, flags, payload)
            elif kind == HEADERS:
                self._headers(stream_id, flags, payload)
            elif kind == CONTINUATION:
                self._continuation(stream_id, flags, payload)
            elif kind == SETTINGS:
                self._settings(stream_id, flags, payload)
            elif kind == WINDOW_UPDATE:
                self._window_update(stream_id, payload)
            elif kind == PING:
                self._ping(stream_id, flags, payload)
            elif kind == RST_STREAM:
                self._rst(stream_id, payload)
            elif kind == GOAWAY:
                if stream_id:
                    raise ConnectionError_(PROTOCOL_ERROR, "GOAWAY on a stream")
                self.peer_left = True  # the client opens no new streams here
            elif kind == PRIORITY:
                if length != 5:
                    raise ConnectionError_(FRAME_SIZE_ERROR, "a PRIORITY frame not of 5 bytes")
            elif kind == PUSH_PROMISE:
                raise ConnectionError_(PROTOCOL_ERROR, "a client sent PUSH_PROMISE")
            # unknown types are ignored (RFC 9113 4.1)
        return i

    # -- frames in -----------------------------------------------------------------------
    def _data(self, stream_id: int, flags: int, payload: bytes) -> None:
        size = len(payload)  # padding included: flow control counts the whole payload
        if stream_id == 0:
            raise ConnectionError_(PROTOCOL_ERROR, "DATA on stream 0")
        self.recv_left -= size
        if self.recv_left < 0:
            raise ConnectionError_(FLOW_CONTROL_ERROR, "DATA past the connection's window")
        if flags & PADDED:
            payload = unpad(payload)
        self.owed += size
        if self.owed >= CONNECTION_WINDOW // 4:
            self._write(frame(WINDOW_UPDATE, 0, 0, U32.pack(self.owed)))
            self.recv_left += self.owed
            self.owed = 0
        stream = self.streams.get(stream_id)
        if stream is None or stream.remote_closed:
            if stream_id > self.last_stream or not stream_id & 1:
                raise ConnectionError_(PROTOCOL_ERROR, f"DATA on stream {stream_id}, never opened")
            return  # a stream already answered or reset: its data is dropped
        stream.recv_left -= size
        if stream.recv_left < 0:
            self.reset(stream, FLOW_CONTROL_ERROR)
            self.calls.reset(stream)
            return
        stream.owed += size
        end = bool(flags & END_STREAM)
        if end:
            stream.remote_closed = True
        self.calls.data(stream, payload, end)
        if stream.closed and stream.remote_closed:
            self._forget(stream)

    def grant(self, stream: Stream) -> None:
        """Give the client back what it sent on `stream` (the gRPC layer says when)."""
        if stream.owed and not stream.closed and not stream.remote_closed:
            self._write(frame(WINDOW_UPDATE, 0, stream.id, U32.pack(stream.owed)))
            stream.recv_left += stream.owed
        stream.owed = 0

    def _headers(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionError_(PROTOCOL_ERROR, "HEADERS on stream 0")
        if len(payload) > MAX_HEADER_BLOCK:
            raise ConnectionError_(ENHANCE_YOUR_CALM, f"a header block over {MAX_HEADER_BLOCK} bytes")
        if flags & PADDED:
            payload = unpad(payload)
        if flags & PRIORITY_FLAG:
            payload = payload[5:]
        if flags & END_HEADERS:
            self._header_block(stream_id, flags, payload)
        else:
            self.headers_of, self.block_flags = stream_id, flags
            self.block[:] = payload

    def _continuation(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id != self.headers_of or not stream_id:
            raise ConnectionError_(PROTOCOL_ERROR, "CONTINUATION not after a HEADERS frame of its stream")
        self.block += payload
        if len(self.block) > MAX_HEADER_BLOCK:
            raise ConnectionError_(ENHANCE_YOUR_CALM, f"a header block over {MAX_HEADER_BLOCK} bytes")
        if flags & END_HEADERS:
            self.headers_of = 0
            block = bytes(self.block)
            self.block.clear()
            self._header_block(stream_id, self.block_flags, block)

    def _header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        too_large = None
        try:
            headers = self.decoder.decode(block)  # always: the table must follow every block
        except HpackError as exc:
            raise ConnectionError_(COMPRESSION_ERROR, str(exc)) from None
        except HeadersTooLarge as exc:
            headers, too_large = (), str(exc)
        end = bool(flags & END_STREAM)
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers from the client
            if stream.remote_closed:  # its request was over: a stream error (RFC 9113 5.1)
                self.reset(stream, STREAM_CLOSED)
                self.calls.reset(stream)
                return
            if not end:
                raise ConnectionError_(PROTOCOL_ERROR, f"a second HEADERS on stream {stream_id} without END_STREAM")
            stream.remote_closed = True
            self.calls.data(stream, b"", True)
            if stream.closed:
                self._forget(stream)
            return
        if stream_id <= self.last_stream or not stream_id & 1:
            if stream_id & 1:
                return  # a stream already closed: ignored
            raise ConnectionError_(PROTOCOL_ERROR, f"a client opened stream {stream_id} (even, or reused)")
        self.last_stream = stream_id
        if stream_id > self.goaway_last:
            return  # after the final GOAWAY: never processed, the client retries it elsewhere
        if len(self.streams) >= self.max_streams:
            self._write(frame(RST_STREAM, 0, stream_id, U32.pack(REFUSED_STREAM)))
            return
        self.opened += 1
        stream = Stream(stream_id)
        stream.remote_closed = end
        self.streams[stream_id] = stream
        self.calls.start(self, stream, headers, too_large)
        if stream.closed and stream.remote_closed:
            self._forget(stream)

    def _settings(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id:
            raise ConnectionError_(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise ConnectionError_(FRAME_SIZE_ERROR, "a SETTINGS acknowledgement with a payload")
            return
        if len(payload) % 6:
            raise ConnectionError_(FRAME_SIZE_ERROR, "a SETTINGS frame not a multiple of 6 bytes")
        wider = False
        for at in range(0, len(payload), 6):
            key, value = SETTING.unpack_from(payload, at)
            if key == S_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ConnectionError_(FLOW_CONTROL_ERROR, f"an initial window of {value}")
                wider = value > self.peer_stream_window
                self.peer_stream_window = value  # every stream's window moves with it (Stream.credit)
            elif key == S_MAX_FRAME_SIZE:
                if not 16384 <= value <= 2**24 - 1:
                    raise ConnectionError_(PROTOCOL_ERROR, f"a max frame size of {value}")
                self.peer_frame = value
        self._write(frame(SETTINGS, ACK, 0))
        if wider:
            for stream in list(self.waiting):
                self._flush(stream)

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(FRAME_SIZE_ERROR, "a WINDOW_UPDATE not of 4 bytes")
        increment = U32.unpack(payload)[0] & MAX_WINDOW
        if stream_id == 0:
            if not increment:
                raise ConnectionError_(PROTOCOL_ERROR, "a WINDOW_UPDATE of 0 on the connection")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise ConnectionError_(FLOW_CONTROL_ERROR, "the connection's window past 2^31-1")
            for stream in list(self.waiting):
                self._flush(stream)
            return
        if stream_id > self.last_stream:
            raise ConnectionError_(PROTOCOL_ERROR, f"WINDOW_UPDATE on stream {stream_id}, never opened")
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        stream.credit += increment
        if not increment or self.peer_stream_window + stream.credit > MAX_WINDOW:
            self.reset(stream, FLOW_CONTROL_ERROR if increment else PROTOCOL_ERROR)
            self.calls.reset(stream)
            return
        self._flush(stream)

    def _ping(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id or len(payload) != 8:
            raise ConnectionError_(PROTOCOL_ERROR if stream_id else FRAME_SIZE_ERROR, "a malformed PING")
        if not flags & ACK:
            self._write(frame(PING, ACK, 0, payload))
        elif payload == GOAWAY_PING and self.going_away == 1:
            self._final_goaway()

    def _rst(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(FRAME_SIZE_ERROR, "an RST_STREAM not of 4 bytes")
        if stream_id == 0 or stream_id > self.last_stream:
            raise ConnectionError_(PROTOCOL_ERROR, f"RST_STREAM on stream {stream_id}, never opened")
        stream = self.streams.get(stream_id)
        if stream is not None:
            self.resets += 1
            if self.resets > RESETS_ALLOWED and self.resets * 2 > self.opened:
                raise ConnectionError_(ENHANCE_YOUR_CALM, f"{self.resets} of {self.opened} streams reset by the client")
            self._forget(stream)
            self.calls.reset(stream)

    # -- frames out ------------------------------------------------------------------------
    def respond(self, stream: Stream, headers: bytes, message: bytes, trailers: bytes) -> None:
        """A whole answer: headers, one DATA, trailers (one write when the windows allow)."""
        n = len(message)
        if stream.closed:
            return
        if not stream.out and n <= self.peer_stream_window + stream.credit and n <= self.send_window \
                and n <= self.peer_frame and len(trailers) <= self.peer_frame:
            stream.credit -= n
            self.send_window -= n
            sid = stream.id
            self._write(b"".join((
                FRAME.pack(len(headers) >> 8, len(headers) & 0xFF, HEADERS, END_HEADERS, sid), headers,
                FRAME.pack(n >> 8, n & 0xFF, DATA, 0, sid), message,
                FRAME.pack(len(trailers) >> 8, len(trailers) & 0xFF, HEADERS, END_HEADERS | END_STREAM, sid),
                trailers)))
            self._closed_local(stream)
            return
        self.send_headers(stream, headers)
        stream.out += message
        stream.trailers = trailers
        self._flush(stream)

    def send_headers(self, stream: Stream, headers: bytes) -> None:
        stream.headers_sent = True
        self._write(header_frames(stream.id, headers, 0, self.peer_frame))

    async def send(self, stream: Stream, message: bytes) -> None:
        """One more message on a stream; returns once it is on its way."""
        if stream.closed:
            raise asyncio.CancelledError()
        stream.out += message
        self._flush(stream)
        if stream.out:
            waiter = self.loop.create_future()
            stream.waiters.append(waiter)
            await waiter
        if self.paused is not None and not self.paused.done():
            await self.paused

    def finish(self, stream: Stream, trailers: bytes) -> None:
        """The last header block (END_STREAM): now, or after what waits for window."""
        if stream.closed or stream.trailers is not None:
            return
        stream.trailers = trailers
        self._flush(stream)

    def _flush(self, stream: Stream) -> None:
        out = stream.out
        while out:
            size = min(len(out), self.peer_stream_window + stream.credit, self.send_window, self.peer_frame)
            if size <= 0:
                self.waiting.add(stream)
                return
            self._write(frame(DATA, 0, stream.id, bytes(out[:size])))
            del out[:size]
            stream.credit -= size
            self.send_window -= size
        self.waiting.discard(stream)
        for waiter in stream.waiters:
            if not waiter.done():
                waiter.set_result(None)
        stream.waiters.clear()
        if stream.trailers is not None and not stream.closed:
            self._write(header_frames(stream.id, stream.trailers, END_STREAM, self.peer_frame))
            self._closed_local(stream)

    def _closed_local(self, stream: Stream) -> None:
        stream.closed = True
        if not stream.remote_closed:  # answered before the client finished sending: it may stop
            self._write(frame(RST_STREAM, 0, stream.id, U32.pack(NO_ERROR)))
            stream.remote_closed = True
        self._forget(stream)

    def reset(self, stream: Stream, code: int = CANCEL) -> None:
        if not stream.closed and self.transport is not None and not self.transport.is_closing():
            self._write(frame(RST_STREAM, 0, stream.id, U32.pack(code)))
        self._forget(stream)

    def _forget(self, stream: Stream) -> None:
        stream.closed = stream.remote_closed = True
        stream.out.clear()
        for waiter in stream.waiters:
            if not waiter.done():
                waiter.set_exception(asyncio.CancelledError())
        stream.waiters.clear()
        self.waiting.discard(stream)
        if self.streams.pop(stream.id, None) is not None and self.going_away == 2 and not self.streams:
            self._close()

    # -- leaving -------------------------------------------------------------------------
    def go_away(self) -> None:
        """Ask the client to move on: a first GOAWAY that takes no stream away, a PING, and on
        its answer the final GOAWAY naming the last stream taken (RFC 9113 6.8); the connection
        closes once those streams are answered."""
        if self.going_away or self.transport is None or self.transport.is_closing():
            return
        self.going_away = 1
        self._write(frame(GOAWAY, 0, 0, U32.pack(MAX_WINDOW) + U32.pack(NO_ERROR)) + frame(PING, 0, 0, GOAWAY_PING))
        self.loop.call_later(1.0, self._final_goaway)  # a client that never answers the PING

    def _final_goaway(self) -> None:
        if self.going_away == 2 or self.transport is None or self.transport.is_closing():
            return
        self.going_away = 2
        self.goaway_last = self.last_stream
        self._write(frame(GOAWAY, 0, 0, U32.pack(self.last_stream) + U32.pack(NO_ERROR)))
        if not self.streams:
            self._close()

    def _fail(self, code: int, message: str) -> None:
        log.info("gRPC connection from %s closed: %s", self.peer, message)
        if self.transport is not None and not self.transport.is_closing():
            self._write(frame(GOAWAY, 0, 0, U32.pack(self.last_stream) + U32.pack(code) + message.encode()[:256]))
            self._close()
