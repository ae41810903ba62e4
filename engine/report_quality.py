"""The report's sections on what the guards, the conformal sets and the fairness figures saw
(`scorewire report`; engine/report.py lays out the page).

- Guards, from the scoring log: the share of rows each guard flagged over time per version
  (the log's guard bits: a `guard` column, or the `scorewire_guard` output that
  `action = "flag"` adds). Rows a guard refused were never answered, so never logged:
  `scorewire_guard_rows_total{action="reject"}` counts them.
- Conformal sets: coverage of the labelled window against 1 - alpha over time (the
  performance snapshots in events_dir, kind=performance_history), and the mean set size (the
  interval's width) of every logged row over time, labels or not.
- Fairness: disparate impact in the four-fifths band and statistical parity difference over
  time (the same snapshots), with the spans the version's own dir_band alert was on.
"""

from __future__ import annotations

import html

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.plotting import binned as _binned, discard, figure, png, time_axis

GUARD_COLUMNS = ("guard", "out_scorewire_guard", "out_scorewire_guard_0")  # the log's guard bits, first found
GUARD_BITS = ((1, "input_domain", "--"), (2, "confidence", ":"), (4, "interval", "-."))  # engine/guards.py's bits
BINS = 60  # time bins of a plot from the log
FOUR_FIFTHS = (0.8, 1.25)  # the default dir_band


def _edges(log: pa.Table) -> np.ndarray:
    t = log.column("time").cast(pa.int64()).to_numpy()  # microseconds (engine/report.py's _read)
    return np.linspace(t.min(), t.max() + 1, BINS + 1)


def _groups(log: pa.Table, column: str):
    """(version, role, its rows' times in us, that column's values) where the column has values."""
    part = log.filter(pc.is_valid(log.column(column)))
    for version, role in sorted(set(zip(part.column("version").to_pylist(), part.column("role").to_pylist()))):
        mine = part.filter(pc.and_(pc.equal(part.column("version"), version), pc.equal(part.column("role"), role)))
        yield version, role, mine.column("time").cast(pa.int64()).to_numpy(), mine


def _legend(axes) -> None:
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    axes.grid(alpha=0.3)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def guards_section(log: pa.Table) -> str:
    """Share of the logged rows each guard flagged, over time per version and role."""
    column = next((c for c in GUARD_COLUMNS if c in log.column_names), None)
    if column is None or log.num_rows == 0 or log.column(column).null_count == log.num_rows:
        return ""
    edges = _edges(log)
    fig, axes = figure(10, 3.4)
    rows = []
    for version, role, t, mine in _groups(log, column):
        bits = mine.column(column).to_numpy(zero_copy_only=False).astype(np.uint8)
        x, share = _binned(t, edges, bits != 0)
        line, = axes.plot(x, 100 * share, "-", marker=".", label=f"{version} ({role}) any guard")
        counts = []
        for bit, name, style in GUARD_BITS:
            hit = (bits & bit) != 0
            counts.append(int(hit.sum()))
            if hit.any():
                x, share = _binned(t, edges, hit)
                axes.plot(x, 100 * share, style, color=line.get_color(), lw=1, label=f"{version} ({role}) {name}")
        flagged = int(np.count_nonzero(bits))
        rows.append([version, role, f"{len(bits):,}", *(f"{n:,}" for n in counts),
                     f"{flagged:,} ({100 * flagged / max(len(bits), 1):.2f}%)"])
    axes.set_ylabel("% of rows")
    axes.set_title("Rows flagged by a guard, share of the rows logged")
    _legend(axes)
    axes.set_xlabel("time (UTC)")
    time_axis(axes)
    return "\n".join([
        "<h2>Guards</h2><p>Rows answered with guard bits set (action flag: the <code>scorewire_guard</code> output). "
        "Rows a guard refused (action reject) were never answered and are not in the log: "
        "<code>scorewire_guard_rows_total{action=\"reject\"}</code> counts them.</p>",
        png(fig),
        _table(["version", "role", "rows logged", "input_domain", "confidence", "interval", "any guard"], rows)])


