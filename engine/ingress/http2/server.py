"""scorewire's own gRPC server: HTTP/2 on the event loop (connection.py, calls.py), with the
part of grpc.aio.Server's interface the App uses, so either serves the same servicers.

Why: grpc.aio runs each call through gRPC's C core, its completion queue and a thread hop;
for a one-row request that costs more than the model and all of scorewire's own work
(bench/results/peers-bench.md). Here a call is a few frames parsed in Python and one task.
"""

from __future__ import annotations

import asyncio
import random
import socket
import ssl

from engine.ingress.http2.calls import Calls
from engine.ingress.http2.connection import Connection


class Server:
    def __init__(self, interceptors=(), max_receive_message_length: int = 4 << 20,
                 max_concurrent_streams: int = 1024, reuse_port: bool = False, max_connection_age_s: float = 0.0,
                 max_buffered_bytes: int = 1 << 30):
        self.calls = Calls(self._lookup, interceptors, max_receive_message_length, max_buffered_bytes)
        self.max_concurrent_streams = max_concurrent_streams
        self.reuse_port = reuse_port
        self.max_connection_age_s = max_connection_age_s
        self._generic: list = []
        self._registered: dict[str, object] = {}
        self._found: dict[str, object] = {}
        self._sockets: list[tuple[socket.socket, ssl.SSLContext | None]] = []
        self._listeners: list[asyncio.AbstractServer] = []
        self.connections: dict[Connection, asyncio.TimerHandle | None] = {}
        self._all_closed: asyncio.Event | None = None
        self.accepted = 0  # connections, all told

    # -- handlers (grpc.aio.Server's names) -----------------------------------------------
    def add_generic_rpc_handlers(self, handlers) -> None:
        self._generic.extend(handlers)
        self._found.clear()

    def add_registered_method_handlers(self, service: str, method_handlers: dict) -> None:
        for name, handler in method_handlers.items():
            self._registered[f"/{service}/{name}"] = handler
        self._found.clear()

    def _lookup(self, path: str):
        handler = self._found.get(path)
        if handler is None:
            handler = self._registered.get(path)
            if handler is None:
                details = _Lookup(path)
                for generic in self._generic:
                    handler = generic.service(details)
                    if handler is not None:
                        break
            if handler is not None:
                self._found[path] = handler
        return handler

    # -- ports -------------------------------------------------------------------------------
    def add_insecure_port(self, address: str) -> int:
        return self._bind(address, None)

    def add_secure_port(self, address: str, context: ssl.SSLContext) -> int:
        return self._bind(address, context)

    def _bind(self, address: str, context: ssl.SSLContext | None) -> int:
        """Bound now, as grpc.aio does (the port is known before start); RuntimeError if not."""
        host, _, port = address.rpartition(":")
        host = host.strip("[]") or None
        try:
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"Failed to bind to address {address}: {exc}") from None
        bound = 0
        for family, kind, proto, _, addr in infos:
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if self.reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(addr[:1] + (bound or addr[1],) + addr[2:])
                sock.listen(1024)
            except OSError as exc:
                sock.close()
                if bound:
                    continue  # the port is had on one address of the name: enough (as gRPC)
                last = exc
                continue
            sock.setblocking(False)
            bound = bound or sock.getsockname()[1]
            self._sockets.append((sock, context))
        if not bound:
            raise RuntimeError(f"Failed to bind to address {address}: {last}")
        return bound

    # -- serving ---------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for sock, context in self._sockets:
            self._listeners.append(await loop.create_server(lambda: Connection(self), sock=sock, ssl=context))

    def opened(self, conn: Connection) -> None:
        self.accepted += 1
        timer = None
        if self.max_connection_age_s > 0:  # +-10% jitter, as gRPC: connections made together part
            age = self.max_connection_age_s * random.uniform(0.9, 1.1)
            timer = conn.loop.call_later(age, conn.go_away)
        self.connections[conn] = timer

    def closed(self, conn: Connection) -> None:
        timer = self.connections.pop(conn, None)
        if timer is not None:
            timer.cancel()
        if not self.connections and self._all_closed is not None:
            self._all_closed.set()

    async def stop(self, grace: float | None) -> None:
        """No new connections; each connection is told to go (GOAWAY) and closes once its calls
        are answered; past `grace` seconds what is left is cancelled."""
        for listener in self._listeners:
            listener.close()
        self._all_closed = asyncio.Event()
        for conn in list(self.connections):
            if grace:
                conn.go_away()
            else:
                conn._close()
        if self.connections and grace:
            try:
                await asyncio.wait_for(self._all_closed.wait(), grace)
            except asyncio.TimeoutError:
                pass
        for conn in list(self.connections):
            conn.transport.abort()
        for listener in self._listeners:
            await listener.wait_closed()


class _Lookup:
    """grpc.HandlerCallDetails for a generic handler's `service`."""

    __slots__ = ("method", "invocation_metadata")

    def __init__(self, method: str):
        self.method, self.invocation_metadata = method, ()


def ssl_context(cert_file, key_file, client_ca_file=None) -> ssl.SSLContext:
    """TLS 1.2+ offering HTTP/2 (ALPN h2, which gRPC clients require); with a client CA, the
    client must present a certificate it signed (mTLS)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert_file), str(key_file))
    context.set_alpn_protocols(["h2"])
    if client_ca_file is not None:
        context.load_verify_locations(str(client_ca_file))
        context.verify_mode = ssl.CERT_REQUIRED
    return context
