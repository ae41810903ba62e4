"""SLO search: raise the offered rate until the service level objective fails, then narrow;
judged twice, at the client and by the server's own latency.

    slo = parse_slo("p99<10ms,p99.9<50ms")

A level passes at the client when every objective holds on the open-loop latencies (measured
from the scheduled send time), there are no errors, and the server kept up (answered at least
95% of the offered rate). With the server's /metrics (--metrics), a level passes at the server
when the same objectives hold on the server's own recent percentiles (the ones it exports:
p50, p90, p99, p99.9) and it kept up. The two differ when the client sets the tail: on a
machine shared with the generator the client's p99 failed 10 ms at 844/s while the server's
own was 1.1-1.6 ms. So the rate grows by `factor` from `start` while either passes (up to
`max_rate`); first, when one fails at `start`, the rate halves below it (down to `min_rate`)
until it passes; last, `refine` bisection steps narrow each between its last pass and its
first failure. Answers:
the highest rate passing at the client (`best_rps`), at the server (`server_best_rps`), the
saturation point and, per level, what limited it (bench/limits.py).

Before that, the generator measures its own ceiling: the same settings, closed loop at high
concurrency, against the null server (bench/null_server.py), which names the model's input
(the same rows go to it, --data included). Levels above ~80% of it measure
the generator, not the server; the report says so.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field, replace

from bench.limits import headline, limit, saturation
from bench.loadgen import Load, Result, run
from bench.servers import start_null_server, stop
from bench.serverwatch import ServerWatch

_UNITS = {"us": 1, "ms": 1000, "s": 1_000_000}


@dataclass(frozen=True)
class Objective:
    percentile: float
    limit_us: int
    text: str


def parse_slo(text: str) -> list[Objective]:
    """"p99<10ms,p99.9<50ms" -> objectives (units us, ms, s)."""
    objectives = []
    for part in text.replace(" ", "").split(","):
        m = re.fullmatch(r"p(\d+(?:\.\d+)?)<(\d+(?:\.\d+)?)(us|ms|s)", part)
        if not m:
            raise ValueError(f"cannot read SLO {part!r}: write e.g. p99<10ms (units us, ms, s), several with commas")
        percentile = float(m.group(1))
        if not 0 < percentile < 100:
            raise ValueError(f"SLO {part!r}: the percentile must be between 0 and 100")
        objectives.append(Objective(percentile, int(float(m.group(2)) * _UNITS[m.group(3)]), part))
    return objectives


def level_verdict(result: Result, objectives: list[Objective], offered: float) -> tuple[bool, str]:
    from hdrh.histogram import HdrHistogram

    if result.errors:
        return False, f"errors {result.errors}"
    if result.achieved_rps < 0.95 * offered:
        return False, f"answered {result.achieved_rps:,.0f}/s of {offered:,.0f}/s offered"
    if not result.histogram:
        return False, "no answers"
    h = HdrHistogram.decode(result.histogram)
    for o in objectives:
        value = h.get_value_at_percentile(o.percentile)
        if value >= o.limit_us:
            return False, f"p{o.percentile:g} = {value / 1000:.2f} ms"
    return True, "meets the SLO"


@dataclass
class Sweep:
    slo: str
    load: dict
    generator_ceiling_rps: float | None = None
    levels: list[dict] = field(default_factory=list)
    best_rps: float | None = None  # at the client
    server_best_rps: float | None = None  # by the server's own latency (None: not measured, or no pass)
    server_slo: str = ""  # the objectives the server's own percentiles could check
    saturation: dict | None = None  # bench/limits.py saturation()
    headline: list[str] = field(default_factory=list)
    interrupted: bool = False
    started: str = ""
    seconds: float = 0.0


def server_verdict(entry: dict, objectives: list[Objective]) -> tuple[bool | None, str]:
    """The level judged by the server's own recent total percentiles; None where the server
    exported none, or none the objectives name."""
    own = entry.get("server_us", {}).get("total")
    if not own:
        return None, "no server percentiles"
    checked = [(o, own[f"p{o.percentile:g}"]) for o in objectives if f"p{o.percentile:g}" in own]
    if not checked:
        return None, "the server exports none of these percentiles"
    if entry["errors"]:
        return False, f"errors {entry['errors']}"
    if entry["achieved_rps"] < 0.95 * entry["offered_rps"]:
        return False, f"answered {entry['achieved_rps']:,.0f}/s of {entry['offered_rps']:,.0f}/s offered"
    for o, value in checked:
        if value >= o.limit_us:
            return False, f"server p{o.percentile:g} = {value / 1000:.2f} ms"
    return True, "the server's own latency meets " + ",".join(o.text for o, _ in checked)


def measure_ceiling(load: Load) -> float:
    """The generator's own ceiling: closed loop, high concurrency, against the null server."""
    from bench.loadgen import input_spec

    name, datatype, shape, outputs = input_spec(load.url, load.model)  # the model's rows: any model, --data
    proc, url = start_null_server("--input", f"{name}:{datatype}:{','.join(str(d) for d in shape)}",
                                  "--outputs", ",".join(outputs))
    try:
        probe = replace(load, url=url, model="null", closed_loop=True, concurrency=max(64, 16 * load.procs),
                        duration_s=min(3.0, load.duration_s), warmup_s=0.5)
        return run(probe).achieved_rps
    finally:
        stop(proc)


