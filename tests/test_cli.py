from __future__ import annotations

import glob
import subprocess
import sys
from pathlib import Path

import pytest

from engine.settings import load_settings


def scorewire(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True, timeout=300, **kw)


def test_help_explains_every_command():
    out = scorewire("--help").stdout
    for command in ("serve", "demo"):
        assert command in out
        sub = scorewire(command, "--help")
        assert sub.returncode == 0 and "usage: scorewire " + command in sub.stdout
    assert "--prepare-only" in scorewire("demo", "--help").stdout
    assert "SIGTERM" in scorewire("serve", "--help").stdout
    bench = scorewire("bench", "--help")  # runs `python -m bench --help`: the engine does not import it
    assert bench.returncode == 0 and "usage: python -m bench" in bench.stdout and "sweep" in bench.stdout


def test_serve_with_a_bad_config_exits_2_naming_the_field(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[[models]]\nname = "m"\npath = "m.onnx"\nbatch_size = 3\n')
    result = scorewire("serve", "--config", str(config))
    assert result.returncode == 2
    assert "models[0] (name='m').batch_size: unknown key" in result.stderr


def test_serve_with_a_missing_model_exits_2(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[server]\ngrpc_port = 0\nmetrics_port = 0\nhttp_port = 0\n[[models]]\nname = "m"\npath = "m.onnx"\n')
    result = scorewire("serve", "--config", str(config))
    assert result.returncode == 2
    assert "m:1: model file" in result.stderr and "does not exist" in result.stderr
    assert result.stderr.count("does not exist") == 1, result.stderr  # said once, whatever the processes


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A folder holding `scorewire-demo`, made by `scorewire demo --dir scorewire-demo
    --prepare-only` (what configs/example.toml says to run first), once for this module."""
    root = tmp_path_factory.mktemp("prepared")
    result = scorewire("demo", "--dir", str(root / "scorewire-demo"), "--prepare-only")
    assert result.returncode == 0, result.stderr
    return root


def test_demo_prepare_only_writes_models_and_a_valid_config(prepared):
    demo = prepared / "scorewire-demo"
    settings = load_settings(demo / "scorewire.toml")
    assert [m.name for m in settings.models] == ["mlp", "gbt", "wide"]
    assert all(m.path.is_file() for m in settings.models)
    # the mlp's drift monitor: its reference is the training distribution, so the held-out
    # rows the demo sends show no drift (Bonferroni over the 32 features)
    import pyarrow.parquet as pq
    import scipy.stats

    from engine.harness.models import N_FEATURES, demo_split

    monitor = settings.models[0].monitor
    assert monitor is not None and monitor.features == [f"f{i}" for i in range(N_FEATURES)]
    reference = pq.read_table(demo / "ref.parquet")
    _, (held_out, _) = demo_split()
    pvalues = [scipy.stats.ks_2samp(held_out[:, i], reference.column(f"f{i}").to_numpy()).pvalue
               for i in range(N_FEATURES)]
    assert min(pvalues) > 0.001 / N_FEATURES


def test_example_config_runs_after_the_demo_is_prepared(prepared):
    """configs/example.toml says it runs after `scorewire demo --dir scorewire-demo --prepare-only`
    (the `prepared` fixture ran it)."""
    import tomllib

    from engine.harness.config import dumps
    from engine.harness.server import start_server

    (prepared / "configs").mkdir()
    example = tomllib.loads((Path(__file__).resolve().parents[1] / "configs" / "example.toml").read_text())
    example["server"].update(grpc_port=0, metrics_port=0, http_port=0)  # 8000-8002 may be taken here
    (prepared / "configs" / "example.toml").write_text(dumps(example))
    server = start_server(prepared / "configs" / "example.toml", log_level="WARNING")
    server.proc.terminate()
    assert server.proc.wait(60) == 0 and server.grpc_port > 0


def _held_port():
    """A listening socket on a free port (nothing answers on it)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    """The error a user sees: exit 2 and one line on stderr (after the start-up log), no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


def test_a_port_in_use_is_one_line_naming_the_setting(tmp_path, model_dir):
    held = _held_port()
    port = held.getsockname()[1]
    started = {}  # the six servers start at once (each fails alone, on the one port held here)
    try:
        for workers in (1, 2):
            for key in ("grpc_port", "metrics_port", "http_port"):
                ports = {"grpc_port": 0, "metrics_port": 0, "http_port": 0, key: port}
                config = tmp_path / f"c{workers}{key}.toml"
                config.write_text(f'[server]\nhost = "127.0.0.1"\nworkers = {workers}\ngrpc_port = {ports["grpc_port"]}\n'
                                  f'metrics_port = {ports["metrics_port"]}\nhttp_port = {ports["http_port"]}\n'
                                  f'[[models]]\nname = "m"\n'
                                  f'path = "{model_dir / "models" / "gbt.onnx"}"\n')
                args = [sys.executable, "-m", "engine.cli", "serve", "--config", str(config)]
                started[workers, key] = args, subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                               text=True)
        for (workers, key), (args, proc) in started.items():
            stdout, stderr = proc.communicate(timeout=300)
            line = _one_line_error(subprocess.CompletedProcess(args, proc.returncode, stdout, stderr))
            assert f"127.0.0.1:{port}" in line and f"[server] {key}" in line, (workers, key, line)
    finally:
        for _, proc in started.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        held.close()


def test_status_says_what_is_wrong_in_one_line(tmp_path):
    held = _held_port()  # listens, never answers: like a gRPC port to an HTTP/1 client, or a hung server
    free = _held_port()
    free_port = free.getsockname()[1]
    free.close()
    try:
        start = __import__("time").monotonic()
        line = _one_line_error(scorewire("status", "--target", f"127.0.0.1:{free_port}", "--timeout", "2"))
        waited = __import__("time").monotonic() - start
        assert "no server answers" in line and "connection refused" in line and "metrics_port" in line
        assert waited >= 2  # --timeout: a server still starting gets that long
        line = _one_line_error(scorewire("status", "--target", f"127.0.0.1:{held.getsockname()[1]}", "--timeout", "1"))
        assert "no answer" in line
    finally:
        held.close()


def test_status_pointed_at_the_grpc_port_says_so(server):
    line = _one_line_error(scorewire("status", "--target", server.url, "--timeout", "3"))
    assert "gRPC port" in line and "metrics_port" in line


def test_status_into_a_closed_pipe_is_quiet_and_its_target_has_a_default(server):
    """`scorewire status | head`: the reader leaving early is no error; --target defaults to
    the metrics port a config without one gets."""
    target = f"{server.host}:{server.metrics_port}"
    piped = subprocess.run(["bash", "-c", f"{sys.executable} -m engine.cli status --target {target} | true; "
                            "exit ${PIPESTATUS[0]}"], capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0 and "Traceback" not in piped.stderr and "BrokenPipe" not in piped.stderr, piped.stderr
    assert "127.0.0.1:8002" in scorewire("status", "--help").stdout


def test_reference_from_csv_with_the_models_outputs(tmp_path):
    """A CSV file is read (a header row names the columns); --model/--outputs add the columns that
    monitor.outputs needs, computed by scoring the sampled rows; the ZipMap mistake gets its fix."""
    import numpy as np
    import onnxruntime as ort
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    from sklearn.linear_model import LogisticRegression
    from skl2onnx import to_onnx

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    clf = LogisticRegression().fit(x, y)
    (tmp_path / "m.onnx").write_bytes(to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}}).SerializeToString())
    pacsv.write_csv(pa.table({"label": y, **{f"f{i}": x[:, i] for i in range(4)}}), tmp_path / "train.csv")
    result = scorewire("reference", "--from", "train.csv", "--out", "ref.parquet", "--model", "m.onnx",
                       "--outputs", "probabilities:1,label", "--features", "f0,f1,f2,f3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    ref = pq.read_table(tmp_path / "ref.parquet")
    assert ref.column_names == ["f0", "f1", "f2", "f3", "probabilities:1", "label"]
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    features = np.column_stack([ref.column(f"f{i}").to_numpy() for i in range(4)]).astype(np.float32)
    label, probabilities = session.run(["label", "probabilities"], {"X": features})
    np.testing.assert_allclose(ref.column("probabilities:1").to_numpy(), probabilities[:, 1], rtol=1e-6)
    assert (ref.column("label").to_numpy() == label).all()
    # a Parquet reader given a CSV by another name, and a wrong output: one line each
    (tmp_path / "train.txt").write_text((tmp_path / "train.csv").read_text())
    assert "a CSV file needs a .csv or .tsv suffix" in _one_line_error(
        scorewire("reference", "--from", "train.txt", "--out", "r.parquet", cwd=tmp_path))
    assert "the model has no output 'probs'" in _one_line_error(
        scorewire("reference", "--from", "train.csv", "--out", "r.parquet", "--model", "m.onnx", "--outputs",
                  "probs:1", "--features", "f0,f1,f2,f3", cwd=tmp_path))
    # ZipMap left on: the load error says how to convert
    (tmp_path / "z.onnx").write_bytes(to_onnx(clf, x[:1]).SerializeToString())
    config = tmp_path / "z.toml"
    config.write_text('[server]\ngrpc_port = 0\nmetrics_port = 0\nhttp_port = 0\nworkers = 1\n[[models]]\nname = "z"\npath = "z.onnx"\n')
    line = _one_line_error(scorewire("serve", "--config", str(config)))
    assert "seq(map" in line and "'zipmap': False" in line


def test_models_a_new_user_brings_fail_with_what_to_do(tmp_path):
    """String class labels get the integer-labels hint; a corrupt file blames the file, not a
    GPU this machine lacks; a start that fails says its reason alone (no shutdown summary)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from skl2onnx import to_onnx

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    clf = LogisticRegression().fit(x, np.where(x[:, 0] > 0, "yes", "no"))
    (tmp_path / "s.onnx").write_bytes(to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}}).SerializeToString())
    (tmp_path / "bad.onnx").write_bytes(b"not an onnx model" * 10)
    lines = {}
    for name, workers in (("s", 1), ("bad", 2)):
        config = tmp_path / f"{name}.toml"
        config.write_text(f'[server]\ngrpc_port = 0\nmetrics_port = 0\nhttp_port = 0\nworkers = {workers}\n'
                          f'[[models]]\nname = "{name}"\npath = "{name}.onnx"\n')
        result = scorewire("serve", "--config", str(config))
        lines[name] = _one_line_error(result)
        assert "rows observed" not in result.stderr + result.stdout
        if not glob.glob("/dev/nvidia[0-9]*"):
            assert "session on CUDAExecutionProvider failed" not in result.stderr, result.stderr
    assert "tensor(string)" in lines["s"] and "integer labels" in lines["s"]
    assert "cannot load" in lines["bad"] and "bad.onnx" in lines["bad"]


