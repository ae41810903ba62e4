"""The scoring log in process: rotation by rows and age, atomic files, accounting."""

from __future__ import annotations

import time

import numpy as np
import pytest
import pyarrow.parquet as pq

from engine.batching.batch import Origin, ScoredBatch
from engine.scorelog.parquet import ScoreLog
from engine.settings import ScoreLogSettings


def batch(rows: int, members: int = 2, wall_ns: int | None = None, version: str = "1", role: str = "champion"):
    x = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)
    bounds = tuple(int(b) for b in np.linspace(0, rows, members + 1))
    origins = tuple(Origin(role, "default", f"r{i}", None) for i in range(members))
    return ScoredBatch("m", version, role, {"x": x}, {"y": x.sum(axis=1), "p": np.c_[x[:, :1], x[:, 1:2]]},
                       np.arange(members, dtype=np.int64), np.arange(members, dtype=np.int64) + 10, 7, rows,
                       bounds, origins, wall_ns or time.time_ns())


def test_rotation_by_rows_and_a_full_flush_on_close(tmp_path):
    log = ScoreLog(ScoreLogSettings(dir=tmp_path, max_rows_per_file=100, max_file_age_s=3600),
                   {("m", "x"): ["a", "b", "c"]})
    for _ in range(25):
        log.put(batch(10))
    log.close()
    files = sorted(tmp_path.glob("model=m/role=champion/date=*/*.parquet"))
    assert [pq.ParquetFile(f).metadata.num_rows for f in files] == [100, 100, 50]
    assert not list(tmp_path.glob("**/*.tmp"))
    table = pq.read_table(files[0])
    assert table.column_names == ["time", "request_id", "row", "routing_key", "version", "model_sha256",
                                  "config_sha256", "routing", "in_a", "in_b", "in_c", "out_y", "out_p_0", "out_p_1",
                                  "queue_us", "inference_us", "total_us"]
    first = table.slice(0, 10).to_pydict()
    assert first["request_id"] == ["r0"] * 5 + ["r1"] * 5
    assert first["row"] == list(range(5)) * 2
    assert first["queue_us"] == [0] * 5 + [1] * 5 and first["total_us"] == [10] * 5 + [11] * 5
    assert first["in_b"] == [1.0 + 3 * i for i in range(10)]
    assert log.stats.rows_written == 250 and log.stats.files_closed == 3


def test_files_rotate_by_age_while_open_files_stay_hidden(tmp_path):
    log = ScoreLog(ScoreLogSettings(dir=tmp_path, max_file_age_s=0.3))
    log.put(batch(5))
    deadline = time.monotonic() + 10
    while not list(tmp_path.glob("**/*.parquet")) and time.monotonic() < deadline:
        assert len(list(tmp_path.glob("**/.*.parquet.tmp"))) <= 1  # written under a hidden name
        time.sleep(0.02)
    assert len(list(tmp_path.glob("**/*.parquet"))) == 1
    log.close()


def test_roles_and_dates_go_to_their_partitions(tmp_path):
    log = ScoreLog(ScoreLogSettings(dir=tmp_path))
    day = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z
    mixed = batch(4)
    mixed = ScoredBatch(**{**{f: getattr(mixed, f) for f in mixed.__slots__},
                           "origins": (Origin("arm", "sticky", "a", "k1"), Origin("direct", "pinned", "b", None))})
    log.put(mixed)
    log.put(batch(3, 1, wall_ns=day, role="challenger"))
    log.close()
    found = {str(p.relative_to(tmp_path).parent): pq.ParquetFile(p).metadata.num_rows
             for p in tmp_path.glob("**/*.parquet")}
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert found == {f"model=m/role=arm/date={today}": 2, f"model=m/role=direct/date={today}": 2,
                     "model=m/role=challenger/date=2026-01-01": 3}
    arm = pq.read_table(next(tmp_path.glob("model=m/role=arm/**/*.parquet"))).to_pydict()
    assert arm["routing_key"] == ["k1", "k1"] and arm["routing"] == ["sticky", "sticky"]



