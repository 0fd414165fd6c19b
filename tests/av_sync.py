"""A/V sync as a viewer would measure it: the served video's flash against the served
audio's tone burst, both decoded from the LL-HLS segments, on their media timelines."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import av
import numpy as np

from appliance.media.stamp import read_flash
from tests.daemon_proc import DaemonProc


def _last_segments(d: DaemonProc, track: str, count: int) -> bytes:
    playlist = d.get(f"/live/{track}/index.m3u8").decode()
    init = re.search(r'#EXT-X-MAP:URI="([^"]+)"', playlist)
    assert init
    uris = [ln for ln in playlist.splitlines() if ln and not ln.startswith("#")]
    return d.get(f"/live/{track}/{init.group(1)}") + b"".join(
        d.get(f"/live/{track}/{u}") for u in uris[-count:]
    )


def _decode(data: bytes) -> av.container.InputContainer:
    f = tempfile.NamedTemporaryFile(suffix=".mp4", delete=False)  # noqa: SIM115
    f.write(data)
    f.close()
    container = av.open(f.name)
    Path(f.name).unlink()
    return container


def flash_onsets(data: bytes) -> list[float]:
    """Media times (s) of the frames where the flash square turns on."""
    onsets, lit = [], True  # ignore a flash already on at the first frame
    with _decode(data) as c:
        for frame in c.decode(video=0):
            now = read_flash(frame.to_ndarray(format="gray"))
            if now and not lit and frame.time is not None:
                onsets.append(frame.time)
            lit = now
    return onsets


def burst_onsets(data: bytes) -> list[float]:
    """Media times (s) where the 1 kHz burst starts: the envelope crosses a quarter of its
    peak. Each sample's time comes from its own decoded frame's timestamp."""
    chunks, times = [], []
    with _decode(data) as c:
        for frame in c.decode(audio=0):
            samples = frame.to_ndarray()[0]
            chunks.append(samples)
            assert frame.time is not None
            times.append(frame.time + np.arange(samples.size) / frame.sample_rate)
    x = np.abs(np.concatenate(chunks))
    t = np.concatenate(times)
    env = np.convolve(x, np.ones(48) / 48, mode="same")  # 1 ms window
    loud = env > env.max() / 4
    edges = np.flatnonzero(loud[1:] & ~loud[:-1]) + 1
    return [float(t[i]) for i in edges if t[i] - t[0] > 0.1]


def av_offsets(d: DaemonProc, segments: int = 3) -> list[float]:
    """Flash minus burst (s) for every second both tracks' last segments cover."""
    flashes = flash_onsets(_last_segments(d, "720p", segments))
    bursts = burst_onsets(_last_segments(d, "audio", segments))
    out = []
    for f in flashes:
        nearest = min(bursts, key=lambda b: abs(b - f), default=None)
        if nearest is not None and abs(nearest - f) < 0.5:
            out.append(f - nearest)
    return out
