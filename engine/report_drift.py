"""The report's drift section (`scorewire report`; engine/report.py lays out the page): per
model version, each monitored column's statistic at every evaluation against what it needed
to fire, and the window that raised each alert against the reference.

The window is found in the scoring log by the rows the monitor tested, never by time: the
monitor gathers a second of batches, lags the log by thousands of rows under load, drops
batches when its queue is full, and starts counting from 0 after a restart. A raise names
its window's rows as the observer stamped them (events' run, seq_from, seq_to;
engine/monitor/rowmap.py); the log holds each row's run and seq. A raise without them (an
older server) or whose rows the log does not hold (dropped, not yet published, removed) is
said so, not drawn from other rows.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import stats

from engine.monitor.drift import load_reference
from engine.monitor.events import EVALUATIONS_EVERY_S
from engine.plotting import figure, png

MAX_FEATURES = 8  # drift plots per model version: the features that raised, else the highest statistics
MAX_RAISES = 3  # distribution plots per feature
ALERTED, QUIET = "tab:red", "tab:gray"


def log_column(feature: str, names: list[str]) -> str | None:
    """The log's column of a monitored column: an input feature's `in_NAME`, an output's
    `out_NAME` (`out_probabilities_1` for "probabilities:1": engine/scorelog/table.py)."""
    for column in (f"in_{feature}", "out_" + feature.replace(":", "_")):
        if column in names:
            return column
    return None


def drift_section(evaluations: pa.Table | None, raises: pa.Table | None, log: pa.Table | None, model: str,
                  events_dir: Path) -> str:
    """`evaluations`, `raises`: the events folder's kind=evaluation and kind=drift (None: none);
    `log`: the model's logged rows."""
    if evaluations is None:
        return (f"<h2>Drift</h2><p>No drift evaluations under {html.escape(str(events_dir))} "
                "(kind=evaluation): is the model monitored, with [monitoring] events_dir set?</p>")
    evaluations = evaluations.filter(pc.equal(evaluations.column("model"), model))
    if raises is not None:
        raises = raises.filter(pc.equal(raises.column("model"), model))
    out = ["<h2>Drift</h2><p>Features that raised an alert come first, in red; the others in grey. Dashed: what a "
           "full window's statistic needed to fire. Below each raise, the very rows the monitor tested then "
           "(found in the log by the rows it observed, not by time) against the reference.</p>"]
    references: dict[str, dict | Exception] = {}  # path -> columns (or why not), read once
    for version in sorted(set(evaluations.column("version").to_pylist())):
        ev = evaluations.filter(pc.equal(evaluations.column("version"), version))
        logged = None if log is None else log.filter(pc.equal(log.column("version"), version))
        rv = raises.filter(pc.equal(raises.column("version"), version)) if raises is not None else None
        raised = [] if rv is None else rv.filter(pc.equal(rv.column("event"), "raise")).to_pylist()
        by_stat = ev.group_by("feature").aggregate([("statistic", "max")]).sort_by([("statistic_max", "descending")])
        order = by_stat.column("feature").to_pylist()
        # alerted first: predictions (the drift reached the answers) before inputs, each by its largest statistic
        names = [] if logged is None else logged.column_names
        outputs = {f for f in order if (log_column(f, names) or "").startswith("out_")}
        fired = sorted({r["feature"] for r in raised}, key=lambda f: (f not in outputs, order.index(f) if f in order
                                                                      else len(order)))
        features = (fired + [f for f in order if f not in fired])[:MAX_FEATURES]
        out.append(f"<h3>{html.escape(model)}:{html.escape(version)}: {len(fired)} feature(s) alerted, "
                   f"{len(raised)} raise(s); {len(set(ev.column('events_observed').to_pylist()))} evaluations"
                   + (f" (the first {MAX_FEATURES} of {len(order)} columns shown)" if len(order) > MAX_FEATURES else "")
                   + "</h3>")
        last = pc.max(ev.column("time")).as_py()
        out.append(f"<p class='note'>The curves end at the last evaluation written, at "
                   f"{int(pc.max(ev.column('events_observed')).as_py()):,} rows observed "
                   f"({last:%Y-%m-%d %H:%M:%S} UTC): a running server writes its evaluations every "
                   f"{EVALUATIONS_EVERY_S:.0f} s and when it stops, so the last minute's may not be here yet.</p>")
        for feature in features:
            f_ev = ev.filter(pc.equal(ev.column("feature"), feature)).sort_by("events_observed")
            marks = [] if rv is None else rv.filter(pc.equal(rv.column("feature"), feature)).sort_by(
                "events_observed").to_pylist()
            alerted = feature in fired
            label = "alert raised" if alerted else "no alert"
            out.append(f"<h4 class='{'alerted' if alerted else 'quiet'}'>{html.escape(feature)}: {label}</h4>"
                       + _history_plot(feature, f_ev, marks, alerted))
            for row in [m for m in marks if m["event"] == "raise"][:MAX_RAISES]:
                out.append(_window_plot(row, f_ev, logged, feature, references))
    return "\n".join(out)


