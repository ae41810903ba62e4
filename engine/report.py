"""`scorewire report`: one self-contained HTML page (PNG plots inline) from the scoring log
and the drift events folder -- what drifted and when, what the window looked like against
the reference when an alert was raised, performance, guards, conformal coverage and fairness,
latency over time per version, and the champion / challenger comparison (as tables:
engine/report_compare.py).

    scorewire report --log DIR [--events DIR] [--model NAME] [--labels FILE] --out report.html

Drift plots need `[monitoring] events_dir` (the per-evaluation statistics are written there
as kind=evaluation, beside the raises and clears, kind=drift); the window at a raise is the
rows the monitor tested, found in the scoring log by the rows the raise names
(engine/report_drift.py), so it needs the inputs logged under the feature names
(`[models.monitor] features`, or the reference's).
Performance over time (realized and estimated per version, and its alerts) comes from the
same folder (kind=performance_history, kind=performance), written by versions with
`[models.performance]`. Guards, conformal sets and fairness (engine/report_quality.py): the
share of rows each guard flagged and the sets' size from the log, coverage against 1 - alpha
and the fairness figures from the same snapshots.
"""

from __future__ import annotations

import datetime as dt
import html
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from engine.errors import UsageError
from engine.performance.alert import QUALITY_FIGURES
from engine.plotting import binned, discard, figure as _figure, png as _png, time_axis as _time_axis
from engine.report_compare import comparison_section
from engine.report_drift import drift_section
from engine.report_quality import conformal_section, fairness_section, guards_section

def _read(folder: Path, kind: str | None = None) -> pa.Table | None:
    root = folder / f"kind={kind}" if kind else folder
    if not root.is_dir():
        return None
    files = [p for p in root.glob("**/*.parquet") if not p.name.startswith(".")]
    if not files:
        return None
    import pyarrow.parquet as pq

    # every file's columns (models log different ones), and the Hive keys of their folders
    schema = pa.unify_schemas([pq.read_schema(f) for f in files], promote_options="permissive")
    keys = sorted({part.split("=", 1)[0] for f in files for part in f.relative_to(root).parts[:-1] if "=" in part})
    partitioning = ds.partitioning(pa.schema([(k, pa.string()) for k in keys]), flavor="hive")
    for k in keys:
        if k not in schema.names:
            schema = schema.append(pa.field(k, pa.string()))
    table = ds.dataset([str(f) for f in files], schema=schema, format="parquet", partitioning=partitioning,
                       partition_base_dir=str(root)).to_table()
    for i, field in enumerate(table.schema):  # microseconds: what Python's datetime holds
        if pa.types.is_timestamp(field.type) and field.type.unit == "ns":
            table = table.set_column(i, field.name, table.column(i).cast(pa.timestamp("us", tz=field.type.tz),
                                                                          safe=False))
    return table


read_folder = _read  # (engine/audit.py reads the log and the events folders alike)


def latency_section(log: pa.Table) -> str:
    """Total and inference p99 per version and role over time (60 bins; a bin without
    traffic breaks the line)."""
    out = ["<h2>Latency over time</h2>"]
    t = log.column("time").cast(pa.int64()).to_numpy()  # microseconds (see _read)
    if len(t) == 0:
        return ""
    edges = np.linspace(t.min(), t.max() + 1, 61)
    fig, axes = _figure(10, 3.6)
    keys = sorted(set(zip(log.column("version").to_pylist(), log.column("role").to_pylist())))
    for version, role in keys:
        mask = pc.and_(pc.equal(log.column("version"), version), pc.equal(log.column("role"), role))
        part = log.filter(mask)
        tt = part.column("time").cast(pa.int64()).to_numpy()
        color = None
        for stage, style in (("total_us", "-"), ("inference_us", ":")):
            xs, p99 = binned(tt, edges, part.column(stage).to_numpy(), lambda v: np.percentile(v, 99) / 1000)
            line, = axes.plot(xs, p99, style, marker=".", color=color, label=f"{version} ({role}) {stage[:-3]} p99")
            color = line.get_color()
    axes.set_ylabel("ms")
    axes.set_yscale("log")
    axes.set_title("p99 latency per version and role (total: queue or shadow wait + inference; gaps: no traffic)")
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    axes.grid(alpha=0.3)
    axes.set_xlabel("time (UTC)")
    _time_axis(axes)
    out.append(_png(fig))
    return "\n".join(out)


