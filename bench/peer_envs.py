"""The peers' virtual environments and wrk, made by the bench under a cache folder and reused.

    python -m bench.peer_envs [--peers mlserver kserve ...] [--cache DIR]   # make them ahead of a run

Each peer gets its own venv (`python -m venv`, then `pip install` of pinned versions): their
dependencies disagree with one another and with scorewire's (FastAPI, pydantic, protobuf, numpy,
grpcio pins), so one shared environment would measure whichever versions happened to win. A venv
is reused when its marker file lists exactly the pinned requirements; a failed install leaves no
marker and its pip log, so the bench reports the reason and the next run tries again.

wrk (a compiled HTTP load generator) comes from Debian: the one on PATH, or `apt-get download
wrk` unpacked with `dpkg -x` into the cache (no root install needed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("SCOREWIRE_PEERS_CACHE", Path.home() / ".cache" / "scorewire-peers"))
ORT = "onnxruntime==1.31.1"  # the CPU build of the version scorewire's environment runs

# what each peer's users install: the server, onnxruntime (CPU), and nothing of ours
REQUIREMENTS: dict[str, list[str]] = {
    "mlserver": ["mlserver==1.7.1", ORT],
    "kserve": ["kserve==0.21.0", ORT],
    "pytriton": ["nvidia-pytriton==0.7.0", ORT],
    "bentoml": ["bentoml==1.4.40", ORT],
    "litserve": ["litserve==0.2.19", ORT],
    "ray": ["ray[serve]==2.60.0", ORT],
}
MARKER = "scorewire-peer-installed.txt"


@dataclass(frozen=True)
class Env:
    """A peer's environment: its python, or why there is none."""

    peer: str
    python: Path | None
    error: str = ""


def _marker_text(peer: str) -> str:
    return "\n".join(REQUIREMENTS[peer]) + "\n"


def ensure(peer: str, cache: Path = CACHE, base_python: str = sys.executable) -> Env:
    """The peer's venv under `cache`/peer, made (and its pins installed) unless already there.
    Never raises for a failed install: the Env carries the reason (the tail of pip's log)."""
    folder = cache / peer
    python = folder / "venv" / "bin" / "python"
    marker = folder / MARKER
    if marker.exists() and marker.read_text() == _marker_text(peer) and python.exists():
        return Env(peer, python)
    folder.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    log = folder / "pip.log"
    try:
        if not python.exists():
            subprocess.run([_base(base_python), "-m", "venv", str(folder / "venv")], check=True,
                           capture_output=True, text=True, timeout=300)
        with log.open("w") as out:
            for step in (["pip", "install", "-q", "--upgrade", "pip"],
                         ["pip", "install", "--progress-bar", "off", *REQUIREMENTS[peer]]):
                done = subprocess.run([str(python), "-m", *step], stdout=out, stderr=subprocess.STDOUT,
                                      timeout=1800)
                if done.returncode != 0:
                    raise RuntimeError(f"pip exited with {done.returncode}")
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
        tail = log.read_text().strip().splitlines()[-3:] if log.exists() else []
        return Env(peer, None, f"install failed ({exc}): {' | '.join(tail)[-400:]}")
    marker.write_text(_marker_text(peer))
    return Env(peer, python)


def _base(python: str) -> str:
    """The interpreter a venv is made from: the base of `python` where it is itself a venv's
    (a venv made from a venv's python links to the venv, not to the installation)."""
    cfg = Path(python).parent.parent / "pyvenv.cfg"
    if cfg.exists():
        for line in cfg.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "executable":
                return value.strip()
    return python


def wrk(cache: Path = CACHE) -> tuple[str, dict[str, str]]:
    """The wrk binary and the environment to run it in: on PATH, or Debian's packages (wrk and
    the LuaJIT it links) unpacked into `cache`/wrk (fetched once), found through LD_LIBRARY_PATH."""
    found = shutil.which("wrk")
    if found:
        return found, dict(os.environ)
    folder = cache / "wrk"
    root = folder / "root"
    binary = root / "usr" / "bin" / "wrk"
    libs = sorted(str(d) for d in root.glob("usr/lib/*-linux-gnu"))
    if not binary.exists() or not libs:
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", "wrk", "libluajit-5.1-2"], cwd=folder, check=True,
                       capture_output=True, timeout=300)
        for deb in sorted(folder.glob("*.deb")):
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True, timeout=120)
        libs = sorted(str(d) for d in root.glob("usr/lib/*-linux-gnu"))
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join(libs + ([env["LD_LIBRARY_PATH"]] if env.get("LD_LIBRARY_PATH") else []))
    return str(binary), env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peers", nargs="*", default=list(REQUIREMENTS), choices=list(REQUIREMENTS))
    p.add_argument("--cache", type=Path, default=CACHE)
    args = p.parse_args(argv)
    print(f"wrk: {wrk(args.cache)[0]}", flush=True)
    failed = 0
    for peer in args.peers:
        env = ensure(peer, args.cache)
        failed += env.python is None
        print(f"{peer}: {env.python or env.error}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
