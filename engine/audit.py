"""Every answer traced to what gave it: the ONNX file's and the version's settings' hashes
(in each scoring-log row), and an audit trail of loads, reloads and rollout decisions
(events_dir, kind=audit) that `scorewire audit` reads back with the scoring log.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from engine.settings import ModelSettings

if TYPE_CHECKING:
    import pyarrow as pa

CHUNK = 1 << 20


@functools.cache
def schema() -> pa.Schema:
    """The audit trail's columns (pyarrow: imported with the first row written)."""
    import pyarrow as pa

    return pa.schema([
        ("time", pa.timestamp("ns", tz="UTC")),
        ("event", pa.string()),  # load | reload | unload | rollout
        ("version", pa.string()),
        ("model_sha256", pa.string()),
        ("config_sha256", pa.string()),
        ("path", pa.string()),
        ("detail", pa.string()),  # what changed, or the rollout's state and reason
    ])


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def settings_sha256(ms: ModelSettings) -> str:
    """Of the version's effective settings (paths resolved, defaults filled), as canonical JSON."""
    return hashlib.sha256(json.dumps(ms.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def provenance(ms: ModelSettings) -> tuple[str | None, str]:
    try:
        model = file_sha256(ms.path)
    except OSError:
        model = None
    return model, settings_sha256(ms)


def write(directory: Path, model: str, rows: list[dict]) -> Path:
    """Append audit rows (keys: schema()'s names, time in ns) for one model: one events file."""
    import pyarrow as pa

    from engine.monitor.events import publish

    now = time.time_ns()
    columns = schema()
    table = pa.table({name: [r.get(name, now if name == "time" else None) for r in rows] for name in columns.names},
                     schema=columns)
    return publish(directory, "audit", model, now, table)


__all__ = ["file_sha256", "provenance", "settings_sha256", "write"]


def story(log_dir: Path, events_dir: Path | None, request_id: str, labels: Path | None = None) -> str:
    """The whole story of one answer: every row logged under `request_id` (each version and
    role that scored it: the answer and the shadows), with the artifact's and settings'
    hashes, its inputs and outputs, the version's last load before it (does the hash match?),
    the rollout's state at that moment, and its label when a labels file is given."""
    import pyarrow.compute as pc

    from engine.errors import UsageError
    from engine.report import read_folder

    log = read_folder(Path(log_dir))
    if log is None:
        raise UsageError(f"--log {log_dir}: no Parquet files (the [scorelog] dir of a server)")
    rows = log.filter(pc.equal(log.column("request_id"), request_id)).to_pylist()
    if not rows:
        raise UsageError(f"no row of request {request_id!r} in the scoring log under {log_dir} (ids are the "
                         "requests' own, or the ones the server returned; files appear when they close)")
    audit = read_folder(Path(events_dir), "audit") if events_dir else None
    rollouts = read_folder(Path(events_dir), "rollout") if events_dir else None
    lines = [f"request {request_id}: {len(rows)} rows logged"]
    own: dict[tuple[str, str], set[str]] = {}  # (model, version) -> its input and output columns
    for r in sorted(rows, key=lambda r: (r["time"], r.get("role") or "", r["row"])):
        lines.append(f"\n{r['time']:%Y-%m-%d %H:%M:%S.%f} UTC  model {r['model']} version {r['version']} "
                     f"({r.get('role')}, routing {r.get('routing')}), row {r['row']}")
        sha, config = r.get("model_sha256"), r.get("config_sha256")
        lines.append(f"  artifact sha256 {sha or '(not logged)'}; settings sha256 {config or '(not logged)'}")
        if audit is not None:
            mine = [a for a in audit.to_pylist() if a["model"] == r["model"] and a["version"] == r["version"]
                    and a["event"] in ("load", "reload") and a["time"] <= r["time"]]
            if mine:
                last = max(mine, key=lambda a: a["time"])
                same = "the same file" if last["model_sha256"] == sha else "ANOTHER file than the row's"
                lines.append(f"  loaded {last['time']:%Y-%m-%d %H:%M:%S} UTC from {last['path']} ({same})")
        if rollouts is not None:
            before = [e for e in rollouts.to_pylist() if e["model"] == r["model"] and e["time"] <= r["time"]]
            if before:
                e = max(before, key=lambda e: e["time"])
                lines.append(f"  rollout then: {e['state']}, step {e['step'] + 1}, candidate {e['candidate']} at "
                             f"{e['weight']:g}% ({e['reason']})")
        key = (r["model"], r["version"])
        if key not in own:
            own[key] = _own_columns(log, *key)
        inputs = _values(r, own[key], "in_")
        outputs = _values(r, own[key], "out_")
        lines.append(f"  inputs  {_short(inputs)}")
        lines.append(f"  outputs {_short(outputs)}")
    if labels is not None:
        from engine.scorelog.labelled import read_labels

        found = read_labels(labels)
        found = found.filter(pc.equal(found.column("request_id"), request_id)).to_pylist()
        lines.append("\nlabel: " + (", ".join(f"row {x['row']}: {x['label']:g}" for x in found) if found
                                   else f"none for this id in {labels}"))
    return "\n".join(lines)


def _own_columns(log, model: str, version: str) -> set[str]:
    """The input and output columns of one model's version: those with a value in some row of
    it. The log's files are read as one table, so every row has every model's columns, null
    where they are another model's (or another version's, when its inputs differ)."""
    import pyarrow.compute as pc

    names = [n for n in log.column_names if n.startswith(("in_", "out_"))]
    mine = log.select(names + ["model", "version"])
    mine = mine.filter(pc.and_(pc.equal(mine.column("model"), model), pc.equal(mine.column("version"), version)))
    return {n for n in names if mine.column(n).null_count < mine.num_rows}


def _values(row: dict, own: set[str], prefix: str) -> dict:
    """The row's values of its own columns under `prefix`, in the log's order, the ones it
    holds first (a null one is still shown, after them)."""
    values = [(k[len(prefix):], v) for k, v in row.items() if k.startswith(prefix) and k in own]
    return dict(sorted(values, key=lambda kv: kv[1] is None))


def _short(values: dict, limit: int = 8) -> str:
    shown = [f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(values.items())[:limit]]
    more = len(values) - limit
    return ", ".join(shown) + (f", ... ({more} more)" if more > 0 else "")
