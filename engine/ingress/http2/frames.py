"""HTTP/2 frames (RFC 9113 section 6): types, flags, error codes, settings, and the bytes of a
frame. What the server takes and grants is here too, in one place."""

from __future__ import annotations

import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 5, 6, 7, 8, 9
ENHANCE_YOUR_CALM = 11
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS, S_INITIAL_WINDOW_SIZE = 1, 2, 3, 4
S_MAX_FRAME_SIZE, S_MAX_HEADER_LIST_SIZE = 5, 6

MAX_WINDOW = 2**31 - 1
STREAM_WINDOW = 1 << 20  # what a client may send on a stream before the server gives credit back
CONNECTION_WINDOW = 1 << 24
RECEIVE_FRAME_SIZE = 1 << 20  # the largest frame the server takes (fewer frames for large requests)
MAX_HEADER_LIST = 16 << 10  # a call's metadata; more is refused (RESOURCE_EXHAUSTED)
MAX_HEADER_BLOCK = 2 * MAX_HEADER_LIST  # a header block's bytes; more closes the connection
PREFACE_TIMEOUT_S = 10.0  # a connection that has not begun HTTP/2 by then is closed
RESETS_ALLOWED = 1000  # streams a client may reset beyond half of those it opened ("rapid reset")

FRAME = struct.Struct(">HBBBI")  # a 24-bit length as 16 + 8 bits, type, flags, stream id
U32 = struct.Struct(">I")
SETTING = struct.Struct(">HI")


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return FRAME.pack(n >> 8, n & 0xFF, kind, flags, stream_id) + payload


def header_frames(stream_id: int, block: bytes, flags: int, max_frame: int) -> bytes:
    """A header block as HEADERS, and CONTINUATION frames where it is longer than the client's
    MAX_FRAME_SIZE (END_STREAM, if asked, on the HEADERS; END_HEADERS on the last)."""
    if len(block) <= max_frame:
        return frame(HEADERS, flags | END_HEADERS, stream_id, block)
    pieces = [block[at:at + max_frame] for at in range(0, len(block), max_frame)]
    return b"".join([frame(HEADERS, flags, stream_id, pieces[0]),
                     *(frame(CONTINUATION, 0, stream_id, p) for p in pieces[1:-1]),
                     frame(CONTINUATION, END_HEADERS, stream_id, pieces[-1])])


class ConnectionError_(Exception):
    """The connection is closed with a GOAWAY carrying `code` and the message."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def unpad(payload: bytes) -> bytes:
    if not payload or payload[0] >= len(payload):
        raise ConnectionError_(PROTOCOL_ERROR, "padding longer than its frame")
    return payload[1:len(payload) - payload[0]]
