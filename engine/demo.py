"""`scorewire demo`: two tabular models, a config, a server, traffic, and what to try next."""

from __future__ import annotations

import shutil
import textwrap
import time
from pathlib import Path

import numpy as np

from engine.harness.config import COMMENT, Config, model_table, route_table, server_table, stream_table
from engine.harness.models import (HELD_OUT_ROWS, N_FEATURES, build_models, build_wide_mlp, demo_split, write_labelled_reference,
                                   write_reference)
from engine.harness.server import start_server

DEMO_MODELS = ("mlp", "gbt")
BATCHING = {"max_batch_size": 64, "max_queue_delay_us": 500, "queue_capacity": 4096}


def demo_config(grpc_port: int = 8001, metrics_port: int = 8002, http_port: int = 8000) -> Config:
    """The config `scorewire demo --prepare-only` writes (the ports the README's snippets use)."""
    monitor = {"features": [f"f{i}" for i in range(N_FEATURES)], "reference": "ref.parquet",
               "windows": [1000, 2000], "every": 250}
    why_monitor = ("monitor: drift of the 32 inputs against the training rows (ref.parquet); windows: the small\n"
                   "one sees strong drifts soon, the large one weaker ones (the README's \"Which windows\")")
    wide = {"max_batch_size": 256, "max_queue_delay_us": 1000, "queue_capacity": 8192}
    return Config(
        server_table(grpc_port=grpc_port, metrics_port=metrics_port, http_port=http_port),
        [model_table("mlp", "models/mlp.onnx", version="1", batching=BATCHING, monitor=monitor, comment=why_monitor),
         model_table("gbt", "models/gbt.onnx", version="1", batching=BATCHING),
         model_table("wide", "models/wide.onnx", version="1", batching=wide,
                     comment="4.75M parameters: where a GPU matters (IO binding on CUDA)")],
        comment="scorewire demo config: written by `scorewire demo`. Every key: configs/example.toml.")


REFERENCE_ROWS = slice(0, 400)  # held-out rows: the performance references' (the rest are labelled traffic)
PERFORMANCE = {"task": "binary", "score": "probabilities:1", "window": 500}


