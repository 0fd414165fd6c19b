"""The Raspberry Pi camera through picamera2, which does the H.264 encoding itself.

Pi 4 / Zero 2 W encode in hardware (bcm2835-codec, /dev/video11); Pi 5 has no H.264
block, so picamera2's LibavH264Encoder (libx264) is used there. picamera2 and libcamera
come from Raspberry Pi OS packages and are imported only when a camera is started or
probed, so this module imports anywhere.

Timestamps: picamera2 hands the output each frame's sensor timestamp (CLOCK_BOOTTIME,
in µs, relative to the first encoded frame since 0.3.x; the encoder keeps the first
one in `firsttimestamp`). They are mapped onto the MediaClock, then snapped to the
nominal frame grid in 90 kHz like the x264 rungs, so parts hold whole frame durations.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from typing import Any, Literal

from appliance.capture.encoder import (
    VIDEO_TIME_BASE,
    h264_codecs_string,
    hardware_h264_available,
)
from appliance.capture.source import SourceError
from appliance.capture.v4l2 import DeviceTimestamps
from appliance.media.clock import MediaClock
from appliance.media.packet import EncodedPacket, TrackInfo

log = logging.getLogger(__name__)


EncoderKind = Literal["hardware", "libav"]


def picamera_present() -> bool:
    """picamera2 importable and libcamera lists at least one camera."""
    if importlib.util.find_spec("picamera2") is None:
        return False
    try:
        from picamera2 import Picamera2

        return len(Picamera2.global_camera_info()) > 0
    except Exception:  # a broken libcamera install means no usable camera, not a crash
        log.exception("picamera2 is installed but cannot list cameras")
        return False


def _packet_output(sink: Callable[[bytes, bool, int | None], None]) -> Any:
    """A picamera2 Output that forwards each encoded frame to `sink` (on the encoder thread)."""
    from picamera2.outputs import Output

    class _Sink(Output):
        def outputframe(self, frame: bytes | None, keyframe: bool = True,
                        timestamp: int | None = None, packet: Any = None,
                        audio: bool = False) -> None:
            if frame is not None and not audio:
                sink(bytes(frame), keyframe, timestamp)

    return _Sink()


def _make_encoder(kind: EncoderKind, bitrate: int, gop_frames: int, fps: int) -> Any:
    # repeat: SPS/PPS before every IDR, so each segment and a joining viewer can decode.
    if kind == "hardware":
        from picamera2.encoders import H264Encoder

        return H264Encoder(bitrate=bitrate, repeat=True, iperiod=gop_frames, framerate=fps)

    from picamera2.encoders import LibavH264Encoder

    class _FixedGop(LibavH264Encoder):
        def _start(self) -> None:
            super()._start()
            # An IDR exactly every iperiod frames: no extra ones at scene cuts.
            self._stream.codec_context.options["x264-params"] = "scenecut=0"

    return _FixedGop(bitrate=bitrate, repeat=True, iperiod=gop_frames, framerate=fps)


class PicameraSource:
    """The Pi camera as a track of EncodedPackets (Annex B, SPS/PPS in band on each IDR).

    `on_packet` runs on picamera2's encoder thread, never before `start` has built the
    TrackInfo; packets before the first keyframe are dropped (nothing could decode them).
    """

    def __init__(self, width: int, height: int, fps: int, clock: MediaClock, *, track: str,
                 bitrate: int, gop_frames: int, start_timeout_s: float = 10.0):
        self.width, self.height, self.fps = width, height, fps
        self.clock = clock
        self.track, self.bitrate, self.gop_frames = track, bitrate, gop_frames
        self.start_timeout_s = start_timeout_s
        self.encoder_kind: EncoderKind | None = None
        self.info: TrackInfo | None = None  # set before the first packet is delivered
        self.packets = 0
        self.last_packet_mono_ns = 0  # for a stall watchdog
        self._camera: Any = None
        self._encoder: Any = None
        self._timestamps = DeviceTimestamps(clock)
        self._lock = threading.Lock()
        self._on_packet: Callable[[EncodedPacket], None] | None = None
        self._pending: list[EncodedPacket] = []
        self._first_key = threading.Event()
        self._ready = False
        self._recording = False
        self._last_slot = -1

    def start(self, on_packet: Callable[[EncodedPacket], None]) -> TrackInfo:
        try:
            from picamera2 import Picamera2
        except ImportError as exc:
            raise SourceError(f"picamera2 is not installed: {exc}") from None
        self._on_packet = on_packet
        self.encoder_kind = "hardware" if hardware_h264_available() else "libav"
        try:
            self._camera = Picamera2()
            config = self._camera.create_video_configuration(
                main={"size": (self.width, self.height), "format": "YUV420"},
                controls={"FrameRate": self.fps},
            )
            self._camera.configure(config)
            self._encoder = _make_encoder(self.encoder_kind, self.bitrate, self.gop_frames,
                                          self.fps)
            self._camera.start_recording(self._encoder, _packet_output(self._on_frame))
            self._recording = True
        except Exception as exc:  # libcamera raises assorted types for a missing/busy camera
            self.stop()
            raise SourceError(f"cannot start the Pi camera: {exc}") from exc
        if not self._first_key.wait(self.start_timeout_s):
            self.stop()
            raise SourceError(f"the Pi camera gave no keyframe within {self.start_timeout_s} s")
        info = self._release()
        log.info("Pi camera: %dx%d@%d, %s H.264 encoder, %s", self.width, self.height, self.fps,
                 self.encoder_kind, info.codecs)
        return info

    def _release(self) -> TrackInfo:
        """The track, from the first keyframe's SPS; from now on packets flow to on_packet
        (what is pending goes with the encoder's next frame)."""
        with self._lock:
            first = self._pending[0].data
            self.info = TrackInfo(
                name=self.track, kind="video", codec="h264",
                codecs=h264_codecs_string(first) or "avc1.640028", time_base=VIDEO_TIME_BASE,
                bitrate=self.bitrate, width=self.width, height=self.height,
                fps=Fraction(self.fps),
            )
            self._ready = True
        return self.info

    def _on_frame(self, data: bytes, keyframe: bool, timestamp_us: int | None) -> None:
        packet = self._packet(data, keyframe, timestamp_us)
        with self._lock:
            if not self._first_key.is_set():
                if not keyframe:
                    return
                self._first_key.set()
            if not self._ready:
                self._pending.append(packet)
                return
            deliver, self._pending = [*self._pending, packet], []
        assert self._on_packet is not None
        try:
            for p in deliver:
                self._on_packet(p)
        except Exception:  # raised into picamera2's thread it would stop encoding silently
            log.exception("Pi camera packet consumer failed")

    def _packet(self, data: bytes, keyframe: bool, timestamp_us: int | None) -> EncodedPacket:
        device_ns = None
        if timestamp_us is not None:
            # Relative to the first frame in picamera2 >= 0.3; absolute before that.
            first_us = getattr(self._encoder, "firsttimestamp", None) or 0
            device_ns = (first_us + timestamp_us) * 1000
        media_ns = self._timestamps.media_ns(device_ns)
        slot = max(round(media_ns * self.fps / 1e9), self._last_slot + 1)
        self._last_slot = slot
        pts = slot * 90_000 // self.fps
        self.packets += 1
        self.last_packet_mono_ns = time.monotonic_ns()
        return EncodedPacket(
            track=self.track, data=data, pts=pts, dts=pts,  # no B-frames from either encoder
            duration=90_000 // self.fps, time_base=VIDEO_TIME_BASE, keyframe=keyframe,
            capture_ns=self.clock.wall_ns(media_ns),
        )

    def stop(self) -> None:
        camera, self._camera = self._camera, None
        if camera is None:
            return
        try:
            if self._recording:
                self._recording = False
                camera.stop_recording()
        finally:
            camera.close()
