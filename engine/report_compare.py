"""The report's champion / challenger section as HTML tables (`scorewire report`): the same
figures `scorewire compare` prints (engine/scorelog/compare.py's `compare` dict), laid out
to be read in a browser -- a table per challenger's outputs and metrics, one of latency per
version -- instead of the terminal's fixed-width text, which a page can only show as a block
scrolling sideways."""

from __future__ import annotations

import html
import math

from engine.performance.metrics import METRICS
from engine.scorelog import arms as arm_tests
from engine.scorelog import paired as paired_tests
from engine.scorelog.compare import NAMES


def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.4g}"
    return str(x)


def _us(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.0f}"


def table(header: list[str], rows: list[list[str]], caption: str = "") -> str:
    """An HTML table of text cells (escaped here)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<tr>{head}</tr>{body}</table>"


def _labelled(lab: dict) -> list[str]:
    out = [f"<p>Labelled rows: {lab['rows']:,} (task {html.escape(lab['task'])}, score {html.escape(lab['score'])}"
           + (f", predicted {html.escape(lab['predicted'])})" if lab["predicted"] else ")") + "</p>"]
    if not lab["rows"]:
        return out
    metrics = METRICS[lab["task"]]
    out.append(table(["", *(NAMES[m] for m in metrics)],
                     [[side, *(_fmt(lab[side][m]) for m in metrics)] for side in paired_tests.SIDES]))
    tests = []
    for test, _, name in paired_tests.TESTS[lab["task"]]:
        r = lab[test]
        if test == "mcnemar":
            tests.append(["McNemar (exact)", f"champion-only right {r['champion_only_right']}, challenger-only right "
                                             f"{r['challenger_only_right']}", _fmt(r["pvalue"])])
        else:
            tests.append([name, f"t = {_fmt(r['statistic'])}", _fmt(r["pvalue"])])
    out.append(table(["paired test", "statistic", "p-value"], tests))
    return out


def _arm(entry: dict) -> list[str]:
    rows, left = entry["rows"], entry["left_out"]
    out = [f"<h3>Arm {html.escape(entry['version'])}</h3><p>A split: other requests than the champion's, nothing "
           f"paired. Arm {rows['arm']:,} rows; champion {html.escape(', '.join(entry['champion_versions']) or '-')}: "
           f"{rows['champion']:,} rows"
           + (f"; not routed by the split, left out: arm {left['arm']:,}, champion {left['champion']:,} rows (pinned "
              "requests, rows from before the split)" if left["arm"] or left["champion"] else "") + ".</p>"]
    lab = entry.get("labelled")
    if lab is not None:
        metrics = METRICS[lab["task"]]
        out.append(table(["", "labelled rows", *(NAMES[m] for m in metrics)],
                         [[side, f"{lab['rows'][side]:,}", *(_fmt(lab["metrics"][side][m]) for m in metrics)]
                          for side in ("champion", "arm")]))
        # the interval and test lines as `scorewire compare` words them, one per paragraph
        text = arm_tests.render(entry)
        out += [f"<p>{html.escape(line.strip())}</p>" for line in text if line.startswith("  ") and (
            "minus champion" in line or arm_tests.ALWAYS_VALID in line or arm_tests.FIXED_HORIZON in line)]
    out.append(f"<p class='verdict'>Verdict: {html.escape(entry['verdict'])}</p>")
    return out


def comparison_section(report: dict) -> str:
    """The champion against each challenger (paired rows) and each arm, and latency per version."""
    champion = report["champion"]
    out = [f"<p>Champion {html.escape(', '.join(champion['versions']))}: {champion['rows']:,} rows"
           + (f" ({champion['ambiguous_ids']:,} with a reused id, not paired)" if champion["ambiguous_ids"] else "")
           + ".</p>"]
    for ch in report["challengers"]:
        out.append(f"<h3>Challenger {html.escape(ch['version'])}</h3><p>{ch['paired_rows']:,} paired rows "
                   f"({ch['coverage']:.1%} of the champion's). Floats agree when |diff| <= atol = "
                   f"{report.get('atol', 1e-6):g} (<code>scorewire compare --atol</code>).</p>")
        rows = []
        for name, o in ch["outputs"].items():
            d = o.get("abs_diff", {})
            rows.append([name, _fmt(o["agreement"]), *(_fmt(d[k]) if k in d else "-"
                                                        for k in ("p50", "p90", "p99", "max"))])
        out.append(table(["output", "agreement", "|diff| p50", "p90", "p99", "max"], rows))
        if ch.get("labelled"):
            out += _labelled(ch["labelled"])
        out.append(f"<p class='verdict'>Verdict: {html.escape(ch['verdict'])}</p>")
    for arm in report.get("arms", []):
        out += _arm(arm)
    rows = [[version, *(_us(stages[stage].get(q, float("nan"))) for stage in ("queue", "inference", "total")
                        for q in ("p50", "p99"))] for version, stages in report["latency_us"].items()]
    out.append(table(["version", "wait p50", "wait p99", "inference p50", "inference p99", "total p50", "total p99"],
                     rows, "Latency (microseconds)"))
    if any("(challenger)" in v for v in report["latency_us"]):
        out.append("<p>Wait: a champion's in its batcher queue; a challenger's in the shadow queue, after the champion "
                   "answered (no caller waits for it): compare inference.</p>")
    return "\n".join(out)


__all__ = ["comparison_section", "table"]
