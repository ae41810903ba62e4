"""The report places a raise's window across a restart: the observer's count starts again
at 0 while the log keeps the earlier run's rows under the same seq numbers; the raise names
its run, so the rows drawn are the second run's, whose SciPy D is the monitor's. A raise
that does not name its rows (an older server's), or whose rows the log no longer holds, is
said so and not drawn from other rows. The real parts: DriftMonitor, ScoreLog, the events
writer and the report's reader."""

from __future__ import annotations

import re
import time

import numpy as np
import pyarrow.compute as pc
import pytest
from scipy import stats

from engine.batching.batch import Origin, ScoredBatch
from engine.monitor.drift import DriftMonitor
from engine.monitor.events import write_evaluations, write_events
from engine.monitor.rule import DriftEvent
from engine.report import read_folder
from engine.report_drift import drift_section
from engine.scorelog.parquet import ScoreLog
from engine.settings import MonitorSettings, ScoreLogSettings
from tests.engine.monitor.test_drift import FEATURES, SCHEMA, stream

WINDOW = 1_000


def serve(tmp_path, run: str, x: np.ndarray, reference: np.ndarray, batch: int = 200,
          correction: str = "bonferroni") -> tuple[DriftMonitor, list]:
    """One observer run: x scored in batches, each stamped, logged and observed."""
    settings = MonitorSettings(features=FEATURES, categorical=["f7"], reference=str(tmp_path / "ref.npz"),
                               window=WINDOW, every=250, alpha=0.001, min_effect=0.05, consecutive=1,
                               correction=correction)
    monitor = DriftMonitor("m:1", settings, SCHEMA, {n: reference[:, i] for i, n in enumerate(FEATURES)})
    monitor.keep_history = True
    log = ScoreLog(ScoreLogSettings(dir=tmp_path / "log", max_file_age_s=3600), {("m", "x"): FEATURES})
    log.run = run
    events = []
    for seq in range(0, len(x), batch):
        part = x[seq:seq + batch]
        scored = ScoredBatch("m", "1", "champion", {"x": part}, {}, np.zeros(1, np.int64), np.zeros(1, np.int64), 5,
                             len(part), (0, len(part)), (Origin(request_id=f"{run}{seq}"),), time.time_ns(), seq)
        log.put(scored)
        events += monitor.observe({"x": part}, {}, [(seq, len(part))])
    log.close()
    write_events(tmp_path / "events", events, run)
    write_evaluations(tmp_path / "events", monitor, monitor.take_history())
    return monitor, events


def section(tmp_path) -> str:
    log = read_folder(tmp_path / "log")
    return drift_section(read_folder(tmp_path / "events", "evaluation"), read_folder(tmp_path / "events", "drift"),
                         log.filter(pc.equal(log.column("model"), "m")), "m", tmp_path / "events")


def test_the_window_after_a_restart_is_the_second_runs(tmp_path, rng):
    reference = stream(rng, 5_000)
    np.savez(tmp_path / "ref.npz", **{n: reference[:, i] for i, n in enumerate(FEATURES)})
    first = stream(rng, 4_000)  # quiet: no raise
    _, events = serve(tmp_path, "run-a", first, reference)
    assert not events
    second = stream(rng, 4_000, shift_from=1_000, shifted=(2,), shift=0.5)
    _, events = serve(tmp_path, "run-b", second, reference)
    (raised,) = [e for e in events if e.kind == "raise"]
    end = raised.events
    assert raised.rows == ((end - WINDOW, end),)  # seq numbers the first run's rows hold too
    d = stats.ks_2samp(second[end - WINDOW:end, 2], reference[:, 2]).statistic
    assert raised.statistic == pytest.approx(d, abs=1e-12)
    page = section(tmp_path)
    drawn = float(re.search(r"KS D of the rows drawn \(SciPy\): ([0-9.e-]+)", page).group(1))
    assert drawn == pytest.approx(d, rel=1e-3)
    same_seq_first_run = stats.ks_2samp(first[end - WINDOW:end, 2], reference[:, 2]).statistic
    assert abs(same_seq_first_run - d) > 0.02  # what drawing by seq alone would have shown
    assert "<h4 class='alerted'>f2: alert raised</h4>" in page and "<h4 class='quiet'>" in page


def test_a_window_that_cannot_be_placed_is_said_so(tmp_path, rng):
    reference = stream(rng, 5_000)
    np.savez(tmp_path / "ref.npz", **{n: reference[:, i] for i, n in enumerate(FEATURES)})
    serve(tmp_path, "run-a", stream(rng, 2_000), reference)
    old = DriftEvent("raise", "m:1", "f3", 0.2, 1e-12, 0.2, 1_500, WINDOW, (WINDOW,), (0.2,), (1e-12,))  # no rows
    gone = DriftEvent("raise", "m:1", "f4", 0.2, 1e-12, 0.2, 1_500, WINDOW, (WINDOW,), (0.2,), (1e-12,),
                      ((500, 1_500),))
    write_events(tmp_path / "events", [old])
    write_events(tmp_path / "events", [gone], "run-gone")  # a run whose files were removed
    page = section(tmp_path)
    assert "does not name its window&#x27;s rows" in page and "the report cannot place the window" in page
    assert "the scoring log holds none of the window&#x27;s 1,000 rows (observer run run-gone)" in page
    assert "KS D of the rows drawn" not in page


def test_under_bh_the_p_value_needed_is_each_evaluations(tmp_path, rng):
    """With Benjamini-Hochberg no statistic is fixed: each evaluation's `level` is the largest
    k/m alpha that its k-th smallest p-value reaches (a plain reading of BH, on the p-values
    written beside it), and the page draws the p-values against it."""
    reference = stream(rng, 5_000)
    np.savez(tmp_path / "ref.npz", **{n: reference[:, i] for i, n in enumerate(FEATURES)})
    _, events = serve(tmp_path, "run-bh", stream(rng, 4_000, shift_from=1_000, shifted=(2, 5), shift=0.5), reference,
                      correction="bh")
    assert any(e.kind == "raise" for e in events)
    evaluations = read_folder(tmp_path / "events", "evaluation")
    assert np.isnan(evaluations.column("threshold").to_numpy(zero_copy_only=False)).all()
    at = evaluations.column("events_observed").to_numpy()
    for e in np.unique(at):
        mine = evaluations.filter(pc.equal(evaluations.column("events_observed"), int(e)))
        p = np.nan_to_num(mine.column("pvalue").to_numpy(zero_copy_only=False), nan=1.0)
        m, level = len(p), 0.001 / len(p)
        for k, pk in enumerate(sorted(p), start=1):
            if pk <= 0.001 * k / m:
                level = 0.001 * k / m
        assert mine.column("level").to_pylist() == [pytest.approx(level)] * m
    page = section(tmp_path)
    assert "KS D of the rows drawn (SciPy)" in page and "<h4 class='alerted'>f2: alert raised</h4>" in page
