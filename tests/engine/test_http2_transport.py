"""scorewire's own gRPC transport (engine/ingress/http2) on loopback, serving a small echo
service, with two clients that check it: gRPC's own (grpcio's C core, as tritonclient uses)
and the `h2` package's HTTP/2 state machine, which raises on any frame a server must not send
(past a window, on a closed stream, a bad header block). The inference service over this
transport is what every tritonclient test of the suite talks to (it is the default)."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
import zlib

import grpc
import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from engine.ingress.auth import TokenAuth
from engine.ingress.http2 import Server
from engine.ingress.http2 import frames as f

SERVICE = "test.Echo"


class Echo:
    def __init__(self):
        self.cancelled = 0
        self.started = threading.Event()
        self.in_flight = self.most_in_flight = 0

    async def say(self, request: bytes, context) -> bytes:
        if request.startswith(b"abort:"):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, request[6:].decode())
        if request == b"raise":
            raise ValueError("a bug")
        if request.startswith(b"sleep:"):
            self.started.set()
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            try:
                await asyncio.sleep(float(request[6:].split(b":")[0]))
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
            finally:
                self.in_flight -= 1
        if request.startswith(b"big:"):
            return b"x" * int(request[4:])
        return request

    async def chat(self, requests, context):
        async for request in requests:
            yield request

    async def hold(self, requests, context):  # reads nothing
        await asyncio.sleep(30)
        yield b""

    def handler(self):
        raw = dict(request_deserializer=None, response_serializer=None)
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Say": grpc.unary_unary_rpc_method_handler(self.say, **raw),
            "Chat": grpc.stream_stream_rpc_method_handler(self.chat, **raw),
            "Hold": grpc.stream_stream_rpc_method_handler(self.hold, **raw),
        })


class Running:
    """An http2.Server on its own event loop thread."""

    def __init__(self, **options):
        self.echo = Echo()
        self.loop = asyncio.new_event_loop()
        self.server = Server(**options)
        self.server.add_generic_rpc_handlers((self.echo.handler(),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.run(self.server.start())

    def run(self, coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, grace=0.0):
        self.run(self.server.stop(grace))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def running():
    made = []

    def start(**options):
        made.append(Running(**options))
        return made[-1]

    yield start
    for r in made:
        r.stop()


def _cancelled_once(r: Running, wait_s: float = 5.0) -> bool:
    """Whether the echo's one sleeping handler was cancelled (within `wait_s`)."""
    deadline = time.monotonic() + wait_s
    while r.echo.cancelled < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    return r.echo.cancelled == 1


def _channel(port, **options):
    return grpc.insecure_channel(f"127.0.0.1:{port}", options=list(options.items()))


def _say(channel, payload: bytes, **kwargs):
    return channel.unary_unary(f"/{SERVICE}/Say")(payload, **kwargs)


def test_unary_calls_of_every_size_come_back_whole(running):
    r = running()
    with _channel(r.port, **{"grpc.max_receive_message_length": -1}) as channel:
        for size in (0, 1, 100, 16_383, 16_384, 70_000, 3_000_000):
            payload = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
            assert _say(channel, payload) == payload
        assert len(_say(channel, b"big:5000000")) == 5_000_000  # past every initial window


def test_calls_in_parallel_over_one_connection_past_max_concurrent_streams(running):
    r = running(max_concurrent_streams=4)
    with _channel(r.port) as channel:
        say = channel.unary_unary(f"/{SERVICE}/Say")
        futures = [say.future(f"sleep:0.05:{i}".encode()) for i in range(200)]  # 4 at a time on the server
        assert [f.result(timeout=30) for f in futures] == [f"sleep:0.05:{i}".encode() for i in range(200)]
    assert r.echo.most_in_flight == 4


