"""Sweep and run reports: JSON (everything, HDR histograms included), Markdown, PNG."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

PLOTTED = ("p50", "p90", "p99", "p99.9")


def write_json(path: Path, data, markdown: str | None = None) -> None:
    """A benchmark's results as JSON at `path`, and its Markdown beside it (same name, .md)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    if markdown is not None:
        path.with_suffix(".md").write_text(markdown)


def write_sweep(sweep, out: Path, command: str = "") -> dict[str, Path]:
    """Write OUT.json, OUT.md and OUT.png; returns their paths."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = asdict(sweep)
    data["command"] = command
    paths = {"json": out.with_suffix(".json"), "md": out.with_suffix(".md"), "png": out.with_suffix(".png")}
    write_json(paths["json"], data, sweep_markdown(data, paths["png"].name))
    plot_sweep(data, paths["png"])
    return paths


def _ms(us) -> str:
    return "-" if us is None else f"{us / 1000:.2f}"


def sweep_markdown(data: dict, png_name: str) -> str:
    load = data["load"]
    server = data["levels"][0]["server"] if data["levels"] else "?"
    mode = "stream" if load["stream"] else "unary"
    lines = [
        f"# SLO sweep: {load['model']} on {server}",
        "",
        f"SLO `{data['slo']}`, open loop ({load['arrival']} arrivals, latency from the scheduled send time), "
        f"{load['rows']} row(s) per request, {mode} ModelInfer, {load['connections']} connection(s), "
        f"{load['procs']} generator process(es), {load['duration_s']:g} s per level after {load['warmup_s']:g} s "
        f"warm-up. Target {load['url']}.",
        "",
    ]
    if data.get("command"):
        lines += ["Command:", "", "```", data["command"], "```", ""]
    best = data["best_rps"]
    lines.append(f"**Highest offered rate meeting the SLO: {best:,.0f} requests/s**" if best else
                 "**No level met the SLO.**")
    ceiling = data.get("generator_ceiling_rps")
    if ceiling:
        lines.append("")
        note = " (the answer is within 80% of it: the generator may be the limit)" if best and best > 0.8 * ceiling \
            else ""
        lines.append(f"Generator ceiling (closed loop against a null server, same settings): {ceiling:,.0f} "
                     f"requests/s{note}.")
    if data.get("interrupted"):
        lines += ["", "Interrupted: the levels below are the ones that finished."]
    lines += ["", "| offered/s | answered/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | schedule lag p99 ms "
              "| verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for lv in sorted(data["levels"], key=lambda lv: lv["offered_rps"]):
        lat = lv["latency_us"]
        errors = sum(lv["errors"].values())
        lines.append(f"| {lv['offered_rps']:,.0f} | {lv['achieved_rps']:,.0f} | {_ms(lat.get('p50'))} | "
                     f"{_ms(lat.get('p90'))} | {_ms(lat.get('p99'))} | {_ms(lat.get('p99.9'))} | {_ms(lat.get('max'))} | "
                     f"{errors} | {_ms(lv['lag_us'].get('p99'))} | {'pass' if lv['passed'] else 'FAIL'}: "
                     f"{lv['verdict']} |")
    lines += ["", f"![latency percentiles against offered load]({png_name})", ""]
    return "\n".join(lines)


def plot_sweep(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.sweep import parse_slo

    levels = sorted(data["levels"], key=lambda lv: lv["offered_rps"])
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    x = [lv["offered_rps"] for lv in levels]
    for name in PLOTTED:
        y = [lv["latency_us"].get(name, float("nan")) / 1000 for lv in levels]
        ax.plot(x, y, marker="o", label=name)
    for objective in parse_slo(data["slo"]):
        ax.axhline(objective.limit_us / 1000, color="red", linestyle="--", linewidth=1)
        ax.text(x[0] if x else 0, objective.limit_us / 1000, f" SLO {objective.text}", color="red",
                va="bottom", fontsize=8)
    if data["best_rps"]:
        ax.axvline(data["best_rps"], color="green", linestyle=":", linewidth=1,
                   label=f"highest rate meeting the SLO: {data['best_rps']:,.0f}/s")
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("offered load (requests/s)")
    ax.set_ylabel("latency from scheduled send (ms)")
    server = levels[0]["server"] if levels else ""
    ax.set_title(f"{data['load']['model']} on {server}: latency percentiles vs offered load")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_markdown(result) -> str:
    lat, lag = result.latency_us, result.lag_us
    load = result.load
    mode = "closed loop" if load["closed_loop"] else f"open loop at {load['rate']:,.0f}/s ({load['arrival']})"
    lines = [f"{load['model']} on {result.server}, {mode}, {load['duration_s']:g} s: {result.ok:,} answered "
             f"({result.achieved_rps:,.0f}/s), errors {result.errors or 'none'}",
             "latency ms: " + ", ".join(f"{k} {_ms(v)}" for k, v in lat.items() if k != "mean")]
    if lag:
        lines.append("schedule lag ms (the generator's own delay): " + ", ".join(
            f"{k} {_ms(v)}" for k, v in lag.items() if k in ("p50", "p99", "max")))
    return "\n".join(lines)
