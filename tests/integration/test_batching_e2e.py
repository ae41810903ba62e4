"""Batching seen from clients: own rows back under concurrency, bounded queue, deadlines,
and a graceful SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from engine.harness.config import Config, model_table, server_table
from engine.harness.models import N_FEATURES
from tests.conftest import launch
from tests.models import DTYPES, WIDTH


def _identity_inputs(tags: np.ndarray) -> list:
    inputs = []
    for dt in DTYPES:
        array = tags if dt == "FP32" else np.zeros(tags.shape, triton_to_np_dtype(dt))
        inp = aioclient.InferInput(f"in_{dt}", list(array.shape), dt)
        inp.set_data_from_numpy(array)
        inputs.append(inp)
    return inputs


def test_64_clients_get_exactly_their_own_rows(server, rng):
    """64 concurrent clients x 50 requests of 1-16 rows. Even clients use the identity
    model with rows tagged by (client, request, row); odd clients use the MLP, checked
    against in-process onnxruntime on the same rows."""
    session = ort.InferenceSession(str(server.directory / "models" / "mlp.onnx"), providers=["CPUExecutionProvider"])
    sizes = rng.integers(1, 17, size=(64, 50))
    features = rng.normal(size=(64, 50, 16, N_FEATURES)).astype(np.float32)
    failures: list[str] = []

    async def one_client(c: int) -> int:
        client = aioclient.InferenceServerClient(server.url)
        checked = 0
        try:
            for r in range(50):
                n = int(sizes[c, r])
                if c % 2 == 0:
                    tags = ((c * 50 + r) * 16 + np.arange(n * WIDTH).reshape(n, WIDTH)).astype(np.float32)
                    result = await client.infer("identity", _identity_inputs(tags), request_id=f"{c}-{r}")
                    if not np.array_equal(result.as_numpy("out_FP32"), tags):
                        failures.append(f"client {c} request {r}: identity rows differ")
                    if not np.array_equal(result.as_numpy("doubled"), tags * 2):
                        failures.append(f"client {c} request {r}: doubled differs")
                else:
                    rows = features[c, r, :n]
                    inp = aioclient.InferInput("float_input", [n, N_FEATURES], "FP32")
                    inp.set_data_from_numpy(rows)
                    result = await client.infer("mlp", [inp], model_version="1", request_id=f"{c}-{r}")
                    expected = session.run(["probabilities"], {"float_input": rows})[0]
                    if not np.allclose(result.as_numpy("probabilities"), expected, rtol=1e-6):
                        failures.append(f"client {c} request {r}: probabilities differ")
                if result.get_response().id != f"{c}-{r}":
                    failures.append(f"client {c} request {r}: id {result.get_response().id}")
                checked += 1
        finally:
            await client.close()
        return checked

    async def main():
        return await asyncio.gather(*(one_client(c) for c in range(64)))

    batches_before = server.metrics()['scorewire_batches_total{model="identity",version="1"}']
    counts = asyncio.run(main())
    assert failures == []
    assert sum(counts) == 64 * 50
    # Requests were actually batched together: fewer batches than requests.
    batches = server.metrics()['scorewire_batches_total{model="identity",version="1"}'] - batches_before
    assert batches < 32 * 50


def wait_until(condition, what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class Collector:
    """Callback target for tritonclient's async_infer: keeps (result, error) pairs."""

    def __init__(self):
        self.items: list = []
        self._lock = threading.Lock()

    def __call__(self, result, error):
        with self._lock:
            self.items.append((result, error))

    def wait(self, n: int, timeout_s: float = 10) -> list:
        deadline = time.monotonic() + timeout_s
        while len(self.items) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.items


def _one_row_input() -> grpcclient.InferInput:
    inp = grpcclient.InferInput("float_input", [1, N_FEATURES], "FP32")
    inp.set_data_from_numpy(np.ones((1, N_FEATURES), np.float32))
    return inp


