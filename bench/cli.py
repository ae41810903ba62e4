"""`python -m bench grpc | kafka | sweep`: capacity planning against any OIP server or Kafka worker.
(`scorewire bench ...` runs this too.)"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import threading
import time
from pathlib import Path


class _Help(argparse.HelpFormatter):
    """Every option's default in --help (those without one: nothing added)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return f"{text} (default: {action.default})"


def _need(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise SystemExit(f"python -m bench needs {module}: pip install -e '.[bench]'") from None


def _load_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, help="HOST:PORT of an Open Inference Protocol gRPC server")
    p.add_argument("--model", required=True, help="model name")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds (per level for sweep)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds sent first and not measured")
    p.add_argument("--rows-per-request", type=int, default=1, help="rows in each request")
    p.add_argument("--connections", type=int, default=4, help="gRPC channels over all generator processes")
    p.add_argument("--procs", type=int, default=1, help="generator processes")
    p.add_argument("--arrival", choices=["constant", "poisson"], default="constant", help="gaps between sends")
    p.add_argument("--stream", action="store_true", help="ModelStreamInfer (one stream per process)")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, seconds")
    p.add_argument("--metrics", help="HOST:PORT of a scorewire server's metrics port: its own recent "
                   "queue/inference/total percentiles beside the client's, each worker's share of the requests, "
                   "its CPU (its process tree, where it runs on this machine), at least one connection per worker")
    p.add_argument("--server-pid", type=int, help="the server's top process, for its CPU (its whole tree): "
                   "default: the parent of the processes its /metrics names (scorewire_process_pid)")
    p.add_argument("--data", help="rows to replay: Parquet (its numeric columns, e.g. the drift reference) or NPZ; "
                   "default: random normal rows, which a monitored server sees as drift")


def _load(args, **extra):
    from bench.loadgen import Load

    return Load(url=args.target, model=args.model, duration_s=args.duration, warmup_s=args.warmup,
                rows=args.rows_per_request, connections=args.connections, procs=args.procs, arrival=args.arrival,
                stream=args.stream, timeout_s=args.timeout, data=args.data, **extra)


def _tty() -> bool:
    """Progress bars only on a terminal: in a log file they are one long line."""
    return sys.stderr.isatty()


def _tqdm():
    """tqdm, or a stand-in that draws nothing (it is only for terminals anyway)."""
    try:
        from tqdm import tqdm
    except ImportError:
        class tqdm:  # noqa: N801 - tqdm's interface, the part used here
            def __init__(self, *args, **kwargs):
                self.n = 0

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def update(self, n=1):
                self.n += n

            def refresh(self):
                pass

            def close(self):
                pass

            @staticmethod
            def write(text, file=None):
                print(text, file=file or sys.stderr)
    return tqdm


def _with_progress(seconds: float, label: str, work):
    """Run work() on a thread with a time progress bar; Ctrl-C reaches the workers, which stop
    and report what they measured."""
    tqdm = _tqdm()

    box = {}

    def target():
        try:
            box["result"] = work()
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    start = time.monotonic()
    with tqdm(total=round(seconds, 1), desc=label, unit="s", file=sys.stderr, leave=False, disable=not _tty(),
              bar_format="{desc} {bar} {n:.0f}/{total:.0f} s") as bar:
        while thread.is_alive():
            try:
                thread.join(0.25)
            except KeyboardInterrupt:
                bar.write("interrupted: waiting for the workers' results", file=sys.stderr)
                continue
            bar.n = min(seconds, time.monotonic() - start)
            bar.refresh()
    if "error" in box:
        raise box["error"]
    return box["result"]


def _connections(args, watch) -> None:
    """At least one connection per worker: fewer leave a worker idle (the kernel gives each
    connection to one worker), and the run would measure part of the server."""
    if watch.workers and args.connections < watch.workers:
        print(f"note: {watch.workers} workers serve {args.target}: {watch.workers} connections instead of "
              f"--connections {args.connections}", file=sys.stderr)
        args.connections = watch.workers


