"""CMAF packaging of one track: libavformat's mp4 muxer writes the boxes, we cut them.

The muxer is told to fragment at every keyframe and every part duration; it writes
[prft] moof mdat for a fragment when the first packet of the next one arrives. We
read its output box by box: ftyp+moov is the init segment, each prft+moof+mdat a part.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from fractions import Fraction

import av

from appliance.media.avmux import add_track_stream, mux_packet
from appliance.media.packet import EncodedPacket, TrackInfo

NTP_UNIX_OFFSET_NS = 2_208_988_800 * 1_000_000_000  # 1900-01-01 to 1970-01-01


@dataclass(frozen=True, slots=True)
class MuxedPart:
    data: bytes
    start: float  # media seconds
    duration: float
    independent: bool
    new_segment: bool
    wall_ns: int  # capture wall clock of the first sample


def part_frames(info: TrackInfo, part_s: float) -> int:
    """Whole frames per part such that a part never exceeds `part_s` (PART-TARGET)."""
    frame_s = 1 / float(info.fps) if info.kind == "video" else info.frame_size / info.sample_rate
    return max(1, math.floor(part_s / frame_s + 1e-9))


class _BoxSink:
    """File-like sink for the muxer that collects bytes and yields whole top-level boxes."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def write(self, data: bytes) -> int:
        self._buf += data
        return len(data)

    def boxes(self) -> list[tuple[bytes, bytes]]:
        out = []
        while len(self._buf) >= 8:
            size, kind = struct.unpack_from(">I4s", self._buf)
            if size == 1 and len(self._buf) >= 16:
                size = struct.unpack_from(">Q", self._buf, 8)[0]
            if size < 8 or len(self._buf) < size:
                break
            out.append((kind, bytes(self._buf[:size])))
            del self._buf[:size]
        return out


class CmafMuxer:
    """Feed EncodedPackets of one track; get the init segment once, then parts."""

    def __init__(self, info: TrackInfo, part_s: float, segment_s: float):
        self.info = info
        self.segment_s = segment_s
        frames = part_frames(info, part_s)
        if info.kind == "video":
            frag_us = frames * 1_000_000 / float(info.fps)
        else:
            frag_us = frames * info.frame_size * 1_000_000 / info.sample_rate
        self._sink = _BoxSink()
        self._container = av.open(
            self._sink, "w", format="mp4",
            options={
                # frag_discont: tfdt carries our timestamps; without it the muxer restarts
                # each track at zero, and tracks that started apart fall out of sync.
                "movflags": "empty_moov+default_base_moof+frag_keyframe+cmaf+skip_trailer"
                "+frag_discont",
                # A hair under the exact part length so float rounding never adds a frame.
                "frag_duration": str(int(frag_us) - 5),
                # A prft box before each moof; its NTP time is set to the capture time below.
                "write_prft": "pts",
            },
        )
        self._stream = add_track_stream(self._container, info)
        self.init: bytes | None = None
        self._pending: list[EncodedPacket] = []  # packets of the fragment being written
        self._init_boxes: list[bytes] = []
        self._part_boxes: list[bytes] = []
        self._segment_index = -1

    def feed(self, pkt: EncodedPacket) -> list[MuxedPart]:
        mux_packet(self._container, self._stream, pkt)
        parts = self._collect(pkt)
        self._pending.append(pkt)
        return parts

    def _collect(self, next_pkt: EncodedPacket) -> list[MuxedPart]:
        parts: list[MuxedPart] = []
        for kind, box in self._sink.boxes():
            if kind == b"prft":
                box = self._stamp_prft(box)
            if self.init is None:
                self._init_boxes.append(box)
                if kind == b"moov":
                    self.init = b"".join(self._init_boxes)
                continue
            self._part_boxes.append(box)
            if kind == b"mdat":
                parts.append(self._make_part(b"".join(self._part_boxes), next_pkt))
                self._part_boxes = []
        return parts

    def _stamp_prft(self, box: bytes) -> bytes:
        # libavformat's prft holds the pts or the write time; flags 0 promise the time
        # the sample entered the encoder, which is the capture time we carry.
        capture_ns = self._pending[0].capture_ns
        secs, rem = divmod(capture_ns + NTP_UNIX_OFFSET_NS, 1_000_000_000)
        ntp = (secs << 32) | (rem << 32) // 1_000_000_000
        return box[:16] + struct.pack(">Q", ntp) + box[24:]

    def _make_part(self, data: bytes, next_pkt: EncodedPacket) -> MuxedPart:
        # The muxer flushed the fragment before taking the packet just fed, so it
        # holds exactly the packets pending until now, and (like the muxer's sample
        # durations) it lasts until that packet.
        pkts, self._pending = self._pending, []
        first = pkts[0]
        tb: Fraction = first.time_base
        start = float(first.pts * tb)
        duration = float((next_pkt.dts - first.dts) * tb)
        if self.info.kind == "video":
            new_segment = first.keyframe
        else:
            # Audio has no keyframes: start a segment at the part nearest each video
            # segment boundary so audio and video segments cover about the same time.
            index = math.floor((start + duration / 2) / self.segment_s)
            new_segment = index != self._segment_index
            self._segment_index = index
        return MuxedPart(data, start, duration, first.keyframe, new_segment, first.capture_ns)