def test_queue_overflow_is_resource_exhausted(server):
    """`slow` holds 8 rows at most and waits 1.5 s: the 9th row is refused at once."""
    client = grpcclient.InferenceServerClient(server.url)
    collector = Collector()
    for _ in range(8):
        client.async_infer("slow", [_one_row_input()], collector)
    wait_until(lambda: server.metrics()['scorewire_queue_rows{model="slow",version="1"}'] == 8, "8 rows queued")
    started = time.monotonic()
    with pytest.raises(InferenceServerException) as info:
        client.infer("slow", [_one_row_input()])
    assert time.monotonic() - started < 1.0  # refused, not queued
    assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert "queue full (8 rows waiting, queue_capacity = 8)" in info.value.message()
    done = collector.wait(8)
    assert len(done) == 8 and all(error is None for _, error in done)
    assert server.metrics()['scorewire_rejected_total{model="slow",version="1"}'] >= 1
    client.close()


def test_expired_deadline_is_not_scored(server):
    """A request whose deadline passes while it waits is not scored: the client gets
    DEADLINE_EXCEEDED and the model's row counter does not move."""
    client = grpcclient.InferenceServerClient(server.url)
    before = server.metrics()
    # gRPC deadline (client_timeout, seconds) and Triton's request parameter (timeout, us).
    with pytest.raises(InferenceServerException) as info:
        client.infer("slow", [_one_row_input()], client_timeout=0.3)
    assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    with pytest.raises(InferenceServerException) as info:
        client.infer("slow", [_one_row_input()], timeout=300_000)
    assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert "deadline passed before scoring" in info.value.message()
    key = '{model="slow",version="1"}'

    def counted():  # both are counted when their batch closes (1.5 s after the first arrived)
        m = server.metrics()
        return (m["scorewire_cancelled_total" + key] > before["scorewire_cancelled_total" + key]
                and m["scorewire_expired_total" + key] > before["scorewire_expired_total" + key])

    wait_until(counted, "the cancelled and the expired request counted")
    after = server.metrics()
    # The gRPC deadline cancels the call (the server sees the caller leave); the request
    # parameter expires in the batcher. Neither request is scored.
    assert after["scorewire_cancelled_total" + key] - before["scorewire_cancelled_total" + key] == 1
    assert after["scorewire_expired_total" + key] - before["scorewire_expired_total" + key] == 1
    assert after["scorewire_rows_total" + key] == before["scorewire_rows_total" + key]
    client.close()


def mlp_config(batching: dict, server_keys: dict | None = None, **model_keys) -> Config:
    """One process serving the demo MLP alone."""
    return Config(server_table(workers=1, **(server_keys or {})),
                  [model_table("mlp", "models/mlp.onnx", batching=batching, **model_keys)])


# requests are in flight for ~1 s
SIGTERM_CONFIG = mlp_config({"max_batch_size": 1000, "max_queue_delay_us": 1000000, "dispatch": "delay"})


def test_sigterm_finishes_in_flight_requests_and_exits_0(model_dir):
    srv = launch(model_dir, SIGTERM_CONFIG, name="sigterm.toml")
    client = grpcclient.InferenceServerClient(srv.url)
    collector = Collector()
    try:
        for _ in range(6):
            client.async_infer("mlp", [_one_row_input()], collector)
        wait_until(lambda: srv.metrics()['scorewire_queue_rows{model="mlp",version="1"}'] == 6, "6 rows queued")
        srv.proc.send_signal(signal.SIGTERM)
        code = srv.proc.wait(timeout=60)
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
    assert code == 0
    results = collector.wait(6)
    assert len(results) == 6
    assert all(error is None for _, error in results), [str(e) for _, e in results if e]
    assert all(r.as_numpy("probabilities").shape == (1, 2) for r, _ in results)
    rest = srv.proc.stdout.read()
    assert "scorewire: draining" in rest and "scorewire: stopped" in rest
    client.close()


DRAIN_CONFIG = mlp_config({"max_batch_size": 64, "max_queue_delay_us": 2000, "queue_capacity": 100000},
                          {"drain_timeout_s": 10})


