"""Generate the Python gRPC stubs for proto/*.proto into engine/ingress/_pb/.

    python proto/generate.py            # rewrite the checked-in stubs
    python proto/generate.py --out DIR  # write elsewhere (the staleness test does this)

Needs grpcio-tools (in the `test` extra, pinned so the output is reproducible).
protoc writes `import x_pb2`; the stubs live in a package, so that line is made relative.
The messages are registered in a private descriptor pool, not protobuf's default one: the
`inference` package is also defined by tritonclient, MLServer and others, and two definitions
of one name in the default pool cannot be imported into one process.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
DEFAULT_OUT = ROOT / "engine" / "ingress" / "_pb"


def generate(out: Path) -> list[Path]:
    from grpc_tools import protoc  # imported here: only needed to regenerate

    out.mkdir(parents=True, exist_ok=True)
    protos = sorted(PROTO_DIR.glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = ["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}"]
    if protoc.main(args + [str(p) for p in protos]) != 0:
        raise SystemExit("protoc failed")
    written = []
    for proto in protos:
        stem = proto.stem
        for path in (out / f"{stem}_pb2.py", out / f"{stem}_pb2_grpc.py"):
            text = path.read_text()
            text = re.sub(rf"^import {stem}_pb2 as", f"from . import {stem}_pb2 as", text, flags=re.M)
            text = text.replace("_descriptor_pool.Default().AddSerializedFile(",
                                "_descriptor_pool.DescriptorPool().AddSerializedFile(")
            path.write_text(text)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
