"""Which asyncio HTTP server library for the REST ingress: the candidates side by side.

    python -m bench.http_candidates [--duration 5] [--concurrency 8] [--rounds 2]

Each candidate serves the same handler on uvloop -- read a one-row OIP JSON inference
request, parse it with orjson, answer a fixed one-row JSON response -- in a process of its
own; the same client (aiohttp, closed loop, one process) drives each in turns, in one run.
Reported: requests/s and the server process's CPU per request. Candidates: aiohttp.web, and
uvicorn (httptools parser) with a bare ASGI callable (no framework on top). granian is left
out: it runs Python handlers on loops of its own, not in the engine's event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time

import orjson

BODY = orjson.dumps({"inputs": [{"name": "float_input", "shape": [1, 32], "datatype": "FP32",
                                 "data": [0.5] * 32}]})
ANSWER = orjson.dumps({"model_name": "m", "model_version": "1", "outputs": [
    {"name": "probabilities", "shape": [1, 2], "datatype": "FP32", "data": [0.25, 0.75]}]})


def _handle(body: bytes) -> bytes:
    request = orjson.loads(body)
    assert request["inputs"][0]["name"] == "float_input"
    return ANSWER


def serve_aiohttp(port: int) -> None:
    import uvloop
    from aiohttp import web

    async def infer(request: web.Request) -> web.Response:
        return web.Response(body=_handle(await request.read()), content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v2/models/{name}/infer", infer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        print("ready", flush=True)
        await asyncio.Event().wait()

    uvloop.run(main())


def serve_uvicorn(port: int) -> None:
    import uvicorn

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": _handle(body)})

    config = uvicorn.Config(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", lifespan="off",
                            access_log=False, log_level="warning")
    server = uvicorn.Server(config)

    async def main() -> None:
        task = asyncio.ensure_future(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        print("ready", flush=True)
        await task

    import uvloop

    uvloop.run(main())


async def drive(port: int, duration_s: float, concurrency: int) -> int:
    import aiohttp

    url = f"http://127.0.0.1:{port}/v2/models/m/infer"
    done = 0
    stop = time.monotonic() + duration_s
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def caller() -> None:
            nonlocal done
            while time.monotonic() < stop:
                async with session.post(url, data=BODY, headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    assert r.status == 200
                done += 1

        await asyncio.gather(*(caller() for _ in range(concurrency)))
    return done


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(name: str, port: int, duration_s: float, concurrency: int) -> dict:
    server = subprocess.Popen([sys.executable, "-m", "bench.http_candidates", "--serve", name, "--port", str(port)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        import uvloop

        uvloop.run(drive(port, 1.0, concurrency))  # warm-up
        cpu0 = _cpu(server.pid)
        start = time.monotonic()
        done = uvloop.run(drive(port, duration_s, concurrency))
        wall = time.monotonic() - start
        cpu = _cpu(server.pid) - cpu0
    finally:
        server.terminate()
        server.wait(10)
    return {"server": name, "rps": done / wall, "cpu_us": cpu / done * 1e6}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--serve", choices=["aiohttp", "uvicorn"], help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=18600, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        (serve_aiohttp if args.serve == "aiohttp" else serve_uvicorn)(args.port)
        return 0
    rows: dict[str, list[dict]] = {}
    for r in range(args.rounds):
        for i, name in enumerate(("aiohttp", "uvicorn")):
            rows.setdefault(name, []).append(measure(name, args.port + 10 * r + i, args.duration, args.concurrency))
    print(f"one-row OIP JSON requests, closed loop, {args.concurrency} callers (aiohttp client, one process), "
          f"{args.duration:g} s x {args.rounds} rounds in turns, means:")
    print("| server | requests/s | server CPU us/request |\n|---|---|---|")
    for name, runs in rows.items():
        rps = sum(x["rps"] for x in runs) / len(runs)
        cpu = sum(x["cpu_us"] for x in runs) / len(runs)
        print(f"| {name} | {rps:,.0f} | {cpu:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