def test_serve_writes_its_ports_to_the_ready_file_and_removes_it_at_exit(tmp_path, model_dir):
    """The ready file (engine/ready.py) names the ports `serve` printed, of one process and of
    several; the server takes it away when it exits. A folder that is not there: exit 2."""
    import json
    import signal
    import time

    from engine.harness.config import Config, model_table, server_table

    for workers in (1, 2):
        config = Config(server_table(workers=workers), [model_table("m", model_dir / "models" / "gbt.onnx")])
        ready = tmp_path / f"ready-{workers}.json"
        proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "--log-level", "WARNING", "serve", "--config",
                                 str(config.write(tmp_path / f"c{workers}.toml")), "--ready-file", str(ready)],
                                stdout=subprocess.PIPE, text=True)
        try:
            lines = []
            for line in proc.stdout:
                lines.append(line.strip())
                if line.strip() == "scorewire: ready":
                    break
            deadline = time.monotonic() + 10
            while not ready.exists() and time.monotonic() < deadline:  # written just after "ready" is printed
                time.sleep(0.01)
            written = json.loads(ready.read_text())
            assert set(written) == {"format", "pid", "grpc_port", "http_port", "metrics_port"}
            assert written["format"] == 1 and written["pid"] == proc.pid
            assert f"scorewire: gRPC listening on 127.0.0.1:{written['grpc_port']}" in lines
            assert f"scorewire: HTTP listening on 127.0.0.1:{written['http_port']}" in lines
            assert f"scorewire: metrics on http://127.0.0.1:{written['metrics_port']}/metrics" in lines
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=60)
        assert proc.returncode == 0 and not ready.exists()
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    line = _one_line_error(scorewire("serve", "--config", str(tmp_path / "c1.toml"), "--ready-file",
                                     str(tmp_path / "nowhere" / "ready.json")))
    assert "--ready-file" in line and "nowhere" in line


