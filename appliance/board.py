"""The board we run on, what it can encode, and how a ladder is spread over its encoders.

The board is read from the device tree the first time it is asked for (never at
import) and cached. `APPLIANCE_BOARD` (pi4, pi5, zero2w, pi, generic) overrides it:
it lets a developer run or check a config as a given Pi would, and lets tests run the
real daemon and `check-config` as a Pi without touching any hardware file.

Encoder budgets are in H.264 macroblocks (16x16) per second, the unit both codec
levels and x264's speed scale with: 1080p30 is 120 x 68 x 30 = 244,800.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, Protocol, get_args

BoardKey = Literal["pi4", "pi5", "zero2w", "pi", "generic"]
EncoderKind = Literal["hardware", "x264"]
Preset = Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium"]

DEVICE_TREE: Final = Path("/proc/device-tree")
ENV_OVERRIDE: Final = "APPLIANCE_BOARD"

# x264's speed at each preset relative to veryfast, on camera pictures with tune
# zerolatency (from x264's preset comparisons; the ratios matter, not the absolute).
PRESET_SPEED: Final[dict[str, float]] = {
    "ultrafast": 2.5, "superfast": 1.6, "veryfast": 1.0, "faster": 0.65, "fast": 0.5,
    "medium": 0.4,
}
PRESETS_FASTEST_FIRST: Final = sorted(PRESET_SPEED, key=PRESET_SPEED.__getitem__, reverse=True)

# The bcm2835-codec (VideoCore IV/VI) H.264 block: level 4.0's 245,760 macroblocks/s in
# total, whatever the number of sessions sharing it.
VIDEOCORE_H264_MBPS: Final = 245_760


@dataclass(frozen=True)
class DefaultRung:
    name: str
    width: int
    height: int
    bitrate_kbps: int


# Bitrates: about 0.08-0.12 bits per pixel per frame at 30 fps, a little more for the
# smaller pictures (less redundancy to exploit), each rung at least 1.5x the next so a
# switch down is worth it. At the low end of Apple's authoring ladder (1080p 6000-7800,
# 720p 3000-4500) because a fixed camera's picture is mostly static.
R1080 = DefaultRung("1080p", 1920, 1080, 5000)
R720 = DefaultRung("720p", 1280, 720, 3000)
R480 = DefaultRung("480p", 854, 480, 1200)
R360 = DefaultRung("360p", 640, 360, 800)


@dataclass(frozen=True)
class BoardProfile:
    key: BoardKey
    name: str
    hw_mbps: int  # hardware H.264, all sessions together; 0: no H.264 block
    sw_mbps_veryfast: int | None  # x264 at veryfast, see below; None: no limit
    capture: tuple[int, int]
    ladder: tuple[DefaultRung, ...]
    x264_preset: Preset
    device: bool  # a Pi (True) or a development machine

    def sw_mbps(self, preset: str) -> int | None:
        """What x264 sustains at `preset` on this board; None: no limit."""
        if self.sw_mbps_veryfast is None:
            return None
        return round(self.sw_mbps_veryfast * PRESET_SPEED[preset])


# Software budgets are ESTIMATES, to be confirmed on each board with
# hw-tests/test_encode_budget.py: x264 (tune zerolatency) on camera pictures with three
# of the four cores busy, one left for capture copies, scaling, AAC, packaging and web.
# Pi 4 (4x A72 1.5 GHz) ~37,000 macroblocks/s per core at veryfast; Pi 5 (4x A76
# 2.4 GHz) about 2.7x that; Zero 2 W (4x A53 1 GHz) about a quarter of a Pi 4.
# Pis default to superfast: 1.6x veryfast's speed for ~5-10 % more bits at equal quality,
# which is what lets the lower rungs of the device ladder fit beside the hardware rung.
PI4 = BoardProfile("pi4", "Raspberry Pi 4", VIDEOCORE_H264_MBPS, 110_000, (1920, 1080),
                   (R1080, R720, R480), "superfast", True)
PI5 = BoardProfile("pi5", "Raspberry Pi 5", 0, 300_000, (1920, 1080),
                   (R1080, R720, R480), "superfast", True)
# The device ladder would leave 156,600 for x264 beside a hardware 1080p: far beyond a
# Zero 2 W. 720p/480p/360p (184,200) fits its hardware block alone.
ZERO2W = BoardProfile("zero2w", "Raspberry Pi Zero 2 W", VIDEOCORE_H264_MBPS, 27_000,
                      (1280, 720), (R720, R480, R360), "superfast", True)
# Pi 3, Pi 2, Zero, CM3 and any Pi not known here: the VideoCore H.264 block that every
# Pi before the 5 has, and Zero 2 W's CPU or less.
OTHER_PI = BoardProfile("pi", "Raspberry Pi", VIDEOCORE_H264_MBPS, 20_000, (1280, 720),
                        (R720, R480, R360), "superfast", True)
# A development machine: no H.264 block we know of, and no limit on x264.
GENERIC = BoardProfile("generic", "development machine", 0, None, (1280, 720),
                       (R720, R480, R360), "veryfast", False)

PROFILES: Final[dict[BoardKey, BoardProfile]] = {
    p.key: p for p in (PI4, PI5, ZERO2W, OTHER_PI, GENERIC)
}


class BoardError(ValueError):
    """An APPLIANCE_BOARD value that names no board."""


def profile_named(key: str) -> BoardProfile:
    if key not in PROFILES:
        raise BoardError(f"{ENV_OVERRIDE}={key!r}: not one of {', '.join(get_args(BoardKey))}")
    return PROFILES[key]


def board_from_device_tree(model: str, compatible: Sequence[str]) -> BoardProfile:
    """The profile for a device tree's model string and compatible list.

    The SoC in `compatible` decides where it can (a Pi 400, CM4 or CM5 encodes like the
    board it shares a SoC with); the model string covers trees without it.
    """
    if "brcm,bcm2712" in compatible or model.startswith("Raspberry Pi 5"):
        return PI5
    if "raspberrypi,model-zero-2-w" in compatible or "Zero 2 W" in model:
        return ZERO2W
    if "brcm,bcm2711" in compatible or model.startswith(("Raspberry Pi 4", "Raspberry Pi 400")):
        return PI4
    if "Raspberry Pi" in model:
        return OTHER_PI
    return GENERIC


def _read_strings(path: Path) -> list[str]:
    """A device-tree property as its NUL-separated strings; [] when absent."""
    try:
        raw = path.read_bytes()
    except OSError:
        return []
    return [s.decode(errors="replace") for s in raw.split(b"\0") if s]


def read_board(root: Path = DEVICE_TREE, override: str | None = None) -> BoardProfile:
    """The board described by the device tree at `root`, unless `override` names one."""
    if override:
        return profile_named(override)
    model = " ".join(_read_strings(root / "model"))
    return board_from_device_tree(model, _read_strings(root / "compatible"))


@functools.cache
def detect_board() -> BoardProfile:
    """This machine's board (cached: it does not change while we run)."""
    return read_board(DEVICE_TREE, os.environ.get(ENV_OVERRIDE))