def test_sigterm_answers_every_request_already_sent(model_dir):
    """2,000 requests in flight, SIGTERM 0.3 s after the last was made: each is answered (OK), or refused as
    UNAVAILABLE if it reached the server after the drain's quiet phase; none is CANCELLED (not
    by the drain, and not by gRPC's own limit on calls waiting to be picked up), and the drain
    ends within drain_timeout_s."""
    import asyncio
    from collections import Counter

    import grpc

    from engine.ingress._pb import open_inference_grpc_pb2 as pb

    srv = launch(model_dir, DRAIN_CONFIG, name="drain.toml")
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="float_input", datatype="FP32", shape=[1, N_FEATURES])
    request.raw_input_contents.append(np.zeros(N_FEATURES, np.float32).tobytes())

    async def main() -> tuple[Counter, float]:
        # 8 connections of 250 calls (under max_concurrent_streams): the transport takes them all
        channels = [grpc.aio.insecure_channel(srv.url, options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(8)]
        calls = [ch.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                request_serializer=pb.ModelInferRequest.SerializeToString,
                                response_deserializer=pb.ModelInferResponse.FromString) for ch in channels]

        started = [0]

        async def one(k: int) -> str:
            started[0] += 1
            try:
                await calls[k % len(calls)](request, timeout=30)
                return "OK"
            except grpc.aio.AioRpcError as exc:
                return exc.code().name

        tasks = [asyncio.ensure_future(one(k)) for k in range(2000)]
        while started[0] < len(tasks):  # every call made (a busy machine makes 2,000 slowly)...
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # ...and sent: a call still being sent as the listeners close may end CANCELLED
        srv.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        codes = Counter(await asyncio.gather(*tasks))
        await asyncio.get_running_loop().run_in_executor(None, srv.proc.wait, 60)
        for ch in channels:
            await ch.close()
        return codes, time.monotonic() - signalled

    try:
        codes, took = asyncio.run(main())
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
    assert srv.proc.returncode == 0
    assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
    assert codes["OK"] > 0 and took < 10 + 5, (codes, took)


STREAM_CONFIG = mlp_config({"max_batch_size": 4096, "max_queue_delay_us": 100, "queue_capacity": 100000},
                           {"stream_max_in_flight": 4}, max_rows_per_request=4096)


def test_a_stream_whose_responses_are_not_read_stops_being_read(model_dir):
    """A ModelStreamInfer client that writes requests and never reads: the server scores a
    bounded number of them (stream_max_in_flight plus what the transport buffers), then stops
    reading; it does not keep scoring and buffering responses (memory grew without bound)."""
    import asyncio

    import grpc

    from engine.ingress._pb import open_inference_grpc_pb2 as pb

    srv = launch(model_dir, STREAM_CONFIG, name="stream.toml")
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="float_input", datatype="FP32", shape=[2048, N_FEATURES])
    request.raw_input_contents.append(np.zeros((2048, N_FEATURES), np.float32).tobytes())
    key = 'scorewire_requests_total{model="mlp",code="OK"}'

    async def main() -> tuple[int, int]:
        async with grpc.aio.insecure_channel(srv.url) as channel:
            call = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer",
                                         request_serializer=pb.ModelInferRequest.SerializeToString,
                                         response_deserializer=pb.ModelStreamInferResponse.FromString)()
            sent = 0

            async def write() -> None:
                nonlocal sent
                for _ in range(1000):  # 256 KiB requests, 32 KiB responses
                    await call.write(request)
                    sent += 1

            writer = asyncio.ensure_future(write())
            scored, stable_since = -1, time.monotonic()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not writer.done():
                now_scored = srv.metrics().get(key, 0)
                if now_scored != scored:
                    scored, stable_since = now_scored, time.monotonic()
                elif time.monotonic() - stable_since > 2.0:
                    break  # nothing scored for 2 s: the server stopped reading
                await asyncio.sleep(0.1)
            writer.cancel()
            call.cancel()
            return int(scored), sent

    try:
        scored, sent = asyncio.run(main())
    finally:
        srv.stop()
    # the transport buffers a few MiB of responses (~130 here); the old server read all 1,000
    assert scored < 300 and sent < 1000, (scored, sent)