def test_reference_keeps_the_true_labels_for_a_performance_reference(tmp_path):
    """`--label y`: the label column is not a feature, is kept as `label`, and the model's own
    `label` output may not overwrite it."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from engine.harness.models import N_FEATURES, build_models

    paths = build_models(tmp_path)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, N_FEATURES)).astype(np.float32)
    data = {f"f{i}": x[:, i] for i in range(N_FEATURES)} | {"y": rng.integers(0, 2, 300)}
    pq.write_table(pa.table(data), tmp_path / "holdout.parquet")
    common = ["--from", str(tmp_path / "holdout.parquet"), "--model", str(paths["mlp"])]
    done = scorewire("reference", *common, "--out", str(tmp_path / "ref.parquet"), "--outputs", "probabilities:1",
                     "--label", "y")
    assert done.returncode == 0, done.stderr
    ref = pq.read_table(tmp_path / "ref.parquet")
    assert ref.column("label").to_pylist() == data["y"].tolist() and "y" not in ref.column_names
    clash = scorewire("reference", *common, "--out", str(tmp_path / "r2.parquet"), "--outputs", "label",
                      "--label", "y")
    assert clash.returncode == 2 and "would overwrite the true labels" in clash.stderr


def test_a_reference_scores_as_the_server_does_to_the_last_bit(tmp_path):
    """A random forest's probabilities summed by several threads differ in the last bit from the
    server's (one thread per session by default): a reference made so drifted at once from
    live traffic of the very same rows (KS D 0.28 on tied values). The reference's outputs are
    the server's session's, bit for bit, one row at a time."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier
    from skl2onnx import to_onnx

    from engine.runtime.session import open_session
    from engine.settings import ModelSettings

    x, y = load_breast_cancer(return_X_y=True)
    x = x.astype(np.float32)
    rf = RandomForestClassifier(n_estimators=100, random_state=0).fit(x[:340], y[:340])
    (tmp_path / "rf.onnx").write_bytes(to_onnx(rf, x[:1], options={id(rf): {"zipmap": False}}).SerializeToString())
    features = [f"c{i}" for i in range(x.shape[1])]
    pq.write_table(pa.table({f: x[340:, i] for i, f in enumerate(features)}), tmp_path / "held-out.parquet")
    result = scorewire("reference", "--from", "held-out.parquet", "--out", "ref.parquet", "--model", "rf.onnx",
                       "--outputs", "probabilities:1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    ref = pq.read_table(tmp_path / "ref.parquet")
    rows = np.column_stack([ref.column(f).to_numpy() for f in features])
    session, _ = open_session(tmp_path / "rf.onnx", ModelSettings(name="rf", path=tmp_path / "rf.onnx"), "rf:1",
                              ["CPUExecutionProvider"])
    live = np.concatenate([session.run(["probabilities"], {"X": rows[i:i + 1]})[0][:, 1] for i in range(len(rows))])
    assert np.array_equal(ref.column("probabilities:1").to_numpy(), live)
