"""Synthetic camera and microphone: pacing, the stamp, the flash and the tone burst."""

from __future__ import annotations

import os
import threading
import time

import av
import numpy as np
import pytest

from appliance.capture.encoder import VideoEncoder
from appliance.capture.open import open_audio, open_video
from appliance.capture.picamera import picamera_present
from appliance.capture.source import AudioSource, Captured, VideoSource
from appliance.capture.synthetic import SyntheticAudio, SyntheticVideo
from appliance.config.load import ConfigError, parse
from appliance.config.schema import Audio, Video
from appliance.media.clock import MediaClock
from appliance.media.stamp import luma, read_flash, read_stamp

NS = 1_000_000_000
FPS = 30
PERIOD_NS = NS // FPS


def _clock_with_second_in(delay_ns: int) -> MediaClock:
    """A clock whose wall time reaches a whole second `delay_ns` after it starts."""
    wall = (time.time_ns() // NS + 10) * NS - delay_ns
    return MediaClock(start_mono_ns=time.monotonic_ns(), start_wall_ns=wall)


def _read_timed(src: VideoSource | AudioSource, count: int) -> list[tuple[Captured, int]]:
    """Reads with the monotonic time each one returned."""
    return [(src.read(), time.monotonic_ns()) for _ in range(count)]


def test_video_is_paced_one_frame_per_period() -> None:
    clock = MediaClock()
    src = SyntheticVideo(640, 360, FPS, clock)
    reads = _read_timed(src, 15)
    media = [cap.media_ns for cap, _ in reads]
    first = round(media[0] * FPS / NS)
    assert media == [(first + i) * NS // FPS for i in range(15)]
    for cap, returned in reads:
        late = returned - clock.start_mono_ns - cap.media_ns
        assert -1_000_000 <= late < 50_000_000  # returned when due, not before
    # 15 frames from the first one's due time take 14 periods: never less, since no read
    # returns before its frame is due, and not much more.
    span = reads[-1][1] - (clock.start_mono_ns + media[0])
    assert 14 * PERIOD_NS - 1_000_000 <= span < 14 * PERIOD_NS + 50_000_000
    gaps = [b[1] - a[1] for a, b in zip(reads, reads[1:], strict=False)]
    assert min(gaps) > PERIOD_NS // 3  # no burst
    assert src.dropped == 0


def test_late_reader_skips_to_the_latest_frame_instead_of_bursting() -> None:
    clock = MediaClock()
    src = SyntheticVideo(640, 360, FPS, clock)
    first = src.read()
    time.sleep(3.5 * PERIOD_NS / NS)
    late = src.read()
    skipped = (late.media_ns - first.media_ns) // PERIOD_NS - 1
    assert skipped >= 2 and src.dropped == skipped
    assert clock.media_ns() - late.media_ns < PERIOD_NS + 20_000_000  # the latest due frame
    after = src.read()
    assert after.media_ns == late.media_ns + PERIOD_NS or after.media_ns - late.media_ns in (
        PERIOD_NS - 1, PERIOD_NS + 1)  # integer ns rounding of n / fps
    assert clock.media_ns() >= after.media_ns - 1_000_000  # waited for it: no burst


# Where the whole second falls: 1 ms after frame 6, then 1 ms before frame 7. Frames 7, 8,
# 9 are lit either way, and frames 6, 9 and 7, 10 sit 1 ms inside or outside the window's
# edges, so a flash starting or ending more than 1 ms off shows.
@pytest.mark.parametrize("second_ns", [200_000_000 + 1_000_000, 233_333_333 - 1_000_000])
def test_frames_carry_stamp_and_flash_on_exactly_the_100ms_windows(second_ns: int) -> None:
    clock = _clock_with_second_in(second_ns)
    src = SyntheticVideo(1280, 720, FPS, clock)
    caps = [src.read() for _ in range(14)]  # ~470 ms
    lit = []
    for cap in caps:
        assert isinstance(cap.frame, av.VideoFrame)
        assert (cap.frame.width, cap.frame.height, cap.frame.format.name) == (1280, 720, "yuv420p")
        wall_ns = clock.wall_ns(cap.media_ns)
        y = luma(cap.frame)
        assert read_stamp(y) == wall_ns // 1_000_000
        assert read_flash(y) == (wall_ns % NS < 100_000_000)
        if read_flash(y):
            lit.append(round(cap.media_ns * FPS / NS))
    assert lit == [7, 8, 9]


def test_each_frame_has_its_own_buffer() -> None:
    clock = MediaClock(start_mono_ns=0, start_wall_ns=1_767_225_600 * NS)
    src = SyntheticVideo(640, 360, FPS, clock)
    a = src.render(1, PERIOD_NS)
    before = a.to_ndarray().copy()
    b = src.render(40, 40 * PERIOD_NS)  # different stamp, box, tick, flash
    assert a.planes[0].buffer_ptr != b.planes[0].buffer_ptr
    assert (a.to_ndarray() == before).all()  # an encoder holding `a` sees it unchanged
    assert not (b.to_ndarray() == before).all()


def test_picture_shows_motion() -> None:
    clock = MediaClock(start_mono_ns=0, start_wall_ns=1_767_225_600 * NS)
    src = SyntheticVideo(1280, 720, FPS, clock)
    band = slice(200, 480)  # the moving box's band, away from stamp, digits and flash
    frames = [luma(src.render(n, n * PERIOD_NS))[band].astype(int) for n in (0, 1, 2)]
    assert np.abs(frames[1] - frames[0]).sum() > 0
    assert np.abs(frames[2] - frames[1]).sum() > 0


def _audio_samples(caps: list[Captured], rate: int) -> tuple[int, np.ndarray]:
    """First sample index and the concatenated left channel, in [-1, 1]."""
    chunks = []
    for cap in caps:
        frame = cap.frame
        assert isinstance(frame, av.AudioFrame)
        chunks.append(frame.to_ndarray()[0])  # planar: row 0 is the left channel
    start = round(caps[0].media_ns * rate / NS)
    return start, np.concatenate(chunks).astype(np.float64)


@pytest.mark.parametrize(("rate", "channels"), [(48000, 2), (44100, 1)])
def test_audio_burst_starts_on_the_sample_of_the_whole_second(rate: int, channels: int) -> None:
    clock = _clock_with_second_in(50_000_000)
    src = SyntheticAudio(rate, channels, clock, frame_size=1024)
    caps = [src.read() for _ in range(9)]  # ~190 ms
    for prev, cap in zip(caps, caps[1:], strict=False):
        frame = cap.frame
        assert isinstance(frame, av.AudioFrame)
        assert (frame.samples, frame.format.name, frame.sample_rate) == (1024, "fltp", rate)
        assert len(frame.layout.channels) == channels
        assert round((cap.media_ns - prev.media_ns) * rate / NS) == 1024  # contiguous
    start, x = _audio_samples(caps, rate)
    # The first sample at or after the whole second, from the clock alone.
    second_ns = (clock.start_wall_ns // NS + 1) * NS
    onset = -(-(second_ns - clock.start_wall_ns) * rate // NS) - start
    assert onset > 0 and onset + rate // 10 + 48 < len(x)
    quiet = 0.011  # the background tone's level, plus rounding
    assert np.abs(x[:onset]).max() < quiet  # no burst energy before its sample
    assert np.abs(x[onset + 1]) > 0.05  # and clearly there on the next one
    loud = np.flatnonzero(np.abs(x) > 0.05)
    assert loud[0] in (onset, onset + 1)  # sin starts at phase 0: sample `onset` may be ~0
    burst_end = onset + rate // 10  # exactly 100 ms
    assert loud[-1] < burst_end and np.abs(x[burst_end:]).max() < quiet
    rms = np.sqrt(np.mean(x[onset : burst_end] ** 2))
    assert 0.33 < rms < 0.38  # a 0.5 amplitude sine throughout


def test_audio_is_paced_by_its_last_sample() -> None:
    clock = MediaClock()
    src = SyntheticAudio(48000, 2, clock)
    reads = _read_timed(src, 6)
    for cap, returned in reads:
        end = cap.media_ns + 1024 * NS // 48000
        assert returned - clock.start_mono_ns >= end - 1_000_000
    span = reads[-1][1] - reads[0][1]
    assert abs(span - 5 * 1024 * NS // 48000) < 40_000_000
    assert src.dropped == 0


def test_video_flash_starts_within_a_frame_of_the_audio_burst() -> None:
    clock = _clock_with_second_in(100_000_000)
    video = SyntheticVideo(640, 360, FPS, clock)
    audio = SyntheticAudio(48000, 1, clock)
    vcaps: list[Captured] = []
    acaps: list[Captured] = []
    threads = [
        threading.Thread(target=lambda: vcaps.extend(video.read() for _ in range(10))),
        threading.Thread(target=lambda: acaps.extend(audio.read() for _ in range(14))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=5)
    lit = [c.media_ns for c in vcaps
           if isinstance(c.frame, av.VideoFrame) and read_flash(luma(c.frame))]
    start, x = _audio_samples(acaps, 48000)
    onset = int(np.flatnonzero(np.abs(x) > 0.05)[0]) + start
    onset_ns = onset * NS // 48000
    one_sample = NS // 48000 + 1  # the detected onset may be the burst's second sample
    assert -one_sample <= lit[0] - onset_ns < PERIOD_NS  # same second, within one frame


@pytest.mark.skipif(
    os.path.exists("/dev/video0") or picamera_present(), reason="this machine has a camera"
)
def test_auto_source_is_synthetic_without_a_camera() -> None:
    clock = MediaClock()
    src = open_video(Video.model_validate({"source": "auto"}), clock)
    assert isinstance(src, SyntheticVideo)
    cap = src.read()
    assert isinstance(cap.frame, av.VideoFrame)
    assert (cap.frame.width, cap.frame.height) == (1280, 720)


def test_open_audio() -> None:
    clock = MediaClock()
    assert open_audio(Audio.model_validate({"enabled": False}), clock) is None
    cfg = Audio.model_validate({"source": "synthetic", "sample_rate": 44100, "channels": 1})
    src = open_audio(cfg, clock)
    assert isinstance(src, SyntheticAudio)
    assert (src.sample_rate, src.channels) == (44100, 1)


def test_synthetic_pattern_is_checked_and_named_in_the_error() -> None:
    with pytest.raises(ConfigError) as err:
        parse('[video]\nsource = "synthetic"\nsynthetic_pattern = "grain"\n')
    (msg,) = err.value.errors
    assert msg.startswith("video.synthetic_pattern:") and "'plain' or 'noisy'" in msg
    assert parse("").video.synthetic_pattern == "plain"


# Capture size first; kbit/s per rung from the dev ladder's top and bottom.
NOISY_LADDER = ((1280, 720, 3000), (640, 360, 700))


@pytest.mark.parametrize("pattern", ["plain", "noisy"])
def test_noisy_pattern_costs_each_rung_its_bitrate_and_keeps_the_stamp(pattern: str) -> None:
    """The reason for the noisy pattern: through the appliance's encoder every rung spends
    about its configured bitrate, as with a camera, where the plain test card needs only a
    fraction of it. The stamp and the flash still read on the decoded lowest rung."""
    clock = MediaClock(start_mono_ns=0, start_wall_ns=1_767_225_600 * NS)
    cfg = Video.model_validate({
        "source": "synthetic", "synthetic_pattern": pattern, "width": 1280, "height": 720,
        "ladder": [{"name": f"{h}p", "width": w, "height": h, "bitrate_kbps": kbps}
                   for w, h, kbps in NOISY_LADDER]})
    src = open_video(cfg, clock)
    assert isinstance(src, SyntheticVideo)
    encoders = [VideoEncoder(r.name, r.width, r.height, FPS, r.bitrate_kbps, 2.0, clock)
                for r in cfg.ladder]
    settle, measured = 2 * FPS, FPS  # the first segment, while the rate control settles
    sizes = [0] * len(encoders)
    decoder = av.CodecContext.create("h264", "r")
    decoded: list[av.VideoFrame] = []
    for n in range(settle + measured):
        cap = Captured(src.render(n, n * PERIOD_NS), n * PERIOD_NS)
        for i, enc in enumerate(encoders):
            packets = enc.encode(cap)
            sizes[i] += sum(len(p.data) for p in packets) if n >= settle else 0
            if i == len(encoders) - 1:
                for p in packets:
                    frames = decoder.decode(av.Packet(p.data))
                    decoded += [f for f in frames if isinstance(f, av.VideoFrame)]
    shares = [size * 8 / (kbps * 1000) for size, (_, _, kbps) in zip(sizes, NOISY_LADDER,
                                                                       strict=True)]
    if pattern == "noisy":
        assert all(0.85 < s < 1.15 for s in shares), shares
    else:
        assert max(shares) < 0.5, shares
    assert len(decoded) >= settle + measured - 2  # x264 zerolatency: no frames held back
    for n, frame in enumerate(decoded):
        wall_ns = clock.wall_ns(n * PERIOD_NS)
        assert read_stamp(luma(frame)) == wall_ns // 1_000_000
        assert read_flash(luma(frame)) == (wall_ns % NS < 100_000_000)
