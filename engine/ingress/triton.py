"""Triton's extensions of the Open Inference Protocol, built once for gRPC and REST: a
version's configuration (what perf_analyzer reads first), its statistics, and the repository
index; `as_json` gives a message the JSON Triton's REST API answers with (integers as numbers,
enums by name)."""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.json_format import MessageToDict

from engine.ingress._pb import open_inference_grpc_pb2 as pb

# ServerMetadata's extensions, in Triton's names: those served whole (binary_tensor_data over
# REST). Not "model_repository": of it only the index is served (no load or unload).
EXTENSIONS = ("model_configuration", "statistics", "parameters", "binary_tensor_data")

_DATA_TYPE = {name: getattr(pb, f"TYPE_{name}") for name in (
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64")}
_WIDE_INTS = (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
              FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64)


def model_config(served) -> pb.ModelConfig:
    """The version's configuration as Triton describes one."""
    model = served.model
    batching = model.settings.batching
    max_batch = min(served.limits.max_rows, 2**31 - 1)  # rows per request

    def dims(shape) -> list[int]:  # Triton leaves the batch dimension out when it batches
        return list(shape[1:])

    on_gpu = model.provider == "CUDAExecutionProvider"
    return pb.ModelConfig(
        name=served.name, platform="onnxruntime_onnx", backend="onnxruntime", max_batch_size=max_batch,
        input=[pb.ModelInput(name=t.name, data_type=_DATA_TYPE[t.datatype], dims=dims(t.shape))
               for t in model.schema.inputs],
        output=[pb.ModelOutput(name=t.name, data_type=_DATA_TYPE[t.datatype], dims=dims(t.shape))
                for t in model.schema.outputs],
        instance_group=[pb.ModelInstanceGroup(
            name=f"{served.name}_{served.version}", count=model.settings.instances,
            kind=pb.ModelInstanceGroup.KIND_GPU if on_gpu else pb.ModelInstanceGroup.KIND_CPU,
            gpus=[0] if on_gpu else [])],
        default_model_filename=model.path.name,
        # Triton's delay 0 is "free_slot": a batch goes when an instance is free
        dynamic_batching=pb.ModelDynamicBatching(
            preferred_batch_size=[batching.max_batch_size],
            max_queue_delay_microseconds=0 if batching.dispatch == "free_slot" else batching.max_queue_delay_us),
    )


def model_statistics(front, versions) -> pb.ModelStatisticsResponse:
    """Counts and cumulative times of this serving process (with several workers: of the
    worker that answers; /metrics sums them all), per version."""
    duration = pb.StatisticDuration
    stats = []
    for served in versions:
        b = served.batcher.stats
        ok_ns = front.succeeded.get((served.name, served.version), (0, 0))
        stats.append(pb.ModelStatistics(
            name=served.name, version=served.version, last_inference=b.last_scored_ms,
            inference_count=b.rows, execution_count=b.batches,
            inference_stats=pb.InferStatistics(
                success=duration(count=ok_ns[0], ns=ok_ns[1]),
                fail=duration(count=front.failed.get((served.name, served.version), 0)),
                queue=duration(count=b.requests, ns=b.queue_ns),
                compute_input=duration(count=b.requests), compute_output=duration(count=b.requests),
                compute_infer=duration(count=b.requests, ns=b.infer_ns)),
        ))
    return pb.ModelStatisticsResponse(model_stats=stats)


def repository_index(versions) -> list[dict]:
    """POST /v2/repository/index: every version served, all READY (a version that failed to
    load stops the server, so none is listed UNAVAILABLE)."""
    return [{"name": s.name, "version": s.version, "state": "READY", "reason": ""} for s in versions]


def as_json(message) -> dict:
    """The message as Triton's REST API writes it: field names as in the proto, enums by name,
    zeros written out, and 64-bit integers as numbers (protobuf's JSON mapping writes them as strings)."""
    return _numbers(message.DESCRIPTOR, MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True))


def _numbers(descriptor, value: dict) -> dict:
    for field in descriptor.fields:
        if field.name not in value:
            continue
        v = value[field.name]
        if field.message_type is not None and not field.message_type.GetOptions().map_entry:
            value[field.name] = [_numbers(field.message_type, x) for x in v] if isinstance(v, list) else \
                _numbers(field.message_type, v)
        elif field.type in _WIDE_INTS:
            value[field.name] = [int(x) for x in v] if isinstance(v, list) else int(v)
    return value