def _grpc(args) -> int:
    from bench.limits import limit
    from bench.loadgen import run
    from bench.report import run_markdown, side_lines, write_json
    from bench.serverwatch import ServerWatch
    from bench.sweep import tail_notes

    watch = ServerWatch(args.metrics, args.model, args.server_pid)
    _connections(args, watch)
    load = _load(args, rate=args.rate, closed_loop=args.closed_loop, concurrency=args.concurrency)
    result = _with_progress(args.duration + args.warmup + 2, "load", lambda: run(load, window=watch.window))
    entry = {**result.as_dict(), **watch.finish()}
    entry["limit"] = limit(entry)
    print(run_markdown(result, entry.get("server_us", {})))
    for line in side_lines(entry):
        print(line)
    for note in tail_notes(entry):
        print(f"note: {note}")
    if args.json:
        write_json(Path(args.json), entry)
        print(f"wrote {args.json}")
    return 130 if result.interrupted else 0


def _kafka_input(args) -> tuple[str, int, tuple[str, ...]]:
    """The events' input name, width and the model's output names: given, else read from the
    model (--target and --model, as `grpc` does), else the --data file's width, else the demo's."""
    name, width, outputs = args.input_name, args.features, ()
    if args.target:
        if not args.model:
            raise SystemExit("python -m bench kafka: --target needs --model (the model the stream scores)")
        from bench.loadgen import input_spec

        spec_name, _, shape, outputs = input_spec(args.target, args.model)
        name = name or spec_name
        wide = math.prod(d for d in shape[1:] if d > 0)
        width = width or wide
    if width is None and args.data:
        from bench.data import load_rows

        width = load_rows(args.data, name, outputs).shape[1]
    return name or "float_input", width or 32, outputs


def _kafka(args) -> int:
    from bench.kafkaload import KafkaLoad, run_kafka
    from bench.report import write_json

    input_name, features, outputs = _kafka_input(args)
    load = KafkaLoad(bootstrap=args.bootstrap, input_topic=args.input_topic, output_topic=args.output_topic,
                     rate=args.rate, duration_s=args.duration, warmup_s=args.warmup, input_name=input_name,
                     features=features, format=args.format, arrival=args.arrival,
                     dead_letter_topic=args.dead_letter_topic or f"{args.output_topic}-dlq", data=args.data,
                     outputs=outputs)
    print(f"events of input '{input_name}', {features} values each"
          + (f" (read from model '{args.model}' at {args.target})" if args.target else ""))
    result = _with_progress(args.duration + args.warmup, "kafka load", lambda: run_kafka(load))
    lat = result.latency_us
    print(f"{result.results:,} results for {result.produced:,} events produced at {args.rate:,.0f}/s "
          f"({result.achieved_rps:,.0f} results/s measured, {result.dead_lettered:,} dead-lettered, "
          f"{result.missing:,} missing, {result.duplicates:,} duplicated)")
    for why, count in result.dead_letter_reasons.items():
        print(f"  dead-lettered {count:,}: {why}")
    if result.dead_letter_note:
        print(f"  ({result.dead_letter_note}; --dead-letter-topic names it)")
    print("end-to-end latency ms (scheduled produce -> result read): " + ", ".join(
        f"{k} {v / 1000:.2f}" for k, v in lat.items() if k != "mean"))
    print("produce lag ms (the generator's own delay): " + ", ".join(
        f"{k} {v / 1000:.2f}" for k, v in result.lag_us.items() if k in ("p50", "p99", "max")))
    if args.json:
        write_json(Path(args.json), result.as_dict())
        print(f"wrote {args.json}")
    if result.results == 0:
        print("python -m bench kafka: no result came back" + (
            " (every measured event was dead-lettered: see the reasons above; --features and --input-name must "
            "match the model)" if result.dead_lettered else " (is a worker consuming the input topic?)"),
            file=sys.stderr)
        return 1
    return 0