def demo_run_config(bootstrap: str) -> Config:
    """The demo's own run: free ports (8001 may be taken), the challenger of 'mlp' with the
    scoring log and drift events, labels joined live against both versions, and a Kafka stream
    on `bootstrap`, a broker that lives only while the demo runs."""
    config = demo_config(0, 0, 0)
    for m in config.models:
        if m["name"] == "mlp":
            m["performance"] = {**PERFORMANCE, "reference": "ref-labelled-v1.parquet"}
    return config.add(
        models=[model_table("mlp", "models/mlp-v2.onnx", version="2", batching={"max_batch_size": 64},
                            performance={**PERFORMANCE, "reference": "ref-labelled-v2.parquet"},
                            comment="written by the demo: a wider MLP trained on fewer rows shadows version 1")],
        routes=[route_table("mlp", "1", challengers=["2"])],
        scorelog={"dir": "scorelog", "max_file_age_s": 5},
        monitoring={"events_dir": "events",
                    COMMENT: "drift raises, clears and every evaluation, for `scorewire report`"},
        streams=[stream_table("mlp", bootstrap, "events", "scores", "scores-dlq", group_id="scorewire-demo",
                              # the built-in broker's coordinator holds each rebalance for a session
                              # timeout (45 s by default): the second worker waited that long to join
                              consumer={"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000},
                              comment="written by the demo: librdkafka's built-in broker, gone when it ends; its "
                                      "coordinator holds a rebalance for a session timeout, hence 6 s")],
        comment="The demo's run: its [[streams]] broker lived only while `scorewire demo` ran; serving this\n"
                "file needs a broker at that address (python -m engine.mock_kafka starts one).")


def prepare(directory: Path, grpc_port: int = 8001, metrics_port: int = 8002, http_port: int = 8000) -> Path:
    """Write the demo models and config into `directory`; return the config's path."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = build_models(directory, challenger=True)
    build_wide_mlp(directory / "models" / "wide.onnx")
    write_reference(directory / "ref.parquet", paths["mlp"])
    return demo_config(grpc_port, metrics_port, http_port).write(directory / "scorewire.toml")


def _traffic(url: str, directory: Path) -> None:
    import onnxruntime as ort
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    meta = client.get_server_metadata()
    print(f"\nserver: {meta.name} {meta.version}; live={client.is_server_live()} ready={client.is_server_ready()}")
    _, (x, _) = demo_split()  # held-out rows: the training distribution, so the drift monitor stays quiet
    for name in DEMO_MODELS:
        md = client.get_model_metadata(name)
        ins = ", ".join(f"{t.name} {t.datatype}{list(t.shape)}" for t in md.inputs)
        outs = ", ".join(f"{t.name} {t.datatype}{list(t.shape)}" for t in md.outputs)
        print(f"\nmodel {name}: inputs {ins}; outputs {outs}")
        rows = x[:8]
        inp = grpcclient.InferInput("float_input", list(rows.shape), "FP32")
        inp.set_data_from_numpy(rows)
        result = client.infer(name, [inp], request_id="demo-1")
        probs = result.as_numpy("probabilities")
        local = ort.InferenceSession(str(directory / "models" / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        expect = local.run(["probabilities"], {"float_input": rows})[0]
        print(f"  8 rows scored; P(class 1) = {', '.join(f'{p:.3f}' for p in probs[:, 1])}")
        print(f"  same as in-process onnxruntime: {np.allclose(probs, expect, rtol=1e-6, atol=1e-7)}")

        # One-row requests from 16 concurrent callers for 2 seconds.
        import threading

        count = [0]
        errors = [0]
        stop_at = time.monotonic() + 2.0
        lock = threading.Lock()

        def caller(i: int) -> None:
            c = grpcclient.InferenceServerClient(url)
            one = grpcclient.InferInput("float_input", [1, N_FEATURES], "FP32")
            n = 0
            while time.monotonic() < stop_at:
                one.set_data_from_numpy(x[(i * 97 + n) % len(x)][None, :])
                try:
                    c.infer(name, [one])
                    n += 1
                except Exception:
                    with lock:
                        errors[0] += 1
            with lock:
                count[0] += n
            c.close()

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(f"  16 concurrent one-row callers for 2 s: {count[0] / 2.0:,.0f} requests/s, {errors[0]} errors "
              "(client and server share this machine's cores)")
    bad = grpcclient.InferInput("float_input", [1, 31], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 31), np.float32))
    try:
        client.infer("mlp", [bad])
    except Exception as exc:  # tritonclient raises InferenceServerException
        print(f"\na bad request (31 features instead of 32) is refused clearly:\n  {exc}")
    client.close()


def _labelled(url: str, http: str, directory: Path) -> tuple[Path, list]:
    """The rows held out from training (less the performance references'), sent with request
    ids; their labels go back over REST (four in five now, the rest later: returned) and to a
    file that `scorewire compare --labels` joins by request id."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import tritonclient.grpc as grpcclient

    _, (x, y) = demo_split()
    x, y = x[REFERENCE_ROWS.stop:], y[REFERENCE_ROWS.stop:]
    n = len(x)
    client = grpcclient.InferenceServerClient(url)
    ids, rows, feedback = [], [], []
    for k in range(0, n, 8):
        inp = grpcclient.InferInput("float_input", [8, N_FEATURES], "FP32")
        inp.set_data_from_numpy(x[k:k + 8])
        client.infer("mlp", [inp], request_id=f"labelled-{k}")
        ids += [f"labelled-{k}"] * 8
        rows += list(range(8))
        feedback.append({"id": f"labelled-{k}", "labels": y[k:k + 8].tolist()})
    client.close()
    path = directory / "labels.parquet"
    pq.write_table(pa.table({"request_id": ids, "row": pa.array(rows, pa.int32()), "label": y}), path)
    now, late = [f for i, f in enumerate(feedback) if i % 5], feedback[::5]
    accepted = _feedback(http, now)
    print(f"\nchampion/challenger: sent {n:,} labelled rows to 'mlp' (version 1 answers, version 2 shadows); "
          f"labels in {path}\n  their labels sent back: POST http://{http}/v2/models/mlp/feedback "
          f"{{\"id\": \"labelled-0\", \"labels\": [...]}}: {accepted} requests' labels accepted now, "
          f"{len(late)} held back to come late")
    return path, late


def _feedback(http: str, objects: list) -> int:
    import json
    import urllib.request

    request = urllib.request.Request(f"http://{http}/v2/models/mlp/feedback", data=json.dumps(objects).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["accepted"]


def _performance(http: str, metrics: str, late: list, labelled_rows: int) -> None:
    """The late labels, then what the server says of both versions' performance."""
    from engine.monitor.status import _performance, scrape

    accepted = _feedback(http, late)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the challenger's rows join too, once it has scored them
        pairs = scrape(metrics).get("scorewire_performance_difference_pairs", [])
        if pairs and pairs[0].value >= labelled_rows:
            break
        time.sleep(0.5)
    print(f"\nthe late labels: {accepted} requests' more; `scorewire status --target {metrics}` now shows "
          "performance (realized on the labels, estimated before them, the references' baseline) and the "
          "challenger against the champion on the same labelled rows:")
    for table in _performance(scrape(metrics)):
        print("  " + table.replace("\n", "\n  "))


DRIFTED = (3, 10)  # the features the demo's drift step shifts


def _monitor_caught_up(metrics: str) -> tuple[float, dict, dict]:
    """Once the monitor of 'mlp' has seen every row version 1 scored (it works off the request
    path, a second behind at most; 30 s at most): (rows it saw, per feature its alert, per
    feature and window its statistic and p-value)."""
    from engine.monitor.status import scrape

    deadline = time.monotonic() + 30
    while True:
        families = scrape(metrics)
        scored = sum(s.value for s in families["scorewire_rows"]
                     if s.name == "scorewire_rows_total" and s.labels == {"model": "mlp", "version": "1"})
        seen = sum(s.value for s in families["scorewire_drift_events_observed"] if s.labels["model"] == "mlp")
        if seen >= scored or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    drift, windows = {}, {}
    for sample in families["scorewire_drift_alert"]:
        if sample.labels["model"] == "mlp":
            drift[sample.labels["feature"]] = sample.value
    for name in ("statistic", "pvalue"):
        for sample in families[f"scorewire_drift_{name}"]:
            if sample.labels["model"] == "mlp":
                windows.setdefault(sample.labels["feature"], {}).setdefault(int(sample.labels["window"]), {})[name] = \
                    sample.value
    return seen, drift, windows


def _alerting(drift: dict) -> list[str]:
    """The features whose drift alert is raised, in feature order."""
    return sorted((f for f, alert in drift.items() if alert), key=lambda f: int(f[1:]))


def _drift_cleared(metrics: str) -> None:
    """After the Kafka step's rows of the training distribution: the drift alerts' state."""
    _, drift, _ = _monitor_caught_up(metrics)
    alerting = _alerting(drift)
    if alerting:
        print(f"  drift: still raised on {', '.join(alerting)} after those events")
    else:
        print(f"  drift: the alerts on f{DRIFTED[0]} and f{DRIFTED[1]} cleared once the events (the training "
              "distribution) filled the windows (the clears are in the events file)")


def _drift(url: str, metrics: str) -> None:
    """The held-out rows twice over with features f3 and f10 moved by +2: the monitor on
    'mlp' (32 features, windows 1,000 and 2,000, every 250) raises alerts on those two and no others.
    Waits until the monitor has seen every row 'mlp' scored, then prints its table."""
    import tritonclient.grpc as grpcclient

    _, (held_out, _) = demo_split()
    x = np.concatenate([held_out] * 2)
    x[:, list(DRIFTED)] += 2.0
    client = grpcclient.InferenceServerClient(url)
    for k in range(0, len(x), 50):
        inp = grpcclient.InferInput("float_input", [len(x[k:k + 50]), N_FEATURES], "FP32")
        inp.set_data_from_numpy(x[k:k + 50])
        client.infer("mlp", [inp])
    client.close()
    seen, drift, windows = _monitor_caught_up(metrics)
    alerting = _alerting(drift)
    print(f"\ndrift: sent {len(x):,} rows to 'mlp' with f{DRIFTED[0]} and f{DRIFTED[1]} moved by +2; its monitor "
          f"(32 features vs the training rows, windows 1,000 and 2,000, every 250) saw {seen:,.0f} rows")
    for f in alerting:
        print(f"  DRIFT {f:4} " + "; ".join(f"window {w:,}: KS D = {v['statistic']:.3f}, p = {v['pvalue']:.2g}"
                                        for w, v in sorted(windows.get(f, {}).items()) if "pvalue" in v))
    print(f"  ok on the other {len(drift) - len(alerting)} features   (scorewire status --target {metrics})")


def _compare(directory: Path, labels: Path) -> None:
    from engine.scorelog.compare import compare, render

    print(f"\nscorewire compare --log {directory / 'scorelog'} --model mlp --labels {labels}")
    print("  " + render(compare(directory / "scorelog", "mlp", labels)).replace("\n", "\n  "))


def _kafka(bootstrap: str) -> None:
    import orjson
    from confluent_kafka import Consumer, Producer

    # Rows of the training distribution, each sent once: the drift alerts clear. Not the
    # held-out rows replayed (they are 2,000): a window of repeated rows is narrower than the
    # reference, and its monitor raised drift on a feature nothing moved.
    (train, _), (held_out, _) = demo_split()
    x = np.random.default_rng(7).permutation(np.concatenate([held_out, train]))
    n = len(x)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    option = orjson.OPT_SERIALIZE_NUMPY
    for i in range(n):
        producer.produce("events", orjson.dumps({"id": f"ev-{i}", "float_input": x[i]}, option=option), b"user-%d" % (i % 500))
        if i == n // 2:
            producer.produce("events", b'{"id": "broken", "float_input": [1, 2, 3]}', b"user-x")
            producer.produce("events", b"not json at all", b"user-y")
    producer.flush(30)
    print(f"\nKafka: produced {n:,} JSON events (+2 malformed) to topic 'events' on librdkafka's built-in broker "
          f"({bootstrap})")
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "demo-reader", "auto.offset.reset": "earliest"})
    consumer.subscribe(["scores", "scores-dlq"])
    results, dead = [], []
    start = time.monotonic()
    while len(results) + len(dead) < n + 2 and time.monotonic() - start < 60:
        for m in consumer.consume(5000, 0.2):
            if m.error() is None:
                (dead if m.topic() == "scores-dlq" else results).append(m)
    seconds = time.monotonic() - start
    consumer.close()
    print(f"  {len(results):,} results on 'scores' and {len(dead)} dead letters on 'scores-dlq' in {seconds:.1f} s")
    if results:
        print(f"  a result (key {results[0].key().decode()}): {results[0].value().decode()}")
    for m in dead:
        headers = dict(m.headers() or [])
        print(f"  dead letter {m.value()[:40]!r}: {headers.get('scorewire.error', b'').decode()} "
              f"(from {headers.get('scorewire.source', b'').decode()})")


def run(directory: Path, prepare_only: bool) -> int:
    directory = directory.resolve()
    print(f"scorewire demo: building two tabular models (MLP, gradient-boosted trees; 32 features) and a wide "
          f"MLP (4.75M parameters, for GPUs) in {directory}")
    config = prepare(directory)  # the ports the README's snippets use
    for version, name in (("1", "mlp"), ("2", "mlp-v2")):
        write_labelled_reference(directory / f"ref-labelled-v{version}.parquet", directory / "models" / f"{name}.onnx",
                                 REFERENCE_ROWS)
    print(f"wrote {config} (gRPC on 127.0.0.1:8001, HTTP on 8000, metrics on 8002) and "
          f"{directory / 'models'}/{{mlp,mlp-v2,gbt,wide}}.onnx")
    if prepare_only:
        return 0
    from engine.mock_kafka import MockCluster

    cluster = MockCluster()
    for topic in ("events", "scores", "scores-dlq"):
        cluster.create_topic(topic, 8)
    kafka_config = demo_run_config(cluster.bootstrap).write(directory / "scorewire-kafka.toml")
    shutil.rmtree(directory / "scorelog", ignore_errors=True)
    shutil.rmtree(directory / "events", ignore_errors=True)
    print("starting: scorewire serve --config", kafka_config, "(gRPC, a challenger of 'mlp' with the Parquet "
          "scoring log, and a Kafka stream: events -> scores)")
    served = start_server(kafka_config, log_level="WARNING")
    labels = None
    try:
        _traffic(served.url, directory)
        labels, late = _labelled(served.url, served.http_url, directory)
        _drift(served.url, f"{served.host}:{served.metrics_port}")
        _kafka(cluster.bootstrap)
        _drift_cleared(f"{served.host}:{served.metrics_port}")
        _performance(served.http_url, f"{served.host}:{served.metrics_port}", late,
                     HELD_OUT_ROWS - REFERENCE_ROWS.stop)
    finally:
        summary = served.stop_and_read(timeout_s=60)
        print(f"\nserver drained and exited with code {served.proc.returncode} after SIGTERM")
        for line in summary.splitlines():
            if "challenger" in line or "scoring log" in line or "monitor:" in line:
                print(f"  {line}")
        cluster.close()
    if labels is not None:
        _compare(directory, labels)
    print(textwrap.dedent(f"""
        what to try next:
          scorewire serve --config {config}      # gRPC 127.0.0.1:8001, metrics 8002
          # then, from Python:
          import numpy as np, tritonclient.grpc as g
          c = g.InferenceServerClient("127.0.0.1:8001")
          i = g.InferInput("float_input", [4, 32], "FP32"); i.set_data_from_numpy(np.random.rand(4, 32).astype("float32"))
          print(c.infer("gbt", [i]).as_numpy("probabilities"))
          # metrics: curl http://127.0.0.1:8002/metrics, or: scorewire status --target 127.0.0.1:8002
          # Kafka: python -m engine.mock_kafka --topic events:8 --topic scores:8 --topic scores-dlq:8
          #   prints a bootstrap address; add a [[streams]] table like {kafka_config}'s with it
          #   (that file's broker lived only while the demo ran) and serve
          # a report (drift over time, the windows at the alerts, performance per version, latency, the comparison):
          #   scorewire report --log {directory}/scorelog --events {directory}/events --out report.html
          # config reference: configs/example.toml
          # the scoring log: DuckDB, SELECT role, version, count(*) FROM
          #   read_parquet('{directory}/scorelog/**/*.parquet', hive_partitioning = 1) GROUP BY ALL
          # benchmarks: python -m bench.grpc_bench; python -m bench.kafka_bench; python -m bench.monitor_bench;
          #   python -m bench.shadow_bench
        """))
    return 0
