"""HPACK (RFC 7541) for scorewire's gRPC transport: a decoder for the headers clients send,
and the few fixed blocks the server sends.

The decoder keeps the client's dynamic table. A gRPC client sends the same headers with every
call, and after the first call they come as indexes into that table: the same bytes, meaning
the same headers while the table is unchanged. Such blocks are remembered, so a repeated block
costs one dict lookup (a full decode in Python is ~15 us). Huffman strings are decoded with the
`hpack` package's table (the code of RFC 7541 Appendix B).

The server never indexes what it sends: its blocks are literals, fixed bytes built once.
"""

from __future__ import annotations

from collections import deque

from hpack.exceptions import HPACKDecodingError
from hpack.huffman_table import decode_huffman

# RFC 7541 Appendix A, index 1..61
STATIC = (None, *((n.encode(), v.encode()) for n, v in (
    (":authority", ""), (":method", "GET"), (":method", "POST"), (":path", "/"), (":path", "/index.html"),
    (":scheme", "http"), (":scheme", "https"), (":status", "200"), (":status", "204"), (":status", "206"),
    (":status", "304"), (":status", "400"), (":status", "404"), (":status", "500"), ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"), ("accept-language", ""), ("accept-ranges", ""), ("accept", ""),
    ("access-control-allow-origin", ""), ("age", ""), ("allow", ""), ("authorization", ""),
    ("cache-control", ""), ("content-disposition", ""), ("content-encoding", ""), ("content-language", ""),
    ("content-length", ""), ("content-location", ""), ("content-range", ""), ("content-type", ""),
    ("cookie", ""), ("date", ""), ("etag", ""), ("expect", ""), ("expires", ""), ("from", ""), ("host", ""),
    ("if-match", ""), ("if-modified-since", ""), ("if-none-match", ""), ("if-range", ""),
    ("if-unmodified-since", ""), ("last-modified", ""), ("link", ""), ("location", ""), ("max-forwards", ""),
    ("proxy-authenticate", ""), ("proxy-authorization", ""), ("range", ""), ("referer", ""), ("refresh", ""),
    ("retry-after", ""), ("server", ""), ("set-cookie", ""), ("strict-transport-security", ""),
    ("transfer-encoding", ""), ("user-agent", ""), ("vary", ""), ("via", ""), ("www-authenticate", ""),
)))
_STATIC_LEN = len(STATIC) - 1
_ENTRY_OVERHEAD = 32  # RFC 7541 4.1
_REMEMBERED = 64  # repeated blocks kept; a client sends few distinct ones
_REMEMBERED_BYTES = 1024  # and those are short (a remembered block holds its headers' bytes)


class HpackError(Exception):
    """A header block that does not decode: a connection error (COMPRESSION_ERROR), since the
    two tables no longer agree."""


class HeadersTooLarge(Exception):
    """A header list over the server's MAX_HEADER_LIST_SIZE (name + value + 32 per field, as
    RFC 9113 counts it): the call is refused; the table still took the block."""


