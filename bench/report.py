"""Sweep and run reports: JSON (everything, HDR histograms included), Markdown, PNG."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from bench.sweep import parse_slo

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
    if data.get("headline"):
        lines += [""] + [f"- {line}" for line in data["headline"]]
    ceiling = data.get("generator_ceiling_rps")
    if ceiling:
        lines.append("")
        note = " (the answer is within 80% of it: the generator may be the limit)" if best and best > 0.8 * ceiling \
            else ""
        lines.append(f"Generator ceiling (closed loop against a null server, same settings): {ceiling:,.0f} "
                     f"requests/s{note}.")
    if data.get("interrupted"):
        lines += ["", "Interrupted: the levels below are the ones that finished."]
    levels = sorted(data["levels"], key=lambda lv: lv["offered_rps"])
    with_server = any(lv.get("server_us") for lv in levels)
    lines += ["", "| offered/s | answered/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | schedule lag p99 ms "
              + ("| server queue p99 ms | server inference p99 ms | server total p99 ms " if with_server else "")
              + "| verdict |", "|---" * (10 + 3 * with_server) + "|"]
    thin = False

    def cell(lv: dict, name: str) -> str:
        nonlocal thin
        value = _ms(lv["latency_us"].get(name))
        if percentile_label(name, lv.get("ok", 0)) != name and value != "-":
            thin = True
            return value + "*"
        return value

    notes = []
    for lv in levels:
        lat = lv["latency_us"]
        errors = sum(lv["errors"].values())
        server = lv.get("server_us", {})
        extra = "".join(f" {_ms(server.get(stage, {}).get('p99'))} |" for stage in ("queue", "inference", "total"))
        lines.append(f"| {lv['offered_rps']:,.0f} | {lv['achieved_rps']:,.0f} | {cell(lv, 'p50')} | "
                     f"{cell(lv, 'p90')} | {cell(lv, 'p99')} | {cell(lv, 'p99.9')} | {_ms(lat.get('max'))} | "
                     f"{errors} | {_ms(lv['lag_us'].get('p99'))} |{extra if with_server else ''} "
                     f"{'pass' if lv['passed'] else 'FAIL'}: {lv['verdict']} |")
        notes += [f"- {lv['offered_rps']:,.0f}/s: {note}" for note in lv.get("notes", [])]
    if thin:
        lines += ["", "\\* fewer samples than the percentile can tell apart: the value is about the level's maximum."]
    if with_server:
        lines += ["", "Server columns: the server's own percentiles over the last 5-10 s of the level "
                  "(`scorewire_latency_recent_us`), read right after it."]
    if notes:
        lines += ["", "What else set the tail:", ""] + notes
    lines += _limits_table(levels)
    lines += ["", f"![latency percentiles against offered load]({png_name})", ""]
    return "\n".join(lines)


def _limits_table(levels: list[dict]) -> list[str]:
    """Per level: the verdict by the server's own latency, CPU in cores over the measured
    window (server tree, client, machine), what limited it, each worker's share."""
    if not any(lv.get("limit") for lv in levels):
        return []
    lines = ["", "What limited each level (CPU in cores over the measured window; the server's is its whole "
             "process tree, the client's event loop saturates at 1):", "",
             "| offered/s | at the server | server CPU | client CPU (event loop) | machine busy | limit | "
             "each worker's share |", "|---" * 7 + "|"]
    for lv in levels:
        cpu = lv.get("cpu") or {}
        server = "-" if lv.get("server_passed") is None else \
            f"{'pass' if lv['server_passed'] else 'FAIL'}: {lv['server_verdict']}"
        server_cpu = f"{cpu['cores']:.2f} of {cpu['server_cores']}" if "cores" in cpu else "-"
        machine = f"{cpu['machine_busy_cores']:.2f} of {cpu['machine_cores']}" if cpu else "-"
        lines.append(f"| {lv['offered_rps']:,.0f} | {server} | {server_cpu} | {lv.get('client_cpu_total', 0):.2f} "
                     f"({lv.get('client_loop_cpu', 0):.2f}) | {machine} | {lv.get('limit', {}).get('why', '-')} | "
                     f"{shares_text(lv['workers']) if lv.get('workers') else '-'} |")
    return lines


