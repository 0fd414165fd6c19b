"""WebRTC preview (WHEP): glass-to-glass latency in Chromium, and CPU per viewer.

The server is tests/whep_peers.py as a process of its own: the synthetic stamped source,
x264 for one rung and AAC, the media bus and an aiohttp app with setup_whep, on loopback.

Latency: Debian's Chromium plays tests/browser/whep_page.html (plain RTCPeerConnection,
WHEP POST). For every presented frame (requestVideoFrameCallback) the page reads the
stamp with static/stamp.js: Date.now() - stamp, browser and server on the same clock.
Prints p50/p95/max, and what WebRTC's stats say (jitter buffer, losses, PLIs).

CPU: the same server with 0, 1, 2 and 4 aiortc viewers (in this process; they decode what
they get, the server does not): the server process's user+system CPU over --cpu-seconds
each. The first viewer also starts the shared feed (AAC decode + Opus encode once for
all viewers); each one after it costs only RTP packetization, SRTP and sending.

    .venv/bin/python bench/whep_latency.py [--seconds 20] [--cpu-seconds 10] [--size 640x360]

Target (issue 5): p50 <= 100 ms on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.whep_peers import (  # noqa: E402
    PreviewProcess,
    WhepViewer,
    open_whep_page,
    preview_process,
    webrtc_chromium,
)

TARGET_P50_MS = 100.0
VIEWER_COUNTS = (0, 1, 2, 4)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, round(q / 100 * len(ordered) + 0.5))
    return ordered[min(rank, len(ordered)) - 1]


def latency(server: PreviewProcess, seconds: float, warmup: float) -> dict[str, Any]:
    with webrtc_chromium() as browser:
        page = open_whep_page(browser, server.url)
        deadline = time.monotonic() + 30
        while not page.evaluate(
                "async () => window.whep.error || (window.pc && "
                "((await window.whepStats()).video || {}).framesDecoded > 0)"):
            if time.monotonic() > deadline:
                raise SystemExit("no video frame decoded in 30 s")
            time.sleep(0.1)
        whep = page.evaluate("() => window.whep")
        if whep["error"]:
            raise SystemExit(f"WHEP failed: {whep['error']}")
        time.sleep(warmup)
        before = page.evaluate("() => window.whepStats()")
        page.evaluate("() => { window.whep.recording = true; }")
        time.sleep(seconds)
        whep = page.evaluate("() => { window.whep.recording = false; return window.whep; }")
        after = page.evaluate("() => window.whepStats()")
        page.evaluate("() => window.whepDelete()")
        page.close()
    samples = [float(s) for s in whep["samples"]]
    if not samples:
        raise SystemExit(f"no stamped frame read ({whep['noStamp']} without a stamp)")
    v0, v1 = before["video"], after["video"]
    a0, a1 = before["audio"], after["audio"]
    frames = v1["jitterBufferEmittedCount"] - v0["jitterBufferEmittedCount"]
    audio_n = a1["jitterBufferEmittedCount"] - a0["jitterBufferEmittedCount"]
    return {
        "frames": len(samples), "no_stamp": whep["noStamp"],
        "p50": percentile(samples, 50), "p95": percentile(samples, 95), "max": max(samples),
        "decoded_fps": (v1["framesDecoded"] - v0["framesDecoded"]) / seconds,
        "video_jb_ms": 1000 * (v1["jitterBufferDelay"] - v0["jitterBufferDelay"]) / max(frames, 1),
        "audio_jb_ms": 1000 * (a1["jitterBufferDelay"] - a0["jitterBufferDelay"]) / max(audio_n, 1),
        "lost": v1["packetsLost"] + a1["packetsLost"], "plis": v1["pliCount"],
        "codec": f"{v1['mimeType']} {v1['fmtp']}",
        "first_frame_ms": whep["firstFrameMs"],
    }


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def cpu_per_viewer(server: PreviewProcess, seconds: float) -> dict[int, float]:
    """Server CPU (% of one core) with n viewers connected and receiving."""
    out: dict[int, float] = {}
    viewers: list[WhepViewer] = []
    try:
        for n in VIEWER_COUNTS:
            while len(viewers) < n:
                v = WhepViewer(server.url, read_stamps=False)
                await v.start()
                viewers.append(v)
            for v in viewers:
                await v.wait_frames(v.got.frames + 15, timeout=15)
            await asyncio.sleep(1.0)
            c0, t0 = cpu_seconds(server.proc.pid), time.monotonic()
            frames0 = [v.got.frames for v in viewers]
            await asyncio.sleep(seconds)
            c1, t1 = cpu_seconds(server.proc.pid), time.monotonic()
            out[n] = 100 * (c1 - c0) / (t1 - t0)
            fps = [(v.got.frames - f) / (t1 - t0) for v, f in zip(viewers, frames0, strict=True)]
            print(f"  {n} viewer(s): server CPU {out[n]:5.1f} %  viewers' fps "
                  f"{' '.join(f'{f:.1f}' for f in fps) or '-'}", flush=True)
    finally:
        for v in viewers:
            await v.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="measured play time in Chromium")
    ap.add_argument("--warmup", type=float, default=3.0, help="play time before measuring")
    ap.add_argument("--cpu-seconds", type=float, default=10.0, help="CPU window per count")
    ap.add_argument("--size", default="640x360", help="the preview rung (and capture) size")
    ap.add_argument("--skip-cpu", action="store_true")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    ok = True
    with tempfile.TemporaryDirectory() as tmp, preview_process(Path(tmp), 4, (w, h)) as server:
        r = latency(server, args.seconds, args.warmup)
        print(f"WHEP glass-to-glass in Chromium, {w}x{h}, {args.seconds:.0f} s: "
              f"p50 {r['p50']:.0f} ms, p95 {r['p95']:.0f} ms, max {r['max']:.0f} ms "
              f"({r['frames']} frames read, {r['no_stamp']} without a stamp)")
        print(f"  decoded {r['decoded_fps']:.1f} fps; jitter buffer video {r['video_jb_ms']:.0f}"
              f" ms, audio {r['audio_jb_ms']:.0f} ms; lost {r['lost']}, PLIs {r['plis']}; "
              f"{r['codec']}")
        print(f"  first picture {r['first_frame_ms']:.0f} ms after the page started WHEP "
              "(it waits for the next regular IDR: segments are 2 s)")
        ok = r["p50"] <= TARGET_P50_MS
        print(f"  target p50 <= {TARGET_P50_MS:.0f} ms: {'met' if ok else 'MISSED'}")
        if not args.skip_cpu:
            print(f"server CPU with aiortc viewers ({args.cpu_seconds:.0f} s each, "
                  "% of one core):")
            cpu = asyncio.run(cpu_per_viewer(server, args.cpu_seconds))
            print(f"  first viewer (starts the shared Opus feed): {cpu[1] - cpu[0]:+.1f} %; "
                  f"each further viewer: {(cpu[4] - cpu[1]) / 3:+.1f} %")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
