"""H.264 and AAC encoders (PyAV) that turn raw frames into EncodedPackets.

Keyframes are placed by media time, not frame count: every rung forces an IDR on
the first frame at or after each segment boundary, so GOPs line up across rungs
even when the source skips frames.
"""

from __future__ import annotations

import logging
import math
import time
from fractions import Fraction
from typing import Any

import av
from av.video.frame import PictureType
from av.video.reformatter import VideoReformatter

from appliance.capture.source import Captured, SourceError
from appliance.media.clock import MediaClock
from appliance.media.packet import EncodedPacket, TrackInfo
from appliance.media.stamp import carry_stamp, luma

log = logging.getLogger(__name__)

VIDEO_TIME_BASE = Fraction(1, 90000)
# The rate control's buffer, in seconds of the bitrate: a segment may carry this much
# more than segment_s x bitrate (a scene change), which BANDWIDTH must allow for.
VBV_BUFFER_S = 1.0
# Scale each rung on one thread: PyAV 17+ hands a picture to a pool of threads by default,
# which for 720p to 480p and 360p costs a tenth more CPU in hand-offs and saves no time
# (as ffmpeg's scale filter, older PyAV scales on the calling thread).
SCALE_OPTIONS: dict[str, Any] = {"threads": 1} if int(av.__version__.split(".")[0]) >= 17 else {}
# The Raspberry Pi 4 / Zero 2 W stateful H.264 encoder (bcm2835-codec); Pi 5 has none.
PI_H264_ENCODER = "/dev/video11"
PI_H264_ENCODER_CARD = "bcm2835-codec-encode"


def h264_codecs_string(annexb: bytes) -> str | None:
    """RFC 6381 "avc1.PPCCLL" from the first SPS in an Annex B access unit."""
    i = 0
    while True:
        i = annexb.find(b"\x00\x00\x01", i)
        if i < 0 or i + 7 > len(annexb):
            return None
        header = annexb[i + 3]
        if header & 0x1F == 7:  # SPS: profile_idc, constraint flags, level_idc follow
            return "avc1." + annexb[i + 4 : i + 7].hex()
        i += 3


def hardware_h264_available() -> bool:
    """The Pi's V4L2 H.264 encoder, identified as picamera2 does: by its card name."""
    from appliance.capture.v4l2 import query_caps

    try:
        return query_caps(PI_H264_ENCODER).card == PI_H264_ENCODER_CARD
    except SourceError:
        return False


class LatenessWindow:
    """How far behind real time an encoder's output is: wall time as a packet leaves the
    encoder minus its capture time, averaged and maxed over a window."""

    def __init__(self) -> None:
        self._sum = self._max = self._count = 0

    def add(self, late_ns: int) -> None:
        self._sum += late_ns
        self._max = max(self._max, late_ns)
        self._count += 1

    def take(self) -> dict[str, float | None]:
        """lateness_ms_avg / _max of the window (None when nothing came out), then reset."""
        n = self._count
        out = {"lateness_ms_avg": round(self._sum / n / 1e6, 1) if n else None,
               "lateness_ms_max": round(self._max / 1e6, 1) if n else None}
        self._sum = self._max = self._count = 0
        return out


