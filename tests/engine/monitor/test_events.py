"""Drift events and evaluations as Parquet a user reads with pyarrow alone."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_drift_events_read_back_as_datetimes_without_pandas(tmp_path):
    """`to_pylist()` on the events' time column gives datetimes with pyarrow alone (a
    nanosecond timestamp needs pandas for that), to the microsecond the event was taken."""
    script = textwrap.dedent(f"""
        import sys

        class NoPandas:  # as on a machine without pandas
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "pandas":
                    raise ModuleNotFoundError("No module named 'pandas'")

        sys.meta_path.insert(0, NoPandas())
        import datetime as dt
        import pyarrow.parquet as pq
        from engine.monitor.events import write_events
        from engine.monitor.rule import DriftEvent

        at = 1_765_000_000_123_456_789
        write_events({str(tmp_path)!r}, [DriftEvent("raise", "m:1", "f3", 0.2, 1e-12, 0.2, 9000, 1000, (1000,), (0.2,),
                                                     (1e-12,), time_ns=at)])
        (row,) = pq.read_table({str(tmp_path)!r} + "/kind=drift").to_pylist()
        assert row["time"] == dt.datetime.fromtimestamp(at // 1000 / 1e6, dt.timezone.utc), row["time"]
        assert row["event"] == "raise" and row["feature"] == "f3" and row["windows_fired"] == [1000]
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
