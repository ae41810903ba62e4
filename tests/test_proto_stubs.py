"""The checked-in stubs are what proto/generate.py makes, and the wire format matches the
Triton client's definitions of the same messages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent


def test_stubs_are_current(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "proto" / "generate.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True)
    checked_in = ROOT / "engine" / "ingress" / "_pb"
    generated = sorted(p.name for p in tmp_path.glob("*.py"))
    assert generated, "generate.py wrote nothing"
    for name in generated:
        assert (tmp_path / name).read_text() == (checked_in / name).read_text(), (
            f"engine/ingress/_pb/{name} is stale: run `python proto/generate.py`"
        )


def _fields(message: descriptor_pb2.DescriptorProto, prefix: str = "") -> dict[str, tuple]:
    out = {}
    for f in message.field:
        out[f"{prefix}{message.name}.{f.name}"] = (f.number, f.type, f.label, f.type_name.split(".")[-1])
    for nested in message.nested_type:
        out.update(_fields(nested, f"{prefix}{message.name}."))
    return out


def test_wire_compatible_with_tritonclient():
    from engine.ingress._pb import open_inference_grpc_pb2 as ours
    from tritonclient.grpc import service_pb2 as triton

    from tritonclient.grpc import model_config_pb2 as triton_config

    mine, theirs, config = (descriptor_pb2.FileDescriptorProto() for _ in range(3))
    ours.DESCRIPTOR.CopyToProto(mine)
    triton.DESCRIPTOR.CopyToProto(theirs)
    triton_config.DESCRIPTOR.CopyToProto(config)
    assert mine.package == theirs.package == config.package == "inference"
    their_messages = {m.name: m for m in [*theirs.message_type, *config.message_type]}
    their_enums = {e.name: {v.name: v.number for v in e.value} for e in config.enum_type}
    for enum in mine.enum_type:  # DataType
        assert {v.name: v.number for v in enum.value} == their_enums[enum.name]
    compared = 0
    for message in mine.message_type:
        assert message.name in their_messages, message.name
        a, b = _fields(message), _fields(their_messages[message.name])
        for key, spec in a.items():
            if key in b:  # fields both define must agree; our extra fields are skipped by them
                assert spec == b[key], key
                compared += 1
            else:
                assert key.startswith(("ModelMetadataResponse.parameters", "ModelMetadataResponse.ParametersEntry.")), (
                    f"{key} is not in Triton's definition"
                )
    assert compared > 50
    their_methods = {m.name: m for s in theirs.service for m in s.method}
    for method in mine.service[0].method:
        other = their_methods[method.name]
        assert (method.input_type, method.output_type, method.client_streaming, method.server_streaming) == (
            other.input_type, other.output_type, other.client_streaming, other.server_streaming
        )