def _set_sizes(log: pa.Table) -> tuple[str, list[str]] | None:
    """("set size" or "interval width", the columns it is computed from) of the logged sets."""
    sets = [c for c in log.column_names if c.startswith("out_prediction_set_")]
    if sets:
        return "set size", sets
    if {"out_prediction_interval_0", "out_prediction_interval_1"} <= set(log.column_names):
        return "interval width", ["out_prediction_interval_0", "out_prediction_interval_1"]
    return None


def _history(history: pa.Table | None, figures: tuple[str, ...]) -> list[dict]:
    if history is None:
        return []
    return history.filter(pc.is_in(history.column("metric"), pa.array(figures))).to_pylist()


def _series(rows: list[dict], figure_: str, version: str, role: str) -> tuple[np.ndarray, np.ndarray]:
    mine = [r for r in rows if (r["metric"], r["version"], r["role"]) == (figure_, version, role)]
    times = np.array([r["time"].replace(tzinfo=None) for r in mine], dtype="datetime64[us]")
    return times, np.array([r["realized"] for r in mine], dtype=np.float64)


def conformal_section(history: pa.Table | None, log: pa.Table) -> str:
    """Coverage of the labelled window against 1 - alpha (snapshots), and the set size of
    every logged row (the log), over time per version and role."""
    snapshots = _history(history, ("conformal_coverage", "conformal_target"))
    sizes = _set_sizes(log) if log.num_rows else None
    if not snapshots and sizes is None:
        return ""
    out = ["<h2>Conformal sets</h2><p>Top: the share of labelled rows whose label is in their set (interval), over "
           "the performance window, against the 1 - alpha promised on rows exchangeable with the reference (dashed). "
           "Coverage well below it means the live rows no longer look like the reference (drift). Bottom: the mean "
           "size of the sets served (regression: the interval's width), labelled or not.</p>"]
    fig, (top, bottom) = figure(10, 5.6, rows=2)
    keys = sorted({(r["version"], r["role"]) for r in snapshots if r["metric"] == "conformal_coverage"})
    for version, role in keys:
        x, coverage = _series(snapshots, "conformal_coverage", version, role)
        line, = top.plot(x, coverage, "-", marker=".", label=f"{version} ({role}) coverage")
        x, target = _series(snapshots, "conformal_target", version, role)
        if len(x) > 1:
            top.plot(x, target, "--", drawstyle="steps-post", color=line.get_color(),
                     label=f"{version} ({role}) 1 - alpha")
        elif len(x):
            top.axhline(target[0], ls="--", color=line.get_color(), label=f"{version} ({role}) 1 - alpha")
    if not keys:
        top.text(0.5, 0.5, "no coverage yet: no labels came back for the versions with sets", ha="center",
                 va="center", transform=top.transAxes)
    top.set_ylabel("coverage")
    _legend(top)
    if sizes is not None:
        name, columns = sizes
        edges = _edges(log)
        for version, role, t, mine in _groups(log, columns[0]):
            values = [mine.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in columns]
            size = np.sum(values, axis=0) if name == "set size" else values[1] - values[0]
            x, mean = _binned(t, edges, size)
            bottom.plot(x, mean, "-", marker=".", label=f"{version} ({role})")
        bottom.set_ylabel(f"mean {name}")
        _legend(bottom)
    else:
        bottom.text(0.5, 0.5, "the log has no prediction_set / prediction_interval columns", ha="center",
                    va="center", transform=bottom.transAxes)
    bottom.set_xlabel("time (UTC)")
    _around_one_time(bottom)
    time_axis(bottom)
    out.append(png(fig))
    last = {}
    for r in snapshots:
        if r["metric"] == "conformal_coverage":
            last[(r["version"], r["role"])] = r
    if last:
        targets = {(r["version"], r["role"]): r["realized"] for r in snapshots if r["metric"] == "conformal_target"}
        out.append(_table(["version", "role", "coverage (last)", "1 - alpha", "labelled rows"],
                          [[v, r, f"{row['realized']:.4g}", f"{targets.get((v, r), float('nan')):.4g}",
                            f"{row['labelled']:,}"] for (v, r), row in sorted(last.items())]))
    return "\n".join(out)


