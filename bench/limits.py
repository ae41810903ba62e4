"""Which resource limited a load level, and the sweep's headline in those terms.

A level's client latency is the server's time plus the generator's and the transport's; on
a machine the client shares with the server, the generator's p99 was 8x the server's own and
the sweep's answer described the client. So each level says what ran out: the server's CPU
(its whole process tree at its cores, or one process's main thread at one core: a Python
event loop), the client's (the generator's event loop at one core), the machine's (every core
busy, client and server together, others too), or nothing; and the headline names the
server's own capacity apart from the client's answer.
"""

from __future__ import annotations

SATURATED = 0.9  # of a core, or of all cores: busy enough that more load only queues
RECENT_S = 10.0  # scorewire_latency_recent_us covers the server's last 5 to 10 s


def limit(entry: dict) -> dict:
    """{"kind": "server" | "client" | "machine" | "neither" | "unknown", "why": text} for a level
    (its client_loop_cpu and client_cpu_total from loadgen, its cpu from serverwatch)."""
    cpu = entry.get("cpu") or {}
    loop = entry.get("client_loop_cpu", 0.0)
    reasons: list[tuple[str, str]] = []
    if "cores" in cpu:
        if cpu["cores"] >= SATURATED * cpu["server_cores"]:
            reasons.append(("server", f"server CPU saturated: {cpu['cores']:.2f} of its {cpu['server_cores']} cores"))
        elif cpu["busiest_main_thread"] >= SATURATED:
            reasons.append(("server", f"server: one process's main thread (pid {cpu['busiest_pid']}) at "
                            f"{cpu['busiest_main_thread']:.2f} of a core"))
    if loop >= SATURATED:
        reasons.append(("client", f"client CPU saturated: the busiest generator's event loop at {loop:.2f} of a "
                        "core (more --procs, or the client on other cores)"))
    if cpu and cpu.get("machine_busy_cores", 0) >= SATURATED * cpu.get("machine_cores", 1):
        server = cpu.get("cores")
        client = entry.get("client_cpu_total", 0.0)
        parts = [f"client {client:.2f}"] + ([f"server {server:.2f}"] if server is not None else [])
        if server is not None:
            parts.append(f"other processes {max(0.0, cpu['machine_busy_cores'] - client - server):.2f}")
        reasons.append(("machine", f"machine CPU saturated: {cpu['machine_busy_cores']:.2f} of "
                        f"{cpu['machine_cores']} cores busy ({', '.join(parts)})"))
    if reasons:
        return {"kind": reasons[0][0], "why": "; ".join(why for _, why in reasons)}
    if not cpu:
        return {"kind": "unknown", "why": "no CPU measured"}
    server = f"server {cpu['cores']:.2f} of {cpu['server_cores']} cores, " if "cores" in cpu else ""
    return {"kind": "neither", "why": f"neither saturated: {server}client loop {loop:.2f} of a core, machine "
            f"{cpu.get('machine_busy_cores', 0):.2f} of {cpu.get('machine_cores', '?')} cores"}


def saturation(levels: list[dict]) -> dict | None:
    """The first level (by offered rate) where offered load stopped turning into answers
    (under 95% answered) or the server's CPU reached its cores; None when none did. A level
    Ctrl-C interrupted does not count."""
    for lv in sorted(levels, key=lambda lv: lv["offered_rps"]):
        if lv.get("interrupted"):  # Ctrl-C cut it short: it says nothing of the server
            continue
        short = lv["achieved_rps"] < 0.95 * lv["offered_rps"]
        if short or lv.get("limit", {}).get("kind") == "server":
            return {"offered_rps": lv["offered_rps"], "achieved_rps": lv["achieved_rps"],
                    "limit": lv.get("limit", {}).get("kind", "unknown"),
                    "why": lv.get("limit", {}).get("why", ""), "short": short}
    return None


def headline(data: dict) -> list[str]:
    """The sweep's answer in lines: the client's SLO rate, the server's own capacity, the
    saturation point, and whether the client rather than the server set the limit."""
    slo, levels = data["slo"], data["levels"]
    lowest = min((lv["offered_rps"] for lv in levels), default=None)
    best = data.get("best_rps")
    lines = [f"highest rate meeting {slo} at the client (latency from the scheduled send): {best:,.0f} requests/s"
             if best else f"no level met {slo} at the client"
             + (f" (lowest tried: {lowest:,.0f}/s)" if lowest is not None else "")]
    if any(lv.get("server_passed") is not None for lv in levels):
        server_best = data.get("server_best_rps")
        lines.append(f"server capacity: its own latency met {data.get('server_slo') or slo} up to "
                     f"{server_best:,.0f} requests/s offered" if server_best else
                     f"server capacity: its own latency met {data.get('server_slo') or slo} at no level tried")
    else:
        lines.append("server capacity: not measured (--metrics, the server's metrics port, gives its own latency)")
    sat = data.get("saturation")
    top = max(levels, key=lambda lv: lv["achieved_rps"], default=None)
    if sat:
        lines.append(f"saturation: at {sat['offered_rps']:,.0f}/s offered, {sat['achieved_rps']:,.0f}/s answered"
                     + (f" ({sat['why']})" if sat["why"] else ""))
    elif top is not None:
        lines.append(f"saturation not reached up to {max(lv['offered_rps'] for lv in levels):,.0f}/s offered "
                     f"(most answered: {top['achieved_rps']:,.0f}/s)")
    at_sat = sat["offered_rps"] if sat else None
    client_bound = [lv for lv in sorted(levels, key=lambda lv: lv["offered_rps"])
                    if lv.get("limit", {}).get("kind") in ("client", "machine")
                    and (not lv["passed"] or lv["offered_rps"] == at_sat)]
    if client_bound:
        first = client_bound[0]
        who = "the client" if first["limit"]["kind"] == "client" else "the machine (the cores the client shares)"
        lines.append(f"from {first['offered_rps']:,.0f}/s {who}, not the server, was the limit: {first['limit']['why']}")
    load = data["load"]
    if any(lv.get("server_us") for lv in levels) and load["duration_s"] + load["warmup_s"] < RECENT_S:
        lines.append(f"note: levels of {load['duration_s'] + load['warmup_s']:g} s: the server's own percentiles "
                     f"cover its last {RECENT_S / 2:g}-{RECENT_S:g} s, so they include the level before "
                     f"(--duration {RECENT_S:g} keeps each level apart)")
    return lines