def test_a_kafka_event_is_row_0_of_its_own_request_in_a_batch_it_shares():
    """A batch of a 3-row request and two Kafka pieces (2 and 3 events): the request's rows
    count 0..2, each event is row 0 of its source, not its place in the piece."""
    from engine.scorelog.table import to_table

    def piece(offsets):
        return Origin("champion", "default", topic="events", partitions=np.full(len(offsets), 4, np.int32),
                      offsets=np.asarray(offsets, np.int64), keys=[b"k%d" % o for o in offsets])

    shared = batch(8, 3)
    shared = ScoredBatch(**{**{f: getattr(shared, f) for f in shared.__slots__}, "bounds": (0, 3, 5, 8),
                            "origins": (Origin("champion", "default", "r0", None), piece([7, 8]), piece([9, 10, 11]))})
    table, _ = to_table([shared, batch(2, 1)], {})
    got = table.select(["request_id", "row"]).to_pydict()
    assert got["request_id"] == ["r0"] * 3 + [f"events/4/{o}" for o in range(7, 12)] + ["r0"] * 2
    assert got["row"] == [0, 1, 2, 0, 0, 0, 0, 0, 0, 1]

def test_a_full_queue_drops_and_counts_never_more_than_offered(tmp_path):
    log = ScoreLog(ScoreLogSettings(dir=tmp_path, queue_rows=64, when_full="drop"))
    offered = 0
    for _ in range(2000):
        log.put(batch(32))
        offered += 32
    log.close()
    written = sum(pq.ParquetFile(p).metadata.num_rows for p in tmp_path.glob("**/*.parquet"))
    assert written == log.stats.rows_written
    assert log.stats.rows_written + log.stats.rows_dropped == offered


def test_block_policy_waits_for_room_instead_of_dropping(tmp_path):
    log = ScoreLog(ScoreLogSettings(dir=tmp_path, queue_rows=64, when_full="block", block_timeout_ms=5000,
                                    max_file_age_s=0.2))
    for _ in range(20):
        log.put(batch(32))
    log.close()
    written = sum(pq.ParquetFile(p).metadata.num_rows for p in tmp_path.glob("**/*.parquet"))
    assert log.stats.rows_dropped == 0 and written == 640


def test_block_policy_never_blocks_an_event_loop(tmp_path):
    """On the event loop, "block" parks a batch for the writer instead of waiting: every put
    returns at once, and the parked rows are written once the writer has made room."""
    import asyncio

    log = ScoreLog(ScoreLogSettings(dir=tmp_path, queue_rows=64, when_full="block", block_timeout_ms=5000,
                                    max_file_age_s=60))  # the writer's tick: 0.5 s

    async def main():
        start = time.monotonic()
        for _ in range(4):  # 2 queued, 2 parked
            log.put(batch(32))
        return time.monotonic() - start

    took = asyncio.run(main())
    assert took < 0.25  # the old busy-wait held the loop until the writer's tick
    deadline = time.monotonic() + 10
    while log.stats.rows_queued < 128 and time.monotonic() < deadline:
        time.sleep(0.01)
    log.close()
    written = sum(pq.ParquetFile(p).metadata.num_rows for p in tmp_path.glob("**/*.parquet"))
    assert log.stats.rows_dropped == 0 and written == 128


def test_the_writer_survives_a_batch_it_cannot_write(tmp_path, caplog):
    log = ScoreLog(ScoreLogSettings(dir=tmp_path, max_file_age_s=0.2))
    log.put(batch(3, wall_ns=10**30))  # a time no calendar holds
    log.put(batch(2))
    log.close()
    written = sum(pq.ParquetFile(p).metadata.num_rows for p in tmp_path.glob("**/*.parquet"))
    assert written == 2 and log.stats.rows_failed == 3 and "impossible time" in caplog.text


def test_unfinished_files_of_dead_writers_are_removed_at_start(tmp_path):
    """Files no journal lists are a writer's last, uncommitted tick: removed when that writer
    no longer runs; a running writer's stay."""
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folder = tmp_path / "model=m" / "role=champion" / "date=2026-01-01"
        folder.mkdir(parents=True)
        stale = [folder / f".part-20260101T000000000000-{int(dead.stdout)}-000001.parquet.tmp",
                 folder / f".part-20260101T000000000000-{int(dead.stdout)}-000002.arrows"]
        live = [folder / f".part-20260101T000000000000-{running.pid}-000003.parquet.tmp",
                folder / f".part-20260101T000000000000-{running.pid}-000004.arrows"]
        for f in stale + live:
            f.write_bytes(b"half a file")
        log = ScoreLog(ScoreLogSettings(dir=tmp_path))
        log.close()
        assert not any(f.exists() for f in stale) and all(f.exists() for f in live)
        assert log.stats.stale_removed == 2
    finally:
        running.kill()
        running.wait()


