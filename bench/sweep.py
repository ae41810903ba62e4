"""SLO search: raise the offered rate until the service level objective fails, then narrow.

    slo = parse_slo("p99<10ms,p99.9<50ms")

A level passes when every objective holds on the open-loop latencies (measured from the
scheduled send time), there are no errors, and the server kept up (answered at least 95% of
the offered rate). Rates grow by `factor` from `start` until a level fails or `max_rate` is
reached; then `refine` bisection steps between the last pass and the first failure. The
answer is the highest passing offered rate.

Before that, the generator measures its own ceiling: the same settings, closed loop at high
concurrency, against the null server (bench/null_server.py), which names the model's input
(the same rows go to it, --data included). Levels above ~80% of it measure
the generator, not the server; the report says so.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field, replace

from bench.loadgen import Load, Result, run
from bench.servers import start_null_server, stop

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
    best_rps: float | None = None
    interrupted: bool = False
    started: str = ""
    seconds: float = 0.0


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


def server_percentiles(metrics: str, model: str) -> dict:
    """The server's own recent percentiles (scorewire_latency_recent_us: the last 5-10 s) per
    stage, in microseconds: the worst series of the model's answering roles (not challengers)."""
    from engine.monitor.status import scrape

    try:
        families = scrape(metrics, timeout_s=5.0)
    except Exception as exc:  # the report goes on without them
        return {"error": str(exc)}
    out: dict = {}
    for sample in families.get("scorewire_latency_recent_us", []):
        labels = sample.labels
        if labels.get("model") != model or labels.get("role") == "challenger":
            continue
        name = f"p{float(labels['quantile']) * 100:g}"
        stage = out.setdefault(labels["stage"], {})
        stage[name] = max(stage.get(name, 0), int(sample.value))
    return out


def tail_notes(entry: dict) -> list[str]:
    """What else than the server may have made the level's tail: the generator's own delay,
    or time spent outside the server (client, network, gRPC transport)."""
    notes = []
    p99 = entry.get("latency_us", {}).get("p99")
    lag = entry.get("lag_us", {}).get("p99")
    if p99 and lag and lag > 0.25 * p99:
        notes.append(f"the generator's own schedule lag (p99 {lag / 1000:.2f} ms) is {lag / p99:.0%} of the p99: "
                     "the client set part of the tail (more --procs, or the generator on other cores)")
    server = entry.get("server_us", {}).get("total", {}).get("p99")
    if p99 and server and p99 > 3 * server:
        notes.append(f"the server's own total p99 was {server / 1000:.2f} ms of the client's {p99 / 1000:.2f} ms: "
                     "most of the tail was outside the server's queue and inference")
    return notes


def sweep(load: Load, slo: str, start: float, max_rate: float, factor: float = 1.5, refine: int = 3,
          ceiling: bool = True, progress=None, metrics: str | None = None) -> Sweep:
    objectives = parse_slo(slo)
    result = Sweep(slo=slo, load=asdict(load), started=time.strftime("%Y-%m-%d %H:%M:%S"))
    t0 = time.monotonic()

    def level(rate: float) -> bool:
        try:
            r = run(replace(load, rate=rate, closed_loop=False))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # the target went away: the level fails, the report is still written
            r = Result(load=asdict(load), errors={"generator": 1})
            ok, why = False, f"could not run: {exc}"
            entry = {"offered_rps": round(rate, 1), "passed": ok, "verdict": why, **r.as_dict()}
            entry.pop("load")
            result.levels.append(entry)
            if progress is not None:
                progress(entry)
            return False
        ok, why = level_verdict(r, objectives, rate)
        if r.interrupted:
            ok, why = False, "interrupted (Ctrl-C)"
        entry = {"offered_rps": round(rate, 1), "passed": ok, "verdict": why, **r.as_dict()}
        entry.pop("load")
        if metrics:
            entry["server_us"] = server_percentiles(metrics, load.model)
        entry["notes"] = tail_notes(entry)
        result.levels.append(entry)
        if progress is not None:
            progress(entry)
        if r.interrupted:
            raise KeyboardInterrupt
        return ok

    try:
        if ceiling:
            result.generator_ceiling_rps = measure_ceiling(load)
            if progress is not None:
                progress({"generator_ceiling_rps": result.generator_ceiling_rps})
        rate, passed, failed = min(start, max_rate), None, None
        while True:
            if level(rate):
                passed = rate
                if rate >= max_rate:
                    break
                rate = min(rate * factor, max_rate)  # the last level is max_rate itself
            else:
                failed = rate
                break
        if passed is not None and failed is not None:
            for _ in range(refine):
                middle = (passed + failed) / 2
                if level(middle):
                    passed = middle
                else:
                    failed = middle
        result.best_rps = None if passed is None else round(passed, 1)
    except KeyboardInterrupt:
        result.interrupted = True
        passes = [lv["offered_rps"] for lv in result.levels if lv["passed"]]
        result.best_rps = max(passes) if passes else None
    result.seconds = round(time.monotonic() - t0, 1)
    return result