def default_ladder(board: BoardProfile, width: int, height: int) -> list[DefaultRung]:
    """The board's default rungs that fit in a `width` x `height` capture; when none does,
    one rung at the capture size, its bitrate scaled by area from the smallest default."""
    rungs = [r for r in board.ladder if r.width <= width and r.height <= height]
    if rungs:
        return rungs
    smallest = board.ladder[-1]
    kbps = smallest.bitrate_kbps * width * height // (smallest.width * smallest.height)
    return [DefaultRung(f"{height}p", width, height, max(100, kbps))]


# ---- the encode plan ------------------------------------------------------------------


class RungLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def bitrate_kbps(self) -> int: ...


class VideoLike(Protocol):
    """What the plan reads of the [video] table (appliance.config.schema.Video)."""

    @property
    def ladder(self) -> Sequence[RungLike]: ...
    @property
    def fps(self) -> int: ...
    @property
    def encoder(self) -> str: ...
    @property
    def x264_preset(self) -> str: ...


@dataclass(frozen=True)
class RungPlan:
    name: str
    width: int
    height: int
    bitrate_kbps: int
    encoder: EncoderKind
    mbps: int  # macroblocks/s this rung costs


class LadderError(ValueError):
    """The ladder does not fit the board; `key` is the [video] key to change."""

    def __init__(self, key: Literal["ladder", "encoder"], message: str):
        super().__init__(message)
        self.key = key


def macroblocks_per_s(width: int, height: int, fps: int) -> int:
    return math.ceil(width / 16) * math.ceil(height / 16) * fps


def plan_encoders(video: VideoLike, board: BoardProfile) -> list[RungPlan]:
    """Which encoder each rung gets, in ladder order; LadderError when the board cannot
    sustain the ladder.

    A rung goes to the hardware block while it fits what is left of the hardware budget
    (the top rung first, further rungs as further sessions), else to x264 while it fits
    what is left of the software budget. encoder = "x264" keeps every rung off the
    hardware; "hardware" insists that the top rung gets it.
    """
    if video.encoder == "hardware" and board.hw_mbps == 0:
        raise LadderError("encoder", f'this {board.name} has no hardware H.264 encoder: '
                                     f'use "auto" or "x264"')
    hw_left = 0 if video.encoder == "x264" else board.hw_mbps
    sw_left = board.sw_mbps(video.x264_preset)
    plans: list[RungPlan] = []
    for i, rung in enumerate(video.ladder):
        cost = macroblocks_per_s(rung.width, rung.height, video.fps)
        kind: EncoderKind
        if cost <= hw_left:
            kind, hw_left = "hardware", hw_left - cost
        elif i == 0 and video.encoder == "hardware":
            raise LadderError("ladder", _refusal(video, board, plans, rung))
        elif sw_left is None or cost <= sw_left:
            kind = "x264"
            sw_left = None if sw_left is None else sw_left - cost
        else:
            raise LadderError("ladder", _refusal(video, board, plans, rung))
        plans.append(RungPlan(rung.name, rung.width, rung.height, rung.bitrate_kbps, kind, cost))
    return plans


