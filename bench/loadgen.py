"""Open-loop (and closed-loop) gRPC load against any Open Inference Protocol server.

Open loop, as wrk2 does it: request i has a scheduled send time t0 + sum of inter-arrival
times (constant, or exponential for Poisson arrivals), fixed before the run. It is sent at
that time or as soon after as the generator can, and its latency is measured from the
scheduled time, not the actual send: a server that stalls makes every request scheduled
during the stall late, and the percentiles show it (no coordinated omission). How late the
generator itself sent (schedule lag) is reported too: when it grows, the generator is the
bottleneck, not the server.

Closed loop (`closed_loop=True`): N callers, each sending its next request when the previous
answer arrives, latency from the actual send. It hides stalls (few requests are in flight
during one); it is here to show exactly that, and for finding raw capacity.

Load is spread over `procs` worker processes (each with its share of the rate and of the
connections, one gRPC channel per connection); their HDR histograms are merged.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from hdrh.histogram import HdrHistogram

LOWEST_US, HIGHEST_US, SIG_FIGS = 1, 3_600_000_000, 3
PERCENTILES = (50.0, 90.0, 99.0, 99.9, 99.99)


def histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIG_FIGS)


@dataclass
class Load:
    url: str
    model: str
    rate: float = 1000.0  # requests/s offered (open loop)
    duration_s: float = 10.0
    warmup_s: float = 1.0  # sent and answered, not measured
    rows: int = 1  # rows per request
    connections: int = 4  # gRPC channels, over all processes
    procs: int = 1
    arrival: str = "constant"  # or "poisson"
    stream: bool = False  # ModelStreamInfer instead of ModelInfer
    closed_loop: bool = False
    concurrency: int = 8  # closed loop: callers, over all processes
    max_in_flight: int = 20_000  # open loop, per process: beyond it the generator waits (counted as lag)
    timeout_s: float = 30.0  # per request
    seed: int = 0
    data: str | None = None  # rows to replay (bench/data.py); None: random normal rows


@dataclass
class Result:
    load: dict
    server: str = ""
    requests: int = 0  # measured (after warm-up)
    ok: int = 0
    errors: dict = field(default_factory=dict)  # status -> count
    achieved_rps: float = 0.0  # measured requests answered per second of the measured window
    latency_us: dict = field(default_factory=dict)  # percentile -> microseconds, plus max and mean
    lag_us: dict = field(default_factory=dict)  # schedule lag (open loop): the generator's own delay
    client_cpu: float = 0.0  # the busiest load process's CPU time over the measured window, in cores
    client_cpu_total: float = 0.0  # all load processes together, in cores
    client_loop_cpu: float = 0.0  # the busiest process's event-loop thread, in cores: 1.0 is the client's limit
    window: tuple = ()  # the measured window, epoch seconds (from, to)
    histogram: str = ""  # HdrHistogram encoding of the latencies, for merging and re-analysis
    interrupted: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def arrival_offsets(rate: float, n: int, arrival: str, rng: np.random.Generator) -> np.ndarray:
    """Scheduled send times of n requests at `rate`/s from 0: constant gaps, or exponential
    ones (Poisson arrivals). Fixed before the run: latency is measured from them."""
    gaps = rng.exponential(1.0 / rate, n) if arrival == "poisson" else np.full(n, 1.0 / rate)
    return np.cumsum(gaps) - gaps[0] if n else gaps


def describe(h: HdrHistogram) -> dict:
    if not h.get_total_count():
        return {}
    out = {f"p{p:g}": h.get_value_at_percentile(p) for p in PERCENTILES}
    out["max"] = h.get_max_value()
    out["mean"] = round(h.get_mean_value(), 1)
    return out


# -- one worker process ---------------------------------------------------------------------------
def input_spec(url: str, model: str) -> tuple[str, str, list[int], tuple[str, ...]]:
    """The model's first input (name, datatype, shape) and its output names, from ModelMetadata."""
    import tritonclient.grpc as g

    client = g.InferenceServerClient(url)
    try:
        meta = client.get_model_metadata(model)
        first = meta.inputs[0]
        return first.name, first.datatype, [int(d) for d in first.shape], tuple(o.name for o in meta.outputs)
    finally:
        client.close()


