"""peers_bench's report: medians over the passes, ratios to scorewire's medians from the same
run, one Markdown table per (protocol, rows, concurrency) cell and one for status and memory.

A peer that failed to install, start or answer correctly keeps its row in every table, with
the reason in the status table: a missing row would read as "not measured" at best and "no
worse" at worst.
"""

from __future__ import annotations

import statistics

METRICS = ("requests_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_request", "server_cores", "client_cores",
           "other_cores", "machine_busy", "rss_mib", "pss_mib", "processes")


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(passes: list[dict], args) -> dict:
    """{"peers": {peer: status, reason, settings, idle memory, peak memory}, "cells": {key: {peer:
    medians + limit (the most frequent) + ratios to scorewire}}}; key "grpc rows=1 c=8"."""
    peers: dict[str, dict] = {}
    cells: dict[str, dict[str, dict]] = {}
    for peer in args.peers:
        runs = [p[peer] for p in passes if peer in p]
        passed = [r for r in runs if r["status"] == "ok"]
        ok = [r for r in runs if r["cells"]]  # measured: passed, or died under load after some cells
        failed = [r for r in runs if r["status"] != "ok"]
        every = [c for r in ok for c in r["cells"] if "error" not in c]
        peers[peer] = {
            "status": "ok" if passed else failed[0]["status"],
            "reason": "; ".join(dict.fromkeys(f"{r['status']}: {r['reason']}" for r in failed)),
            "passes_ok": len(passed), "passes": len(runs),
            "settings": ok[0]["settings"] if ok else "",
            "idle_rss_mib": _median([r["idle"]["rss_mib"] for r in ok if "idle" in r]),
            "idle_pss_mib": _median([r["idle"]["pss_mib"] for r in ok if "idle" in r]),
            "processes": _median([r["idle"]["processes"] for r in ok if "idle" in r]),
            "peak_rss_mib": max((c["rss_mib"] for c in every), default=None),
            "peak_pss_mib": max((c["pss_mib"] for c in every), default=None),
            "cell_errors": [c["error"] for r in ok for c in r["cells"] if "error" in c],
        }
        for r in ok:
            for c in r["cells"]:
                key = f"{c['protocol']} rows={c['rows']} c={c['concurrency']}"
                cells.setdefault(key, {}).setdefault(peer, {"runs": []})["runs"].append(c)
    for key, by_peer in cells.items():
        for peer, entry in by_peer.items():
            good = [c for c in entry.pop("runs") if "error" not in c]
            entry.update({m: _median([c.get(m) for c in good]) for m in METRICS})
            limits = [c["limit"] for c in good]
            entry["limit"] = max(set(limits), key=limits.count) if limits else "error"
            entry["runs_ok"] = len(good)
        base = by_peer.get("scorewire")
        for entry in by_peer.values():
            if base and base.get("requests_per_s") and entry.get("requests_per_s") is not None:
                entry["rps_vs_scorewire"] = entry["requests_per_s"] / base["requests_per_s"]
            if base and base.get("server_cpu_us_per_request") and entry.get("server_cpu_us_per_request"):
                entry["cpu_vs_scorewire"] = entry["server_cpu_us_per_request"] / base["server_cpu_us_per_request"]
    return {"peers": peers, "cells": cells}


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def markdown(summary: dict, args, command: str, short: bool) -> str:
    lines = ["# Peers: the same ONNX MLP served by each, one server at a time", ""]
    if short:
        lines += ["**SHORT FUNCTIONAL RUN: not a benchmark.** It shows that every server starts, answers "
                  "correctly and is measured; its figures are too short and too few to compare. The full "
                  "run's command is in bench/README.md.", ""]
    lines += ["```", command, "```", "",
              f"{args.duration:g} s per cell after a warm-up, {args.passes} pass(es) (every server started afresh "
              f"each pass), medians shown. gRPC: tritonclient.grpc.aio, closed loop in 2 processes; REST: wrk "
              f"(closed loop, compiled). Clients and servers share the machine's cores. Server CPU: utime + stime "
              f"of the server's whole process tree over the load, per request. \"x sw\": the ratio to scorewire's "
              f"median in the same run (requests/s: higher is better; CPU: lower is better). Other cores: the "
              f"machine's busy cores less the server's and the client's (other work on a shared machine).", ""]
    lines += ["| server | status | settings | processes | RSS idle MiB | PSS idle MiB | RSS peak MiB | "
              "PSS peak MiB |", "|---|---|---|---|---|---|---|---|"]
    for peer, s in summary["peers"].items():
        status = s["status"] if s["status"] == "ok" else f"**{s['status']}**: {s['reason']}"
        if s["status"] == "ok" and s["passes_ok"] < s["passes"]:
            status += f" ({s['passes_ok']}/{s['passes']} passes; {s['reason']})"
        if s["cell_errors"]:
            status += f"; cell errors: {' / '.join(dict.fromkeys(s['cell_errors']))[:300]}"
        lines.append(f"| {peer} | {status.replace('|', '/')} | {s['settings']} | {_f(s['processes'], '.0f')} | "
                     f"{_f(s['idle_rss_mib'], ',.0f')} | {_f(s['idle_pss_mib'], ',.0f')} | "
                     f"{_f(s['peak_rss_mib'], ',.0f')} | {_f(s['peak_pss_mib'], ',.0f')} |")
    for key in sorted(summary["cells"], key=_order):
        by_peer = summary["cells"][key]
        protocol = key.split()[0]
        lines += ["", f"## {protocol.upper()}, {key.split(' ', 1)[1].replace('c=', 'concurrency ')}", "",
                  "| server | requests/s | x sw | p50 ms | p99 ms | server CPU us/req | x sw | server cores | "
                  "client cores | other cores | machine busy | PSS MiB | limited by |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for peer, s in summary["peers"].items():
            e = by_peer.get(peer)
            if e is None:
                why = s["status"] if s["status"] != "ok" else "not this protocol" if protocol == "grpc" else "error"
                lines.append(f"| {peer} | {why} | | | | | | | | | | | |")
                continue
            lines.append(f"| {peer} | {_f(e['requests_per_s'], ',.0f')} | {_f(e.get('rps_vs_scorewire'), '.2f')} | "
                         f"{_f(e['p50_ms'], '.2f')} | {_f(e['p99_ms'], '.2f')} | "
                         f"{_f(e['server_cpu_us_per_request'], ',.0f')} | {_f(e.get('cpu_vs_scorewire'), '.2f')} | "
                         f"{_f(e['server_cores'], '.2f')} | {_f(e['client_cores'], '.2f')} | "
                         f"{_f(e['other_cores'], '.2f')} | "
                         f"{_f(e['machine_busy'], '.0%')} | {_f(e['pss_mib'], ',.0f')} | {e['limit']} |")
    return "\n".join(lines) + "\n"


def _order(key: str) -> tuple:
    protocol, rows, c = key.split()
    return (protocol != "grpc", int(rows.split("=")[1]), int(c.split("=")[1]))
