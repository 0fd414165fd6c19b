"""Synthetic camera and microphone: test pictures and tones paced by the media clock.

Video frames are built directly in yuv420p: a background rendered once, then per frame
only what changes (latency stamp, clock digits, frame tick, moving box, flash square).
The "noisy" pattern renders a few backgrounds under different grain and cycles them: a
frame still costs one copy, and x264 can predict the grain from no frame it keeps as a
reference, so, as with a camera, the bits spent follow each rung's bitrate.
Audio is a 1 kHz burst of 100 ms from each whole wall-clock second over a quiet tone.
Both sources take their time from the same MediaClock, so the flash and the burst
line up and A/V cannot drift.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Final, Literal

import av
import numpy as np

from appliance.capture.source import Captured
from appliance.media.clock import MediaClock
from appliance.media.stamp import (
    FLASH_OFF,
    FLASH_ON,
    cell_size,
    draw_stamp,
    flash_due,
    flash_rect,
)

NS: Final = 1_000_000_000

# BT.601 limited-range YUV of the background elements.
_BACKGROUND = (40, 128, 128)
_GRID_LUMA = 72
_TICK_OFF, _TICK_ON = 56, 235
_DIGIT = 235
_BOX = (210, 16, 146)  # yellow
_BARS = (  # 75% colour bars
    (180, 128, 128), (162, 44, 142), (131, 156, 44), (112, 72, 58),
    (84, 184, 198), (65, 100, 212), (35, 212, 114),
)
_SEGMENTS = {  # seven-segment digits: a top, b/c right, d bottom, e/f left, g middle
    0: "abcdef", 1: "bc", 2: "abdeg", 3: "abcdg", 4: "bcfg",
    5: "acdfg", 6: "acdefg", 7: "abc", 8: "abcdefg", 9: "abcdfg",
}
_CLOCK_TEXT = "00:00:00.000"  # the layout: digits are pasted per frame, separators are static
_BOX_PERIOD_NS = 4 * NS  # there and back again: smooth motion shows judder and drops
Pattern = Literal["plain", "noisy"]
# More grain fields than x264 keeps reference frames at any preset the boards use (at most
# 3, "medium"), so a frame's grain is never in a reference.
_GRAIN_FIELDS = 5
# Luma standard deviation of the grain: x264 spends within a few % of the bitrate on every
# rung from 200 kbit/s at 640x360 to 8 Mbit/s at 1280x720 (bench/synthetic_cost.py --rates).
_GRAIN_SIGMA = 4.0


def _planes(buf: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Y, U, V views of a (height * 3 / 2, width) yuv420p buffer."""
    flat = buf.reshape(-1)
    cw, ch = width // 2, height // 2
    y = flat[: width * height].reshape(height, width)
    u = flat[width * height : width * height + cw * ch].reshape(ch, cw)
    v = flat[width * height + cw * ch : width * height + 2 * cw * ch].reshape(ch, cw)
    return y, u, v


