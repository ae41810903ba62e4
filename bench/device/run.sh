#!/usr/bin/env bash
# On the GPU machine (the device tool's `run`, carrying the last part, .gpu/site.size and this
# tree): put the site folder together once, then run the CUDA tests and the GPU benchmark.
#   bash bench/device/run.sh tests    # CUDA tests + the gRPC and batching integration tests (~40 s)
#   bash bench/device/run.sh bench    # python -m bench.gpu_bench (~200 s on an H200)
#   bash bench/device/run.sh          # both
# Results go under $OUT (the device tool brings them back).
set -o pipefail
repo=$(pwd)
if [ ! -d /tmp/site ]; then
  mkdir -p /tmp/p && cp .gpu/part.* /tmp/p/ 2>/dev/null
  size=$(cat .gpu/site.size)
  (cd /tmp/p && cat part.* > site.tar.zst && python3 -c "
import pyarrow as pa
data = open('site.tar.zst', 'rb').read()
open('site.tar', 'wb').write(pa.decompress(data, decompressed_size=$size, codec='zstd', asbytes=True))" \
    && tar -xf site.tar -C /tmp && rm -f site.tar site.tar.zst) || { echo "cannot put the site folder together"; exit 3; }
fi
export PYTHONPATH=/tmp/site:$repo PYTHONUNBUFFERED=1
export LD_LIBRARY_PATH=$(python3 -c "import glob, site; print(':'.join(sorted({p for s in site.getsitepackages() for p in glob.glob(s + '/nvidia/*/lib')})))")
out=${OUT:-/tmp/out}; mkdir -p "$out"
if [ "${1:-all}" != bench ]; then
  timeout 170 python3 -m pytest -q -p no:cacheprovider -rs tests/engine/test_runtime.py 2>&1 | tee "$out/pytest.txt" | tail -8
fi
if [ "${1:-all}" != tests ]; then
  timeout 330 python3 -m bench.gpu_bench --seconds 4 --batches 1,64,1024 --models mlp,wide --instances 1,4 \
    --json "$out/gpu-bench.json" 2>&1 | grep -v '^{' | tail -20
fi
