"""The segment store: the recent CMAF init, segments and parts of every track, in memory.

Written only from the event loop (packager threads hand over with
call_soon_threadsafe); readers (HLS, DASH, HTTP) wait on `changed` for new parts.
A segment's bytes are its parts' bytes, kept once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from appliance.media.packet import TrackInfo


@dataclass(slots=True)
class Part:
    index: int  # within its segment, from 0
    data: bytes
    start: float  # media seconds
    duration: float  # seconds
    independent: bool  # starts with a keyframe (always true for audio)


@dataclass(slots=True)
class Segment:
    msn: int  # media sequence number
    start: float  # media seconds of the first sample
    wall_ns: int  # wall-clock time of the first sample (PROGRAM-DATE-TIME)
    parts: list[Part] = field(default_factory=list)
    complete: bool = False

    @property
    def duration(self) -> float:
        return sum(p.duration for p in self.parts)

    @property
    def data(self) -> bytes:
        return b"".join(p.data for p in self.parts)

    @property
    def size(self) -> int:
        return sum(len(p.data) for p in self.parts)


class TrackStore:
    """One track's window of media, plus a condition that wakes blocked requests."""

    def __init__(self, info: TrackInfo, part_target: float, segment_target: float, window_s: float,
                 first_msn: int = 0):
        self.info = info
        self.first_msn = first_msn
        self.part_target = part_target
        self.segment_target = segment_target
        self.window_s = window_s
        self.init: bytes | None = None
        self.segments: deque[Segment] = deque()
        self.changed = asyncio.Condition()
        self.bytes_total = 0  # all media bytes ever stored, for bitrate figures
        self.retired = False  # dropped from the store: it will never change again

    # -- writing (event loop only) ------------------------------------------------

    def set_init(self, data: bytes) -> None:
        self.init = data
        self._notify()

    def add_part(self, data: bytes, start: float, duration: float, independent: bool,
                 new_segment: bool, wall_ns: int) -> None:
        """Append a part; `new_segment` closes the open segment and starts the next."""
        open_seg = self.open_segment
        if new_segment or open_seg is None:
            if open_seg is not None:
                open_seg.complete = True
            msn = self.segments[-1].msn + 1 if self.segments else self.first_msn
            open_seg = Segment(msn=msn, start=start, wall_ns=wall_ns)
            self.segments.append(open_seg)
        open_seg.parts.append(Part(len(open_seg.parts), data, start, duration, independent))
        self.bytes_total += len(data)
        self._expire()
        self._notify()

    def _expire(self) -> None:
        # Keep whole segments covering window_s behind the live edge, drop the rest.
        edge = self.segments[-1].start
        while len(self.segments) > 2 and edge - self.segments[1].start > self.window_s:
            self.segments.popleft()

    def retire(self) -> None:
        """The media restarted without this track: wake whoever waits on it, for good."""
        self.retired = True
        self._notify()

    def _notify(self) -> None:
        async def wake() -> None:
            async with self.changed:
                self.changed.notify_all()

        asyncio.get_running_loop().create_task(wake())

    # -- reading ------------------------------------------------------------------

    @property
    def open_segment(self) -> Segment | None:
        if self.segments and not self.segments[-1].complete:
            return self.segments[-1]
        return None

    @property
    def playable(self) -> bool:
        """A whole segment is held (they complete in order, so the oldest is): what an HLS
        player needs to start; hls.js takes a playlist of parts alone for an empty one."""
        return bool(self.segments) and self.segments[0].complete

    @property
    def complete_segments(self) -> list[Segment]:
        return [s for s in self.segments if s.complete]

    def last_position(self) -> tuple[int, int] | None:
        """(msn, part index) of the newest part, or None before the first part."""
        if not self.segments:
            return None
        seg = self.segments[-1]
        return seg.msn, len(seg.parts) - 1

    def segment(self, msn: int) -> Segment | None:
        if not self.segments:
            return None
        i = msn - self.segments[0].msn
        if 0 <= i < len(self.segments):
            return self.segments[i]
        return None

    def part(self, msn: int, index: int) -> Part | None:
        seg = self.segment(msn)
        if seg is None or not 0 <= index < len(seg.parts):
            return None
        return seg.parts[index]

    async def wait_until(self, ready: Callable[[], bool], timeout: float) -> bool:
        """Wait until `ready()` holds (checked at each change); False after `timeout` s,
        or as soon as the track is retired (what it waits for would never come)."""
        if ready():
            return True
        try:
            async with asyncio.timeout(timeout), self.changed:
                await self.changed.wait_for(lambda: ready() or self.retired)
        except TimeoutError:
            pass
        return ready()


class SegmentStore:
    """All tracks, by name ("720p", "audio")."""

    def __init__(self) -> None:
        self.tracks: dict[str, TrackStore] = {}
        # The tracks the pipeline will make; the multivariant playlist waits a moment for
        # them so that a player arriving at start-up is not given video without audio.
        self.expected: set[str] = set()

    @property
    def all_expected_present(self) -> bool:
        return self.expected <= self.tracks.keys()

    def add_track(self, track: TrackStore) -> None:
        self.tracks[track.info.name] = track

    def clear(self) -> None:
        """Drop every track (the media restarts); requests waiting on one end now."""
        for track in self.tracks.values():
            track.retire()
        self.tracks.clear()

    def video_tracks(self) -> list[TrackStore]:
        return [t for t in self.tracks.values() if t.info.kind == "video"]

    def audio_tracks(self) -> list[TrackStore]:
        return [t for t in self.tracks.values() if t.info.kind == "audio"]
