"""Configs for `scorewire serve` built from parameters and written as TOML: the demo's, the
tests' and the benches'. engine/settings.py says what each key means and checks them when the
server loads the file; this module only writes what it is given.

    config = Config(server_table(workers=1), [model_table("mlp", "models/mlp.onnx", batching={"max_batch_size": 64})])
    config = config.add(routes=[route_table("mlp", "1", challengers=["2"])], scorelog={"dir": "log"})
    config.write(directory / "scorewire.toml")

A table is a dict; a value of None leaves its key out, a dict inside a table is a sub-table
(`[models.batching]`), a dict deeper down an inline table, and the key `"#"` a comment above
the table's header.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

Table = dict[str, Any]
COMMENT = "#"


def server_table(*, host: str = "127.0.0.1", grpc_port: int = 0, metrics_port: int = 0, http_port: int = 0,
                 **keys: Any) -> Table:
    """[server]: on loopback, every port free (0) unless given; `keys`: its other keys
    (workers, drain_timeout_s, tls, ...)."""
    return {"host": host, "grpc_port": grpc_port, "metrics_port": metrics_port, "http_port": http_port, **keys}


def model_table(name: str, path: str | Path, *, version: str | None = None, batching: Mapping | None = None,
                monitor: Mapping | None = None, comment: str = "", **keys: Any) -> Table:
    """One [[models]] table; `keys`: its other keys (instances, warmup, io_binding, ...)."""
    return {COMMENT: comment, "name": name, "path": str(path), "version": version, **keys,
            "batching": None if batching is None else dict(batching),
            "monitor": None if monitor is None else dict(monitor)}


def route_table(model: str, champion: str, *, challengers: Iterable[str] | None = None,
                split: Mapping[str, float] | None = None, **keys: Any) -> Table:
    """One [[routes]] table; `keys`: its other keys (shadow_timeout_s, sticky_key, ...)."""
    return {"model": model, "champion": champion, "challengers": None if challengers is None else list(challengers),
            "split": None if split is None else dict(split), **keys}


def stream_table(model: str, bootstrap_servers: str, input_topic: str, output_topic: str, dead_letter_topic: str,
                 *, consumer: Mapping | None = None, producer: Mapping | None = None, comment: str = "",
                 **keys: Any) -> Table:
    """One [[streams]] table; `keys`: its other keys (group_id, format, semantics, ...);
    `consumer`/`producer`: librdkafka settings of its [streams.consumer]/[streams.producer]."""
    return {COMMENT: comment, "model": model, "bootstrap_servers": bootstrap_servers, "input_topic": input_topic,
            "output_topic": output_topic, "dead_letter_topic": dead_letter_topic, **keys,
            "consumer": None if consumer is None else dict(consumer),
            "producer": None if producer is None else dict(producer)}


@dataclass(frozen=True)
class Config:
    """A whole config; `add` and `with_server` return a new one (tests build variants of a base)."""

    server: Table
    models: list[Table] = field(default_factory=list)
    routes: list[Table] = field(default_factory=list)
    streams: list[Table] = field(default_factory=list)
    scorelog: Table | None = None
    monitoring: Table | None = None
    comment: str = ""
    """Lines at the top of the file."""
    feedback: list[Table] = field(default_factory=list)

    def add(self, *, models: Iterable[Table] = (), routes: Iterable[Table] = (), streams: Iterable[Table] = (),
            scorelog: Table | None = None, monitoring: Table | None = None, comment: str = "") -> Config:
        """This config with more models, routes and streams (after its own), and [scorelog],
        [monitoring] and a comment where given (in place of its own)."""
        return replace(self, models=[*self.models, *models], routes=[*self.routes, *routes],
                       streams=[*self.streams, *streams],
                       scorelog=self.scorelog if scorelog is None else scorelog,
                       monitoring=self.monitoring if monitoring is None else monitoring,
                       comment=comment or self.comment)

    def with_server(self, **keys: Any) -> Config:
        """This config with these [server] keys set (None removes one)."""
        merged = {**self.server, **keys}
        return replace(self, server={k: v for k, v in merged.items() if v is not None})

    def text(self) -> str:
        document = {"server": self.server, "monitoring": self.monitoring, "models": self.models,
                    "routes": self.routes, "scorelog": self.scorelog, "streams": self.streams,
                    "feedback": self.feedback}
        return dumps(document, self.comment)

    def write(self, path: Path) -> Path:
        path = Path(path)
        path.write_text(self.text())
        return path


# -- TOML ---------------------------------------------------------------------------------
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def dumps(document: Mapping[str, Any], comment: str = "") -> str:
    """`document` as TOML: its dict values as tables, its lists of dicts as arrays of tables,
    in the order given (TOML for the tables a config has, not every TOML document)."""
    out = [f"# {line}".rstrip() for line in comment.splitlines()]
    for name, value in document.items():
        if value is None or value == []:
            continue
        if isinstance(value, Mapping):
            _table(out, [name], value, array=False)
        elif isinstance(value, list) and all(isinstance(v, Mapping) for v in value):
            for item in value:
                _table(out, [name], item, array=True)
        else:
            raise TypeError(f"{name}: a top-level value must be a table or a list of tables, not {value!r}")
    return "\n".join(out).lstrip("\n") + "\n"


def _table(out: list[str], path: list[str], table: Mapping[str, Any], array: bool) -> None:
    header = ".".join(_key(p) for p in path)
    if len(path) == 1:
        out.append("")
    if table.get(COMMENT):
        out += [f"# {line}".rstrip() for line in str(table[COMMENT]).splitlines()]
    out.append(f"[[{header}]]" if array else f"[{header}]")
    subtables = []
    for key, value in table.items():
        if key == COMMENT or value is None:
            continue
        if isinstance(value, Mapping) and len(path) == 1:
            subtables.append((key, value))
        else:
            out.append(f"{_key(key)} = {_value(value)}")
    for key, value in subtables:
        _table(out, [*path, key], value, array=False)


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return repr(value)
        return "nan" if math.isnan(value) else "inf" if value > 0 else "-inf"
    if isinstance(value, (str, Path)):
        # a JSON string is a TOML basic string, but for DEL, which TOML wants escaped
        return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items() if v is not None) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"no TOML value for {value!r} ({type(value).__name__})")