def _around_one_time(axes, pad_s: float = 30) -> None:
    """A minute around the data when it all has one time (one snapshot): matplotlib would
    show years."""
    import matplotlib.dates as mdates

    low, high = axes.dataLim.intervalx
    if np.isfinite([low, high]).all() and high - low < 1e-9:
        pad = pad_s / 86_400  # matplotlib's date unit is the day
        axes.set_xlim(mdates.num2date(low - pad), mdates.num2date(high + pad))


def _alert_spans(axes, times: np.ndarray, alert: np.ndarray) -> bool:
    """Shade the spans between snapshots where the alert was on; whether any was."""
    on = False
    for i in np.flatnonzero(alert > 0):
        end = times[i + 1] if i + 1 < len(times) else times[i]
        axes.axvspan(times[i], end, color="tab:red", alpha=0.15, lw=0)
        on = True
    return on


def fairness_section(history: pa.Table | None) -> str:
    """Disparate impact with the four-fifths band, and statistical parity difference, over
    time per version, with the spans the version's dir_band alert was on."""
    rows = _history(history, ("fairness_dir", "fairness_spd", "fairness_alert"))
    if not rows:
        return ""
    fig, (top, bottom) = figure(10, 5.6, rows=2)
    top.axhspan(*FOUR_FIFTHS, color="tab:green", alpha=0.1, label="four-fifths band (the default dir_band)")
    alerted = False
    last = []
    for version in sorted({r["version"] for r in rows}):
        x, ratio = _series(rows, "fairness_dir", version, "any")
        line, = top.plot(x, ratio, "-", marker=".", label=f"{version} dir")
        xs, spd = _series(rows, "fairness_spd", version, "any")
        bottom.plot(xs, spd, "-", marker=".", color=line.get_color(), label=f"{version} spd")
        xa, alert = _series(rows, "fairness_alert", version, "any")
        alerted |= _alert_spans(top, xa, alert)
        n = [r["labelled"] for r in rows if (r["metric"], r["version"]) == ("fairness_dir", version)]
        last.append([version, f"{spd[-1]:+.4g}" if len(spd) else "-", f"{ratio[-1]:.4g}" if len(ratio) else "-",
                     f"{n[-1]:,}" if n else "-", "OUTSIDE its band" if len(alert) and alert[-1] else "ok"])
    if not np.isfinite([r["realized"] for r in rows if r["metric"] == "fairness_dir"]).any():
        discard(fig)
        return ("<h2>Fairness</h2><p>No disparate impact yet: a group had no row in the window, or the privileged "
                "group no favourable prediction.</p>" + _table(["version", "spd", "dir", "rows in window", "alert"],
                                                              last))
    top.axhline(1, color="grey", lw=0.8)
    top.set_ylabel("disparate impact")
    _legend(top)
    bottom.axhline(0, color="grey", lw=0.8)
    bottom.set_ylabel("parity difference")
    _legend(bottom)
    bottom.set_xlabel("time (UTC)")
    _around_one_time(bottom)
    time_axis(bottom)
    return "\n".join([
        "<h2>Fairness</h2><p>Over each version's last fairness window of scored rows: disparate impact "
        "P(favourable | unprivileged) / P(favourable | privileged) (top; green: the four-fifths rule) and statistical "
        "parity difference, their difference (bottom; 0: parity)"
        + ("; red: while the version's dir_band alert was on" if alerted else "")
        + ". They say how differently the model treats the two groups' rows as they come, not why, and nothing about "
        "error rates.</p>",
        png(fig),
        _table(["version", "spd (last)", "dir (last)", "rows in window", "alert"], last)])


__all__ = ["conformal_section", "fairness_section", "guards_section"]