def _sweep(args) -> int:
    _need("matplotlib")
    tqdm = _tqdm()

    from bench.report import side_lines, write_sweep
    from bench.sweep import parse_slo, sweep

    parse_slo(args.slo)  # fail fast on a typo
    if args.metrics:
        from bench.serverwatch import ServerWatch

        _connections(args, ServerWatch(args.metrics, args.model, args.server_pid))
    load = _load(args)
    bar = tqdm(desc="sweep", unit=" level", file=sys.stderr, disable=not _tty())

    def progress(entry):
        if "generator_ceiling_rps" in entry:
            bar.write(f"generator ceiling: {entry['generator_ceiling_rps']:,.0f} requests/s", file=sys.stderr)
            return
        bar.update(1)
        server = entry.get("server_us", {}).get("total", {}).get("p99")
        bar.write(f"{entry['offered_rps']:>10,.0f}/s offered: p99 {entry['latency_us'].get('p99', 0) / 1000:.2f} ms"
                  + (f" (server total p99 {server / 1000:.2f} ms)" if server else "")
                  + f", {'pass' if entry['passed'] else 'FAIL'} ({entry['verdict']})"
                  + ("" if entry.get("server_passed") is None else
                     f"; at the server {'pass' if entry['server_passed'] else 'FAIL'} ({entry['server_verdict']})"),
                  file=sys.stderr)
        for line in side_lines(entry):
            bar.write(f"{'':>12}{line}", file=sys.stderr)
        for note in entry.get("notes", []):
            bar.write(f"{'':>12}note: {note}", file=sys.stderr)

    result = sweep(load, args.slo, args.start, args.max_rate, args.factor, args.refine, not args.no_ceiling,
                   progress, args.metrics, args.server_pid, args.min_rate)
    bar.close()
    command = "python -m bench " + " ".join(shlex.quote(a) for a in args.argv)
    paths = write_sweep(result, Path(args.out), command)
    for i, line in enumerate(result.headline):
        print(line + (" (interrupted)" if result.interrupted and i == 0 else ""))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 130 if result.interrupted else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="kind", required=True)
    g = sub.add_parser("grpc", formatter_class=_Help, help="one load level: open loop at --rate, or --closed-loop --concurrency N")
    _load_args(g)
    g.add_argument("--rate", type=float, default=1000.0, help="offered requests/s (open loop)")
    g.add_argument("--closed-loop", action="store_true", help="N callers back to back instead (hides stalls)")
    g.add_argument("--concurrency", type=int, default=8, help="callers, with --closed-loop")
    g.add_argument("--json", help="write the full result (HDR histogram included)")
    g.set_defaults(func=_grpc)
    k = sub.add_parser("kafka", formatter_class=_Help, help="events at --rate into a topic; end-to-end latency to their results")
    k.add_argument("--bootstrap", required=True, help="the brokers' bootstrap.servers")
    k.add_argument("--input-topic", required=True, help="the topic the worker consumes")
    k.add_argument("--output-topic", required=True, help="the topic it writes results to")
    k.add_argument("--rate", type=float, default=1000.0, help="events produced per second")
    k.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    k.add_argument("--warmup", type=float, default=1.0, help="seconds produced first and not measured")
    k.add_argument("--target", help="HOST:PORT of the serving gRPC port: the input name, its width and the "
                   "outputs are read from --model there, as `grpc` does")
    k.add_argument("--model", help="the model the stream scores (with --target)")
    k.add_argument("--input-name", help="the model input the JSON events carry (default: read with --target, "
                   "else float_input)")
    k.add_argument("--features", type=int, help="values per event, the model input's width (default: read with "
                   "--target, else --data's width, else 32)")
    k.add_argument("--data", help="rows to replay (Parquet numeric columns, less the model's outputs, or NPZ)")
    k.add_argument("--dead-letter-topic", help="read too, to count dead-lettered events and why "
                   "(default: OUTPUT_TOPIC-dlq)")
    k.add_argument("--format", choices=["json", "binary"], default="json", help="the stream's format")
    k.add_argument("--arrival", choices=["constant", "poisson"], default="constant", help="gaps between events")
    k.add_argument("--json", help="write the full result")
    k.set_defaults(func=_kafka)
    s = sub.add_parser("sweep", formatter_class=_Help, help="the highest open-loop rate that meets an SLO; JSON, Markdown and PNG")
    _load_args(s)
    s.add_argument("--slo", required=True, help='e.g. "p99<10ms" or "p99<10ms,p99.9<50ms"')
    s.add_argument("--start", type=float, default=500.0, help="first offered rate")
    s.add_argument("--max-rate", type=float, default=100_000.0, help="highest offered rate tried")
    s.add_argument("--factor", type=float, default=1.5, help="rate growth per level")
    s.add_argument("--refine", type=int, default=3, help="bisection steps after the first failure (at the "
                   "client, and again by the server's own latency)")
    s.add_argument("--min-rate", type=float, help="halving below --start stops here, when no level met the SLO "
                   "(default: --start / 16)")
    s.add_argument("--no-ceiling", action="store_true", help="skip measuring the generator's own ceiling")
    s.add_argument("--out", default="sweep", help="report path without suffix (.json, .md, .png are written)")
    s.set_defaults(func=_sweep)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
