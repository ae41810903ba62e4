"""scorewire's own gRPC transport: HTTP/2 and the gRPC protocol on the event loop
(`[server] grpc_transport = "scorewire"`, the default); `"grpcio"` serves through grpc.aio."""

from engine.ingress.http2.server import Server, ssl_context

__all__ = ["Server", "ssl_context"]