def _fill(planes: tuple[np.ndarray, np.ndarray, np.ndarray], x0: int, y0: int, x1: int, y1: int,
          yuv: tuple[int, int, int]) -> None:
    """Fill a rectangle in all three planes (even coordinates keep chroma aligned)."""
    y, u, v = planes
    y[y0:y1, x0:x1] = yuv[0]
    u[y0 // 2 : (y1 + 1) // 2, x0 // 2 : (x1 + 1) // 2] = yuv[1]
    v[y0 // 2 : (y1 + 1) // 2, x0 // 2 : (x1 + 1) // 2] = yuv[2]


def _digit_glyph(digit: int, w: int, h: int, t: int) -> np.ndarray:
    g = np.full((h, w), _BACKGROUND[0], np.uint8)
    mid_lo, mid_hi = h // 2 - t // 2, h // 2 - t // 2 + t
    rects = {
        "a": (0, 0, w, t), "g": (0, mid_lo, w, mid_hi), "d": (0, h - t, w, h),
        "f": (0, 0, t, mid_hi), "b": (w - t, 0, w, mid_hi),
        "e": (0, mid_lo, t, h), "c": (w - t, mid_lo, w, h),
    }
    for seg in _SEGMENTS[digit]:
        x0, y0, x1, y1 = rects[seg]
        g[y0:y1, x0:x1] = _DIGIT
    return g


@dataclass(frozen=True)
class _Clock:
    """Where the HH:MM:SS.mmm (local time) digits go and what they look like."""

    y: int
    digit_xs: tuple[int, ...]  # left edge of each of the 9 digits
    separators: tuple[tuple[int, str], ...]  # left edge and character of ':' and '.'
    glyphs: tuple[np.ndarray, ...]  # 0..9, background included: a frame pastes them whole

    @classmethod
    def layout(cls, width: int, top: int, max_height: int) -> _Clock | None:
        gh = min(max_height, width // 8) & ~1
        if gh < 10:
            return None  # too small a picture for readable digits
        gw, t = gh * 11 // 20, max(1, gh // 10)
        gap, sep_w = max(1, gh * 3 // 20), 3 * t
        total = sum((gw if ch == "0" else sep_w) + gap for ch in _CLOCK_TEXT) - gap
        x = (width - total) // 2
        digit_xs: list[int] = []
        separators: list[tuple[int, str]] = []
        for ch in _CLOCK_TEXT:
            if ch == "0":
                digit_xs.append(x)
                x += gw + gap
            else:
                separators.append((x + t, ch))
                x += sep_w + gap
        glyphs = tuple(_digit_glyph(d, gw, gh, t) for d in range(10))
        return cls(top, tuple(digit_xs), tuple(separators), glyphs)

    def draw_separators(self, y_plane: np.ndarray) -> None:
        """The static ':' and '.', drawn once into the background."""
        gh = self.glyphs[0].shape[0]
        t = max(1, gh // 10)
        for x, ch in self.separators:
            rows = (gh // 3 - t // 2, 2 * gh // 3 - t // 2) if ch == ":" else (gh - t,)
            for dy in rows:
                y_plane[self.y + dy : self.y + dy + t, x : x + t] = _DIGIT

    def draw(self, y_plane: np.ndarray, wall_ns: int) -> None:
        ms = wall_ns // 1_000_000
        tm = time.localtime(ms // 1000)
        digits = f"{tm.tm_hour:02d}{tm.tm_min:02d}{tm.tm_sec:02d}{ms % 1000:03d}"
        gh, gw = self.glyphs[0].shape
        for x, d in zip(self.digit_xs, digits, strict=True):
            y_plane[self.y : self.y + gh, x : x + gw] = self.glyphs[int(d)]


class SyntheticVideo:
    """Test pictures at `fps`: frame n is captured at media time n / fps.

    `read` builds the frame, then sleeps until it is due, so it returns on time. A reader
    more than a frame late gets the latest due frame (the skipped ones count in `dropped`)
    rather than a burst of stale ones.
    """

    def __init__(self, width: int, height: int, fps: int, clock: MediaClock,
                 pattern: Pattern = "plain"):
        if width % 2 or height % 2 or width < 64 or height < 64:
            raise ValueError(f"synthetic video needs even sizes >= 64, not {width}x{height}")
        if fps < 1:
            raise ValueError(f"fps must be positive, not {fps}")
        self.width, self.height, self.fps = width, height, fps
        self.dropped = 0
        self._clock = clock
        self._next: int | None = None
        self._layout()
        background = self._render_background()
        self._backgrounds = [background] if pattern == "plain" else self._grained(background)

    def _layout(self) -> None:
        w, h = self.width, self.height
        c = self._c = cell_size(w)
        self._flash = flash_rect(w, h)
        top = 3 * c  # below the stamp row
        self._clock_digits = _Clock.layout(w, top, h * 3 // 25)
        y = top + (self._clock_digits.glyphs[0].shape[0] if self._clock_digits else 0) + c // 2
        tick_h = max(2, c // 2)
        tick_w = (w - 2 * c) // self.fps
        self._ticks = (c, y, tick_w, tick_h) if tick_w >= 2 else None
        band_top = (y + tick_h + c) & ~1
        band_bottom = (self._flash[1] - c) & ~1
        side = min(band_bottom - band_top, w // 6) & ~1
        self._band = (band_top, band_bottom, side) if side >= 4 else None

    def _render_background(self) -> np.ndarray:
        w, h, c = self.width, self.height, self._c
        buf = np.empty((h * 3 // 2, w), np.uint8)
        planes = _planes(buf, w, h)
        _fill(planes, 0, 0, w, h, _BACKGROUND)
        if self._clock_digits:
            self._clock_digits.draw_separators(planes[0])
        if self._ticks:
            x0, y0, tw, th = self._ticks
            for i in range(self.fps):
                planes[0][y0 : y0 + th, x0 + i * tw : x0 + (i + 1) * tw - 1] = _TICK_OFF
        if self._band:
            top, bottom, _ = self._band
            for x in range(0, w, max(2, w // 16)):
                planes[0][top:bottom, x] = _GRID_LUMA
        fx0, fy0, _, fy1 = self._flash
        bar_w = ((fx0 - 2 * c) // len(_BARS)) & ~1
        for i, colour in enumerate(_BARS):
            if bar_w >= 2:
                _fill(planes, c + i * bar_w, fy0, c + (i + 1) * bar_w, fy1, colour)
        return buf

    def _grained(self, background: np.ndarray) -> list[np.ndarray]:
        """Copies of `background` under different Gaussian grain in luma (seeded: the same
        pictures every run)."""
        rng = np.random.default_rng(0)
        y = _planes(background, self.width, self.height)[0].astype(np.float32)
        out = []
        for _ in range(_GRAIN_FIELDS):
            buf = background.copy()
            grain = rng.normal(0.0, _GRAIN_SIGMA, y.shape).astype(np.float32)
            _planes(buf, self.width, self.height)[0][:] = np.clip(y + grain, 16, 235)
            out.append(buf)
        return out

    def _due_ns(self, n: int) -> int:
        return n * NS // self.fps

    def _next_index(self) -> int:
        now = self._clock.media_ns()
        latest = now * self.fps // NS  # the last frame due at or before now
        if self._next is None:
            return latest if self._due_ns(latest) == now else latest + 1
        if latest > self._next:  # the frame after next is already due: skip, don't burst
            self.dropped += latest - self._next
            return latest
        return self._next

    def read(self) -> Captured:
        n = self._next_index()
        media_ns = self._due_ns(n)
        frame = self.render(n, media_ns)
        self._clock.sleep_until(media_ns)
        self._next = n + 1
        return Captured(frame, media_ns)

    def render(self, n: int, media_ns: int) -> av.VideoFrame:
        """Frame `n`, captured at `media_ns`. A fresh buffer each time: the frame wraps it
        without a copy and an encoder may hold it after we have moved on."""
        wall_ns = self._clock.wall_ns(media_ns)
        buf = self._backgrounds[n % len(self._backgrounds)].copy()
        planes = _planes(buf, self.width, self.height)
        draw_stamp(planes[0], wall_ns // 1_000_000)
        if self._clock_digits:
            self._clock_digits.draw(planes[0], wall_ns)
        if self._ticks:
            x0, y0, tw, th = self._ticks
            x = x0 + (n % self.fps) * tw
            planes[0][y0 : y0 + th, x : x + tw - 1] = _TICK_ON
        if self._band:
            self._draw_box(planes, media_ns)
        fx0, fy0, fx1, fy1 = self._flash
        planes[0][fy0:fy1, fx0:fx1] = FLASH_ON if flash_due(wall_ns) else FLASH_OFF
        return av.VideoFrame.from_numpy_buffer(buf, format="yuv420p")

    def _draw_box(self, planes: tuple[np.ndarray, np.ndarray, np.ndarray], media_ns: int) -> None:
        assert self._band
        top, bottom, side = self._band
        phase = (media_ns % _BOX_PERIOD_NS) / _BOX_PERIOD_NS
        travel = self.width - side
        x = int(travel * (2 * phase if phase < 0.5 else 2 - 2 * phase)) & ~1
        y = (top + (bottom - top - side) // 2) & ~1
        _fill(planes, x, y, x + side, y + side, _BOX)

    def close(self) -> None:
        pass


class SyntheticAudio:
    """fltp frames of `frame_size` samples (what the AAC encoder takes, so nothing needs
    converting): sample k is captured at media time k / sample_rate.

    A frame is returned once its last sample is due, as a sound card would. Over a quiet
    440 Hz tone (`background` amplitude, 0 for none), a 1 kHz burst of exactly 100 ms
    starts on the first sample at or after each whole second of the clock's wall time.
    """

    TONE_HZ: Final = 1000
    BURST_LEVEL: Final = 0.5
    BACKGROUND_HZ: Final = 440

    def __init__(self, sample_rate: int, channels: int, clock: MediaClock,
                 frame_size: int = 1024, background: float = 0.01):
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, not {channels}")
        self.sample_rate, self.channels, self.frame_size = sample_rate, channels, frame_size
        self.dropped = 0
        self._clock = clock
        self._background = background
        self._layout = "stereo" if channels == 2 else "mono"
        self._next: int | None = None  # first sample of the next frame
        self._period: np.ndarray | None = None  # one second of mono samples, made once
        # Where media time zero falls within its wall-clock second, scaled by the rate so
        # the on/off test per sample stays in exact integers.
        self._phase0 = (clock.start_wall_ns % NS) * sample_rate

    def _media_ns(self, sample: int) -> int:
        return sample * NS // self.sample_rate

    def _next_start(self) -> int:
        now = self._clock.media_ns()
        done = now * self.sample_rate // NS  # samples fully captured by now
        if self._next is None:
            return done
        behind = (done - self._next) // self.frame_size  # whole frames already complete
        if behind >= 2:  # more than a frame late: skip to the latest complete frame
            skipped = behind - 1
            self.dropped += skipped
            return self._next + skipped * self.frame_size
        return self._next

    def read(self) -> Captured:
        start = self._next_start()
        frame = self.render(start)
        self._clock.sleep_until(-(-(start + self.frame_size) * NS // self.sample_rate))
        self._next = start + self.frame_size
        return Captured(frame, self._media_ns(start))

    def samples(self, start: int, count: int) -> np.ndarray:
        """Mono float samples `start` .. `start + count` (sample index from media time 0)."""
        rate = self.sample_rate
        idx = np.arange(start, start + count, dtype=np.int64)
        # Position within the wall-clock second, times the rate: exact integers.
        pos = (self._phase0 + (idx % rate) * NS) % (NS * rate)
        burst = pos < 100_000_000 * rate
        seconds_in = pos / (NS * rate)  # 0 <= s < 1, time since the whole second
        tone = self.BURST_LEVEL * np.sin(2 * math.pi * self.TONE_HZ * seconds_in)
        out = np.where(burst, tone, 0.0)
        if self._background:
            t = (idx % rate) / rate  # 440 whole cycles per second: continuous across seconds
            out += self._background * np.sin(2 * math.pi * self.BACKGROUND_HZ * t)
        return out

    def render(self, start: int) -> av.AudioFrame:
        # The sound repeats every second, so frames are slices of one precomputed second:
        # per-frame synthesis would cost more CPU than the AAC encoder.
        if self._period is None:
            # Quantised to 16 bits, as a sound card delivers: AAC encodes such samples
            # with markedly less CPU than full-precision floats of the same sound.
            pcm16 = np.round(self.samples(0, self.sample_rate) * 32767)
            self._period = (pcm16 / 32768).astype(np.float32)  # as s16 -> flt converts
        period, offset = self._period, start % self.sample_rate
        end = offset + self.frame_size
        mono = (period[offset:end] if end <= period.size
                else np.concatenate((period[offset:], period[: end - period.size])))
        # Every channel plays the same sound: fill each plane from the one mono slice
        # (a third of the cost of tiling it into a channels x samples array).
        frame = av.AudioFrame(format="fltp", layout=self._layout, samples=self.frame_size)
        pcm = mono.tobytes()
        for plane in frame.planes:
            plane.update(pcm)
        frame.sample_rate = self.sample_rate
        return frame

    def close(self) -> None:
        pass
