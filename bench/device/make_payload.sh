#!/usr/bin/env bash
# Here (no GPU): build what the GPU machine lacks as one compressed site folder, in parts of at
# most 52 MB, under .gpu/ (git-ignored; add `/.gpu/` to .git/info/exclude). Each device call
# carries one part (`carry: [".gpu/part.00"]`) and copies it to /tmp/p at once; the last call
# runs bench/device/run.sh. Measured 2026-11-27: 210 MB in 4 parts; each carrying call took
# under 1 s on a warm machine, the machine's start about 30 s.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .gpu/site .gpu/whl && mkdir -p .gpu/whl
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
# what the device image lacks (or holds in another version: protobuf 7 there, < 7 here)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .gpu/whl onnxruntime-gpu==1.31.1 protobuf==6.33.6 tritonclient==2.73.0 orjson==3.13.0 \
  hdrhistogram==0.10.8 pbr pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection \
  typing-extensions confluent-kafka==2.16.1 grpcio-health-checking==1.81.1 grpcio==1.85.3 skl2onnx==1.20.0 \
  python-rapidjson
python3 -m pip install -q --no-deps --no-compile --target .gpu/site --python-version 3.12 --implementation cp \
  "${platforms[@]}" --only-binary=:all: .gpu/whl/*.whl
# not needed by the Python API: the C API library and the TensorRT provider
rm -f .gpu/site/onnxruntime/capi/libonnxruntime.so.* .gpu/site/onnxruntime/capi/libonnxruntime_providers_tensorrt.so
rm -rf .gpu/site/bin
tar -cf .gpu/site.tar -C .gpu site
stat -c %s .gpu/site.tar > .gpu/site.size   # pyarrow's zstd decoder wants the size
zstd -q -19 -T2 -f .gpu/site.tar -o .gpu/site.tar.zst   # pyarrow (on the device) decodes it
rm -f .gpu/part.* .gpu/site.tar && split -n 4 -d .gpu/site.tar.zst .gpu/part. && rm .gpu/site.tar.zst
ls -la .gpu/part.* .gpu/site.size