def performance_section(events_dir: Path, model: str) -> str:
    """Realized (labelled rows) and estimated (CBPE) performance over time per version and
    role, one plot per metric, with the performance alerts raised and cleared."""
    history = _read(events_dir, "performance_history")
    if history is None:
        return ""
    history = history.filter(pc.and_(pc.equal(history.column("model"), model),
                                     pc.invert(pc.is_in(history.column("metric"), pa.array(QUALITY_FIGURES)))))
    if history.num_rows == 0:
        return ""
    events = _read(events_dir, "performance")
    if events is not None:
        events = events.filter(pc.equal(events.column("model"), model)).to_pylist()
    out = ["<h2>Performance over time</h2><p>Solid: realized over the last window of labelled rows; dashed: "
           "estimated before the labels (CBPE), where the version has a reference; red marks: alerts raised, green: "
           "cleared.</p>"]
    rows = history.to_pylist()
    for metric in dict.fromkeys(r["metric"] for r in rows):
        fig, axes = _figure(10, 3.2)
        drawn = False
        for version, role in sorted({(r["version"], r["role"]) for r in rows if r["metric"] == metric}):
            mine = [r for r in rows if r["metric"] == metric and r["version"] == version and r["role"] == role]
            times = np.array([r["time"].replace(tzinfo=None) for r in mine], dtype="datetime64[us]")
            for column, style in (("realized", "-"), ("estimated", "--")):
                values = np.array([r[column] for r in mine], dtype=np.float64)
                if np.isfinite(values).any():
                    axes.plot(times, values, style, marker=".", label=f"{version} ({role}) {column}")
                    drawn = True
        for e in events or []:
            if e["metric"] == metric:
                axes.axvline(np.datetime64(e["time"].replace(tzinfo=None), "us"), alpha=0.5,
                             color="tab:red" if e["event"] == "raise" else "tab:green")
        if not drawn:
            discard(fig)
            continue
        axes.set_title(f"{metric} per version and role")
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
        axes.grid(alpha=0.3)
        axes.set_xlabel("time (UTC)")
        _time_axis(axes)
        out.append(_png(fig))
    if events:
        items = "".join(f"<li>{e['time']:%Y-%m-%d %H:%M:%S} {html.escape(e['event'])} {html.escape(e['version'])} "
                        f"({html.escape(e['role'])}) {html.escape(e['metric'])} {e['value']:.4g} against the "
                        f"reference's {e['baseline']:.4g} (p {e['pvalue']:.3g}, {e['rows']:,} labelled rows)</li>"
                        for e in events)
        out.append(f"<ul>{items}</ul>")
    return "\n".join(out)


def build(log_dir: Path, events_dir: Path | None, model: str | None, labels: Path | None) -> str:
    from engine.scorelog.compare import compare
    from engine.scorelog.labelled import LogError, still_written

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("the report draws with matplotlib: pip install -e '.[demo]'") from None
    log = _read(log_dir)
    if log is None:
        note = still_written(log_dir)
        raise UsageError(f"--log {log_dir}: no Parquet files " + (f"yet: {note}" if note else
                                                                   "(the [scorelog] dir of a server)"))
    models = sorted(set(log.column("model").to_pylist()))
    if model is not None and model not in models:
        raise UsageError(f"--model {model}: not in the log (it has {models})")
    sections = []
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    for name in [model] if model else models:
        part = log.filter(pc.equal(log.column("model"), name))
        summary = part.group_by(["version", "role"]).aggregate([("time", "min"), ("time", "max"), ("row", "count")])
        rows = "".join(f"<tr><td>{html.escape(r['version'])}</td><td>{html.escape(r['role'])}</td>"
                       f"<td>{r['row_count']:,}</td><td>{r['time_min']:%Y-%m-%d %H:%M:%S}</td>"
                       f"<td>{r['time_max']:%Y-%m-%d %H:%M:%S}</td></tr>" for r in summary.to_pylist())
        sections.append(f"<h1>Model {html.escape(name)}</h1><table><tr><th>version</th><th>role</th><th>rows</th>"
                        f"<th>first (UTC)</th><th>last (UTC)</th></tr>{rows}</table>")
        history = None
        if events_dir is not None:
            sections.append(drift_section(_read(events_dir, "evaluation"), _read(events_dir, "drift"), part, name,
                                          events_dir))
            sections.append(performance_section(events_dir, name))
            history = _read(events_dir, "performance_history")
            history = None if history is None else history.filter(pc.equal(history.column("model"), name))
        sections.append(guards_section(part))
        sections.append(conformal_section(history, part))
        sections.append(fairness_section(history))
        sections.append(latency_section(part))
        try:
            comparison = comparison_section(compare(log_dir, name, labels))
        except LogError as exc:
            comparison = f"<p>No comparison: {html.escape(str(exc))}</p>"
        sections.append(f"<h2>Champion and challengers</h2>{comparison}")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
             "td:first-child,th:first-child{text-align:left}caption{text-align:left;font-weight:bold;padding:4px 0}"
             "table{margin:0.5em 0 1em}img{max-width:100%}h4.alerted{color:#c00}h4.quiet{color:#777}"
             ".verdict{background:#f6f6f6;padding:0.5em 1em}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>scorewire report</title>"
            f"<style>{style}</style></head><body><p>scorewire report, {started}: log {html.escape(str(log_dir))}"
            + (f", events {html.escape(str(events_dir))}" if events_dir else "") + "</p>"
            + "\n".join(sections) + "</body></html>")


def main(args) -> int:
    page = build(Path(args.log), Path(args.events) if args.events else None, args.model,
                 Path(args.labels) if args.labels else None)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    print(f"wrote {out} ({len(page) / 1024:,.0f} KiB)")
    return 0