def test_status_codes_and_messages_reach_the_client(running):
    r = running(max_receive_message_length=10_000)
    with _channel(r.port) as channel:
        with pytest.raises(grpc.RpcError) as err:
            _say(channel, ("abort:" + "long " * 300).encode())
        assert len(err.value.details()) == 1024 and err.value.details().endswith("...")
        with pytest.raises(grpc.RpcError) as err:
            _say(channel, "abort:100% sure: ünïcode\nand a newline".encode())
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.value.details() == "100% sure: ünïcode\nand a newline"
        with pytest.raises(grpc.RpcError) as err:
            _say(channel, b"raise")
        assert err.value.code() == grpc.StatusCode.UNKNOWN and "a bug" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            _say(channel, b"y" * 10_001)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.RpcError) as err:
            channel.unary_unary("/test.Echo/Nope")(b"")
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert _say(channel, b"still fine") == b"still fine"  # the connection lives on


def test_gzip_and_deflate_requests_are_taken(running):
    r = running()
    with _channel(r.port) as channel:
        for algorithm in (grpc.Compression.Gzip, grpc.Compression.Deflate):
            payload = b"compress me " * 10_000
            assert _say(channel, payload, compression=algorithm) == payload


def test_a_deadline_ends_the_call_and_cancels_its_handler(running):
    r = running()
    with _channel(r.port) as channel:
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            _say(channel, b"sleep:10", timeout=0.3)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - t0 < 3
        assert _cancelled_once(r)


def test_a_client_that_cancels_cancels_the_handler(running):
    r = running()
    with _channel(r.port) as channel:
        future = channel.unary_unary(f"/{SERVICE}/Say").future(b"sleep:10")
        assert r.echo.started.wait(5)
        future.cancel()
        assert _cancelled_once(r)


def test_a_bidirectional_stream_echoes_every_message_in_order(running):
    r = running()
    with _channel(r.port) as channel:
        messages = [bytes([i % 251]) * (i * 37 % 70_000) for i in range(300)]
        replies = list(channel.stream_stream(f"/{SERVICE}/Chat")(iter(messages)))
        assert replies == messages


def test_a_graceful_stop_answers_the_call_in_flight_and_takes_no_new_one(running):
    r = running()
    with _channel(r.port) as channel:
        future = channel.unary_unary(f"/{SERVICE}/Say").future(b"sleep:0.5")
        assert r.echo.started.wait(5)
        stopping = asyncio.run_coroutine_threadsafe(r.server.stop(5.0), r.loop)
        assert future.result(timeout=10) == b"sleep:0.5"
        stopping.result(10)
        with pytest.raises(grpc.RpcError) as err:
            _say(channel, b"after", timeout=2)
        assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_an_old_connection_is_asked_to_move_and_its_calls_finish(running):
    r = running(max_connection_age_s=0.3)
    with _channel(r.port) as channel:
        future = channel.unary_unary(f"/{SERVICE}/Say").future(b"sleep:1.0")
        for i in range(30):
            assert _say(channel, f"{i}".encode()) == f"{i}".encode()
            time.sleep(0.05)
        assert future.result(timeout=10) == b"sleep:1.0"  # outlived its connection's age
    assert r.server.accepted >= 3  # the channel moved to a new connection each time it was asked


# -- the HTTP/2 rules, checked by the h2 package as a client --------------------------------
class RawClient:
    def __init__(self, port, window=65535):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.h2.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.h2.initiate_connection()
        self.flush()
        seen = set()  # the server's SETTINGS and its connection window, before anything is sent
        self.events(lambda e: seen.add(type(e)) or {h2.events.RemoteSettingsChanged, h2.events.WindowUpdated} <= seen)

    def flush(self):
        self.sock.sendall(self.h2.data_to_send())

    def call(self, payload: bytes, path=f"/{SERVICE}/Say", extra=()):
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":path", path),
                                   (":authority", "x"), ("content-type", "application/grpc"), ("te", "trailers"),
                                   *extra])
        self.h2.send_data(sid, b"\x00" + len(payload).to_bytes(4, "big") + payload, end_stream=True)
        self.flush()
        return sid

    def events(self, until, read_slowly=False):
        """Events until `until(event)`; received data is acknowledged (so windows reopen)."""
        seen = []
        while True:
            data = self.sock.recv(4096 if read_slowly else 1 << 20)
            if not data:
                return seen
            for event in self.h2.receive_data(data):
                seen.append(event)
                if isinstance(event, h2.events.DataReceived):
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if until(event):
                    self.flush()
                    return seen
            self.flush()


