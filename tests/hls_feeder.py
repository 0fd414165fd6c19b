"""A segment store fed the way the packager feeds it, and readers of the playlists, for
the LL-HLS tests (fake payloads: these tests are about playlists and HTTP, not media)."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from fractions import Fraction

from appliance.media.packet import TrackInfo
from appliance.package import hls
from appliance.package.store import SegmentStore, TrackStore
from tests.hls_rules import parse_attributes as _parse_attributes

PART_S, SEGMENT_S, WINDOW_S = 0.2, 1.0, 12.0
AUDIO_PART_S = 9 * 1024 / 48000  # 9 AAC frames at 48 kHz: 0.192 s
WALL0_NS = 1_700_000_000_123_000_000

VIDEO_720 = TrackInfo(name="720p", kind="video", codec="h264", codecs="avc1.64001f",
                      time_base=Fraction(1, 90000), bitrate=3_000_000, width=1280,
                      height=720, fps=Fraction(30))
VIDEO_360 = TrackInfo(name="360p", kind="video", codec="h264", codecs="avc1.42c01e",
                      time_base=Fraction(1, 90000), bitrate=800_000, width=640, height=360,
                      fps=Fraction(30))
AUDIO = TrackInfo(name="audio", kind="audio", codec="aac", codecs="mp4a.40.2",
                  time_base=Fraction(1, 48000), bitrate=128_000, sample_rate=48000,
                  channels=2, frame_size=1024)


@dataclass
class Published:
    track: str
    msn: int
    index: int
    at: float  # loop time


class Feeder:
    """Appends parts the way the packager does, by media time, optionally in real time.

    Video: parts of `part_s`, a new segment (starting independent) every `segment_s`.
    Audio: parts of 9 AAC frames, a segment at the part nearest each segment boundary.
    Payload bytes are fake, sized from the configured bitrate.
    """

    def __init__(self, store: SegmentStore, videos: tuple[TrackInfo, ...] = (VIDEO_720,),
                 audio: bool = True, part_s: float = PART_S, segment_s: float = SEGMENT_S,
                 window_s: float = WINDOW_S, bytes_scale: float = 1.0):
        self.store = store
        self.part_s, self.segment_s = part_s, segment_s
        self.bytes_scale = bytes_scale
        self.infos = list(videos) + ([AUDIO] if audio else [])
        self.next_start = {info.name: 0.0 for info in self.infos}
        self.counts = {info.name: 0 for info in self.infos}
        self.audio_index = -1
        self.now = 0.0  # media time fed so far
        self.published: list[Published] = []
        for info in self.infos:
            track = TrackStore(info, part_s, segment_s, window_s)
            track.set_init(b"init-" + info.name.encode())
            store.add_track(track)

    def track(self, name: str) -> TrackStore:
        return self.store.tracks[name]

    def advance_to(self, t: float) -> None:
        """Publish every part that ends at or before media time t, oldest first."""
        while True:
            name = min(self.next_start, key=lambda n: self.next_start[n] + self._dur(n))
            if self.next_start[name] + self._dur(name) > t + 1e-9:
                break
            self._publish(name)
        self.now = t

    def advance(self, seconds: float) -> None:
        self.advance_to(self.now + seconds)

    def advance_parts(self, name: str, count: int = 1) -> None:
        """Publish the next `count` parts of `name` (others catch up to the same time)."""
        for _ in range(count):
            self.advance_to(self.next_start[name] + self._dur(name))

    async def run(self, speed: float = 1.0) -> None:
        """Keep publishing in real time (media time / speed) until cancelled."""
        loop = asyncio.get_running_loop()
        t0, m0 = loop.time(), self.now
        while True:
            nxt = min(self.next_start[n] + self._dur(n) for n in self.next_start)
            await asyncio.sleep(max(0.0, t0 + (nxt - m0) / speed - loop.time()))
            self.advance_to(nxt)

    def _dur(self, name: str) -> float:
        return AUDIO_PART_S if name == "audio" else self.part_s

    def _publish(self, name: str) -> None:
        info = next(i for i in self.infos if i.name == name)
        start, dur = self.next_start[name], self._dur(name)
        if info.kind == "video":
            per_segment = round(self.segment_s / self.part_s)
            new_segment = self.counts[name] % per_segment == 0
            independent = new_segment
        else:
            index = math.floor((start + dur / 2) / self.segment_s)
            new_segment, independent = index != self.audio_index, True
            self.audio_index = index
        size = max(16, int(info.bitrate * dur / 8 * self.bytes_scale))
        data = f"{name}:{self.counts[name]}:".encode().ljust(size, b".")
        track = self.track(name)
        track.add_part(data, start, dur, independent, new_segment,
                       WALL0_NS + round(start * 1e9))
        pos = track.last_position()
        assert pos is not None
        self.published.append(Published(name, pos[0], pos[1], asyncio.get_running_loop().time()))
        self.counts[name] += 1
        self.next_start[name] = start + dur


def parse_attributes(text: str) -> dict[str, str]:
    attrs = _parse_attributes(text)
    assert attrs is not None, text
    return attrs


def timing_of(store: SegmentStore) -> hls.Timing:
    timing = hls.store_timing(store)
    assert timing is not None
    return timing


def media(store: SegmentStore, name: str, skip: str | None = None) -> str:
    track = store.tracks[name]
    text = hls.render_media_playlist(store, track, timing_of(store), skip)  # type: ignore[arg-type]
    assert text is not None
    return text


def tag_values(text: str, tag: str) -> list[str]:
    return [line.split(":", 1)[1] for line in text.splitlines() if line.startswith(tag + ":")]


def one(text: str, tag: str) -> str:
    values = tag_values(text, tag)
    assert len(values) == 1, (tag, values)
    return values[0]


@dataclass
class Listed:
    uri: str
    duration: float
    pdt: str
    parts: list[str]


def segments_of(text: str) -> list[Listed]:
    """The complete segments of a media playlist: URI, EXTINF, PDT, part URIs."""
    out: list[Listed] = []
    pdt, parts, duration = "", list[str](), 0.0
    for line in text.splitlines():
        if line.startswith("#EXT-X-PROGRAM-DATE-TIME:"):
            pdt, parts = line.split(":", 1)[1], []
        elif line.startswith("#EXT-X-PART:"):
            parts.append(parse_attributes(line.split(":", 1)[1])["URI"])
        elif line.startswith("#EXTINF:"):
            duration = float(line.split(":", 1)[1].rstrip(","))
        elif line and not line.startswith("#"):
            out.append(Listed(line, duration, pdt, parts))
    return out