# requests stay in flight for 1.5 s
INFLIGHT_CONFIG = mlp_config({"max_batch_size": 100000, "max_queue_delay_us": 1500000, "queue_capacity": 1000000,
                              "dispatch": "delay"},
                             {"max_message_bytes": 4194304, "max_inflight_bytes": 6291456},
                             max_rows_per_request=100000)


def test_requests_in_flight_are_bounded_in_bytes_together(model_dir):
    """Eight concurrent 2.5 MiB requests against max_inflight_bytes = 6 MiB: two are taken, the
    rest are RESOURCE_EXHAUSTED naming the limit (before they are parsed); once those two are
    answered, their bytes are given back and a new request is taken."""
    import concurrent.futures

    srv = launch(model_dir, INFLIGHT_CONFIG, name="inflight.toml")
    rows = np.zeros((20_000, N_FEATURES), np.float32)  # 2.5 MiB

    def one(_):
        client = grpcclient.InferenceServerClient(srv.url)
        inp = grpcclient.InferInput("float_input", list(rows.shape), "FP32")
        inp.set_data_from_numpy(rows)
        try:
            client.infer("mlp", [inp])
            return "OK", ""
        except InferenceServerException as exc:
            return exc.status(), exc.message()
        finally:
            client.close()

    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(one, range(8)))
        codes = [code for code, _ in outcomes]
        assert codes.count("OK") == 2 and codes.count("StatusCode.RESOURCE_EXHAUSTED") == 6, codes
        assert all("server.max_inflight_bytes = 6291456" in message for code, message in outcomes if code != "OK")
        assert one(0) == ("OK", "")  # the budget came back
        # refused requests give their bytes back too, on an idle server (they used to stay
        # counted, and held, until the garbage collector came by)
        client = grpcclient.InferenceServerClient(srv.url)
        for _ in range(4):
            inp = grpcclient.InferInput("float_input", [15_000, N_FEATURES], "FP64")
            inp.set_data_from_numpy(rows.astype(np.float64)[:15_000])  # 3.7 MiB, refused: wrong datatype
            with pytest.raises(InferenceServerException, match="FP64"):
                client.infer("mlp", [inp])
        client.close()
        assert one(0) == ("OK", "")
    finally:
        srv.stop()


def test_rest_requests_count_in_the_same_bytes_in_flight(model_dir):
    """The front door bounds REST bodies with gRPC requests: two 2.5 MiB gRPC requests held in
    flight, and a 2.5 MiB REST request is refused (429, naming the limit); once they are
    answered, it is taken."""
    import concurrent.futures

    import tritonclient.http as httpclient

    srv = launch(model_dir, INFLIGHT_CONFIG, name="inflight.toml")
    rows = np.zeros((20_000, N_FEATURES), np.float32)  # 2.5 MiB

    def grpc_one():
        client = grpcclient.InferenceServerClient(srv.url)
        inp = grpcclient.InferInput("float_input", list(rows.shape), "FP32")
        inp.set_data_from_numpy(rows)
        try:
            client.infer("mlp", [inp])
        finally:
            client.close()

    def rest_one():
        client = httpclient.InferenceServerClient(srv.http_url)
        inp = httpclient.InferInput("float_input", list(rows.shape), "FP32")
        inp.set_data_from_numpy(rows, binary_data=True)
        try:
            client.infer("mlp", [inp])
            return "OK"
        except InferenceServerException as exc:
            return exc.message()
        finally:
            client.close()

    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            held = [pool.submit(grpc_one) for _ in range(2)]
            time.sleep(0.6)  # both parsed and queued (1.5 s queue delay)
            refused = rest_one()
            for future in held:
                future.result()
        assert "server.max_inflight_bytes = 6291456" in refused, refused
        assert rest_one() == "OK"  # the budget came back, and REST gave its own back
        assert rest_one() == "OK"
    finally:
        srv.stop()
