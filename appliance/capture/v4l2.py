"""USB/CSI cameras through V4L2 and microphones through ALSA, both read with PyAV.

Device timestamps are mapped onto the MediaClock by `DeviceTimestamps`: V4L2 buffers on
UVC carry CLOCK_MONOTONIC, libcamera's sensor timestamps CLOCK_BOOTTIME, and
libavdevice's ALSA input stamps packets with the wall clock (smoothed). Which clock a
device uses is detected from its first timestamp; a timestamp that makes no sense (in
the future, or older than a second) falls back to the time it was read.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import struct
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Literal

import av
import av.error
from av.video.frame import PictureType
from av.video.reformatter import ColorRange

from appliance.capture.source import Captured, SourceError
from appliance.media.clock import MediaClock

log = logging.getLogger(__name__)

NS: Final = 1_000_000_000

# linux/videodev2.h
VIDIOC_QUERYCAP: Final = 0x80685600  # _IOR('V', 0, struct v4l2_capability), 104 bytes
V4L2_CAP_VIDEO_CAPTURE: Final = 0x00000001
V4L2_CAP_STREAMING: Final = 0x04000000
V4L2_CAP_DEVICE_CAPS: Final = 0x80000000
_CAPABILITY: Final = struct.Struct("16s32s32sIII12x")

# Raw formats first (no decode cost, no JPEG artefacts); MJPEG when a raw format cannot
# reach the frame rate, as UVC cameras on USB 2 often cannot above 480p.
PREFERRED_FORMATS: Final = ("yuv420p", "nv12", "yuyv422", "mjpeg")

Base = Literal["monotonic", "boottime", "realtime", "arrival"]


@dataclass(frozen=True)
class V4l2Caps:
    driver: str
    card: str
    device_caps: int

    @property
    def capture(self) -> bool:
        """A single-planar streaming capture device: what libavdevice's v4l2 input reads."""
        need = V4L2_CAP_VIDEO_CAPTURE | V4L2_CAP_STREAMING
        return self.device_caps & need == need