def _rows(datatype: str, shape: list[int], rows: int, count: int, seed: int, data: str | None = None,
          name: str | None = None, outputs: tuple[str, ...] = ()) -> list[np.ndarray]:
    """`count` requests of `rows` rows: consecutive rows of `data` (from a seeded start, so
    generator processes send different ones), or random normal ones."""
    from tritonclient.utils import triton_to_np_dtype

    dtype = triton_to_np_dtype(datatype)
    row_shape = [d if d > 0 else 1 for d in shape[1:]]
    rng = np.random.default_rng(seed)
    if data is None:
        return [rng.normal(size=[rows] + row_shape).astype(dtype) for _ in range(count)]
    from bench.data import fit, load_rows

    table = fit(load_rows(data, name, outputs), int(np.prod(row_shape)), dtype, f"input '{name}' {shape}")
    count = max(count, min(4096, len(table) // rows))  # as many distinct requests as the data holds
    start = int(rng.integers(len(table)))
    picks = (start + np.arange(count * rows)) % len(table)
    return [table[picks[i * rows:(i + 1) * rows]].reshape([rows] + row_shape) for i in range(count)]


def own_connection(url: str):
    """An aio client on a TCP connection of its own. gRPC shares one connection between the
    channels of a process that have the same target and arguments (its global subchannel
    pool): without this, `--connections 4 --procs 2` was 2 connections, and with several
    workers they are what the kernel spreads over them."""
    import tritonclient.grpc.aio as aio
    from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE

    return aio.InferenceServerClient(url, channel_args=[
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.use_local_subchannel_pool", 1)])


async def _run_worker(load: Load, share: int, start_at: float, spec) -> dict:
    import tritonclient.grpc.aio as aio

    name, datatype, shape, outputs = spec
    procs = load.procs
    connections = max(1, load.connections // procs + (share < load.connections % procs))
    clients = [own_connection(load.url) for _ in range(connections)]
    pool = _rows(datatype, shape, load.rows, 64, load.seed * 1000 + share, load.data, name, outputs)
    inputs = []
    for array in pool:
        x = aio.InferInput(name, list(array.shape), datatype)
        x.set_data_from_numpy(array)
        inputs.append([x])
    latency, lag = histogram(), histogram()
    errors: dict[str, int] = {}
    # answered_by: seconds from the measured window's start to the last answer of a request
    # sent in it (past the window's end when the server fell behind)
    counts = {"requests": 0, "ok": 0, "done_measured": 0, "answered_by": 0.0}
    stopping = asyncio.Event()  # Ctrl-C: stop sending, report what was measured
    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stopping.set)
    except (NotImplementedError, RuntimeError):
        pass
    # All processes share one wall-clock start; from there each uses its own monotonic clock.
    t0 = time.monotonic() + max(0.0, start_at - time.time())
    measure_from = t0 + load.warmup_s
    end = measure_from + load.duration_s

    cpu: dict[str, tuple[float, float, float]] = {}

    async def watch_cpu() -> None:  # this process's CPU time over the measured window: is the client the limit?
        # thread_time: the event loop's own thread, which saturates at one core (gRPC's threads do not count)
        await asyncio.sleep(max(0.0, measure_from - time.monotonic()))
        cpu["from"] = (time.monotonic(), time.process_time(), time.thread_time())
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        cpu["to"] = (time.monotonic(), time.process_time(), time.thread_time())

    watcher = asyncio.get_running_loop().create_task(watch_cpu())

    def finished(scheduled: float, error: str | None) -> None:
        if scheduled < measure_from:
            return
        counts["requests"] += 1
        if error is None:
            counts["ok"] += 1
            now = time.monotonic()
            latency.record_value(max(1, int((now - scheduled) * 1e6)))
            counts["answered_by"] = max(counts["answered_by"], now - measure_from)
        else:
            errors[error] = errors.get(error, 0) + 1

    async def one(client, request, scheduled: float) -> None:
        try:
            await client.infer(load.model, request, client_timeout=load.timeout_s)
            finished(scheduled, None)
        except Exception as exc:  # InferenceServerException and transport errors
            status = getattr(exc, "status", lambda: None)()
            finished(scheduled, str(status or type(exc).__name__))

    try:
        if load.closed_loop and load.stream:
            callers = max(1, load.concurrency // procs + (share < load.concurrency % procs))
            await asyncio.sleep(max(0.0, t0 - time.monotonic()))
            await _closed_loop_stream(load, callers, clients[0], inputs, end, stopping, finished, errors)
        elif load.closed_loop:
            callers = max(1, load.concurrency // procs + (share < load.concurrency % procs))

            async def caller(k: int) -> None:
                client = clients[k % len(clients)]
                i = k
                while True:
                    now = time.monotonic()
                    if now >= end or stopping.is_set():
                        return
                    await one(client, inputs[i % len(inputs)], now)
                    i += callers

            await asyncio.sleep(max(0.0, t0 - time.monotonic()))
            await asyncio.gather(*(caller(k) for k in range(callers)))
        elif load.stream:
            await _open_loop_stream(load, share, clients[0], inputs, t0, measure_from, end, latency, lag, errors,
                                    counts)
        else:
            schedule = _schedule(load, share, t0)
            in_flight: set[asyncio.Task] = set()
            room = asyncio.Event()
            for i, scheduled in enumerate(schedule):
                delay = scheduled - time.monotonic()
                if delay > 0.0005:
                    await asyncio.sleep(delay)
                if stopping.is_set():
                    break
                while len(in_flight) >= load.max_in_flight:
                    room.clear()
                    await room.wait()
                if scheduled >= measure_from:
                    lag.record_value(max(1, int((time.monotonic() - scheduled) * 1e6)))
                task = asyncio.get_running_loop().create_task(
                    one(clients[i % len(clients)], inputs[i % len(inputs)], scheduled))
                in_flight.add(task)
                task.add_done_callback(lambda t: (in_flight.discard(t), room.set()))
            if in_flight:
                await asyncio.wait(in_flight, timeout=load.timeout_s + 1)
    finally:
        watcher.cancel()
        for client in clients:
            await client.close()
    if "from" in cpu:
        (w0, c0, l0), (w1, c1, l1) = cpu["from"], cpu.get("to", (time.monotonic(), time.process_time(),
                                                                  time.thread_time()))
        counts["cpu"] = (c1 - c0) / max(w1 - w0, 1e-9)
        counts["loop_cpu"] = (l1 - l0) / max(w1 - w0, 1e-9)
    return {"latency": latency.encode(), "lag": lag.encode(), "errors": errors, "interrupted": stopping.is_set(),
            **counts}


def _schedule(load: Load, share: int, t0: float) -> list[float]:
    """This process's share of the open-loop schedule, in monotonic seconds."""
    rate = load.rate / load.procs
    n = int(rate * (load.warmup_s + load.duration_s))
    rng = np.random.default_rng(load.seed * 7919 + share)
    return (t0 + arrival_offsets(rate, n, load.arrival, rng)).tolist()


async def _closed_loop_stream(load, callers, client, inputs, end, stopping, finished, errors):
    """Closed loop over one ModelStreamInfer stream per process: `callers` requests in flight on
    it, the next one sent as an answer comes back."""
    slots = asyncio.Semaphore(callers)
    sent: dict[str, float] = {}

    async def requests():
        i = 0
        while time.monotonic() < end and not stopping.is_set():
            await slots.acquire()
            rid = str(i)
            sent[rid] = time.monotonic()
            yield {"model_name": load.model, "inputs": inputs[i % len(inputs)], "request_id": rid}
            i += 1

    try:
        async for result, error in client.stream_infer(inputs_iterator=requests(), stream_timeout=load.duration_s * 4
                                                       + load.warmup_s + load.timeout_s):
            rid = result.get_response().id if error is None else None
            scheduled = sent.pop(rid, None) if rid is not None else None
            slots.release()
            if error is not None:
                finished(time.monotonic(), str(getattr(error, "status", lambda: None)() or "stream_error"))
            elif scheduled is not None:
                finished(scheduled, None)
            if not sent and time.monotonic() >= end:
                break
    except Exception as exc:  # the stream itself failed (warm-up or not): what it had in flight is lost
        key = f"stream failed: {getattr(exc, 'code', lambda: None)() or type(exc).__name__}"
        errors[key] = errors.get(key, 0) + max(1, len(sent))


async def _open_loop_stream(load, share, client, inputs, t0, measure_from, end, latency, lag, errors, counts):
    """Open loop over one ModelStreamInfer stream per process; responses matched by id."""
    schedule = _schedule(load, share, t0)
    pending: dict[str, float] = {}

    async def requests():
        for i, scheduled in enumerate(schedule):
            delay = scheduled - time.monotonic()
            if delay > 0.0005:
                await asyncio.sleep(delay)
            if scheduled >= measure_from:
                lag.record_value(max(1, int((time.monotonic() - scheduled) * 1e6)))
            rid = str(i)
            pending[rid] = scheduled
            yield {"model_name": load.model, "inputs": inputs[i % len(inputs)], "request_id": rid}

    async for result, error in client.stream_infer(inputs_iterator=requests(), stream_timeout=load.duration_s * 4
                                                   + load.warmup_s + load.timeout_s):
        if error is not None:
            rid = None
            status = str(getattr(error, "status", lambda: None)() or "stream_error")
        else:
            rid = result.get_response().id
            status = None
        scheduled = pending.pop(rid, None) if rid is not None else None
        if scheduled is not None and scheduled >= measure_from:
            counts["requests"] += 1
            counts["ok"] += 1
            now = time.monotonic()
            latency.record_value(max(1, int((now - scheduled) * 1e6)))
            counts["answered_by"] = max(counts["answered_by"], now - measure_from)
        elif status is not None and time.monotonic() >= measure_from:
            counts["requests"] += 1
            errors[status] = errors.get(status, 0) + 1
        if not pending and len(schedule) and time.monotonic() > schedule[-1]:
            break


def _worker_entry(load: Load, share: int, start_at: float, spec, queue) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        queue.put(asyncio.run(_run_worker(load, share, start_at, spec)))
    except KeyboardInterrupt:  # before the loop could take the signal over
        queue.put({"interrupted": True})
    except Exception as exc:  # report, do not hang the parent
        queue.put({"failed": repr(exc)})


def server_name(url: str) -> str:
    import tritonclient.grpc as g

    client = g.InferenceServerClient(url)
    try:
        meta = client.get_server_metadata()
        return f"{meta.name} {meta.version}".strip()
    except Exception as exc:  # the report still gets written
        return f"(server metadata unavailable: {exc})"
    finally:
        client.close()


def run(load: Load, window=None) -> Result:
    """Run one load level; returns merged percentiles (microseconds) and counts. `window(t0,
    t1)`, where given, is told the measured window (epoch seconds) before the load starts: what
    watches the server (bench/serverwatch.py) samples it there."""
    spec = input_spec(load.url, load.model)
    if load.data is not None:  # a file that does not fit stops here, not in every worker
        distinct = len(_rows(spec[1], spec[2], load.rows, 1, 0, load.data, spec[0], spec[3])) * load.rows
        sent = load.rate * (load.warmup_s + load.duration_s) * load.rows
        if not load.closed_loop and sent > distinct:
            print(f"note: --data gives {distinct:,} distinct rows and this run sends about {sent:,.0f}: rows are "
                  "sent again, and a drift monitor on the model may see the repeats as drift (a window of repeated "
                  "rows is narrower than the reference)", file=sys.stderr)
    context = mp.get_context("spawn")
    queue = context.Queue()
    start_at = time.time() + 1.0 + 0.3 * load.procs  # time for the workers to start and connect
    measured = (start_at + load.warmup_s, start_at + load.warmup_s + load.duration_s)
    if window is not None:
        window(*measured)
    procs = [context.Process(target=_worker_entry, args=(load, k, start_at, spec, queue), daemon=True)
             for k in range(load.procs)]
    for p in procs:
        p.start()
    parts, interrupted = [], False
    deadline = time.monotonic() + load.warmup_s + load.duration_s + load.timeout_s + 60
    while len(parts) < len(procs):
        try:
            parts.append(queue.get(timeout=0.5))
        except KeyboardInterrupt:  # tell the workers (a terminal's Ctrl-C reaches them anyway): they stop
            interrupted = True      # sending and report what they measured
            for p in procs:
                if p.is_alive() and p.pid:
                    os.kill(p.pid, signal.SIGINT)
            deadline = min(deadline, time.monotonic() + load.timeout_s + 5)
        except Exception:  # queue.Empty: check that the workers are still there
            if time.monotonic() > deadline or not any(p.is_alive() for p in procs) and queue.empty():
                break
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.terminate()
    if len(parts) < len(procs) and not interrupted:
        raise RuntimeError(f"{len(procs) - len(parts)} load worker(s) ended without a result")
    failed = [p["failed"] for p in parts if "failed" in p]
    if failed:
        raise RuntimeError(f"load worker failed: {failed[0]}")
    latency, lag = histogram(), histogram()
    result = Result(load=asdict(load), server=server_name(load.url), interrupted=interrupted or any(
        p.get("interrupted") for p in parts), window=tuple(round(t, 3) for t in measured))
    for part in parts:
        if "latency" not in part:
            continue
        latency.add(HdrHistogram.decode(part["latency"]))
        lag.add(HdrHistogram.decode(part["lag"]))
        result.requests += part["requests"]
        result.ok += part["ok"]
        result.client_cpu = round(max(result.client_cpu, part.get("cpu", 0.0)), 3)
        result.client_cpu_total = round(result.client_cpu_total + part.get("cpu", 0.0), 3)
        result.client_loop_cpu = round(max(result.client_loop_cpu, part.get("loop_cpu", 0.0)), 3)
        for code, count in part["errors"].items():
            result.errors[code] = result.errors.get(code, 0) + count
    # answers per second over the time they took: the window, or longer when the last request
    # sent in it was answered after it ended (a server behind its offered rate answers the
    # window's requests over more than the window: counting them over the window alone would
    # report the offered rate as achieved)
    measured_s = max([load.duration_s] + [p.get("answered_by", 0.0) for p in parts])
    if result.interrupted:  # the window ended early: estimate it from the answers' rate
        measured_s = max(1e-3, min(load.duration_s, time.time() - start_at - load.warmup_s))
    result.achieved_rps = round(result.ok / measured_s, 1)
    result.latency_us = describe(latency)
    result.lag_us = describe(lag)
    encoded = latency.encode()
    result.histogram = encoded.decode() if isinstance(encoded, bytes) else encoded
    return result