def plot_sweep(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted(data["levels"], key=lambda lv: lv["offered_rps"])
    fig, ax = plt.subplots(figsize=(10, 5), dpi=100)
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
    if data.get("server_best_rps"):
        ax.axvline(data["server_best_rps"], color="gray", linestyle=":", linewidth=1,
                   label=f"highest rate meeting the SLO by the server's own latency: {data['server_best_rps']:,.0f}/s")
    if data.get("saturation"):
        ax.axvline(data["saturation"]["offered_rps"], color="orange", linestyle="-.", linewidth=1,
                   label=f"saturation: {data['saturation']['offered_rps']:,.0f}/s offered")
    own = [lv.get("server_us", {}).get("total", {}).get("p99") for lv in levels]
    if any(own):
        ax.plot(x, [v / 1000 if v else float("nan") for v in own], marker="s", linestyle="--", color="gray",
                label="p99, the server's own (total)")
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator

    # labels at 1, 2 and 5 of every decade: a log axis spanning less than a decade still reads
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(1, 10))))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_xlabel("offered load (requests/s)")
    ax.set_ylabel("latency from scheduled send (ms)")
    server = levels[0]["server"] if levels else ""
    ax.set_title(f"{data['load']['model']} on {server}: latency percentiles vs offered load")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, fontsize=8)  # beside the data
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def percentile_label(name: str, samples: int) -> str:
    """A percentile as what the samples can say: p99.9 of 200 samples is their maximum."""
    if name.startswith("p") and samples:
        q = float(name[1:]) / 100
        if samples * (1 - q) < 1:
            return f"{name} (~max: {samples:,} samples)"
    return name


def shares_text(workers: dict) -> str:
    """"worker 0 51% (1,020), worker 1 49% (980)": each worker's share of the requests."""
    return ", ".join(f"worker {w} {v['share']:.0%} ({v['requests']:,})" for w, v in workers.items())


def cpu_text(entry: dict) -> str:
    """The level's CPU in cores: the server's tree, the client's processes, the machine."""
    cpu = entry.get("cpu") or {}
    parts = []
    if "cores" in cpu:
        parts.append(f"server {cpu['cores']:.2f} of its {cpu['server_cores']} cores ({cpu['processes']} processes, "
                     f"busiest main thread {cpu['busiest_main_thread']:.2f})")
    elif entry.get("cpu_unavailable"):
        parts.append(f"server not measured ({entry['cpu_unavailable']})")
    parts.append(f"client {entry.get('client_cpu_total', 0):.2f} (busiest event loop "
                 f"{entry.get('client_loop_cpu', 0):.2f})")
    if cpu:
        parts.append(f"machine {cpu['machine_busy_cores']:.2f} of {cpu['machine_cores']} busy")
    return ", ".join(parts)


def side_lines(entry: dict) -> list[str]:
    """What the server did and what limited the level, for a terminal."""
    lines = [f"CPU cores over the measured window: {cpu_text(entry)}"]
    if entry.get("limit"):
        lines.append(f"limit: {entry['limit']['why']}")
    if entry.get("workers"):
        lines.append(f"each worker's share (scorewire_worker_requests_total over the run): "
                     f"{shares_text(entry['workers'])}")
    if entry.get("server_unavailable"):
        lines.append(f"server metrics: {entry['server_unavailable']}")
    return lines


def run_markdown(result, server: dict | None = None) -> str:
    lat, lag = result.latency_us, result.lag_us
    load = result.load
    mode = "closed loop" if load["closed_loop"] else f"open loop at {load['rate']:,.0f}/s ({load['arrival']})"
    lines = [f"{load['model']} on {result.server}, {mode}, {load['duration_s']:g} s: {result.ok:,} answered "
             f"({result.achieved_rps:,.0f}/s), errors {result.errors or 'none'}",
             "latency ms: " + ", ".join(f"{percentile_label(k, result.ok)} {_ms(v)}" for k, v in lat.items()
                                        if k != "mean")]
    for stage in ("queue", "inference", "total"):
        values = (server or {}).get(stage)
        if values:
            lines.append(f"server's own {stage} ms (last 5-10 s): " + ", ".join(
                f"{k} {_ms(v)}" for k, v in values.items()))
    if lag:
        lines.append("schedule lag ms (the generator's own delay): " + ", ".join(
            f"{k} {_ms(v)}" for k, v in lag.items() if k in ("p50", "p99", "max")))
    return "\n".join(lines)
