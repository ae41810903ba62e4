"""The command line every peer script takes (bench/peer_servers.py passes it): the model, its
ports, the serving processes and the batcher's settings. Each script runs as a file in its
peer's own venv, so this folder is on its path and it imports this module by name."""

from __future__ import annotations

import argparse


def parse(description: str, grpc: bool, batcher: bool = True) -> argparse.Namespace:
    """`grpc`: the peer speaks the Open Inference Protocol over gRPC too; `batcher`: it has
    one (else --max-batch and --delay-us are taken and unused)."""
    p = argparse.ArgumentParser(description=description.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--http-port", type=int, required=True)
    if grpc:
        p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument("--workers", type=int, default=1)
    unused = None if batcher else "(no batcher: unused)"
    p.add_argument("--max-batch", type=int, default=64, help=unused)
    p.add_argument("--delay-us", type=int, default=2000, help=unused)
    return p.parse_args()