def _history_plot(feature: str, f_ev: pa.Table, marks: list[dict], alerted: bool) -> str:
    """The statistic at each evaluation by rows observed (a busy monitor evaluates several at
    once, which a time axis would pile up), one line per window size, with the statistic
    each needed (Bonferroni) or, under BH, the p-values against each evaluation's bound."""
    test = f_ev.column("test")[0].as_py()
    sizes = f_ev.column("window").to_numpy()
    at = f_ev.column("events_observed").to_numpy()
    statistic = f_ev.column("statistic").to_numpy(zero_copy_only=False)
    needed = (f_ev.column("threshold").to_numpy(zero_copy_only=False) if "threshold" in f_ev.column_names
              else np.full(len(at), np.nan))
    level = (f_ev.column("level").to_numpy(zero_copy_only=False) if "level" in f_ev.column_names
             else np.full(len(at), np.nan))
    by_p = np.isnan(needed).all() and np.isfinite(level).any()  # BH: the bound is on the p-value
    fig, axes = figure(9, 5.2, rows=2) if by_p else figure()
    top = axes[0] if by_p else axes
    name = "KS D" if test == "ks" else "chi-squared"
    color = ALERTED if alerted else QUIET
    styles = ["-", "--", ":", "-."]
    for k, size in enumerate(np.unique(sizes)):
        mine = sizes == size
        top.plot(at[mine], statistic[mine], styles[k % 4], color=color, marker=".", lw=1, label=f"window {size:,}")
        need = needed[mine][np.isfinite(needed[mine])]
        if len(need):
            top.axhline(need[0], color="black", ls="--", lw=0.8,
                        label=f"needed, window {size:,}: {name} >= {need[0]:.4g}"
                              + (" (and PSI >= min_effect)" if test != "ks" else ""))
        if by_p:
            p = f_ev.column("pvalue").to_numpy(zero_copy_only=False)
            axes[1].plot(at[mine], p[mine], styles[k % 4], color=color, marker=".", lw=1, label=f"window {size:,}")
    if by_p:
        axes[1].step(at, level, where="mid", color="black", ls="--", lw=0.8,
                     label="p-value needed (Benjamini-Hochberg, per evaluation)")
        axes[1].set_yscale("log")
        axes[1].set_ylabel("p-value")
        axes[1].legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
        axes[1].grid(alpha=0.3)
        bottom = axes[1]
    else:
        bottom = top
    for row in marks:
        for ax in (axes if by_p else [axes]):
            ax.axvline(row["events_observed"], color="red" if row["event"] == "raise" else "green", ls="-.", lw=1)
    top.set_title(f"{feature} ({'ALERTED' if alerted else 'no alert'}): {name} at each evaluation "
                  "(red: alert raised, green: cleared)", color=ALERTED if alerted else "black")
    top.set_ylabel(name)
    top.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    top.grid(alpha=0.3)
    bottom.set_xlabel("rows observed by the monitor")
    return png(fig)


