"""ONNX models the tests build with onnx.helper (the demo models come from engine.harness.models)."""

from __future__ import annotations

from pathlib import Path

from onnx import TensorProto, helper

from engine.harness.models import save_graph

# Every numeric element type ONNX models use, as OIP datatype -> ONNX element type.
DTYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
}
WIDTH = 3



def identity_all_dtypes(path: Path) -> Path:
    """Inputs in_<DT> [N, 3] for every dtype; outputs out_<DT> = in_<DT>, plus
    `doubled` = in_FP32 + in_FP32 (a computed output)."""
    inputs, outputs, nodes = [], [], []
    for name, elem in DTYPES.items():
        inputs.append(helper.make_tensor_value_info(f"in_{name}", elem, ["N", WIDTH]))
        outputs.append(helper.make_tensor_value_info(f"out_{name}", elem, ["N", WIDTH]))
        nodes.append(helper.make_node("Identity", [f"in_{name}"], [f"out_{name}"]))
    nodes.append(helper.make_node("Add", ["in_FP32", "in_FP32"], ["doubled"]))
    outputs.append(helper.make_tensor_value_info("doubled", TensorProto.FLOAT, ["N", WIDTH]))
    return save_graph(helper.make_graph(nodes, "identity_all_dtypes", inputs, outputs), path)


def gather_model(path: Path) -> Path:
    """out[i] = data[i, idx[i]]: an index out of range makes onnxruntime fail at run time,
    on a request that passes every schema check."""
    data = helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 4])
    idx = helper.make_tensor_value_info("idx", TensorProto.INT64, ["N", 1])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 1])
    node = helper.make_node("GatherElements", ["data", "idx"], ["out"], axis=1)
    return save_graph(helper.make_graph([node], "gather", [data, idx], [out]), path)


def failing_model(path: Path) -> Path:
    """Reshapes x FP32[N, 4] to [5]: onnxruntime loads it and fails every run."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [5])
    shape = helper.make_tensor("shape", TensorProto.INT64, [1], [5])
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"])], "failing", [x], [y],
                              initializer=[shape])
    return save_graph(graph, path)


def fixed_batch_model(path: Path) -> Path:
    """Input with a fixed first dimension: scorewire must refuse to serve it."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    return save_graph(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "fixed", [x], [y]), path)


def _classifier_io(features: int = 32):
    """The demo classifiers' interface: float_input [N, features] -> label [N], probabilities [N, 2]."""
    x = helper.make_tensor_value_info("float_input", TensorProto.FLOAT, ["N", features])
    label = helper.make_tensor_value_info("label", TensorProto.INT64, ["N"])
    proba = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])
    return x, label, proba


def _two_columns(source: str, out: str) -> list:
    """out = source[:, 0:2]"""
    return [helper.make_node("Slice", [source, "c_start", "c_end", "c_axis"], [out])]


_SLICE_CONSTANTS = [helper.make_tensor("c_start", TensorProto.INT64, [1], [0]),
                    helper.make_tensor("c_end", TensorProto.INT64, [1], [2]),
                    helper.make_tensor("c_axis", TensorProto.INT64, [1], [1])]


def raising_classifier(path: Path) -> Path:
    """The demo classifiers' interface, but every run fails (a Reshape no input fits)."""
    x, label, proba = _classifier_io()
    nodes = [helper.make_node("Reshape", ["float_input", "shape"], ["r"]),
             *_two_columns("r", "probabilities"),
             helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0)]
    init = [helper.make_tensor("shape", TensorProto.INT64, [2], [3, 5]), *_SLICE_CONSTANTS]
    return save_graph(helper.make_graph(nodes, "raising", [x], [label, proba], init), path)


def hanging_classifier(path: Path) -> Path:
    """The demo classifiers' interface, but a run never ends (a Loop of 10^15 steps) unless
    onnxruntime's terminate flag stops it."""
    x, label, proba = _classifier_io()
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["acc_in", "zero"], ["acc_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, None)],
        [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])])
    nodes = [*_two_columns("float_input", "start"),
             helper.make_node("Loop", ["trips", "go", "start"], ["looped"], body=body),
             helper.make_node("Sigmoid", ["looped"], ["probabilities"]),
             helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0)]
    init = [helper.make_tensor("trips", TensorProto.INT64, [], [10**15]),
            helper.make_tensor("go", TensorProto.BOOL, [], [True]), *_SLICE_CONSTANTS]
    return save_graph(helper.make_graph(nodes, "hanging", [x], [label, proba], init), path)


def one_row_classifier(path: Path) -> Path:
    """The demo classifiers' interface, but it returns one row whatever the batch (wrong shape)."""
    x, label, proba = _classifier_io()
    nodes = [*_two_columns("float_input", "two"),
             helper.make_node("ReduceMean", ["two"], ["mean"], axes=[0], keepdims=1),
             helper.make_node("Sigmoid", ["mean"], ["probabilities"]),
             helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0)]
    return save_graph(helper.make_graph(nodes, "one_row", [x], [label, proba], list(_SLICE_CONSTANTS)), path)