def _published(root) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in root.glob("**/*.parquet"))


def test_a_writer_killed_keeps_every_committed_row_and_where_its_rings_were(tmp_path):
    """kill -9 of the writing process: every row it committed is published by the next log
    opened on the directory, none twice; a torn last tick is never read; the next log knows
    how far each hand-off ring's records are in."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    script = f"""
import os, signal, sys, time
from engine.handoff.ring import Receipt
from engine.scorelog.parquet import ScoreLog
from engine.settings import ScoreLogSettings
from tests.engine.test_scorelog import batch
log = ScoreLog(ScoreLogSettings(dir={str(tmp_path)!r}, max_file_age_s=3600))
receipts = [Receipt("ring-a", 100 * (i + 1)) for i in range(40)]
for i, r in enumerate(receipts):
    log.put(batch(10, role="challenger" if i % 4 == 0 else "champion"), r)
while not all(r.done for r in receipts):
    time.sleep(0.01)
os.kill(os.getpid(), signal.SIGKILL)
"""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", script], cwd=root, timeout=60)
    assert done.returncode == -signal.SIGKILL
    assert _published(tmp_path) == 0  # every file was in progress
    streams = list(tmp_path.glob("**/.part-*.arrows"))
    assert len(streams) == 2 and list(tmp_path.glob(".scorelog-*.journal"))
    with open(streams[0], "ab") as f:  # a tick that was being written when the process died
        f.write(b"\xff\xff\xff\xff\x80\x00\x00\x00half a record batch")
    log = ScoreLog(ScoreLogSettings(dir=tmp_path))
    assert log.rings == {"ring-a": 4000}
    log.close()
    assert log.stats.rows_recovered == 400 and log.stats.rows_written == 400
    assert _published(tmp_path) == 400
    import duckdb

    [(n, ids)] = duckdb.connect().execute(f"SELECT count(*), count(DISTINCT request_id || role) FROM "
                                          f"read_parquet('{tmp_path}/**/*.parquet', hive_partitioning = 1)").fetchall()
    assert n == 400 and ids == 4  # r0, r1 of both roles
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()], "no hidden file is left"


def _tmpfs(path, size: str) -> bool:
    import subprocess

    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_a_full_disk_publishes_only_whole_files_and_counts_what_it_could_not_write(tmp_path):
    """A log on a 1 MiB tmpfs that fills up: the writer goes on, every published file reads
    back (pyarrow, DuckDB), nothing half written or empty piles up, and every row offered is
    written, failed, dropped or committed for the next start -- counted once. Once there is
    room again, the next start publishes what was committed."""
    import subprocess

    import duckdb

    disk = tmp_path / "disk"
    if not _tmpfs(disk, "1m"):
        pytest.skip("mounting a tmpfs needs root")
    try:
        log = ScoreLog(ScoreLogSettings(dir=disk, max_file_age_s=0.2, max_rows_per_file=3000))
        offered = 0
        for i in range(100):
            b = batch(100, members=4)
            noise = np.random.default_rng(i).random((100, 32), dtype=np.float32)  # incompressible
            log.put(ScoredBatch(**{**{f: getattr(b, f) for f in b.__slots__}, "inputs": {"x": noise}}))
            offered += 100
            time.sleep(0.01)
        log.close(timeout_s=20)
        st = log.stats
        assert st.rows_failed > 0, "the disk never filled"
        pending = log.pending_rows
        assert st.rows_written + st.rows_failed + st.rows_dropped + pending == offered
        assert st.rows_written == _published(disk) > 0
        files = list(disk.glob("**/*.parquet"))
        for f in files:
            assert pq.read_table(f).num_rows > 0
        [(n,)] = duckdb.connect().execute(f"SELECT count(*) FROM read_parquet('{disk}/**/*.parquet')").fetchall()
        assert n == st.rows_written
        hidden = [p for p in disk.rglob(".*") if p.is_file()]
        assert not [p for p in hidden if p.name.endswith(".tmp")], hidden
        assert all(p.stat().st_size > 0 for p in hidden)
        # room again: the next start publishes what this one committed and could not publish
        subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)
        again = ScoreLog(ScoreLogSettings(dir=disk))
        again.close()
        assert again.stats.rows_recovered == pending
        assert _published(disk) == st.rows_written + pending
        assert not [p for p in disk.rglob(".*") if p.is_file()]
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
