"""Camera and microphone sources that need hardware: what can be checked without it.

No camera and no v4l2loopback here, so V4L2 is covered through its error paths, the
device-clock mapping and the frame conversion; ALSA runs for real on its "null" PCM.
"""

from __future__ import annotations

import os
import time
from fractions import Fraction

import av
import numpy as np
import pytest
from av.video.frame import PictureType
from av.video.reformatter import ColorRange

from appliance.capture import picamera
from appliance.capture.open import open_audio, open_video
from appliance.capture.source import SourceError
from appliance.capture.v4l2 import (
    AlsaAudio,
    DecodedFrames,
    DeviceTimestamps,
    SampleTimeline,
    V4l2Video,
    is_capture_device,
    query_caps,
    to_yuv420p,
)
from appliance.config.schema import Audio, Video
from appliance.media.clock import MediaClock

NS = 1_000_000_000
MS = 1_000_000


def _missing_device() -> str:
    for i in range(64, 128):
        if not os.path.exists(f"/dev/video{i}"):
            return f"/dev/video{i}"
    raise AssertionError("no free /dev/video name")


def test_missing_device_fails_fast_and_clearly() -> None:
    device = _missing_device()
    t0 = time.monotonic()
    with pytest.raises(SourceError, match=f"{device} does not exist"):
        V4l2Video(device, 1280, 720, 30, MediaClock())
    assert time.monotonic() - t0 < 0.5
    assert not is_capture_device(device)


