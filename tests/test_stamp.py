"""The SPEC latency stamp: drawing, reading, and surviving H.264 and scaling."""

from __future__ import annotations

import shutil
import subprocess
from fractions import Fraction

import av
import numpy as np
import pytest

from appliance.capture.synthetic import SyntheticVideo
from appliance.media.clock import MediaClock
from appliance.media.stamp import (
    BITS,
    CELLS,
    carry_stamp,
    draw_stamp,
    flash_rect,
    luma,
    read_flash,
    read_stamp,
    stamp_rect,
    stamp_survives_scaling,
)

NOW_MS = 1_767_225_600_123  # 2026-01-01T00:00:00.123Z
ALTERNATING = 0xAAAA_AAAA_AAAA  # every neighbouring cell differs: any shift misreads


def _full_range_cells(y: np.ndarray) -> np.ndarray:
    """Centre luma of each cell after a player's limited->full conversion."""
    c = y.shape[1] // 64
    full = np.clip((y.astype(np.float32) - 16) * 255 / 219, 0, 255)
    return np.array([full[c + c // 2, c * (i + 1) + c // 2] for i in range(CELLS)])


def _assert_spec_levels(y: np.ndarray, ms: int) -> None:
    cells = _full_range_cells(y)
    assert cells[0] >= 200 and cells[1] <= 40
    bits = [(ms >> (BITS - 1 - i)) & 1 for i in range(BITS)]
    for bit, level in zip(bits, cells[2:], strict=True):
        assert (level >= 200) if bit else (level <= 40)


@pytest.mark.parametrize("width", [64, 100, 640, 854, 1280, 1920, 3840])
@pytest.mark.parametrize("ms", [0, (1 << BITS) - 1, NOW_MS, ALTERNATING])
def test_round_trip_raw(width: int, ms: int) -> None:
    y = np.full((max(64, width * 9 // 16), width), 90, np.uint8)
    draw_stamp(y, ms)
    assert read_stamp(y) == ms
    _assert_spec_levels(y, ms)


def test_cells_follow_spec_geometry() -> None:
    y = np.full((720, 1280), 90, np.uint8)
    draw_stamp(y, 1)  # only the last data cell (49) white
    c = 20
    assert stamp_rect(1280) == (c, c, 51 * c, 2 * c)
    assert (y[c : 2 * c, c : 2 * c] == 255).all()  # cell 0 white
    assert (y[c : 2 * c, 2 * c : 3 * c] == 0).all()  # cell 1 black
    assert (y[c : 2 * c, 50 * c : 51 * c] == 255).all()  # cell 49 = bit 0
    assert (y[c : 2 * c, 49 * c : 50 * c] == 0).all()
    assert (y[: c] == 90).all() and (y[2 * c :] == 90).all() and (y[:, 51 * c :] == 90).all()


def test_chroma_under_cells_is_neutral() -> None:
    y = np.zeros((720, 1280), np.uint8)
    u = np.full((360, 640), 30, np.uint8)
    v = np.full((360, 640), 220, np.uint8)
    draw_stamp(y, NOW_MS, uv=(u, v))
    assert (u[10:20, 10:510] == 128).all() and (v[10:20, 10:510] == 128).all()
    assert (u[30:] == 30).all() and (v[:, 520:] == 220).all()


def test_no_stamp_reads_none() -> None:
    assert read_stamp(np.full((720, 1280), 128, np.uint8)) is None
    y = np.full((720, 1280), 128, np.uint8)
    draw_stamp(y, NOW_MS)
    y[20:40, 20:60] = y[20:40, 20:60][:, ::-1]  # swap the reference cells
    assert read_stamp(y) is None
    assert read_stamp(np.zeros((10, 32), np.uint8)) is None


def test_picture_with_bright_and_dark_spots_is_not_a_stamp() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 256, (720, 1280), dtype=np.uint8)
    y[20:40, 20:40], y[20:40, 40:60] = 255, 0  # reference cells look right
    assert read_stamp(y) is None
    y[20:40, 60:1020] = 128  # a flat gray strip: data cells neither white nor black
    assert read_stamp(y) is None


def test_out_of_range_value_rejected() -> None:
    y = np.zeros((360, 640), np.uint8)
    with pytest.raises(ValueError):
        draw_stamp(y, 1 << BITS)
    with pytest.raises(ValueError):
        draw_stamp(y, -1)


def test_which_scalings_keep_the_stamp_readable() -> None:
    assert stamp_survives_scaling((1280, 720), (640, 360))
    assert stamp_survives_scaling((1920, 1080), (1280, 720))
    assert stamp_survives_scaling((1280, 720), (1280, 720))
    assert not stamp_survives_scaling((1280, 720), (854, 480))  # 13.3 px cells read at 13
    assert not stamp_survives_scaling((1280, 720), (640, 480))  # rows squashed


def _source_frames(count: int) -> list[tuple[av.VideoFrame, int]]:
    """Full synthetic pictures (colour, motion, digits) with distinct stamps."""
    clock = MediaClock(start_mono_ns=0, start_wall_ns=NOW_MS * 1_000_000)
    src = SyntheticVideo(1280, 720, 30, clock)
    out = []
    for n in range(count):
        media_ns = n * 1_000_000_000 // 30
        out.append((src.render(n, media_ns), clock.wall_ns(media_ns) // 1_000_000))
    return out


def _x264_round_trip(frames: list[av.VideoFrame], kbps: int) -> list[av.VideoFrame]:
    w, h = frames[0].width, frames[0].height
    enc = av.CodecContext.create("libx264", "w")
    assert isinstance(enc, av.VideoCodecContext)
    enc.width, enc.height, enc.pix_fmt = w, h, "yuv420p"
    enc.time_base, enc.framerate, enc.bit_rate = Fraction(1, 30), Fraction(30), kbps * 1000
    enc.options = {"preset": "veryfast", "tune": "zerolatency"}
    dec = av.CodecContext.create("h264", "r")
    decoded: list[av.VideoFrame] = []
    packets = []
    for i, frame in enumerate(frames):
        frame.pts = i
        packets += enc.encode(frame)
    packets += enc.encode(None)
    for p in packets:
        decoded += [f for f in dec.decode(p) if isinstance(f, av.VideoFrame)]
    decoded += [f for f in dec.decode(None) if isinstance(f, av.VideoFrame)]
    assert len(decoded) == len(frames)
    return decoded


@pytest.mark.parametrize(
    ("width", "height", "kbps"), [(1280, 720, 3000), (854, 480, 1200), (640, 360, 600)]
)
def test_round_trip_through_libx264_and_scaler(width: int, height: int, kbps: int) -> None:
    sources = _source_frames(12)
    rung = []
    for frame, _ in sources:
        scaled = frame if width == 1280 else frame.reformat(width, height, "yuv420p")
        carry_stamp(luma(frame), luma(scaled))  # the ladder's job for 854x480
        rung.append(scaled)
    decoded = _x264_round_trip(rung, kbps)
    for (_, ms), out in zip(sources, decoded, strict=True):
        y = luma(out)
        assert read_stamp(y) == ms
        _assert_spec_levels(y, ms)


def test_scaled_to_854_needs_the_stamp_carried() -> None:
    y = np.full((720, 1280), 90, np.uint8)
    draw_stamp(y, ALTERNATING)
    frame = av.VideoFrame.from_ndarray(np.vstack([y, np.full((360, 1280), 128, np.uint8)]),
                                       format="yuv420p")
    scaled = frame.reformat(854, 480, "yuv420p")
    y_scaled = luma(scaled).copy()
    assert read_stamp(y_scaled) != ALTERNATING  # why carry_stamp exists
    assert carry_stamp(y, y_scaled)
    assert read_stamp(y_scaled) == ALTERNATING


def test_flash_square_scales_with_the_picture() -> None:
    y = np.full((720, 1280), 16, np.uint8)
    x0, y0, x1, y1 = flash_rect(1280, 720)
    y[y0:y1, x0:x1] = 235
    frame = av.VideoFrame.from_ndarray(np.vstack([y, np.full((360, 1280), 128, np.uint8)]),
                                       format="yuv420p")
    for w, h in [(1280, 720), (854, 480), (640, 360)]:
        assert read_flash(luma(frame.reformat(w, h, "yuv420p")))
    assert not read_flash(np.full((480, 854), 16, np.uint8))


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="Debian's ffmpeg is not installed")
@pytest.mark.parametrize(("width", "height"), [(1280, 720), (640, 360)])
def test_round_trip_through_debian_ffmpeg(tmp_path, width: int, height: int) -> None:
    """Encode with the system ffmpeg's scaler and libx264, decode to full-range gray."""
    sources = _source_frames(10)
    raw = b"".join(frame.to_ndarray().tobytes() for frame, _ in sources)
    h264 = tmp_path / "out.h264"
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "yuv420p",
         "-s", "1280x720", "-r", "30", "-i", "-", "-vf", f"scale={width}:{height}",
         "-c:v", "libx264", "-preset", "veryfast", "-b:v", "1500k", "-y", str(h264)],
        input=raw, check=True, timeout=60,
    )
    # Decode as a player would show it: limited range expanded to full-range gray.
    gray = subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-i", str(h264),
         "-vf", "scale=in_range=tv:out_range=pc,format=gray", "-f", "rawvideo", "-"],
        capture_output=True, check=True, timeout=60,
    ).stdout
    pictures = np.frombuffer(gray, np.uint8).reshape(-1, height, width)
    assert len(pictures) == len(sources)
    c = width // 64
    for (_, ms), y in zip(sources, pictures, strict=True):
        assert read_stamp(y) == ms
        assert y[c + c // 2, c + c // 2] >= 200 and y[c + c // 2, 2 * c + c // 2] <= 40
