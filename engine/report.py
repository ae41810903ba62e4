"""`scorewire report`: one self-contained HTML page (PNG plots inline) from the scoring log
and the drift events folder -- what drifted and when, what the window looked like against
the reference when an alert was raised, performance, guards, conformal coverage and fairness,
latency over time per version, and the champion / challenger comparison.

    scorewire report --log DIR [--events DIR] [--model NAME] [--labels FILE] --out report.html

Drift plots need `[monitoring] events_dir` (the per-evaluation statistics are written there
as kind=evaluation, beside the raises and clears, kind=drift); the window at a raise is taken
from the scoring log (the version's last `window` rows up to the raise), so it needs the
inputs logged under the feature names (`[models.monitor] features`, or the reference's).
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
from engine.plotting import discard, figure as _figure, png as _png, time_axis as _time_axis
from engine.report_quality import conformal_section, fairness_section, guards_section

MAX_FEATURES = 8  # drift plots per model version: the features that raised, else the highest statistics
MAX_RAISES = 3  # distribution plots per feature


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
    """Total and inference p50/p99 per version and role over time (about 60 bins)."""
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
        for stage, style in (("total_us", "-"), ("inference_us", ":")):
            values = part.column(stage).to_numpy()
            bins = np.digitize(tt, edges) - 1
            xs, p99 = [], []
            for b in np.unique(bins):
                v = values[bins == b]
                xs.append(edges[b])
                p99.append(np.percentile(v, 99) / 1000)
            axes.plot(np.array(xs).astype("datetime64[us]"), p99, style, marker=".",
                      label=f"{version} ({role}) {stage[:-3]} p99")
    axes.set_ylabel("ms")
    axes.set_yscale("log")
    axes.set_title("p99 latency per version and role (total: queue or shadow wait + inference)")
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


def drift_section(events_dir: Path, log: pa.Table | None, model: str) -> str:
    evaluations = _read(events_dir, "evaluation")
    raises = _read(events_dir, "drift")
    if evaluations is None:
        return (f"<h2>Drift</h2><p>No drift evaluations under {html.escape(str(events_dir))} "
                "(kind=evaluation): is the model monitored, with [monitoring] events_dir set?</p>")
    evaluations = evaluations.filter(pc.equal(evaluations.column("model"), model))
    if raises is not None:
        raises = raises.filter(pc.equal(raises.column("model"), model))
    out = ["<h2>Drift</h2>"]
    references: dict[str, dict | Exception] = {}  # path -> columns (or why not), read once
    for version in sorted(set(evaluations.column("version").to_pylist())):
        ev = evaluations.filter(pc.equal(evaluations.column("version"), version))
        # the version's logged rows in time order, once for every window shown
        logged = None if log is None else log.filter(pc.equal(log.column("version"), version)).sort_by("time")
        rv = raises.filter(pc.equal(raises.column("version"), version)) if raises is not None else None
        fired = sorted(set(rv.column("feature").to_pylist())) if rv is not None and rv.num_rows else []
        by_stat = ev.group_by("feature").aggregate([("statistic", "max")]).sort_by([("statistic_max", "descending")])
        features = (fired + [f for f in by_stat.column("feature").to_pylist() if f not in fired])[:MAX_FEATURES]
        n_raises = 0 if rv is None else int(pc.sum(pc.equal(rv.column("event"), "raise")).as_py() or 0)
        out.append(f"<h3>{html.escape(model)}:{html.escape(version)}: {len(fired)} feature(s) alerted, "
                   f"{n_raises} raise(s); {len(set(ev.column('events_observed').to_pylist()))} evaluations</h3>")
        for feature in features:
            f_ev = ev.filter(pc.equal(ev.column("feature"), feature)).sort_by("events_observed")
            fig, axes = _figure()
            # by rows observed: evaluations are exact event counts (a busy monitor evaluates several
            # at once, which a time axis would pile up)
            sizes = f_ev.column("window").to_numpy()
            for size in np.unique(sizes):  # one line per window
                axes.plot(f_ev.column("events_observed").to_numpy()[sizes == size],
                          f_ev.column("statistic").to_numpy(zero_copy_only=False)[sizes == size], marker=".", lw=1,
                          label=f"window {size:,}")
            if len(np.unique(sizes)) > 1:
                axes.legend(loc="upper left", fontsize=8)
            test = f_ev.column("test")[0].as_py()
            marks = []
            if rv is not None:
                f_rv = rv.filter(pc.equal(rv.column("feature"), feature)).sort_by("events_observed")
                for row in f_rv.to_pylist():
                    color = "red" if row["event"] == "raise" else "green"
                    axes.axvline(row["events_observed"], color=color, ls="--", lw=1)
                    marks.append(row)
            axes.set_title(f"{feature}: {'KS D' if test == 'ks' else 'chi-squared'} at each evaluation "
                           "(red: alert raised, green: cleared)")
            axes.set_ylabel("KS D" if test == "ks" else "chi-squared")
            axes.set_xlabel("rows observed by the monitor")
            axes.grid(alpha=0.3)
            out.append(f"<h4>{html.escape(feature)}</h4>" + _png(fig))
            for row in [m for m in marks if m["event"] == "raise"][:MAX_RAISES]:
                out.append(_window_plot(row, f_ev, logged, feature, references))
    return "\n".join(out)


def _window_plot(raise_row: dict, evaluations: pa.Table, logged: pa.Table | None, feature: str,
                 references: dict) -> str:
    """The window at the raise (the version's last `window` logged rows up to it, `window`
    the size of the raise's lead window; `logged`:
    the version's rows in time order) against the reference: ECDFs for KS, category shares for
    chi-squared. `references` caches the reference files by path."""
    from engine.monitor.drift import load_reference

    first = evaluations.slice(0, 1).to_pylist()[0]
    # the raise's window (the one that fired with the smallest p-value)
    window, test, reference_path = int(raise_row.get("window") or first["window"]), first["test"], first["reference"]
    column = f"in_{feature}"
    when = f"at {raise_row['time']:%Y-%m-%d %H:%M:%S} UTC (event {raise_row['events_observed']:,})"
    if logged is None or column not in logged.column_names:
        return f"<p>{html.escape(feature)} raised {when}; the scoring log has no {column} column to show the window.</p>"
    rows = logged.filter(pc.less_equal(logged.column("time"), pa.scalar(raise_row["time"], logged.schema.field("time").type)))
    current = rows.column(column).to_numpy(zero_copy_only=False)[-window:]
    if reference_path not in references:
        try:
            references[reference_path] = load_reference(Path(reference_path))
        except Exception as exc:  # moved or unreadable: say so, show the window alone
            references[reference_path] = exc
    columns = references[reference_path]
    if isinstance(columns, Exception) or feature not in columns:
        reference = None
        why = columns if isinstance(columns, Exception) else f"no column {feature}"
        note = f" (reference {reference_path} unreadable: {why})"
    else:
        reference = np.asarray(columns[feature], dtype=np.float64)
        note = ""
    fig, axes = _figure(7, 3)
    if test == "ks":
        for values, label in ((reference, "reference"), (current, f"window ({len(current):,} rows)")):
            if values is None or not len(values):
                continue
            xs = np.sort(values)
            axes.step(xs, np.arange(1, len(xs) + 1) / len(xs), where="post", label=label)
        axes.set_ylabel("share of rows <= x")
    else:
        groups = [(reference, "reference"), (current, f"window ({len(current):,} rows)")]
        codes = sorted(set(np.concatenate([np.rint(v).astype(np.int64) for v, _ in groups if v is not None])))
        width = 0.4
        for i, (values, label) in enumerate(groups):
            if values is None or not len(values):
                continue
            counts = np.array([np.mean(np.rint(values).astype(np.int64) == c) for c in codes])
            axes.bar(np.arange(len(codes)) + i * width, counts, width=width, label=label)
        axes.set_xticks(np.arange(len(codes)) + width / 2, [str(c) for c in codes])
        axes.set_ylabel("share of rows")
    axes.set_title(f"{feature}: the window of {window:,} vs the reference when the alert was raised")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    stat = (f"statistic {raise_row['statistic']:.4g}, p-value {raise_row['pvalue']:.3g}, "
            f"effect {raise_row['effect']:.4g}")
    return f"<p>Raised {html.escape(when)}: {stat}{html.escape(note)}</p>" + _png(fig)


def build(log_dir: Path, events_dir: Path | None, model: str | None, labels: Path | None) -> str:
    from engine.scorelog.compare import compare, render
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
            sections.append(drift_section(events_dir, part, name))
            sections.append(performance_section(events_dir, name))
            history = _read(events_dir, "performance_history")
            history = None if history is None else history.filter(pc.equal(history.column("model"), name))
        sections.append(guards_section(part))
        sections.append(conformal_section(history, part))
        sections.append(fairness_section(history))
        sections.append(latency_section(part))
        try:
            comparison = render(compare(log_dir, name, labels))
        except LogError as exc:
            comparison = f"(no comparison: {exc})"
        sections.append(f"<h2>Champion and challengers</h2><pre>{html.escape(comparison)}</pre>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
             "pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:12px}img{max-width:100%}")
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