@pytest.mark.parametrize(("path", "message"), [
    ("/dev/null", "is not a V4L2 device"),
    ("/tmp", "is not a device node"),
])
def test_non_camera_paths_are_rejected(path: str, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        query_caps(path)
    with pytest.raises(SourceError, match=message):
        V4l2Video(path, 640, 480, 30, MediaClock())
    assert not is_capture_device(path)


def test_explicit_sources_that_are_missing_raise() -> None:
    clock = MediaClock()
    with pytest.raises(SourceError):
        open_video(Video.model_validate({"source": "v4l2", "device": _missing_device()}), clock)
    if not picamera.picamera_present():
        with pytest.raises(SourceError, match="no Pi camera"):
            open_video(Video.model_validate({"source": "picamera2"}), clock)


def _now(mono: int, boot_offset: int = 0, wall_offset: int = 1_700_000_000 * NS) -> dict:
    return {"monotonic": mono, "boottime": mono + boot_offset, "realtime": mono + wall_offset}


def test_monotonic_device_timestamps_map_onto_media_time() -> None:
    clock = MediaClock(start_mono_ns=1000 * NS, start_wall_ns=1_700_000_000 * NS)
    ts = DeviceTimestamps(clock)
    # Captured 30 ms before it was read: media time is the capture, not the read.
    assert ts.media_ns(1005 * NS, _now(1005 * NS + 30 * MS)) == 5 * NS
    assert ts.base == "monotonic"
    assert ts.media_ns(1005 * NS + 33 * MS, _now(1005 * NS + 70 * MS)) == 5 * NS + 33 * MS
    assert ts.fallbacks == 0


def test_boottime_timestamps_after_a_suspend() -> None:
    clock = MediaClock(start_mono_ns=1000 * NS, start_wall_ns=1_700_000_000 * NS)
    ts = DeviceTimestamps(clock)
    suspended = 600 * NS  # boottime runs ahead of monotonic by the time spent suspended
    assert ts.media_ns(1010 * NS + suspended, _now(1010 * NS + 20 * MS, suspended)) == 10 * NS
    assert ts.base == "boottime"


def test_wall_clock_timestamps_follow_the_current_offset() -> None:
    clock = MediaClock(start_mono_ns=1000 * NS, start_wall_ns=1_700_000_000 * NS)
    ts = DeviceTimestamps(clock)
    wall = 1_700_000_000 * NS - 1000 * NS  # wall = mono + this
    assert ts.media_ns(1002 * NS + wall, _now(1002 * NS + 21 * MS, wall_offset=wall)) == 2 * NS
    assert ts.base == "realtime"
    # NTP steps the wall clock by +3 s: stamps taken after the step still map right.
    stepped = wall + 3 * NS
    assert ts.media_ns(1003 * NS + stepped, _now(1003 * NS + 5 * MS, wall_offset=stepped)) == 3 * NS


def test_unusable_timestamps_fall_back_to_read_time() -> None:
    clock = MediaClock(start_mono_ns=1000 * NS, start_wall_ns=1_700_000_000 * NS)
    ts = DeviceTimestamps(clock)
    assert ts.media_ns(0, _now(1001 * NS)) == 1 * NS  # relative pts from zero: no clock
    assert ts.base == "arrival"
    mono = DeviceTimestamps(clock)
    mono.media_ns(1001 * NS, _now(1001 * NS))
    assert mono.media_ns(1009 * NS, _now(1002 * NS)) == 2 * NS  # from the future
    assert mono.media_ns(1000 * NS, _now(1003 * NS)) == 3 * NS  # older than a second
    assert mono.fallbacks == 2
    assert mono.media_ns(None, _now(1004 * NS)) == 4 * NS


def test_mapped_times_strictly_increase() -> None:
    clock = MediaClock(start_mono_ns=0, start_wall_ns=1_700_000_000 * NS)
    ts = DeviceTimestamps(clock)
    a = ts.media_ns(5 * NS, _now(5 * NS + MS))
    b = ts.media_ns(5 * NS, _now(5 * NS + 2 * MS))  # a repeated stamp
    c = ts.media_ns(5 * NS - 10 * MS, _now(5 * NS + 3 * MS))  # a stamp going back
    assert a < b < c and b - a >= MS and c - b >= MS


def _frame(fmt: str, width: int, height: int, luma: int) -> av.VideoFrame:
    frame = av.VideoFrame(width, height, fmt)
    for plane in frame.planes:
        np.frombuffer(memoryview(plane), np.uint8)[:] = 128
    if fmt == "yuyv422":  # packed Y0 U Y1 V
        np.frombuffer(memoryview(frame.planes[0]), np.uint8)[::2] = luma
    else:
        np.frombuffer(memoryview(frame.planes[0]), np.uint8)[:] = luma
    if fmt.startswith("yuvj"):
        frame.color_range = ColorRange.JPEG  # as the MJPEG decoder tags them
    frame.pict_type = PictureType.I  # as decoded frames come
    frame.pts = 123
    return frame


@pytest.mark.parametrize(("fmt", "luma", "expected"), [
    ("yuyv422", 200, 200),  # raw UVC: limited range kept
    ("nv12", 100, 100),
    ("yuvj422p", 255, 235),  # MJPEG decodes full range: white becomes limited white
    ("yuv420p", 60, 60),
])
def test_camera_frames_become_encoder_ready_yuv420p(fmt: str, luma: int, expected: int) -> None:
    out = to_yuv420p(_frame(fmt, 640, 480, luma), 1280, 720)
    assert (out.width, out.height, out.format.name) == (1280, 720, "yuv420p")
    assert out.pict_type == PictureType.NONE and out.pts is None
    assert out.color_range in (ColorRange.MPEG, ColorRange.UNSPECIFIED)
    y = out.to_ndarray()[:720]
    assert abs(int(np.median(y)) - expected) <= 1


def _mjpeg_stream(frames: int) -> list[bytes]:
    enc = av.CodecContext.create("mjpeg", "w")
    assert isinstance(enc, av.VideoCodecContext)
    enc.width, enc.height, enc.pix_fmt = 320, 240, "yuvj422p"
    enc.time_base = Fraction(1, 30)
    out = []
    for i in range(frames):
        frame = _frame("yuvj422p", 320, 240, 40 + 20 * i)
        frame.pts = i
        out += [bytes(p) for p in enc.encode(frame)]
    return out


def test_a_corrupt_mjpeg_frame_is_skipped_not_fatal(tmp_path) -> None:
    """The read loop V4l2Video uses, on a real MJPEG demuxer and decoder."""
    jpegs = _mjpeg_stream(6)
    jpegs[3] = jpegs[3][:20] + bytes(len(jpegs[3]) - 20)  # header kept, scan data zeroed
    path = tmp_path / "camera.mjpeg"
    path.write_bytes(b"".join(jpegs))
    with av.open(str(path), format="mjpeg") as container:
        frames = DecodedFrames(container, "camera test")
        lumas = [int(np.median(to_yuv420p(frames.next(), 320, 240).to_ndarray()[:240]))
                 for _ in range(5)]
        with pytest.raises(SourceError, match="camera test stopped delivering"):
            frames.next()
    assert frames.skipped == 1
    # Frame 3 is missing; the others are in order (full-range values mapped to limited).
    expected = [round(16 + v * 219 / 255) for v in (40, 60, 80, 120, 140)]
    assert all(abs(a - b) <= 2 for a, b in zip(lumas, expected, strict=True)), lumas


def test_sample_timeline_keeps_audio_contiguous_and_bounds_drift() -> None:
    frame_ns = 1024 * NS // 48000
    tl = SampleTimeline(48000, tolerance_ns=frame_ns)
    assert tl.place(1 * NS, 1024) == NS
    assert tl.place(NS + frame_ns + 2 * MS, 1024) == NS + frame_ns  # jitter: sample count wins
    # The card fell 30 ms behind (a late card): re-anchor, leaving a gap.
    late = NS + 2 * frame_ns + 30 * MS
    assert tl.place(late, 1024) == late
    # The card runs 25 ms ahead of the clock: drop one frame, then carry on contiguously.
    assert tl.place(late + frame_ns - 25 * MS, 1024) is None
    assert tl.place(late + 2 * frame_ns - 25 * MS, 1024) == late + frame_ns


@pytest.mark.skipif(not os.path.exists("/usr/share/alsa/alsa.conf"), reason="no ALSA config")
def test_alsa_capture_on_the_null_pcm() -> None:
    """The whole ALSA path (open, decode, resample, timestamps) on a PCM that needs no card.

    The null PCM is no real-time device (it returns silence as fast as it is read, with
    odd timestamps), so this checks formats, contiguity and that the times land on the
    media clock, not pacing.
    """
    clock = MediaClock()
    src = AlsaAudio("null", 44100, 1, clock, frame_size=1024)
    try:
        caps = [src.read() for _ in range(8)]
    finally:
        src.close()
    frame_ns = 1024 * NS // 44100
    for cap in caps:
        frame = cap.frame
        assert isinstance(frame, av.AudioFrame)
        assert (frame.samples, frame.format.name, frame.sample_rate) == (1024, "s16", 44100)
        assert len(frame.layout.channels) == 1 and frame.pts is None
    steps = [b.media_ns - a.media_ns for a, b in zip(caps, caps[1:], strict=False)]
    assert all(s >= frame_ns - 1 for s in steps)  # never overlapping (gaps when late)
    assert abs(clock.media_ns() - caps[-1].media_ns) < 1 * NS  # on the media clock


def test_missing_alsa_device_raises_source_error() -> None:
    with pytest.raises(SourceError, match="cannot open ALSA capture device 'hw:63'"):
        AlsaAudio("hw:63", 48000, 2, MediaClock())
    with pytest.raises(SourceError):
        open_audio(Audio.model_validate({"source": "alsa", "device": "hw:63"}), MediaClock())


def test_picamera_module_needs_no_picamera2_until_used() -> None:
    if not os.path.exists("/dev/video11"):
        assert not picamera.hardware_h264_available()
    if picamera.picamera_present():
        pytest.skip("picamera2 and a camera are present")
    with pytest.raises(SourceError, match="picamera2 is not installed"):
        picamera.PicameraSource(1280, 720, 30, MediaClock(), lores=(854, 480))

