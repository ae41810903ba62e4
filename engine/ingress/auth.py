"""gRPC transport security: TLS/mTLS credentials and bearer-token authentication.

Tokens are compared in constant time (hmac.compare_digest against every accepted token, no
early exit), and never logged. A call without a valid `authorization: Bearer <token>`
metadata entry is answered UNAUTHENTICATED before its request is parsed.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Callable

import grpc

from engine.settings import AuthSettings, SettingsError, TlsSettings

log = logging.getLogger(__name__)

# Methods a load balancer or orchestrator probes; open when auth.open_health is true.
HEALTH_METHODS = frozenset({
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
})


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    def read(path, what: str) -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise SettingsError(f"server.tls.{what}: cannot read {path}: {exc.strerror}") from None

    key, cert = read(tls.key_file, "key_file"), read(tls.cert_file, "cert_file")
    ca = read(tls.client_ca_file, "client_ca_file") if tls.client_ca_file is not None else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


def load_tokens(auth: AuthSettings) -> list[bytes]:
    if auth.tokens_file is not None:
        try:
            lines = auth.tokens_file.read_text().splitlines()
        except OSError as exc:
            raise SettingsError(f"server.auth.tokens_file: cannot read {auth.tokens_file}: {exc.strerror}") from None
        where = str(auth.tokens_file)
    else:
        value = os.environ.get(auth.tokens_env or "")
        if value is None:
            raise SettingsError(f"server.auth.tokens_env: environment variable {auth.tokens_env} is not set")
        lines = value.split(",")
        where = f"${auth.tokens_env}"
    tokens = [line.strip().encode() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not tokens:
        raise SettingsError(f"server.auth: no tokens in {where}")
    return tokens


class TokenAuth(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: list[bytes], open_methods: frozenset[str], on_denied: Callable[[], None] | None = None):
        self._tokens = tokens
        self._open = open_methods
        self._on_denied = on_denied

    def valid(self, metadata) -> bool:
        """Whether (key, value) pairs carry `authorization: Bearer <a configured token>` (REST
        passes its header this way)."""
        return self._valid(metadata)

    def _valid(self, metadata) -> bool:
        presented = b""
        for key, value in metadata or ():
            if key == "authorization":
                raw = value.encode() if isinstance(value, str) else value
                if raw[:7].lower() == b"bearer ":
                    presented = raw[7:].strip()
                break
        ok = False
        for token in self._tokens:  # every token, every time: no timing hint of which one is close
            ok |= hmac.compare_digest(presented, token)
        return ok and bool(presented)

    async def intercept_service(self, continuation, details):
        if details.method in self._open or self._valid(details.invocation_metadata):
            return await continuation(details)
        if self._on_denied is not None:
            self._on_denied()
        handler = await continuation(details)
        return _deny(handler)


def _deny(handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler:
    message = "missing or invalid bearer token (send metadata 'authorization: Bearer <token>')"

    async def unary(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def streaming(request_iterator, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    # The request bytes are never parsed: no deserializer.
    if handler is not None and handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming)
    if handler is not None and handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming)
    if handler is not None and handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary)
    return grpc.unary_unary_rpc_method_handler(unary)