def test_a_client_with_a_small_window_gets_its_answer_within_it(running):
    r = running()
    client = RawClient(r.port, window=100)  # h2 raises if the server sends past it
    sid = client.call(b"big:300000")
    events = client.events(lambda e: isinstance(e, h2.events.StreamEnded))
    body = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived) and e.stream_id == sid)
    assert body == b"\x00" + (300000).to_bytes(4, "big") + b"x" * 300000
    trailers = [e for e in events if isinstance(e, h2.events.TrailersReceived)]
    assert dict(trailers[0].headers)[b"grpc-status"] == b"0"


def test_ping_is_answered_and_long_metadata_comes_in_continuation_frames(running):
    r = running()
    client = RawClient(r.port)
    client.h2.ping(b"12345678")
    client.flush()
    events = client.events(lambda e: isinstance(e, h2.events.PingAckReceived))
    assert events[-1].ping_data == b"12345678"
    client.h2.max_outbound_frame_size = 16384  # so the 12 KiB header block needs CONTINUATION
    sid = client.call(b"hello", extra=[("x-long", "v" * 12_000)])
    events = client.events(lambda e: isinstance(e, h2.events.StreamEnded) and e.stream_id == sid)
    body = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    assert body[5:] == b"hello"


def test_a_connection_that_is_not_http2_is_closed_with_a_reason(running):
    r = running()
    with socket.create_connection(("127.0.0.1", r.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    assert b"HTTP/2" in data  # the GOAWAY's debug data says why
    with _channel(r.port) as channel:
        assert _say(channel, b"ok") == b"ok"


def test_requests_coming_in_slowly_cannot_hold_more_than_the_budget(running):
    r = running(max_buffered_bytes=1_000_000)
    client = RawClient(r.port)
    first = client.h2.get_next_available_stream_id()
    headers = [(":method", "POST"), (":scheme", "http"), (":path", f"/{SERVICE}/Say"), (":authority", "x"),
               ("content-type", "application/grpc")]
    client.h2.send_headers(first, headers)
    client.h2.send_data(first, b"\x00" + (900_000).to_bytes(4, "big") + b"a" * 600_000)  # not all of it yet
    second = client.h2.get_next_available_stream_id()
    client.h2.send_headers(second, headers)
    client.h2.send_data(second, b"\x00" + (900_000).to_bytes(4, "big") + b"b" * 600_000)
    client.flush()
    events = client.events(lambda e: isinstance(e, h2.events.StreamEnded) and e.stream_id == second)
    trailers = [dict(e.headers) for e in events if isinstance(e, (h2.events.TrailersReceived,
                                                                  h2.events.ResponseReceived)) and e.stream_id == second]
    assert trailers[-1][b"grpc-status"] == b"8"  # RESOURCE_EXHAUSTED
    assert b"max_inflight_bytes" in trailers[-1][b"grpc-message"]
    client.h2.send_data(first, b"a" * 300_000, end_stream=True)  # the first one finishes and is answered
    client.flush()
    events = client.events(lambda e: isinstance(e, h2.events.StreamEnded) and e.stream_id == first)
    body = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived) and e.stream_id == first)
    assert body[5:] == b"a" * 900_000
    assert r.server.calls.buffered == 0


def test_metadata_past_the_header_list_limit_is_refused_and_the_connection_lives(running):
    r = running()
    client = RawClient(r.port)
    big = client.call(b"x", extra=[(f"x-{i}", "v" * 1000) for i in range(20)])  # ~20 KiB > 16 KiB
    events = client.events(lambda e: isinstance(e, h2.events.StreamEnded) and e.stream_id == big)
    refused = [dict(e.headers) for e in events if isinstance(e, h2.events.ResponseReceived) and e.stream_id == big]
    assert refused[0][b"grpc-status"] == b"8"
    fine = client.call(b"after")
    events = client.events(lambda e: isinstance(e, h2.events.StreamEnded) and e.stream_id == fine)
    assert b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))[5:] == b"after"