def query_caps(path: str) -> V4l2Caps:
    """VIDIOC_QUERYCAP on `path`; SourceError saying what is wrong when it is no V4L2 device."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise SourceError(f"V4L2 device {path} does not exist (no camera connected?)") from None
    if not stat.S_ISCHR(mode):
        raise SourceError(f"{path} is not a device node")
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    except PermissionError:
        raise SourceError(f"no permission to open {path} (is the user in group 'video'?)") from None
    except OSError as exc:
        raise SourceError(f"cannot open {path}: {exc.strerror}") from None
    try:
        buf = bytearray(_CAPABILITY.size)
        fcntl.ioctl(fd, VIDIOC_QUERYCAP, buf)
    except OSError as exc:
        if exc.errno in (errno.ENOTTY, errno.EINVAL):
            raise SourceError(f"{path} is not a V4L2 device") from None
        raise SourceError(f"cannot query {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    driver, card, _, _, caps, device_caps = _CAPABILITY.unpack(buf)
    return V4l2Caps(
        driver=driver.split(b"\0", 1)[0].decode(errors="replace"),
        card=card.split(b"\0", 1)[0].decode(errors="replace"),
        device_caps=device_caps if caps & V4L2_CAP_DEVICE_CAPS else caps,
    )


def is_capture_device(path: str) -> bool:
    try:
        return query_caps(path).capture
    except SourceError:
        return False


class DeviceTimestamps:
    """Maps a device's capture timestamps (ns, on some system clock) onto media time.

    Output is strictly increasing by at least `min_step_ns`, so a consumer can use it as
    pts directly. `fallbacks` counts timestamps replaced by the read time.
    """

    def __init__(self, clock: MediaClock, max_age_ns: int = NS, min_step_ns: int = 1_000_000):
        self.clock = clock
        self.max_age_ns = max_age_ns
        self.min_step_ns = min_step_ns
        self.base: Base | None = None
        self.fallbacks = 0
        self._last: int | None = None

    @staticmethod
    def _now() -> dict[Base, int]:
        return {
            "monotonic": time.monotonic_ns(),
            "boottime": time.clock_gettime_ns(time.CLOCK_BOOTTIME),
            "realtime": time.time_ns(),
        }

    def _plausible(self, age_ns: int) -> bool:
        return -5_000_000 <= age_ns <= self.max_age_ns  # 5 ms of clock-read skew allowed

    def media_ns(self, device_ns: int | None, now: dict[Base, int] | None = None) -> int:
        """Media time of a capture stamped `device_ns`; `now` (read times) for tests."""
        now = now or self._now()
        mono_now = now["monotonic"]
        if self.base is None:
            self.base = self._detect(device_ns, now)
            log.info("device timestamps: %s", self.base)
        mono = mono_now
        if device_ns is not None and self.base != "arrival":
            age = now[self.base] - device_ns
            if self._plausible(age):
                mono = mono_now - max(age, 0)
            else:
                self.fallbacks += 1
        media = self.clock.media_ns(mono)
        if self._last is not None and media < self._last + self.min_step_ns:
            media = self._last + self.min_step_ns
        self._last = media
        return media

    def _detect(self, device_ns: int | None, now: dict[Base, int]) -> Base:
        if device_ns is not None:
            bases: tuple[Base, ...] = ("monotonic", "boottime", "realtime")
            for base in bases:
                if self._plausible(now[base] - device_ns):
                    return base
        return "arrival"


def _frame_ns(frame: av.VideoFrame | av.AudioFrame) -> int | None:
    if frame.pts is None or frame.time_base is None:
        return None
    return int(frame.pts * frame.time_base * NS)


def to_yuv420p(frame: av.VideoFrame, width: int, height: int) -> av.VideoFrame:
    """The frame as limited-range yuv420p at the configured size, ready for an encoder.

    MJPEG decodes to full range, and PyAV's reformat keeps the source's range unless told
    otherwise: the encoder would then take full-range levels for limited ones. A decoded
    frame's pict_type (I) is cleared too, or x264 would make every frame an IDR.
    """
    if (frame.format.name != "yuv420p" or frame.width != width or frame.height != height
            or frame.color_range == ColorRange.JPEG):
        frame = frame.reformat(width, height, "yuv420p", dst_color_range=ColorRange.MPEG)
    frame.pict_type = PictureType.NONE
    frame.pts = None
    return frame


def _av_errno(exc: av.error.FFmpegError) -> int | None:
    return exc.errno if isinstance(exc.errno, int) else None


class DecodedFrames:
    """Video frames from a capture container; a frame the decoder rejects (a corrupt MJPEG
    frame from a UVC camera) is skipped and counted, a demuxer error means the device failed.
    """

    def __init__(self, container: av.container.InputContainer, name: str):
        self.name = name
        self.skipped = 0
        self._packets: Iterator[av.Packet] = container.demux(video=0)
        self._decoded: deque[av.VideoFrame] = deque()

    def next(self) -> av.VideoFrame:
        while not self._decoded:
            try:
                packet = next(self._packets)
            except StopIteration:
                raise SourceError(f"{self.name} stopped delivering frames") from None
            except av.error.FFmpegError as exc:  # unplugged, or the driver gave up
                raise SourceError(f"{self.name} failed: {exc.strerror}") from exc
            try:
                self._decoded.extend(f for f in packet.decode() if isinstance(f, av.VideoFrame))
            except av.error.InvalidDataError:
                self.skipped += 1
        return self._decoded.popleft()


class V4l2Video:
    """A V4L2 camera: blocking reads paced by the camera, yuv420p at the configured size."""

    def __init__(self, device: str, width: int, height: int, fps: int, clock: MediaClock):
        caps = query_caps(device)
        if not caps.capture:
            raise SourceError(f"{device} ({caps.card}, {caps.driver}) is not a capture device")
        self.device = device
        self.width, self.height, self.fps = width, height, fps
        self.card = caps.card
        self._timestamps = DeviceTimestamps(clock)
        self._container, self.input_format = self._open_best()
        self._frames = DecodedFrames(self._container, f"camera {device}")

    @property
    def dropped(self) -> int:
        return self._frames.skipped

    def _open(self, input_format: str) -> av.container.InputContainer:
        options = {
            "video_size": f"{self.width}x{self.height}",
            "framerate": str(self.fps),
            "input_format": input_format,
        }
        return av.open(self.device, format="v4l2", options=options)

    def _open_best(self) -> tuple[av.container.InputContainer, str]:
        """The first preferred format the camera delivers at the full frame rate, else the
        fastest one."""
        slowest_ok: tuple[float, str] | None = None
        errors = []
        for fmt in PREFERRED_FORMATS:
            try:
                container = self._open(fmt)
            except av.error.FFmpegError as exc:
                if _av_errno(exc) in (errno.EINVAL, errno.ENOSYS):  # format not offered
                    errors.append(f"{fmt}: {exc.strerror}")
                    continue
                raise SourceError(f"cannot open camera {self.device}: {exc.strerror}") from exc
            rate = container.streams.video[0].average_rate
            if rate is None or rate >= self.fps:
                log.info("camera %s: %s at %s fps", self.device, fmt, rate)
                return container, fmt
            container.close()  # only one open stream per device: reopen the best one later
            if slowest_ok is None or rate > slowest_ok[0]:
                slowest_ok = (float(rate), fmt)
        if slowest_ok is None:
            raise SourceError(f"camera {self.device} offers no usable format ({'; '.join(errors)})")
        best_rate, fmt = slowest_ok
        log.warning("camera %s reaches only %.1f of %d fps (%s)", self.device, best_rate, self.fps,
                    fmt)
        try:
            return self._open(fmt), fmt
        except av.error.FFmpegError as exc:
            raise SourceError(f"cannot open camera {self.device}: {exc.strerror}") from exc

    def read(self) -> Captured:
        frame = self._frames.next()
        media_ns = self._timestamps.media_ns(_frame_ns(frame))
        return Captured(to_yuv420p(frame, self.width, self.height), media_ns)

    def close(self) -> None:
        self._container.close()


class SampleTimeline:
    """Audio timestamps that advance by the samples delivered, so AAC frames abut.

    A sound card's crystal drifts against the system clock (tens of ppm: tenths of a
    second per hour). Within `tolerance_ns` the sample count wins; beyond it a late card
    gets a gap (re-anchor) and an early one loses a frame (`place` returns None).
    """

    def __init__(self, sample_rate: int, tolerance_ns: int):
        self.sample_rate = sample_rate
        self.tolerance_ns = tolerance_ns
        self._anchor_ns: int | None = None
        self._samples = 0

    def place(self, observed_ns: int, samples: int) -> int | None:
        if self._anchor_ns is None:
            self._anchor_ns, self._samples = observed_ns, 0
        expected = self._anchor_ns + self._samples * NS // self.sample_rate
        error = observed_ns - expected
        if error < -self.tolerance_ns:
            return None
        if error > self.tolerance_ns:
            self._anchor_ns, self._samples, expected = observed_ns, 0, observed_ns
        self._samples += samples
        return expected


def _ensure_alsa_config() -> None:
    """Point the ALSA library bundled in the PyAV wheel at the system's configuration.

    The wheel's libasound looks for alsa.conf under its build prefix (/tmp/vendor/...),
    finds nothing, and then knows no PCM at all, not even "default".
    """
    system_conf = "/usr/share/alsa/alsa.conf"
    if "ALSA_CONFIG_PATH" not in os.environ and os.path.exists(system_conf):
        os.environ["ALSA_CONFIG_PATH"] = system_conf


def _alsa_cards() -> list[str]:
    try:
        with open("/proc/asound/cards") as f:
            return [line.strip() for line in f if line[:3].strip().isdigit()]
    except OSError:
        return []


class AlsaAudio:
    """An ALSA capture device: s16 frames of `frame_size` samples at the configured rate."""

    def __init__(self, device: str, sample_rate: int, channels: int, clock: MediaClock,
                 frame_size: int = 1024):
        _ensure_alsa_config()
        self.device = device
        self.sample_rate, self.channels, self.frame_size = sample_rate, channels, frame_size
        self.dropped = 0
        self._container = self._open()
        self._frames: Iterator[av.AudioFrame] = self._container.decode(audio=0)
        self._resampler = av.AudioResampler(
            format="s16", layout="stereo" if channels == 2 else "mono", rate=sample_rate,
            frame_size=frame_size,
        )
        self._pending: deque[av.AudioFrame] = deque()
        self._timestamps = DeviceTimestamps(clock, min_step_ns=0)
        frame_ns = frame_size * NS // sample_rate
        self._timeline = SampleTimeline(sample_rate, tolerance_ns=max(frame_ns, 20_000_000))

    def _open(self) -> av.container.InputContainer:
        # A mono-only microphone refuses two channels (and the reverse): take what it has.
        last: av.error.FFmpegError | None = None
        for channels in dict.fromkeys((self.channels, 3 - self.channels)):
            options = {"sample_rate": str(self.sample_rate), "channels": str(channels)}
            try:
                return av.open(self.device, format="alsa", options=options)
            except av.error.FFmpegError as exc:
                last = exc
        cards = _alsa_cards()
        hint = f"sound cards: {', '.join(cards)}" if cards else "no sound card found"
        raise SourceError(f"cannot open ALSA capture device {self.device!r} ({hint})") from last

    def _next_frame(self) -> av.AudioFrame:
        while not self._pending:
            try:
                frame = next(self._frames)
            except StopIteration:
                raise SourceError(f"ALSA device {self.device!r} stopped delivering") from None
            except av.error.FFmpegError as exc:
                raise SourceError(f"ALSA device {self.device!r} failed: {exc.strerror}") from exc
            self._pending.extend(self._resampler.resample(frame))
        return self._pending.popleft()

    def read(self) -> Captured:
        while True:
            frame = self._next_frame()
            observed = self._timestamps.media_ns(_frame_ns(frame))
            media_ns = self._timeline.place(observed, frame.samples)
            if media_ns is not None:
                frame.pts = None
                return Captured(frame, media_ns)
            self.dropped += 1

    def close(self) -> None:
        self._container.close()
