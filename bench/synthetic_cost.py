"""Per-frame CPU cost of the synthetic sources (render only, no pacing sleep).

    .venv/bin/python bench/synthetic_cost.py [frames]
"""

from __future__ import annotations

import statistics
import sys
import time

from appliance.capture.synthetic import SyntheticAudio, SyntheticVideo
from appliance.media.clock import MediaClock

NS = 1_000_000_000


def _summary(name: str, costs_ns: list[int]) -> str:
    costs = sorted(c / 1e6 for c in costs_ns)
    p99 = costs[int(len(costs) * 0.99) - 1]
    return (f"{name:>18}: median {statistics.median(costs):.3f} ms, p99 {p99:.3f} ms, "
            f"max {costs[-1]:.3f} ms")


def bench_video(width: int, height: int, fps: int, frames: int) -> list[int]:
    src = SyntheticVideo(width, height, fps, MediaClock())
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


def main() -> None:
    frames = int(sys.argv[1]) if len(sys.argv) > 1 else 600
    for w, h in [(640, 360), (1280, 720), (1920, 1080)]:
        print(_summary(f"video {w}x{h}", bench_video(w, h, 30, frames)))
    print(_summary("audio 48k stereo", bench_audio(48000, 2, frames)))


if __name__ == "__main__":
    main()