def _window_rows(raise_row: dict, logged: pa.Table | None) -> tuple[pa.Table | None, str]:
    """The logged rows of the raise's window, in the order the monitor observed them, or
    (None, why not)."""
    starts, stops = raise_row.get("seq_from") or [], raise_row.get("seq_to") or []
    run = raise_row.get("run")
    if not run or not starts:
        return None, ("the event does not name its window's rows (written by a server before they were "
                      "recorded): the report cannot place the window")
    if logged is None or "seq" not in logged.column_names:
        return None, "the scoring log has no run/seq columns (written before they were): cannot place the window"
    mine = logged.filter(pc.equal(logged.column("run"), run))
    seq = mine.column("seq").to_numpy()
    order = np.argsort(seq, kind="stable")
    ordered = seq[order]
    parts = [order[np.searchsorted(ordered, a):np.searchsorted(ordered, b)] for a, b in zip(starts, stops)]
    take = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    wanted = sum(b - a for a, b in zip(starts, stops))
    if len(take) == 0:
        return None, (f"the scoring log holds none of the window's {wanted:,} rows (observer run {run}): dropped by "
                      "the log, not yet published, or removed")
    note = "" if len(take) == wanted else (f"; the log holds {len(take):,} of the window's {wanted:,} rows (the rest "
                                           "dropped by the log or not yet published): a partial window")
    return mine.take(pa.array(take)), note


def _reference(path: str, feature: str, references: dict) -> tuple[np.ndarray | None, str]:
    if path not in references:
        try:
            references[path] = load_reference(Path(path))
        except Exception as exc:  # moved or unreadable: say so, show the window alone
            references[path] = exc
    columns = references[path]
    if isinstance(columns, Exception) or feature not in columns:
        why = columns if isinstance(columns, Exception) else f"no column {feature}"
        return None, f" (reference {path} unreadable: {why})"
    return np.asarray(columns[feature], dtype=np.float64), ""


def _window_plot(raise_row: dict, evaluations: pa.Table, logged: pa.Table | None, feature: str,
                 references: dict) -> str:
    """The raise's lead window (the rows it names) against the reference: ECDFs for KS,
    category shares for chi-squared, with SciPy's statistic of the rows drawn beside the
    monitor's. `references` caches the reference files by path."""
    first = evaluations.slice(0, 1).to_pylist()[0]
    window, test = int(raise_row.get("window") or first["window"]), first["test"]
    when = f"at {raise_row['time']:%Y-%m-%d %H:%M:%S} UTC (event {raise_row['events_observed']:,})"
    stat = (f"statistic {raise_row['statistic']:.4g}, p-value {raise_row['pvalue']:.3g}, "
            f"effect {raise_row['effect']:.4g}")
    column = None if logged is None else log_column(feature, logged.column_names)
    if column is None:
        return (f"<p>{html.escape(feature)} raised {when}: {stat}; the scoring log has no in_/out_ column for "
                f"{html.escape(feature)} to show the window.</p>")
    rows, note = _window_rows(raise_row, logged)
    if rows is None:
        return f"<p>{html.escape(feature)} raised {when}: {stat}; {html.escape(note)}.</p>"
    current = rows.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
    reference, ref_note = _reference(first["reference"], feature, references)
    shown = ""
    fig, axes = figure(7, 3)
    if test == "ks":
        if reference is not None:
            d = stats.ks_2samp(current, reference, method="asymp").statistic
            shown = f"; KS D of the rows drawn (SciPy): {d:.4g}"
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
    axes.set_title(f"{feature}: the window of {window:,} rows the monitor tested when it raised, vs the reference")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    return (f"<p>Raised {html.escape(when)}: {stat}{html.escape(shown + note + ref_note)}</p>"
            + png(fig))


__all__ = ["drift_section", "log_column"]