# -- what a client must not be able to do -------------------------------------------------
def _read_frames(sock, until, limit_s=5.0):
    """Frames (type, flags, stream, payload) the server sends, until `until(frame)` or it closes."""
    got, data = [], b""
    sock.settimeout(limit_s)
    while True:
        while len(data) >= 9 and len(data) >= 9 + int.from_bytes(data[:3], "big"):
            n = int.from_bytes(data[:3], "big")
            item = (data[3], data[4], int.from_bytes(data[5:9], "big") & f.MAX_WINDOW, data[9:9 + n])
            data = data[9 + n:]
            got.append(item)
            if until(item):
                return got
        chunk = sock.recv(1 << 16)
        if not chunk:
            return got
        data += chunk


def _raw_call(port, path=f"/{SERVICE}/Say", extra=()):
    """A socket past the preface and SETTINGS, with HEADERS (no END_STREAM) sent on stream 1."""
    import hpack

    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    block = hpack.Encoder().encode([(":method", "POST"), (":scheme", "http"), (":path", path),
                                    (":authority", "x"), ("content-type", "application/grpc"), *extra])
    sock.sendall(f.PREFACE + f.frame(f.SETTINGS, 0, 0) + f.frame(f.HEADERS, f.END_HEADERS, 1, block))
    return sock


def test_data_past_the_streams_window_resets_it_and_the_connection_lives(running):
    r = running()
    with _raw_call(r.port, path=f"/{SERVICE}/Hold") as sock:  # a handler that reads nothing: no credit back
        message = b"\x00" + (10_000 - 5).to_bytes(4, "big") + b"m" * (10_000 - 5)
        sock.sendall(b"".join(f.frame(f.DATA, 0, 1, message) for _ in range(f.STREAM_WINDOW // 10_000 + 2))
                     + f.frame(f.PING, 0, 0, b"stillok?"))
        got = _read_frames(sock, lambda fr: fr[0] == f.PING and fr[1] & f.ACK)
    assert (f.RST_STREAM, 0, 1, f.U32.pack(f.FLOW_CONTROL_ERROR)) in got
    assert not [fr for fr in got if fr[0] == f.WINDOW_UPDATE and fr[2] == 1]
    assert r.server.calls.buffered == 0


def test_a_streaming_handler_that_does_not_read_stops_its_client(running):
    r = running()
    client = RawClient(r.port)
    sid = client.h2.get_next_available_stream_id()
    client.h2.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":path", f"/{SERVICE}/Hold"),
                                 (":authority", "x"), ("content-type", "application/grpc")])
    message = b"\x00" + (10_000).to_bytes(4, "big") + b"m" * 10_000
    sent = 0
    for _ in range(3):  # send what the windows allow, give the server time to give credit back
        while client.h2.local_flow_control_window(sid) >= len(message):
            client.h2.send_data(sid, message)
            sent += len(message)
        client.flush()
        time.sleep(0.3)
        client.sock.settimeout(0.2)
        try:
            client.h2.receive_data(client.sock.recv(1 << 16))
        except socket.timeout:
            pass
    assert sent < f.STREAM_WINDOW + 100_000  # no credit came back: the client stopped
    assert r.server.calls.buffered <= f.STREAM_WINDOW + 100_000


def test_a_client_that_sends_and_never_reads_is_not_read_either(running):
    r = running()
    with _raw_call(r.port) as sock:
        sock.settimeout(3)
        pings = f.frame(f.PING, 0, 0, b"12345678") * 20_000
        sent = 0
        try:
            for _ in range(200):  # 68 MB of PINGs, whose answers nobody reads
                sock.sendall(pings)
                sent += len(pings)
        except socket.timeout:
            pass
        assert sent < 200 * len(pings)  # the server stopped reading

        async def buffered():
            return max(c.transport.get_write_buffer_size() for c in r.server.connections)

        assert r.run(buffered()) < 8 << 20


