"""Instructions per video frame of the appliance's media path, by library, under callgrind.

The path as the daemon runs it, in one thread and on a fixed clock so that every run does
the same work: synthetic source -> the ladder's encoders (scaling, stamp carry, x264) and
AAC -> media bus -> a subscription per track -> CMAF muxers. Instruction counts repeat to
a fraction of a percent where CPU time on a shared machine varies by ten, so they show
what a change to the Python around the codecs saves (the codecs are the same either way).
Two runs of different length are subtracted: start-up and imports drop out.

    .venv/bin/python bench/media_path_ir.py [--frames 30 120]
    .venv/bin/python bench/media_path_ir.py --run N   # the path alone, N frames, no valgrind
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.capture.encoder import AudioEncoder, VideoEncoder  # noqa: E402
from appliance.capture.source import Captured  # noqa: E402
from appliance.capture.synthetic import SyntheticAudio, SyntheticVideo  # noqa: E402
from appliance.media.bus import MediaBus, Subscription  # noqa: E402
from appliance.media.clock import MediaClock  # noqa: E402
from appliance.package.cmaf import CmafMuxer  # noqa: E402

NS = 1_000_000_000
FPS, SAMPLE_RATE, AUDIO_FRAME = 30, 48000, 1024
LADDER = (("720p", 1280, 720, 3000), ("480p", 854, 480, 1200), ("360p", 640, 360, 800))
# Shared objects by what they are, the rest by file name.
GROUPS = (("libpython", "python"), ("_multiarray", "numpy"), ("libx264", "x264"),
          ("libswscale", "swscale"), ("libavcodec", "avcodec (AAC)"), ("libc.so", "libc"),
          ("abi3.so", "PyAV"), ("libavformat", "avformat"), ("libavutil", "avutil"),
          ("libm.so", "libm"))


def run_path(frames: int) -> int:
    """The media path for `frames` video frames; returns the CMAF parts made."""
    clock = MediaClock(start_mono_ns=0, start_wall_ns=1_767_225_600 * NS)
    bus = MediaBus()
    video = SyntheticVideo(1280, 720, FPS, clock)
    audio = SyntheticAudio(SAMPLE_RATE, 2, clock, frame_size=AUDIO_FRAME)
    encoders: list[VideoEncoder | AudioEncoder] = [
        VideoEncoder(name, w, h, FPS, kbps, 2.0, clock) for name, w, h, kbps in LADDER]
    encoders.append(AudioEncoder(SAMPLE_RATE, 2, 128, clock))
    consumers: dict[str, tuple[Subscription, CmafMuxer]] = {}
    parts = 0

    def pump(enc: VideoEncoder | AudioEncoder, cap: Captured) -> None:
        nonlocal parts
        for pkt in enc.encode(cap):
            if enc.info is None:  # before the first keyframe, as the pipeline drops them
                continue
            if enc.info.name not in consumers:
                bus.add_track(enc.info)
                consumers[enc.info.name] = (bus.subscribe({enc.info.name}),
                                            CmafMuxer(enc.info, 0.2, 2.0))
            bus.publish(pkt)
        for sub, muxer in consumers.values():
            while (queued := sub.get(0)) is not None:
                parts += len(muxer.feed(queued))

    sample = 0
    for n in range(frames):
        media_ns = n * NS // FPS
        cap = Captured(video.render(n, media_ns), media_ns)
        for enc in encoders[:-1]:
            pump(enc, cap)
        while sample * NS // SAMPLE_RATE < media_ns:
            pump(encoders[-1], Captured(audio.render(sample), sample * NS // SAMPLE_RATE))
            sample += AUDIO_FRAME
    return parts


def self_cost_by_object(path: Path) -> collections.Counter[str]:
    """Instructions spent in each shared object itself (calls into others excluded)."""
    cost: collections.Counter[str] = collections.Counter()
    obj, after_call = "", False
    with open(path) as f:
        for line in f:
            if line.startswith("ob="):
                obj = os.path.basename(line[3:].strip())
            elif line.startswith("calls="):
                after_call = True  # the next cost line is the call's inclusive cost
            elif line[:1].isdigit() or line[:1] in "+-*":
                if after_call:
                    after_call = False
                    continue
                fields = line.split()
                if len(fields) > 1:
                    cost[obj] += int(fields[1])
    return cost


def group(obj: str) -> str:
    return next((name for key, name in GROUPS if key in obj), "other")


def callgrind(frames: int, work: Path) -> collections.Counter[str]:
    out = work / f"callgrind.{frames}"
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                    "--compress-strings=no", "--compress-pos=no",
                    sys.executable, __file__, "--run", str(frames)],
                   check=True, capture_output=True,
                   env={**os.environ, "PYTHONMALLOC": "malloc"})  # valgrind sees each alloc
    by_group: collections.Counter[str] = collections.Counter()
    for obj, ir in self_cost_by_object(out).items():
        by_group[group(obj)] += ir
    return by_group


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, nargs=2, default=(30, 120), metavar=("SHORT", "LONG"))
    ap.add_argument("--run", type=int, metavar="N", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run is not None:
        print(f"{run_path(args.run)} parts")
        return
    short, long = args.frames
    with tempfile.TemporaryDirectory(prefix="bench-ir-") as tmp:
        print(f"callgrind, {short} and {long} frames (a few minutes) ...", flush=True)
        a, b = callgrind(short, Path(tmp)), callgrind(long, Path(tmp))
    per_frame = {k: (b[k] - a[k]) / (long - short) / 1e6 for k in set(a) | set(b)}
    total = sum(per_frame.values())
    print(f"{total:.2f} M instructions per video frame (3 rungs, 720p in, + AAC, packaged)")
    for name, ir in sorted(per_frame.items(), key=lambda kv: -kv[1]):
        print(f"  {name:14} {ir:7.3f} M  {100 * ir / total:5.1f}%")
    glue = sum(per_frame.get(k, 0.0) for k in ("python", "numpy", "libc", "PyAV"))
    print(f"around the codecs (python, numpy, libc, PyAV): {glue:.3f} M per frame")


if __name__ == "__main__":
    main()
