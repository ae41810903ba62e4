"""The scoring log on disk: what survives a crash, and how a file becomes visible.

A file in progress is an Arrow IPC stream, `.part-<stamp>-<pid>-<seq>.arrows` (hidden, and
not `*.parquet`: readers of the dataset never see it), appended to once per writer tick. A
tick is made durable by its commit: every stream it wrote to is fsynced, then the writer's
journal, `.scorelog-<pid>.journal` at the dataset's root, is replaced (written, fsynced,
renamed, its folder fsynced) by one that lists every stream not yet published with its
committed length (bytes and rows), and, per hand-off ring (engine/handoff/ring.py), the end
of the last record whose rows are committed. Bytes past a stream's committed length are a
tick that did not commit; they are never read.

A complete stream (max_rows_per_file, max_file_age_s, or closing) is converted to Parquet
under a temporary name, checked (its footer read back, its rows counted), fsynced and renamed
to `part-<stamp>-<pid>-<seq>.parquet` (then its folder fsynced), and the stream is removed.

`recover` takes over what writers that no longer run left behind: the committed part of each
stream their journals list (dropped instead where its Parquet file exists: that writer died
between the rename and the removal), and their hand-off positions, so that a new observer
skips the records already in the log and reads the rest again. Their uncommitted streams and
temporary Parquet files are removed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:  # pyarrow is imported where a file is written: a worker publishes rollout
    import pyarrow as pa  # state through this module, and never a Parquet file

log = logging.getLogger(__name__)

STREAM_SUFFIX = ".arrows"
ROW_GROUP_ROWS = 128 * 1024


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: Path, final: Path) -> None:
    """Make a finished file visible under its final name: fsync it, rename it, fsync its
    folder (so the rename survives a crash too)."""
    _fsync(tmp)
    os.rename(tmp, final)
    _fsync(final.parent)


def write_parquet(final: Path, write: Callable[[Path], None], rows: int) -> None:
    """`write(tmp)` writes the file under a hidden temporary name beside `final`; it is
    published only once its footer reads back with `rows` rows. On any failure (a full disk)
    the temporary file is removed and the error raised: nothing half written stays."""
    import pyarrow.parquet as pq

    tmp = final.with_name(f".{final.name}.tmp")
    try:
        write(tmp)
        found = pq.read_metadata(tmp).num_rows
        if found != rows:
            raise OSError(f"{tmp} holds {found} rows where {rows} were written")
        publish(tmp, final)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def final_name(stream: Path) -> Path:
    """The Parquet file a stream becomes: `.part-X.arrows` -> `part-X.parquet`."""
    return stream.with_name(stream.name[1:-len(STREAM_SUFFIX)] + ".parquet")


def parquet_options(schema: pa.Schema, compression: str | None) -> dict:
    # Dictionary pages only where values repeat: on float features they cost time for nothing.
    # zstd at level 1: a third cheaper than its default level, files about as small.
    # Statistics (min/max, for readers' filters) on the bookkeeping columns, not on every
    # feature; large write batches: both measurably cheaper per row.
    keys = [f.name for f in schema if not f.name.startswith(("in_", "out_"))]
    return {"compression": compression, "compression_level": 1 if compression == "zstd" else None,
            "use_dictionary": [c for c in ("version", "routing", "routing_key") if c in schema.names],
            "write_statistics": keys, "write_batch_size": 65536}


def publish_stream(stream: Path, length: int, rows: int, compression: str | None) -> None:
    """The committed part of a stream (its first `length` bytes, `rows` rows) as a Parquet
    file beside it (see write_parquet); the stream itself stays (the caller removes it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pa.memory_map(str(stream)) as source:
        reader = pa.ipc.open_stream(source.read_buffer(length))
        table = reader.read_all()
        if table.num_rows != rows:
            raise OSError(f"{stream}: {table.num_rows} rows in its committed part, the journal says {rows}")
        options = parquet_options(table.schema, compression)
        write_parquet(final_name(stream),
                      lambda tmp: pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS, **options), rows)


# -- the writer's journal ---------------------------------------------------------------------
def journal_path(root: Path, pid: int) -> Path:
    return root / f".scorelog-{pid}.journal"


def write_journal(path: Path, streams: dict[str, tuple[int, int]], rings: dict[str, int]) -> None:
    """Replace the journal: streams (path relative to the root -> committed bytes, rows) and
    the hand-off positions. Atomic: a crash leaves the old journal or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    data = orjson.dumps({"streams": streams, "rings": rings})
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    _fsync(path.parent)


def write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _pid(name: str, where: int) -> int | None:
    try:
        return int(name.split("-")[where].split(".")[0])
    except (ValueError, IndexError):
        return None


def writer_gone(pid: int | None) -> bool:
    """Whether the writer of that process id no longer runs. This process's own files are
    those of a writer before it (the same pid again, e.g. in a restarted container): a log
    opens once per process and directory."""
    if pid is None:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


@dataclass
class Recovered:
    streams: list[tuple[Path, int, int]] = field(default_factory=list)  # (stream, committed bytes, rows)
    rings: dict[str, int] = field(default_factory=dict)  # ring name -> end of the last logged record
    journals: list[Path] = field(default_factory=list)  # to remove once the new journal lists the streams
    removed: int = 0  # uncommitted streams and temporary files of writers gone


def recover(root: Path) -> Recovered:
    """What writers that no longer run left under `root` (see the module's docstring)."""
    found = Recovered()
    owned: set[Path] = set()  # streams some journal lists, live or not
    for journal in sorted(root.glob(".scorelog-*.journal")):
        gone = writer_gone(_pid(journal.name, 1))
        try:
            state = orjson.loads(journal.read_bytes())
            streams, rings = state["streams"], state["rings"]
        except (OSError, ValueError, KeyError, TypeError):
            log.error("scoring log: cannot read the journal %s; its streams are left where they are", journal)
            continue
        owned.update(root / rel for rel in streams)
        if not gone:
            continue
        found.journals.append(journal)
        for name, end in rings.items():
            found.rings[name] = max(found.rings.get(name, 0), int(end))
        for rel, (length, rows) in streams.items():
            stream = root / rel
            if not stream.exists():
                continue
            if final_name(stream).exists():  # published; the writer died before removing the stream
                remove(stream)
                continue
            found.streams.append((stream, int(length), int(rows)))
    for pattern, where in (("**/.part-*" + STREAM_SUFFIX, -2), ("**/.part-*.parquet.tmp", -2),
                           (".scorelog-*.journal.tmp", 1)):
        for path in root.glob(pattern):
            if path not in owned and writer_gone(_pid(path.name, where)) and remove(path):
                found.removed += 1
    if found.removed:
        log.warning("scoring log: removed %d unfinished file(s) of writers that stopped before committing them",
                    found.removed)
    return found


def remove(path: Path) -> bool:
    """Remove a file; False when it was not there (or could not be removed: logged)."""
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False
    except OSError:
        log.warning("scoring log: cannot remove %s", path)
        return False
