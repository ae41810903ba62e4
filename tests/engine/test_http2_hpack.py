"""scorewire's HPACK decoder against the `hpack` package's encoder (the reference), on the
header blocks a gRPC client sends and on random ones: Huffman or not, indexed, table size
changes, evictions, repeated blocks."""

from __future__ import annotations

import hpack
import numpy as np
import pytest

from engine.ingress.http2.hpack import STATIC, Decoder, HpackError, encode_integer, literal


def test_the_static_table_is_rfc_7541s():
    reference = hpack.table.HeaderTable.STATIC_TABLE
    assert [(n, v) for n, v in STATIC[1:]] == [(n, v) for n, v in reference]


def _headers(rng, n):
    names = [b"x-request-id", b"authorization", b"grpc-timeout", b":path", b"user-agent", b"x-long"]
    out = []
    for _ in range(n):
        name = names[rng.integers(len(names))]
        size = int(rng.integers(0, 400 if name == b"x-long" else 24))
        value = bytes(rng.integers(32, 127, size=size, dtype=np.uint8))
        out.append((name, value))
    return out


@pytest.mark.parametrize("huffman", [True, False])
def test_random_blocks_decode_as_the_reference_encoded_them(rng, huffman):
    encoder, decoder = hpack.Encoder(), Decoder()
    for i in range(400):
        if i % 97 == 50:
            encoder.header_table_size = int(rng.integers(0, 4097))  # a size update in the next block
        headers = _headers(rng, int(rng.integers(1, 9)))
        if i % 5 == 1:  # the same headers again: all indexed, the remembered path
            headers = previous
        block = encoder.encode(headers, huffman=huffman)
        assert list(decoder.decode(block)) == headers
        assert decoder.size == encoder.header_table._current_size  # the reference keeps it private
        previous = headers


def test_a_grpc_clients_repeated_block_is_remembered_until_the_table_changes():
    encoder, decoder, reference = hpack.Encoder(), Decoder(), hpack.Decoder()
    call = [(b":method", b"POST"), (b":path", b"/inference.GRPCInferenceService/ModelInfer"),
            (b"content-type", b"application/grpc"), (b"te", b"trailers")]
    other = [(b"x-one", b"1"), (b"x-two", b"2"), (b"x-three", b"3"), (b"x-four", b"4")]
    first, repeated = encoder.encode(call), encoder.encode(call)
    assert len(repeated) == 4  # all indexed: the bytes mean `call` only while the table holds it
    encoder.header_table_size = 0  # the client empties its table, then fills it with others
    encoder.header_table_size = 4096
    refill = encoder.encode(other)
    for block in (first, repeated, repeated, refill, repeated, repeated):
        assert list(decoder.decode(block)) == reference.decode(block, raw=True)
    assert list(decoder.decode(repeated)) != call  # the same bytes, other headers now


def test_bad_blocks_are_errors_not_crashes():
    decoder = Decoder()
    for block in (b"\x80", b"\xbf\x7f", b"\xff\xff\xff\xff\xff\xff", b"\x40\x05ab", b"\x00\x85\xff\xff\xff\xff\xff\x00",
                  b"\x3f\xe1\x7f"):
        with pytest.raises(HpackError):
            decoder.decode(block)


def test_what_the_server_sends_decodes_with_the_reference():
    block = literal(b"grpc-status", b"3") + literal(b"grpc-message", b"x" * 300)
    assert hpack.Decoder().decode(block, raw=True) == [(b"grpc-status", b"3"), (b"grpc-message", b"x" * 300)]
    assert encode_integer(1337, 0x1F) == bytes([31, 154, 10])  # RFC 7541 C.1.2
