"""Prometheus text exposition on the metrics port (GET /metrics).

Served by a minimal asyncio HTTP responder on the engine's own loop; rendering reads
counters the components already keep, so scraping never touches the request path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from engine.runtime.registry import Registry

log = logging.getLogger(__name__)


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in labels.items())
    return "{" + inner + "}"


def render(registry: Registry, requests_by_code: dict[tuple[str, str], int]) -> str:
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{labels} {value}" for labels, value in samples)

    served = registry.all()
    family("scorewire_model_info", "gauge", "Model versions served and the execution provider in use.",
           [(_labels(model=s.name, version=s.version, provider=s.model.provider), 1) for s in served])
    family("scorewire_requests_total", "counter", "gRPC inference requests by model and status code.",
           [(_labels(model=m, code=c), n) for (m, c), n in sorted(requests_by_code.items())])
    family("scorewire_batches_total", "counter", "Batches scored.",
           [(_labels(model=s.name, version=s.version), s.batcher.stats.batches) for s in served])
    family("scorewire_rows_total", "counter", "Rows scored.",
           [(_labels(model=s.name, version=s.version), s.batcher.stats.rows) for s in served])
    family("scorewire_queue_rows", "gauge", "Rows waiting to be batched.",
           [(_labels(model=s.name, version=s.version), s.batcher.queued_rows) for s in served])
    family("scorewire_expired_total", "counter", "Requests not scored because their deadline passed.",
           [(_labels(model=s.name, version=s.version), s.batcher.stats.expired) for s in served])
    family("scorewire_cancelled_total", "counter", "Requests not scored because the caller went away first.",
           [(_labels(model=s.name, version=s.version), s.batcher.stats.cancelled) for s in served])
    family("scorewire_rejected_total", "counter", "Requests refused because the queue was full.",
           [(_labels(model=s.name, version=s.version), s.batcher.stats.rejected_full) for s in served])
    return "\n".join(lines) + "\n"


class MetricsServer:
    def __init__(self, host: str, port: int, body: Callable[[], str]):
        self.host, self.port, self._body = host, port, body
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            path = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b""
            if path.split(b"?")[0] == b"/metrics":
                status, payload = b"200 OK", self._body().encode()
            else:
                status, payload = b"404 Not Found", b"try /metrics\n"
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; version=0.0.4\r\n"
                b"Content-Length: " + str(len(payload)).encode() + b"\r\nConnection: close\r\n\r\n" + payload
            )
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
