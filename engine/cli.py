"""The `scorewire` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

DESCRIPTION = """\
scorewire: score ONNX models over the Open Inference Protocol (KServe v2 gRPC), with dynamic
batching. Any OIP client (e.g. tritonclient.grpc) works unchanged."""


class _StdoutOrStderr:
    """A server's stdout that may close under it (`scorewire serve | head`, a log shipper
    that exits): the line that finds the pipe gone, and every line after it, go to stderr
    instead, and the server goes on serving (a failed print once broke its start-up and left
    it unready). fd 1 then points at /dev/null, so that nothing else writing there fails."""

    def __init__(self, out) -> None:
        self._out = out

    def write(self, text: str) -> int:
        try:
            return self._out.write(text)
        except BrokenPipeError:
            return self._to_stderr(text)

    def flush(self) -> None:
        try:
            self._out.flush()
        except BrokenPipeError:
            self._to_stderr("")

    def _to_stderr(self, text: str) -> int:
        if self._out is not sys.stderr:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.close(devnull)
            self._out = sys.stderr
            sys.stderr.write("scorewire: stdout was closed; its lines go to stderr from now on\n")
        return self._out.write(text)

    def __getattr__(self, name: str):
        return getattr(self._out, name)


def _serve(args: argparse.Namespace) -> int:
    sys.stdout = _StdoutOrStderr(sys.stdout)
    if args.ready_file is None:
        return _serve_settings(args)
    from engine.ready import remove

    if not args.ready_file.parent.is_dir():
        print(f"scorewire: --ready-file {args.ready_file}: there is no folder {args.ready_file.parent}", file=sys.stderr)
        return 2
    remove(args.ready_file)  # a stale one, from a server killed before it could remove its own
    try:
        return _serve_settings(args)
    finally:
        remove(args.ready_file)


def _serve_settings(args: argparse.Namespace) -> int:
    from engine.settings import SettingsError, load_settings

    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        print(f"scorewire: config error:\n{exc}", file=sys.stderr)
        return 2
    workers = settings.server.worker_count()
    if workers > 1:
        from engine.processes.supervisor import supervise

        return supervise(settings, args.config, workers, args.log_level, args.ready_file)
    from engine.processes.child import fast_event_loop, lean

    lean()  # before the server's imports, as in each process of a supervised server
    from engine.app import serve
    from engine.errors import startup_error

    try:
        fast_event_loop()
        asyncio.run(serve(settings, args.config, ready_file=args.ready_file))
    except Exception as exc:
        message = startup_error(exc)
        if message is None:
            raise
        if args.log_level == "DEBUG":
            logging.getLogger("scorewire").exception("the traceback, at --log-level DEBUG")
        print(f"scorewire: {message}", file=sys.stderr)
        return 2
    return 0


def _demo(args: argparse.Namespace) -> int:
    from engine.demo import run

    return run(Path(args.dir), args.prepare_only)


def _reference(args: argparse.Namespace) -> int:
    from engine.monitor.reference import make_reference

    split = lambda text: [t.strip() for t in text.split(",") if t.strip()] if text else None  # noqa: E731
    rows = make_reference(Path(args.source), Path(args.out), args.sample, args.seed,
                          Path(args.model) if args.model else None, split(args.outputs), args.input, split(args.features),
                          args.label)
    print(f"wrote {rows} rows to {args.out}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from engine.monitor.status import status

    print(status(args.target, timeout_s=args.timeout))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from engine.scorelog.compare import main as compare_main

    return compare_main(args)


def _rollout(args: argparse.Namespace) -> int:
    import json
    import time

    from engine.errors import UsageError
    from engine.rollout import state
    from engine.settings import SettingsError, load_settings

    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        raise UsageError(f"config error: {exc}") from None
    routes = [r for r in settings.routes if r.rollout is not None and (args.model is None or r.model == args.model)]
    if len(routes) != 1:
        names = [r.model for r in settings.routes if r.rollout is not None]
        raise UsageError(f"--model: name one of the models with a rollout in {args.config}: {names}" if names
                         else f"{args.config} has no [routes.rollout]")
    route = routes[0]
    before = state.read(route)
    if args.action != "show":
        state.give_command(route, args.action)
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline and state.command_file(route).exists():
            time.sleep(0.1)
        if state.command_file(route).exists():
            raise UsageError(f"no server took the command within {args.timeout:g} s (is one serving {args.config}?); "
                             f"it waits in {state.command_file(route)}")
    now = state.read(route)
    if now is None:
        print(f"rollout of {route.model}:{route.rollout.candidate}: no state yet in {route.rollout.state_file} "
              "(no server has started it)")
        return 0
    print(json.dumps({"model": now.model, "champion": now.champion, "candidate": now.candidate, "state": now.state,
                      "step": now.step, "weight": now.weight, "reason": now.reason}, indent=2))
    if args.action != "show" and now == before:
        print(f"(the rollout did not change: {args.action} does nothing to a rollout that is {now.state})")
    return 0


def _audit(args: argparse.Namespace) -> int:
    from engine.audit import story

    print(story(args.log, args.events, args.id, args.labels))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from engine.scorelog.evaluate import main as evaluate_main

    return evaluate_main(args)


def _report(args: argparse.Namespace) -> int:
    from engine.report import main as report_main

    return report_main(args)


def _bench(argv: list[str]) -> int:
    """`python -m bench ARGV` in this process's place: the benches are a program of their own,
    which the engine never imports."""
    os.execv(sys.executable, [sys.executable, "-m", "bench", *argv])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scorewire", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="log level of the server log on stderr (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="serve the models of a TOML config over gRPC until SIGTERM",
                           description="Load the models of a config, warm them up, serve the Open Inference "
                           "Protocol over gRPC (plus grpc.health.v1) and Prometheus /metrics. Prints the ports "
                           "and 'ready' on stdout. SIGTERM or Ctrl-C: stop accepting, finish in-flight "
                           "requests, exit 0.")
    serve.add_argument("--config", required=True, type=Path, help="TOML config (see configs/example.toml)")
    serve.add_argument("--ready-file", type=Path, metavar="PATH",
                       help="once serving, write PATH (JSON, atomically): the server's pid and the gRPC, HTTP and "
                       "metrics ports it bound; removed when it exits")
    serve.set_defaults(func=_serve)

    demo = sub.add_parser("demo", help="build two demo models and a config, serve them, send traffic",
                          description="Train a scikit-learn MLP and gradient-boosted trees on 32 synthetic "
                          "features, export them to ONNX, write a config, start `scorewire serve`, send "
                          "traffic with tritonclient, and print what happened and what to try next. Needs "
                          "the `demo` extra (scikit-learn, skl2onnx, tritonclient).")
    demo.add_argument("--dir", default="scorewire-demo", help="folder for the models and config (default ./scorewire-demo)")
    demo.add_argument("--prepare-only", action="store_true", help="only write the models and the config")
    demo.set_defaults(func=_demo)
    reference = sub.add_parser("reference", help="write a drift reference sample from training data",
                               description="Sample rows of training data (uniformly, without replacement, "
                               "seeded) into a reference Parquet file for [models.monitor]. With --model and "
                               "--outputs, the model scores the sampled rows and its outputs are added as the "
                               "columns monitor.outputs needs (prediction drift).")
    reference.add_argument("--from", dest="source", required=True, help="training data (Parquet, or CSV with a header)")
    reference.add_argument("--out", required=True, help="reference file to write (Parquet)")
    reference.add_argument("--sample", type=int, default=10_000, help="rows to keep (default 10,000; all if fewer)")
    reference.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    reference.add_argument("--model", help="ONNX model that scores the sampled rows (with --outputs)")
    reference.add_argument("--outputs", help="output columns to add, as in monitor.outputs: e.g. probabilities:1,label")
    reference.add_argument("--input", help="the model input the features feed (default: its first)")
    reference.add_argument("--label", help="the true label column: kept as `label` and not a feature (a "
                           "[models.performance] reference: with --outputs probabilities:1, say)")
    reference.add_argument("--features", help="feature columns, in the model's order (default: every numeric "
                           "column); the reference keeps only these and the outputs")
    reference.set_defaults(func=_reference)

    stat = sub.add_parser("status", help="drift per feature and latency percentiles of a running server",
                          description="Read a running server's /metrics (its metrics port) and print drift per "
                          "feature and latency percentiles as tables.")
    stat.add_argument("--target", default="127.0.0.1:8002", help="HOST:PORT of the server's metrics endpoint "
                      "([server] metrics_port; default 127.0.0.1:8002, the port a config without one gets)")
    stat.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the server")
    stat.set_defaults(func=_status)

    comp = sub.add_parser("compare", help="champion vs challengers and a split's arms from the Parquet scoring log",
                          description="Pair a model's champion rows with each challenger's by request id and "
                          "row: agreement, output differences, latency per version; with --labels also each one's "
                          "metrics and paired tests (binary and multiclass: McNemar's exact test on accuracy and a "
                          "paired t-test on per-row log-loss; regression: paired t-tests on per-row absolute and "
                          "squared error), and a verdict that says which test favours whom. A split's arms (other "
                          "requests than the champion's) against the champion, unpaired: rows, and with --labels "
                          "each one's metrics, an always-valid interval of the decision metric's difference (safe "
                          "to read at any time), Welch's fixed-horizon t-test beside it, and a verdict.")
    comp.add_argument("--log", required=True, help="the scoring log's folder ([scorelog] dir)")
    comp.add_argument("--model", required=True, help="model name")
    comp.add_argument("--labels", type=Path, help="Parquet or CSV with request_id, the label, and optionally row")
    comp.add_argument("--label-column", default="label", help="label column of --labels (default 'label')")
    comp.add_argument("--task", default="binary", choices=["binary", "multiclass", "regression"],
                      help="binary (default): labels 0/1, the score is P(class 1); multiclass: labels are class "
                      "indices, the score is the probability matrix; regression: the score is the prediction")
    comp.add_argument("--score", metavar="OUTPUT[:COLUMN]", help="the output scored, as [models.performance] score "
                      "or the log's column: binary probabilities:1 (default: the _1 column of a two-column output), "
                      "multiclass probabilities, regression variable (default: the one float output)")
    comp.add_argument("--predicted", help="binary: output column holding the predicted class (default: the one "
                      "integer output, else score > 0.5)")
    comp.add_argument("--metric", choices=["accuracy", "log_loss", "brier", "mae", "rmse"],
                      help="arms: the decision metric, per row (default log_loss; --task regression mae)")
    comp.add_argument("--alpha", type=float, default=0.05, help="arms: the always-valid interval holds at every "
                      "look with probability about 1 - alpha (alpha/2 per side); Welch's test at alpha (default 0.05)")
    comp.add_argument("--tuning-rows", type=int, default=1000, help="arms: labelled rows per side where the "
                      "always-valid interval is narrowest (default 1000)")
    comp.add_argument("--atol", type=float, default=1e-6, help="float outputs agree when |difference| <= atol (default 1e-6; shown in the table)")
    comp.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    comp.set_defaults(func=_compare)

    ro = sub.add_parser("rollout", help="a rollout's state; pause, resume or abort it (the person on call)",
                        description="Show the rollout of a served config ([routes.rollout]), or pause it (the split "
                        "holds, nothing is decided), resume it, or abort it (the candidate gets no more traffic). "
                        "The server's observer takes the command within a second; all workers follow it.")
    ro.add_argument("action", choices=["show", "pause", "resume", "abort"])
    ro.add_argument("--config", required=True, type=Path, help="the config the server serves")
    ro.add_argument("--model", help="the model whose rollout (when the config has several)")
    ro.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the server to take it")
    ro.set_defaults(func=_rollout)

    au = sub.add_parser("audit", help="the whole story of one answer: versions, artifact hashes, inputs, outputs, "
                        "the rollout then, its label", description="Every row the scoring log holds under one request "
                        "id (the answer and the challengers' shadow rows): when, which version and role, the ONNX "
                        "file's and the settings' sha256, inputs and outputs; with --events the version's last load "
                        "before it (the same file?) and the rollout's state then; with --labels its label.")
    au.add_argument("--log", required=True, type=Path, help="the scoring log's folder ([scorelog] dir)")
    au.add_argument("--events", type=Path, help="[monitoring] events_dir (audit and rollout events)")
    au.add_argument("--id", required=True, help="the request id (or a Kafka event's source topic/partition/offset)")
    au.add_argument("--labels", type=Path, help="Parquet or CSV with request_id, label and optionally row")
    au.set_defaults(func=_audit)

    ev = sub.add_parser("evaluate", help="realized performance per version from the scoring log and late labels",
                        description="Join a labels file with the Parquet scoring log by request id and row (events "
                        "scored from Kafka: by their source id or message key) and give, per version and role, the "
                        "labelled rows and the metrics [models.performance] gives live: for labels that came after "
                        "label_ttl_s, or without a server.")
    ev.add_argument("--log", required=True, help="the scoring log's folder ([scorelog] dir)")
    ev.add_argument("--model", required=True, help="model name")
    ev.add_argument("--labels", required=True, type=Path, help="Parquet or CSV with request_id, the label, and "
                    "optionally row (default 0)")
    ev.add_argument("--task", required=True, choices=["binary", "multiclass", "regression"],
                    help="binary: labels 0/1, the score is P(class 1); multiclass: labels are class indices, the "
                    "score is the probability matrix; regression: the score is the prediction")
    ev.add_argument("--score", required=True, metavar="OUTPUT[:COLUMN]", help="as [models.performance] score: "
                    "e.g. probabilities:1 (binary), probabilities (multiclass), variable (regression)")
    ev.add_argument("--label-column", default="label", help="label column of --labels (default 'label')")
    ev.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    ev.set_defaults(func=_evaluate)

    rep = sub.add_parser("report", help="an HTML report: drift over time, windows at alerts, performance, "
                         "guards, conformal coverage, fairness, latency, champion vs challengers", description="One self-contained HTML page with PNG plots from the scoring "
                         "log and the drift events folder ([monitoring] events_dir): each monitored feature's "
                         "statistic over time with its raises and clears, the window against the reference at "
                         "each raise, performance over time, the share of rows each guard flagged, conformal "
                         "coverage against 1 - alpha and set size, disparate impact and parity difference, p99 "
                         "latency over time per version, and `scorewire compare`'s table.")
    rep.add_argument("--log", required=True, help="the scoring log's folder ([scorelog] dir)")
    rep.add_argument("--events", help="the drift events folder ([monitoring] events_dir)")
    rep.add_argument("--model", help="one model (default: every model in the log)")
    rep.add_argument("--labels", help="labels for the comparison (as scorewire compare --labels)")
    rep.add_argument("--out", default="report.html", help="the HTML file to write (default report.html)")
    rep.set_defaults(func=_report)

    bench = sub.add_parser("bench", help="capacity planning: open-loop gRPC or Kafka load, SLO sweep with a report "
                           "(runs python -m bench)", add_help=False)
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=lambda args: _bench(args.rest))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # its own program and parser (bench/cli.py), --help included
        return _bench(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from engine.errors import UsageError

    try:
        return args.func(args)
    except BrokenPipeError:  # `scorewire status | head`: the reader had what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0
    except UsageError as exc:
        if args.log_level == "DEBUG":
            logging.getLogger("scorewire").exception("the traceback, at --log-level DEBUG")
        print(f"scorewire {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