class VideoEncoder:
    """One rung: scale the captured frame, encode with x264 (or the Pi's V4L2 M2M encoder).

    It takes the smallest picture the source offers that is at least the rung's size (the
    camera's lores stream when there is one), so a rung of the lores size is not scaled.
    """

    def __init__(self, name: str, width: int, height: int, fps: int, bitrate_kbps: int,
                 segment_s: float, clock: MediaClock, preset: str = "veryfast",
                 hardware: bool = False):
        self.name, self.width, self.height, self.fps = name, width, height, fps
        self.bitrate = bitrate_kbps * 1000
        self.segment_s = segment_s
        self.clock = clock
        self.hardware = hardware
        self._last_segment = -1
        self._last_slot = -1  # the last slot encoded
        self._last_seen = -1  # the last slot a frame came for, encoded or not
        self._gop_slots = max(1, round(segment_s * fps))
        # (n, period): encode every nth slot, the pattern restarting every `period` slots
        # from each segment's start. set_decimation (any thread) replaces the requested
        # tuple; the capture thread adopts it at the next segment start.
        self._decimation = self._requested = (1, self._gop_slots)
        self._slot_pattern = self._decimation  # the decimation _last_slot was encoded under
        self._durations: dict[int, int] = {}  # pts -> duration, until the packet is out
        self._last_frame: av.VideoFrame | None = None
        self.frames = 0  # pictures encoded, repeats included
        self.repeated = 0  # frames repeated to fill slots the source skipped
        self.dropped = 0  # slots left empty: a gap too long to fill with repeats
        self.input = "main"  # where the pictures come from: main or lores, scaled or not
        self._late = LatenessWindow()
        self.info: TrackInfo | None = None  # known once the first keyframe carries the SPS
        self._scaler = VideoReformatter()
        self.ctx = self._open(preset)

    @property
    def kind(self) -> str:
        return "hardware" if self.hardware else "x264"

    def _open(self, preset: str) -> av.VideoCodecContext:
        gop = max(1, round(self.segment_s * self.fps))
        codec = "h264_v4l2m2m" if self.hardware else "libx264"
        ctx = av.CodecContext.create(codec, "w")
        assert isinstance(ctx, av.VideoCodecContext)
        ctx.width, ctx.height, ctx.pix_fmt = self.width, self.height, "yuv420p"
        ctx.time_base = VIDEO_TIME_BASE
        ctx.framerate = Fraction(self.fps)
        ctx.bit_rate = self.bitrate
        if self.hardware:
            # SPS/PPS before every IDR so each segment and any joining viewer can decode.
            ctx.options = {"repeat_sequence_header": "1"}
            ctx.gop_size = gop
        else:
            # zerolatency: no B-frames, no lookahead, so a frame leaves as soon as it is in.
            # keyint above the GOP: IDRs come from forced pict_type at segment boundaries.
            ctx.options = {
                "preset": preset,
                "tune": "zerolatency",
                "x264-params": (
                    f"keyint={2 * gop}:min-keyint={gop}:scenecut=0:forced-idr=1:"
                    f"repeat-headers=1:vbv-maxrate={self.bitrate // 1000}:"
                    f"vbv-bufsize={round(self.bitrate * VBV_BUFFER_S) // 1000}"
                ),
            }
        ctx.open()
        return ctx

    @property
    def decimation(self) -> int:
        """The decimation in effect (set_decimation's takes effect at a segment start)."""
        return self._decimation[0]

    def set_decimation(self, n: int, part_s: float | None = None) -> None:
        """Encode only every `n`th slot of the frame grid (1: every frame), for less load.

        The slots in between stay empty, not filled with repeats: the encoder gets 1/n of
        the frames, timestamps stay on the grid, and each packet lasts until the next.
        The pattern restarts at each segment's start, so its IDR stays there, and with
        `part_s` (the packager's part duration) at each part's, so every part ends on an
        encoded frame and stays within PART-TARGET. Safe to call from any thread; it takes
        effect at the next segment start, where every pattern encodes the slot, so a
        packet's duration never depends on a change that came after it.
        """
        if n < 1:
            raise ValueError(f"decimation must be at least 1, not {n}")
        period = self._gop_slots
        if part_s is not None:
            period = max(1, min(period, math.floor(part_s * self.fps + 1e-9)))
        self._requested = (n, period)

    def _kept(self, slot: int, decimation: tuple[int, int]) -> bool:
        n, period = decimation
        return slot % self._gop_slots % period % n == 0

    def encode(self, cap: Captured) -> list[EncodedPacket]:
        # Snap capture times to the nominal frame grid: parts then hold whole frame
        # durations exactly and never exceed PART-TARGET through camera jitter.
        slot = max(round(cap.media_ns * self.fps / 1e9), self._last_seen + 1)
        if slot // self._gop_slots != max(self._last_seen, 0) // self._gop_slots:
            self._decimation = self._requested  # a new segment: a new pattern may start
        self._last_seen = slot
        if not self._kept(slot, self._decimation):
            return []  # decimated: left empty, before any scaling work
        frame = source = self._pick_input(cap)
        if (source.width, source.height) != (self.width, self.height) or (
                source.format.name != "yuv420p"):
            # One reformatter per rung: it keeps its libswscale context between frames
            # instead of setting one up for every picture.
            frame = self._scaler.reformat(source, self.width, self.height, "yuv420p",
                                          **SCALE_OPTIONS)
            # Scaling by an odd ratio smears the latency stamp's cells: redraw it (a
            # no-op for pictures without a stamp) so every rung carries a readable one.
            carry_stamp(luma(source), luma(frame))
        packets: list[EncodedPacket] = []
        missing = [s for s in range(self._last_slot + 1, slot) if self._kept(s, self._pattern(s))
                   ] if self._last_frame is not None else []
        if missing and slot - self._last_slot - 1 <= self.fps // 2:
            # The source skipped frames (it fell behind): repeat the last picture in their
            # slots. A hole in the timeline makes players stall, and a stretched frame
            # would make its part longer than PART-TARGET. A repeat costs x264 little.
            self.repeated += len(missing)
            for s in missing:
                packets += self._encode_at(self._last_frame, s)
        else:
            self.dropped += len(missing)  # the source was gone: leave the hole
        packets += self._encode_at(frame, slot)
        self._last_frame = frame
        return packets

    def _pick_input(self, cap: Captured) -> av.VideoFrame:
        main, lores = cap.frame, cap.lores
        assert isinstance(main, av.VideoFrame)
        source, name = main, "main"
        if lores is not None and lores.width >= self.width and lores.height >= self.height:
            source, name = lores, "lores"
        scaled = (source.width, source.height) != (self.width, self.height)
        self.input = f"{name}, scaled" if scaled else name
        return source

    def stats(self) -> dict[str, Any]:
        """For the status hub: what this rung runs on and how it keeps up. Lateness is
        over the packets since the last call."""
        return {"encoder": self.kind, "input": self.input, "width": self.width,
                "height": self.height, "bitrate_kbps": self.bitrate // 1000,
                "frames": self.frames, "repeated_frames": self.repeated,
                "dropped_frames": self.dropped, "decimation": self.decimation,
                **self._late.take()}

    def _pattern(self, slot: int) -> tuple[int, int]:
        """The decimation `slot` was under: the one before the current one for the rest of
        the segment encoded last (filling slots the source skipped there)."""
        if self._last_slot >= 0 and slot // self._gop_slots == self._last_slot // self._gop_slots:
            return self._slot_pattern
        return self._decimation

    def _encode_at(self, frame: av.VideoFrame | None, slot: int) -> list[EncodedPacket]:
        assert frame is not None
        pattern = self._pattern(slot)
        self._last_slot, self._slot_pattern = slot, pattern
        frame.pts, frame.time_base = slot * 90_000 // self.fps, VIDEO_TIME_BASE
        # The packet lasts until the next slot that is encoded (the next one, undecimated);
        # at the latest the next segment's start, which every pattern encodes.
        next_slot = slot + 1
        while not self._kept(next_slot, pattern):
            next_slot += 1
        if len(self._durations) > 4 * self._gop_slots:  # packets the encoder never gave
            self._durations.clear()
        self._durations[frame.pts] = next_slot * 90_000 // self.fps - frame.pts
        segment = int(slot // round(self.segment_s * self.fps))
        # Decoded/lavfi frames can carry pict_type=I; reset it or x264 makes every frame an IDR.
        frame.pict_type = PictureType.I if segment != self._last_segment else PictureType.NONE
        self._last_segment = segment
        self.frames += 1
        return [self._packet(p) for p in self.ctx.encode(frame)]

    def _packet(self, p: av.Packet) -> EncodedPacket:
        data = bytes(p)
        if self.info is None and p.is_keyframe:
            self.info = TrackInfo(
                name=self.name, kind="video", codec="h264",
                codecs=h264_codecs_string(data) or "avc1.640028",
                time_base=VIDEO_TIME_BASE, bitrate=self.bitrate,
                peak_bitrate=round(self.bitrate * (self.segment_s + VBV_BUFFER_S)
                                   / self.segment_s),
                width=self.width, height=self.height, fps=Fraction(self.fps),
            )
        assert p.pts is not None
        capture_ns = self.clock.wall_ns(p.pts * 1_000_000_000 // 90_000)
        self._late.add(time.time_ns() - capture_ns)
        return EncodedPacket(
            track=self.name, data=data, pts=p.pts, dts=p.dts if p.dts is not None else p.pts,
            duration=self._durations.pop(p.pts, 90_000 // self.fps),
            time_base=VIDEO_TIME_BASE, keyframe=p.is_keyframe,
            capture_ns=capture_ns,
        )


class AudioEncoder:
    """AAC-LC. Timestamps count samples from the media clock's start."""

    def __init__(self, sample_rate: int, channels: int, bitrate_kbps: int, clock: MediaClock,
                 name: str = "audio"):
        self.name = name
        self.clock = clock
        self.sample_rate = sample_rate
        self.time_base = Fraction(1, sample_rate)
        ctx = av.CodecContext.create("aac", "w")
        assert isinstance(ctx, av.AudioCodecContext)
        ctx.sample_rate = sample_rate
        ctx.layout = "stereo" if channels == 2 else "mono"
        ctx.format = "fltp"
        ctx.bit_rate = bitrate_kbps * 1000
        ctx.time_base = self.time_base
        ctx.open()
        self.ctx = ctx
        self.frame_size = ctx.frame_size or 1024
        self.resampler = av.AudioResampler(
            format="fltp", layout=ctx.layout, rate=sample_rate, frame_size=self.frame_size
        )
        self._next_pts: int | None = None
        self.silence_samples = 0  # inserted where the source skipped
        self.info = TrackInfo(
            name=name, kind="audio", codec="aac", codecs="mp4a.40.2", time_base=self.time_base,
            bitrate=ctx.bit_rate, sample_rate=sample_rate, channels=channels,
            frame_size=self.frame_size,
        )

    def encode(self, cap: Captured) -> list[EncodedPacket]:
        frame = cap.frame
        assert isinstance(frame, av.AudioFrame)
        frame.pts = round(cap.media_ns * self.sample_rate / 1e9)
        frame.time_base = self.time_base
        out: list[EncodedPacket] = []
        gap = frame.pts - self._next_pts if self._next_pts is not None else 0
        if 0 < gap <= self.sample_rate // 2:
            # The source skipped samples: fill with silence, or the resampler would close
            # the gap by counting samples and audio would drift ahead of video.
            self.silence_samples += gap
            for offset in range(0, gap, frame.samples):
                out += self._encode(self._silence(frame, min(frame.samples, gap - offset)))
        out += self._encode(frame)
        self._next_pts = frame.pts + frame.samples
        # Priming packets (before media time 0, only if audio starts in the first 21 ms)
        # cannot be placed on the timeline.
        return [p for p in out if p.pts >= 0]

    def stats(self) -> dict[str, int]:
        return {"silence_ms": self.silence_samples * 1000 // self.sample_rate}

    def _encode(self, frame: av.AudioFrame) -> list[EncodedPacket]:
        # Frames already as the encoder takes them skip the resampler (a filter graph
        # and a FIFO): a source delivers one format, so the two paths never interleave.
        if (frame.format.name, frame.layout.name, frame.sample_rate, frame.samples) == (
                "fltp", self.ctx.layout.name, self.sample_rate, self.frame_size):
            frames: list[av.AudioFrame] = [frame]
        else:
            frames = self.resampler.resample(frame)
        return [self._packet(p) for f in frames for p in self.ctx.encode(f)]

    def _silence(self, like: av.AudioFrame, samples: int) -> av.AudioFrame:
        assert self._next_pts is not None
        frame = av.AudioFrame(format=like.format.name, layout=like.layout.name, samples=samples)
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        frame.sample_rate, frame.pts = like.sample_rate, self._next_pts
        frame.time_base = self.time_base
        self._next_pts += samples
        return frame

    def _packet(self, p: av.Packet) -> EncodedPacket:
        assert p.pts is not None
        return EncodedPacket(
            track=self.name, data=bytes(p), pts=p.pts, dts=p.dts if p.dts is not None else p.pts,
            duration=p.duration or self.frame_size, time_base=self.time_base, keyframe=True,
            capture_ns=self.clock.wall_ns(p.pts * 1_000_000_000 // self.sample_rate),
        )