def tail_notes(entry: dict) -> list[str]:
    """What else than the server may have made the level's tail: the generator's own delay,
    or time spent outside the server (client, network, gRPC transport)."""
    notes = []
    p99 = entry.get("latency_us", {}).get("p99")
    lag = entry.get("lag_us", {}).get("p99")
    if p99 and lag and lag > 0.25 * p99:
        notes.append(f"the generator's own schedule lag (p99 {lag / 1000:.2f} ms) is {lag / p99:.0%} of the p99: "
                     "the client set part of the tail (more --procs, or the generator on other cores)")
    if entry.get("errors", {}).get("StatusCode.UNAVAILABLE"):
        notes.append("UNAVAILABLE answers with the server up are streams it refused: more calls in flight on one "
                     "connection than [server] max_concurrent_streams (1024), which a client sending faster than "
                     "it is answered soon reaches (never scored; safe to retry; more --connections spread them)")
    server = entry.get("server_us", {}).get("total", {}).get("p99")
    if p99 and server and p99 > 3 * server:
        notes.append(f"the server's own total p99 was {server / 1000:.2f} ms of the client's {p99 / 1000:.2f} ms: "
                     "most of the tail was outside the server's queue and inference")
    return notes


def sweep(load: Load, slo: str, start: float, max_rate: float, factor: float = 1.5, refine: int = 3,
          ceiling: bool = True, progress=None, metrics: str | None = None, server_pid: int | None = None,
          min_rate: float | None = None) -> Sweep:
    """The search the module's docstring describes; `min_rate` (default start/16) bounds the
    halving below `start`."""
    objectives = parse_slo(slo)
    result = Sweep(slo=slo, load=asdict(load), started=time.strftime("%Y-%m-%d %H:%M:%S"))
    t0 = time.monotonic()
    verdicts: dict[float, tuple[bool, bool | None]] = {}  # rate -> (at the client, at the server)

    def level(rate: float) -> tuple[bool, bool | None]:
        if rate in verdicts:
            return verdicts[rate]
        watch = ServerWatch(metrics, load.model, server_pid)
        try:
            r = run(replace(load, rate=rate, closed_loop=False), window=watch.window)
            ok, why = level_verdict(r, objectives, rate)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # the target went away: the level fails, the report is still written
            r = Result(load=asdict(load), errors={"generator": 1})
            ok, why = False, f"could not run: {exc}"
        if r.interrupted:
            ok, why = False, "interrupted (Ctrl-C)"
        entry = {"offered_rps": round(rate, 1), "passed": ok, "verdict": why, **r.as_dict()}
        entry.pop("load")
        entry.update(watch.finish())
        entry["limit"] = limit(entry)
        entry["server_passed"], entry["server_verdict"] = server_verdict(entry, objectives)
        entry["notes"] = tail_notes(entry)
        result.levels.append(entry)
        verdicts[rate] = (ok, entry["server_passed"])
        if progress is not None:
            progress(entry)
        if r.interrupted:
            raise KeyboardInterrupt
        return verdicts[rate]

    def highest(k: int) -> float | None:
        passes = [rate for rate, v in verdicts.items() if v[k]]
        return max(passes) if passes else None

    try:
        if ceiling:
            result.generator_ceiling_rps = measure_ceiling(load)
            if progress is not None:
                progress({"generator_ceiling_rps": result.generator_ceiling_rps})
        start = min(start, max_rate)
        level(start)
        floor = min_rate if min_rate is not None else start / 16
        for k in (0, 1):  # below start while one has not passed (and the server was judged); first, so
            rate = start  # that no overloaded level runs just before (the server's percentiles lag 5-10 s)
            while highest(k) is None and verdicts[start][k] is not None and rate / 2 >= floor:
                rate /= 2
                level(rate)
        rate = start
        while any(level(rate)) and rate < max_rate:  # up while the client or the server passes
            rate = min(rate * factor, max_rate)  # the last level is max_rate itself
        for k in (0, 1):
            for _ in range(refine):
                lo = highest(k)
                above = [rate for rate, v in verdicts.items() if v[k] is False and lo is not None and rate > lo]
                if not above:
                    break
                level((lo + min(above)) / 2)
    except KeyboardInterrupt:
        result.interrupted = True
    best, server_best = highest(0), highest(1)
    result.best_rps = None if best is None else round(best, 1)
    result.server_best_rps = None if server_best is None else round(server_best, 1)
    result.server_slo = ",".join(o.text for o in objectives if any(
        f"p{o.percentile:g}" in lv.get("server_us", {}).get("total", {}) for lv in result.levels))
    result.saturation = saturation(result.levels)
    result.headline = headline(asdict(result))
    result.seconds = round(time.monotonic() - t0, 1)
    return result
