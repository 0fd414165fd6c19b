"""AMF0, the value encoding of RTMP commands (connect, publish, onStatus ...).

Only what a publishing client sends and reads: numbers, booleans, strings, null,
objects and ECMA arrays (decoded as dicts), strict arrays.
"""

from __future__ import annotations

import struct
from typing import Any

NUMBER, BOOLEAN, STRING, OBJECT, NULL, UNDEFINED, ECMA_ARRAY, OBJECT_END = 0, 1, 2, 3, 5, 6, 8, 9
STRICT_ARRAY, LONG_STRING = 10, 12


class AmfError(ValueError):
    pass


def encode(*values: Any) -> bytes:
    return b"".join(_encode(v) for v in values)


def _encode(v: Any) -> bytes:
    if v is None:
        return bytes([NULL])
    if isinstance(v, bool):
        return bytes([BOOLEAN, int(v)])
    if isinstance(v, int | float):
        return bytes([NUMBER]) + struct.pack(">d", float(v))
    if isinstance(v, str):
        raw = v.encode()
        if len(raw) > 0xFFFF:
            return bytes([LONG_STRING]) + struct.pack(">I", len(raw)) + raw
        return bytes([STRING]) + _short_string(v)
    if isinstance(v, dict):
        body = b"".join(_short_string(k) + _encode(x) for k, x in v.items())
        return bytes([OBJECT]) + body + b"\x00\x00" + bytes([OBJECT_END])
    if isinstance(v, list | tuple):
        return bytes([STRICT_ARRAY]) + struct.pack(">I", len(v)) + b"".join(map(_encode, v))
    raise AmfError(f"cannot encode {type(v).__name__} in AMF0")


def _short_string(s: str) -> bytes:
    raw = s.encode()
    return struct.pack(">H", len(raw)) + raw


def decode(data: bytes) -> list[Any]:
    """All values in `data`; AmfError on a truncated or unknown encoding."""
    values, pos = [], 0
    while pos < len(data):
        value, pos = _decode(data, pos)
        values.append(value)
    return values


def _decode(d: bytes, pos: int) -> tuple[Any, int]:
    try:
        marker = d[pos]
        pos += 1
        if marker == NUMBER:
            return struct.unpack_from(">d", d, pos)[0], pos + 8
        if marker == BOOLEAN:
            return d[pos] != 0, pos + 1
        if marker == STRING:
            return _string(d, pos, 2)
        if marker == LONG_STRING:
            return _string(d, pos, 4)
        if marker in (NULL, UNDEFINED):
            return None, pos
        if marker == OBJECT:
            return _properties(d, pos)
        if marker == ECMA_ARRAY:
            return _properties(d, pos + 4)  # the count is a hint; the end marker ends it
        if marker == STRICT_ARRAY:
            (count,) = struct.unpack_from(">I", d, pos)
            pos += 4
            items = []
            for _ in range(count):
                item, pos = _decode(d, pos)
                items.append(item)
            return items, pos
    except (IndexError, struct.error):
        raise AmfError("truncated AMF0 value") from None
    raise AmfError(f"unsupported AMF0 marker {marker}")


def _string(d: bytes, pos: int, width: int) -> tuple[str, int]:
    size = int.from_bytes(d[pos:pos + width], "big")
    start = pos + width
    if start + size > len(d):
        raise AmfError("truncated AMF0 string")
    return d[start:start + size].decode(errors="replace"), start + size


def _properties(d: bytes, pos: int) -> tuple[dict[str, Any], int]:
    out: dict[str, Any] = {}
    while True:
        key, pos = _string(d, pos, 2)
        if not key and pos < len(d) and d[pos] == OBJECT_END:
            return out, pos + 1
        out[key], pos = _decode(d, pos)
