"""Per-frame CPU cost of the synthetic sources (render only, no pacing sleep), and with
--rates what x264 makes of each picture pattern on a ladder: the bit rate per rung against
the configured one (the "noisy" pattern should sit near it, the "plain" one far below).

    .venv/bin/python bench/synthetic_cost.py [--frames 600] [--rates [--seconds 4]]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import get_args

from appliance.capture.encoder import VideoEncoder
from appliance.capture.source import Captured
from appliance.capture.synthetic import Pattern, SyntheticAudio, SyntheticVideo
from appliance.media.clock import MediaClock

NS = 1_000_000_000
FPS = 30
# The development ladder (appliance/board.py), and one far above and below it per pixel.
LADDERS = (
    ((1280, 720, 3000), (852, 480, 1200), (640, 360, 700)),
    ((1280, 720, 8000), (640, 360, 200)),
)
SETTLE_FRAMES = 2 * FPS  # the first segment, while the rate control finds its level


def _summary(name: str, costs_ns: list[int]) -> str:
    costs = sorted(c / 1e6 for c in costs_ns)
    p99 = costs[int(len(costs) * 0.99) - 1]
    return (f"{name:>24}: median {statistics.median(costs):.3f} ms, p99 {p99:.3f} ms, "
            f"max {costs[-1]:.3f} ms")


def bench_video(width: int, height: int, fps: int, frames: int, pattern: Pattern) -> list[int]:
    src = SyntheticVideo(width, height, fps, MediaClock(), pattern)
    costs = []
    for n in range(frames):
        t0 = time.perf_counter_ns()
        src.render(n, n * NS // fps)
        costs.append(time.perf_counter_ns() - t0)
    return costs


def bench_audio(rate: int, channels: int, frames: int) -> list[int]:
    src = SyntheticAudio(rate, channels, MediaClock())
    costs = []
    for i in range(frames):
        t0 = time.perf_counter_ns()
        src.render(i * src.frame_size)
        costs.append(time.perf_counter_ns() - t0)
    return costs


def rates(pattern: Pattern, ladder: tuple[tuple[int, int, int], ...], seconds: float) -> str:
    """kbit/s per rung, through the appliance's encoder (scaling, x264 options, VBV)."""
    clock = MediaClock()
    src = SyntheticVideo(ladder[0][0], ladder[0][1], FPS, clock, pattern)
    encoders = [VideoEncoder(f"{h}p", w, h, FPS, kbps, 2.0, clock) for w, h, kbps in ladder]
    sizes = [0] * len(encoders)
    for n in range(SETTLE_FRAMES + round(seconds * FPS)):
        cap = Captured(src.render(n, n * NS // FPS), n * NS // FPS)
        for i, enc in enumerate(encoders):
            size = sum(len(p.data) for p in enc.encode(cap))
            sizes[i] += size if n >= SETTLE_FRAMES else 0
    return ", ".join(f"{h}p {size * 8 / seconds / 1000:.0f} of {kbps} kbit/s"
                     for (_, h, kbps), size in zip(ladder, sizes, strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--rates", action="store_true", help="also the bit rate per rung")
    ap.add_argument("--seconds", type=float, default=4, help="media encoded per ladder")
    args = ap.parse_args()
    for pattern in get_args(Pattern):
        for w, h in [(640, 360), (1280, 720), (1920, 1080)]:
            print(_summary(f"video {w}x{h} {pattern}", bench_video(w, h, FPS, args.frames,
                                                                   pattern)))
    print(_summary("audio 48k stereo", bench_audio(48000, 2, args.frames)))
    if args.rates:
        for pattern in get_args(Pattern):
            for ladder in LADDERS:
                print(f"{pattern}: {rates(pattern, ladder, args.seconds)}", flush=True)


if __name__ == "__main__":
    main()
