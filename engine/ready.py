"""The ready file: `scorewire serve --ready-file PATH` writes it once every model is loaded and
every port is bound, so that a program that started the server learns the ports it bound
(`0` in the config: any free port) without reading its stdout.

One small JSON object, published whole (a temporary name beside it, fsync, rename, fsync the
folder): a reader sees no file or a complete one. `format` says which fields follow; a reader
refuses a format it does not know instead of guessing. The server removes the file when it
exits (not after SIGKILL: a reader that starts a server removes a stale file first).

    {"format": 1, "pid": 4242, "grpc_port": 8001, "http_port": 8000, "metrics_port": 8002}
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

FORMAT = 1


@dataclass(frozen=True)
class Ready:
    pid: int
    """The process that serves: the supervisor when there are several workers."""
    grpc_port: int
    http_port: int
    metrics_port: int
    """0 when the server serves no /metrics of its own."""


def write(path: Path, ready: Ready) -> None:
    """Publish `ready` at `path` atomically (see the module's docstring)."""
    from engine.scorelog.files import publish

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"format": FORMAT, **asdict(ready)}) + "\n")
    publish(tmp, path)


def read(path: Path) -> Ready | None:
    """The ready file at `path`; None while there is none. ValueError when it is not one this
    code can read (another format, a field missing)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    try:
        document = json.loads(text)
        if document.get("format") != FORMAT:
            raise ValueError(f"format {document.get('format')!r}, this code reads format {FORMAT}")
        return Ready(**{name: int(document[name]) for name in ("pid", "grpc_port", "http_port", "metrics_port")})
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path} is not a scorewire ready file: {exc}") from None


def remove(path: Path) -> None:
    """Remove the ready file, if it is there (the server's exit)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
