"""The demo's ONNX models and data, which the tests and the benches use too: a synthetic
binary classification set on 32 features, an MLP and gradient-boosted trees trained on it
(scikit-learn, exported with skl2onnx), a drift reference from its training rows, and a wide
random MLP where a GPU matters (onnx.helper). Needs the `demo` extra."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

N_FEATURES = 32
TRAIN_ROWS = 4000
HELD_OUT_ROWS = 2000
CHALLENGER_ROWS = 500  # mlp-v2 learns from these training rows only
WIDE_FEATURES, WIDE_HIDDEN, WIDE_CLASSES = 256, 2048, 16


def demo_data(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic binary classification set on 32 float32 features."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=rows, n_features=N_FEATURES, n_informative=12, n_redundant=6, random_state=seed
    )
    return x.astype(np.float32), y


def demo_split(seed: int = 0) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(x, y) of the demo models' training rows and of the rows held out from them: one
    draw, since other `demo_data` seeds or sizes draw other distributions."""
    x, y = demo_data(TRAIN_ROWS + HELD_OUT_ROWS, seed)
    return (x[:TRAIN_ROWS], y[:TRAIN_ROWS]), (x[TRAIN_ROWS:], y[TRAIN_ROWS:])


def build_models(directory: Path, seed: int = 0, challenger: bool = False) -> dict[str, Path]:
    """Train a scikit-learn MLP and gradient-boosted trees and export them with skl2onnx into
    `directory`/models (zipmap off: outputs `label` INT64[-1] and `probabilities` FP32[-1, 2]).
    With `challenger`, also `mlp-v2`: a wider MLP trained on an eighth of the rows, the demo's
    challenger of `mlp` (worse than it on the labels: log loss 0.35 against 0.20 on the
    held-out rows)."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.neural_network import MLPClassifier

    (x, y), _ = demo_split(seed)  # the held-out rows are the demo's traffic
    models = {
        "mlp": MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=200, random_state=seed),
        "gbt": GradientBoostingClassifier(n_estimators=60, max_depth=3, random_state=seed),
    }
    if challenger:
        models["mlp-v2"] = MLPClassifier(hidden_layer_sizes=(128, 64), max_iter=300, random_state=seed + 1)
    subsets = {"mlp-v2": CHALLENGER_ROWS}  # the rest learn from every training row
    out = directory / "models"
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, estimator in models.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MLP convergence chatter
            rows = subsets.get(name, len(x))
            estimator.fit(x[:rows], y[:rows])
        onx = to_onnx(
            estimator,
            initial_types=[("float_input", FloatTensorType([None, N_FEATURES]))],
            options={id(estimator): {"zipmap": False}},
            target_opset=17,
        )
        path = out / f"{name}.onnx"
        path.write_bytes(onx.SerializeToString())
        paths[name] = path
    return paths


def write_reference(path: Path, mlp: Path) -> Path:
    """A drift reference for the mlp: the 32 features of its training rows as f0..f31, and
    the model's P(class 1) on them as "probabilities:1" (configs/example.toml monitors both;
    the demo the features)."""
    import onnxruntime as ort
    import pyarrow as pa
    import pyarrow.parquet as pq

    (x, _), _ = demo_split()
    session = ort.InferenceSession(str(mlp), providers=["CPUExecutionProvider"])
    probabilities = session.run(["probabilities"], {"float_input": x})[0]
    columns = {f"f{i}": x[:, i] for i in range(N_FEATURES)} | {"probabilities:1": probabilities[:, 1]}
    pq.write_table(pa.table(columns), path)
    return path


def write_labelled_reference(path: Path, model: Path, rows: slice) -> Path:
    """A performance reference ([models.performance] reference) for a demo model: its
    P(class 1) as "probabilities:1" and the label, on held-out rows `rows`."""
    import onnxruntime as ort
    import pyarrow as pa
    import pyarrow.parquet as pq

    _, (x, y) = demo_split()
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    p = session.run(["probabilities"], {"float_input": x[rows]})[0][:, 1]
    pq.write_table(pa.table({"probabilities:1": p, "label": y[rows]}), path)
    return path


def build_wide_mlp(path: Path, seed: int = 0) -> Path:
    """A model where a GPU matters: 256 features -> 2048 -> 2048 -> 16 classes (ReLU, softmax),
    4.75M parameters with random weights, built with onnx.helper. Input `features` FP32[-1, 256],
    output `probabilities` FP32[-1, 16]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    sizes = [WIDE_FEATURES, WIDE_HIDDEN, WIDE_HIDDEN, WIDE_CLASSES]
    nodes, weights = [], []
    current = "features"
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        w = (rng.normal(size=(n_in, n_out)) * np.sqrt(2.0 / n_in)).astype(np.float32)
        b = np.zeros(n_out, dtype=np.float32)
        weights += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        out = f"h{i}"
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [out]))
        if i < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [out], [f"{out}r"]))
            out = f"{out}r"
        current = out
    nodes.append(helper.make_node("Softmax", [current], ["probabilities"], axis=-1))
    graph = helper.make_graph(
        nodes, "wide_mlp", [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", WIDE_FEATURES])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", WIDE_CLASSES])], initializer=weights)
    return save_graph(graph, path)


def save_graph(graph, path: Path) -> Path:
    """An onnx.helper graph as a checked model file (opset 17, IR 8, what onnxruntime takes)."""
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