def test_a_header_block_too_large_closes_the_connection(running):
    r = running()
    with _raw_call(r.port) as sock:
        sock.sendall(f.frame(f.HEADERS, f.END_HEADERS, 3, b"\xbe" * (f.MAX_HEADER_BLOCK + 1)))
        got = _read_frames(sock, lambda fr: fr[0] == f.GOAWAY)
    assert got[-1][0] == f.GOAWAY and f.U32.unpack(got[-1][3][4:8])[0] == f.ENHANCE_YOUR_CALM


def test_headers_again_on_a_stream_whose_request_is_over_reset_it(running):
    r = running()
    with _raw_call(r.port) as sock:
        sock.sendall(f.frame(f.DATA, f.END_STREAM, 1, b"\x00" + (9).to_bytes(4, "big") + b"sleep:0.5"))
        assert r.echo.started.wait(5)
        sock.sendall(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, 1, b"\x83"))
        got = _read_frames(sock, lambda fr: fr[0] == f.RST_STREAM)
    assert got[-1] == (f.RST_STREAM, 0, 1, f.U32.pack(f.STREAM_CLOSED))
    assert _cancelled_once(r)  # the call's handler does not run on


def test_many_streams_reset_by_their_client_close_its_connection(running, caplog):
    r = running()
    client = RawClient(r.port)
    for _ in range(f.RESETS_ALLOWED + 10):
        sid = client.h2.get_next_available_stream_id()
        client.h2.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":path", f"/{SERVICE}/Say"),
                                     (":authority", "x"), ("content-type", "application/grpc")])
        client.h2.reset_stream(sid)
    with caplog.at_level(logging.INFO, logger="engine.ingress.http2.connection"):
        try:
            client.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed while the rest was still being sent
        deadline = time.monotonic() + 5
        while r.server.connections and time.monotonic() < deadline:
            time.sleep(0.01)
    assert not r.server.connections  # closed by the server: the client's socket is still open
    assert f"{f.RESETS_ALLOWED + 1} of" in caplog.text and "reset by the client" in caplog.text
    client.sock.close()


def test_an_unauthenticated_call_is_refused_before_its_request_is_read(running):
    r = running(interceptors=[TokenAuth([b"sesame"], frozenset())])
    with _raw_call(r.port) as sock:
        sock.sendall(f.frame(f.DATA, 0, 1, b"\x00" + (500_000).to_bytes(4, "big") + b"x" * 100_000))
        got = _read_frames(sock, lambda fr: fr[0] == f.HEADERS and fr[1] & f.END_STREAM)
        assert b"grpc-status" in got[-1][3]  # answered with only a part of the request sent
    assert r.server.calls.buffered == 0
    with _channel(r.port) as channel:
        assert _say(channel, b"hi", metadata=[("authorization", "Bearer sesame")]) == b"hi"
        with pytest.raises(grpc.RpcError) as err:
            _say(channel, b"hi")
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_compressed_message_past_the_limit_once_inflated_is_refused(running):
    r = running(max_receive_message_length=1_000_000)
    with _channel(r.port) as channel:
        with pytest.raises(grpc.RpcError) as err:  # 2 MB of zeros: a few KB on the wire
            _say(channel, b"\0" * 2_000_000, compression=grpc.Compression.Gzip)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _say(channel, b"\0" * 900_000, compression=grpc.Compression.Gzip) == b"\0" * 900_000
    assert len(zlib.compress(b"\0" * 2_000_000)) < 10_000


def test_a_client_that_said_goaway_first_does_not_hold_up_the_stop(running):
    r = running()
    client = RawClient(r.port)
    client.h2.close_connection()
    client.flush()
    time.sleep(0.2)
    t0 = time.monotonic()
    r.run(r.server.stop(3.0))
    assert time.monotonic() - t0 < 2.0
