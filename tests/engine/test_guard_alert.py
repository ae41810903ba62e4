"""The guards' alert on its own: the share of a guard's rows over the rows the version was asked
to score (scored, plus refused before scoring), read once a window of rows has passed."""

from __future__ import annotations

from engine.monitor.guardwatch import GuardWatch
from engine.settings import parse_settings


def watch(tmp_path) -> tuple[GuardWatch, dict]:
    (tmp_path / "m.onnx").write_bytes(b"")
    (tmp_path / "ref.parquet").write_bytes(b"")
    settings = parse_settings({
        "models": [{"name": "m", "path": str(tmp_path / "m.onnx"),
                    "monitor": {"features": ["a", "b"], "reference": str(tmp_path / "ref.parquet"), "window": 100},
                    "guards": {"input_domain": "reference", "alert_share": 0.1}}],
        "monitoring": {"events_dir": str(tmp_path / "events")}}, str(tmp_path / "c.toml"))
    counts: dict = {}
    w = GuardWatch(settings)
    w.counts = lambda: dict(counts)
    return w, counts


def test_refused_rows_count_in_the_share_and_the_alert_clears(tmp_path):
    w, counts = watch(tmp_path)
    w.check(now=0.0)  # the first reading only marks where the window starts
    w.rows("m", "1", 60)
    counts[("m", "1", "input_domain", "reject")] = 40  # refused before the model: 40 of 100 asked
    w.check(now=0.1)  # not yet CHECK_EVERY_S since the last: not read
    assert ("m", "1", "input_domain") not in w.share
    w.check(now=1.0)
    assert w.share[("m", "1", "input_domain")] == 0.4 and w.alert[("m", "1", "input_domain")]
    w.rows("m", "1", 50)
    w.check(now=2.0)  # 50 rows since: not yet a window, no new reading
    assert w.share[("m", "1", "input_domain")] == 0.4
    w.rows("m", "1", 60)
    counts[("m", "1", "input_domain", "reject")] = 45
    w.check(now=3.0)
    assert w.share[("m", "1", "input_domain")] == 5 / 115 and not w.alert[("m", "1", "input_domain")]
    assert sorted((tmp_path / "events" / "kind=guard").rglob("*.parquet"))  # raised and cleared, written
