"""ONNX models the tests build with onnx.helper (the demo models come from engine.demo)."""

from __future__ import annotations

from pathlib import Path

from onnx import TensorProto, helper

from engine.demo import save_graph

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


def fixed_batch_model(path: Path) -> Path:
    """Input with a fixed first dimension: scorewire must refuse to serve it."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    return save_graph(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "fixed", [x], [y]), path)