# Heights offered when a rung must shrink, the rung's aspect ratio kept.
_HEIGHTS: Final = (2160, 1440, 1080, 900, 720, 540, 480, 360, 270, 240, 180, 144)
# Frame rates offered when the ladder is too much at the configured one.
_RATES: Final = (50, 30, 25, 24, 20, 15, 10)


@dataclass(frozen=True)
class _Rung:
    name: str
    width: int
    height: int
    bitrate_kbps: int


@dataclass(frozen=True)
class _Variant:
    """A [video] table with some keys changed, to try what would fit."""

    ladder: Sequence[RungLike]
    fps: int
    encoder: str
    x264_preset: str


def _fits(video: VideoLike, board: BoardProfile, *, ladder: Sequence[RungLike] | None = None,
          fps: int | None = None, preset: str | None = None, encoder: str | None = None) -> bool:
    variant = _Variant(video.ladder if ladder is None else ladder, fps or video.fps,
                       encoder or video.encoder, preset or video.x264_preset)
    try:
        plan_encoders(variant, board)
    except LadderError:
        return False
    return True


def _refusal(video: VideoLike, board: BoardProfile, placed: list[RungPlan],
             rung: RungLike) -> str:
    """Why `rung` does not fit, and the changes that would make the whole ladder fit."""
    costs = [macroblocks_per_s(r.width, r.height, video.fps) for r in video.ladder]
    parts = " + ".join(f"{r.name} {c:,}" for r, c in zip(video.ladder, costs, strict=True))
    cost = macroblocks_per_s(rung.width, rung.height, video.fps)
    return (f"the ladder needs {sum(costs):,} macroblocks/s ({parts}) at {video.fps} fps; "
            f"this {board.name} encodes {_budgets(video, board, placed)}, so {rung.name} "
            f"({rung.width}x{rung.height}, {cost:,}) does not fit: "
            + "; or ".join(_fixes(video, board, rung)))


def _budgets(video: VideoLike, board: BoardProfile, placed: list[RungPlan]) -> str:
    def used(kind: EncoderKind) -> str:
        names = [p.name for p in placed if p.encoder == kind]
        return f"used by {', '.join(names)}" if names else ""

    hw = "nothing in hardware"
    if board.hw_mbps and video.encoder != "x264":
        note = used("hardware")
        hw = f"{board.hw_mbps:,} in hardware" + (f" ({note})" if note else "")
    sw = board.sw_mbps(video.x264_preset)
    if sw is None:
        return f"{hw} + any amount in software"
    notes = ", ".join(filter(None, [f"x264 {video.x264_preset}", "an estimate", used("x264")]))
    return f"{hw} + ~{sw:,} in software ({notes})"


def _fixes(video: VideoLike, board: BoardProfile, rung: RungLike) -> list[str]:
    """Single changes after which the whole ladder fits (each one checked)."""
    fixes = []
    others = [r for r in video.ladder if r is not rung]
    if others and _fits(video, board, ladder=others):
        fixes.append(f"drop {rung.name}")
    # Lowered, a rung stays above the rungs after it: the ladder keeps its order.
    index = next(i for i, r in enumerate(video.ladder) if r is rung)
    floor = max((r.height for r in video.ladder[index + 1 :]), default=0)
    for h in (h for h in _HEIGHTS if floor < h < rung.height):
        w = round(h * rung.width / rung.height / 2) * 2
        smaller = _Rung(rung.name, w, h, rung.bitrate_kbps)
        if w >= 64 and _fits(video, board,
                             ladder=[smaller if r is rung else r for r in video.ladder]):
            fixes.append(f"lower {rung.name} to {w}x{h} or less")
            break
    current = PRESET_SPEED[video.x264_preset]
    fitting = [p for p in PRESETS_FASTEST_FIRST
               if PRESET_SPEED[p] > current and _fits(video, board, preset=p)]
    if fitting:  # the slowest (best quality) preset that is fast enough
        fixes.append(f'set video.x264_preset = "{fitting[-1]}"')
    if video.encoder != "auto" and _fits(video, board, encoder="auto"):
        fixes.append('set video.encoder = "auto"')
    rate = next((f for f in _RATES if f < video.fps and _fits(video, board, fps=f)), None)
    if rate:
        fixes.append(f"set video.fps = {rate}")
    return fixes or ["remove rungs"]
