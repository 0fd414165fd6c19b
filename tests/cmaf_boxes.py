"""A small ISO-BMFF reader for checking CMAF rules in tests (independent of the muxer)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"mvex", b"moof", b"traf", b"edts"}
NTP_UNIX_OFFSET = 2_208_988_800


@dataclass
class Box:
    kind: bytes
    payload: bytes
    children: list[Box] = field(default_factory=list)

    def find(self, *path: bytes) -> Box | None:
        node: Box | None = self
        for kind in path:
            assert node is not None
            node = next((c for c in node.children if c.kind == kind), None)
            if node is None:
                return None
        return node


def parse(data: bytes) -> list[Box]:
    boxes, pos = [], 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            size = struct.unpack_from(">Q", data, pos + 8)[0]
            header = 16
        if size < header or pos + size > len(data):
            raise ValueError(f"truncated box {kind!r} at {pos}")
        payload = data[pos + header : pos + size]
        box = Box(kind, payload)
        if kind in CONTAINERS:
            box.children = parse(payload)
        boxes.append(box)
        pos += size
    if pos != len(data):
        raise ValueError("trailing bytes after the last box")
    return boxes


def full_box(payload: bytes) -> tuple[int, int, bytes]:
    version = payload[0]
    flags = int.from_bytes(payload[1:4], "big")
    return version, flags, payload[4:]


@dataclass
class Fragment:
    sequence: int
    base_media_decode_time: int
    default_base_is_moof: bool
    sample_durations: list[int]
    first_sample_is_sync: bool
    prft_ntp_unix_s: float | None


def fragment_info(moof: Box, prft: Box | None, default_duration: int) -> Fragment:
    mfhd = moof.find(b"mfhd")
    traf = moof.find(b"traf")
    assert mfhd is not None and traf is not None
    sequence = struct.unpack(">I", full_box(mfhd.payload)[2][:4])[0]
    tfhd, tfdt, trun = traf.find(b"tfhd"), traf.find(b"tfdt"), traf.find(b"trun")
    assert tfhd is not None and tfdt is not None and trun is not None
    _, tfhd_flags, tfhd_rest = full_box(tfhd.payload)
    # tfhd optional fields: base_data_offset(8) sdi(4) default_duration(4) size(4) flags(4)
    off = 4
    default_flags = None
    if tfhd_flags & 0x01:
        off += 8
    if tfhd_flags & 0x02:
        off += 4
    if tfhd_flags & 0x08:
        default_duration = struct.unpack_from(">I", tfhd_rest, off)[0]
        off += 4
    if tfhd_flags & 0x10:
        off += 4
    if tfhd_flags & 0x20:
        default_flags = struct.unpack_from(">I", tfhd_rest, off)[0]
    version, _, rest = full_box(tfdt.payload)
    bmdt = struct.unpack(">Q" if version == 1 else ">I", rest[: 8 if version == 1 else 4])[0]

    _, trun_flags, rest = full_box(trun.payload)
    count = struct.unpack_from(">I", rest)[0]
    pos = 4
    if trun_flags & 0x01:
        pos += 4
    first_flags = None
    if trun_flags & 0x04:
        first_flags = struct.unpack_from(">I", rest, pos)[0]
        pos += 4
    durations = []
    sample_flags = []
    for _ in range(count):
        d = default_duration
        f = default_flags
        if trun_flags & 0x100:
            d = struct.unpack_from(">I", rest, pos)[0]
            pos += 4
        if trun_flags & 0x200:
            pos += 4
        if trun_flags & 0x400:
            f = struct.unpack_from(">I", rest, pos)[0]
            pos += 4
        if trun_flags & 0x800:
            pos += 4
        durations.append(d)
        sample_flags.append(f)
    flags0 = first_flags if first_flags is not None else sample_flags[0]
    # sample_is_non_sync_sample is bit 16 of the sample flags.
    first_sync = flags0 is None or not (flags0 >> 16) & 1
    ntp = None
    if prft is not None:
        version, _, rest = full_box(prft.payload)
        secs, frac = struct.unpack_from(">II", rest, 4)
        ntp = secs - NTP_UNIX_OFFSET + frac / 2**32
    return Fragment(sequence, bmdt, bool(tfhd_flags & 0x020000), durations, first_sync, ntp)


def timescale(init: bytes) -> int:
    moov = next(b for b in parse(init) if b.kind == b"moov")
    mdhd = moov.find(b"trak", b"mdia", b"mdhd")
    assert mdhd is not None
    version, _, rest = full_box(mdhd.payload)
    return struct.unpack_from(">I", rest, 16 if version == 1 else 8)[0]


def parts_of(data: bytes) -> list[tuple[Box | None, Box, Box]]:
    """Split media bytes into (prft, moof, mdat) triples; fails on any other layout."""
    out: list[tuple[Box | None, Box, Box]] = []
    prft = None
    moof = None
    for box in parse(data):
        if box.kind == b"prft":
            prft = box
        elif box.kind == b"moof":
            moof = box
        elif box.kind == b"mdat":
            assert moof is not None, "mdat without moof"
            out.append((prft, moof, box))
            prft = moof = None
        elif box.kind not in (b"styp", b"sidx"):
            raise AssertionError(f"unexpected box {box.kind!r} in media")
    return out
