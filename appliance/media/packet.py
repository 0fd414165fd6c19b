"""What flows on the media bus: encoded packets and the description of their track."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Literal


@dataclass(frozen=True, slots=True)
class TrackInfo:
    """A track's codec parameters, enough for a muxer or a playlist to describe it."""

    name: str  # the rung name for video ("720p"), "audio" for audio; used in URLs
    kind: Literal["video", "audio"]
    codec: str  # ffmpeg codec name: "h264", "aac"
    codecs: str  # RFC 6381 string for playlists: "avc1.64001f", "mp4a.40.2"
    time_base: Fraction
    bitrate: int  # bits per second, as configured
    peak_bitrate: int = 0  # the most one segment can carry, by the rate control; 0: bitrate
    width: int = 0
    height: int = 0
    fps: Fraction = Fraction(0)
    sample_rate: int = 0
    channels: int = 0
    frame_size: int = 0  # audio samples per packet (1024 for AAC)


@dataclass(frozen=True, slots=True)
class EncodedPacket:
    """One encoded access unit. Immutable, so consumers on other threads can share it."""

    track: str
    data: bytes
    pts: int  # in track time_base, zero at the media clock's start
    dts: int
    duration: int
    time_base: Fraction
    keyframe: bool
    capture_ns: int  # wall-clock capture time of this unit, ns since the Unix epoch