class Decoder:
    def __init__(self, table_size: int = 4096, max_list: int = 16 << 10):
        self.max_list = max_list
        self.limit = table_size  # what the server's SETTINGS_HEADER_TABLE_SIZE allows
        self.max_size = table_size  # the client's current choice (a size update), <= limit
        self.size = 0
        self.table: deque[tuple[bytes, bytes]] = deque()  # newest first: index 62 is [0]
        self.generation = 0  # changes whenever the table does
        self._seen: dict[bytes, tuple[int, tuple]] = {}

    def decode(self, block: bytes) -> tuple[tuple[bytes, bytes], ...]:
        """(name, value) pairs, in order."""
        seen = self._seen.get(block)
        if seen is not None and seen[0] == self.generation:
            return seen[1]
        generation = self.generation
        try:
            headers = self._decode(block)
        except (IndexError, HPACKDecodingError) as exc:
            raise HpackError(f"a header block does not decode ({exc})") from None
        if generation == self.generation and len(block) <= _REMEMBERED_BYTES:  # the block left the table
            # alone: it means the same until the table changes
            if len(self._seen) >= _REMEMBERED:
                self._seen.clear()
            self._seen[block] = (generation, headers)
        return headers

    def _decode(self, block: bytes) -> tuple:
        out = []
        i, n = 0, len(block)
        listed = 0  # RFC 9113's size of the list: name + value + 32 per field
        fields = 0
        while i < n:
            first = block[i]
            if first & 0x80:  # indexed field
                index, i = _integer(block, i, 0x7F)
                field = self._entry(index)
            elif first & 0x40:  # literal, added to the table
                index, i = _integer(block, i, 0x3F)
                name, i = (self._entry(index)[0], i) if index else _string(block, i)
                value, i = _string(block, i)
                self._add(name, value)
                field = (name, value)
            elif first & 0x20:  # table size update
                if fields:
                    raise HpackError("a table size update after a header field")
                size, i = _integer(block, i, 0x1F)
                if size > self.limit:
                    raise HpackError(f"a table size update to {size}, over the {self.limit} allowed")
                self.max_size = size
                self._evict(0)
                self.generation += 1
                continue
            else:  # literal, not added (0000) or never added (0001)
                index, i = _integer(block, i, 0x0F)
                name, i = (self._entry(index)[0], i) if index else _string(block, i)
                value, i = _string(block, i)
                field = (name, value)
            fields += 1
            listed += len(field[0]) + len(field[1]) + _ENTRY_OVERHEAD
            if listed > 4 * self.max_list:  # a block made to cost time: the connection goes
                raise HpackError(f"a header list past {4 * self.max_list} bytes")
            if listed <= self.max_list:  # past it nothing is kept (a few bytes can name a large
                out.append(field)  # entry many times over), but the block is read to its end for the table
        if listed > self.max_list:
            raise HeadersTooLarge(f"a header list of {listed} bytes, over the {self.max_list} allowed")
        return tuple(out)

    def _entry(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= _STATIC_LEN:
            return STATIC[index]
        at = index - _STATIC_LEN - 1
        if index == 0 or at >= len(self.table):
            raise HpackError(f"index {index} is in neither table ({len(self.table)} dynamic entries)")
        return self.table[at]

    def _add(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + _ENTRY_OVERHEAD
        self.generation += 1
        if size > self.max_size:  # RFC 7541 4.4: the table empties, the entry is not added
            self.table.clear()
            self.size = 0
            return
        self._evict(size)
        self.table.appendleft((name, value))
        self.size += size

    def _evict(self, room: int) -> None:
        while self.table and self.size + room > self.max_size:
            name, value = self.table.pop()
            self.size -= len(name) + len(value) + _ENTRY_OVERHEAD


def _integer(data: bytes, i: int, mask: int) -> tuple[int, int]:
    value = data[i] & mask
    i += 1
    if value < mask:
        return value, i
    shift = 0
    while True:
        byte = data[i]
        i += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i
        if shift > 28:
            raise HpackError("an integer longer than 4 bytes")


def _string(data: bytes, i: int) -> tuple[bytes, int]:
    huffman = data[i] & 0x80
    length, i = _integer(data, i, 0x7F)
    end = i + length
    if end > len(data):
        raise HpackError("a string runs past the end of its block")
    raw = data[i:end]
    return (decode_huffman(raw) if huffman else raw), end


# -- what the server sends -------------------------------------------------------------------
def encode_integer(value: int, mask: int, first: int = 0) -> bytes:
    if value < mask:
        return bytes((first | value,))
    out = [first | mask]
    value -= mask
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    """A field not added to the table, its name a literal too (no Huffman)."""
    return b"\x00" + encode_integer(len(name), 0x7F) + name + encode_integer(len(value), 0x7F) + value


STATUS_200 = b"\x88"  # static index 8
# content-type, by the static table's name (index 31), not added
CONTENT_TYPE_GRPC = encode_integer(31, 0x0F) + encode_integer(16, 0x7F) + b"application/grpc"
