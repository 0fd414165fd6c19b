"""Local recording: fragmented MP4 that plays, survives being cut short, rotates
oldest-first within its cap, and goes on while an uplink's origin is down."""

from __future__ import annotations

import calendar
import contextlib
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from appliance.media.bus import MediaBus
from appliance.record.recorder import Recorder, Recording, list_recordings
from appliance.status import StatusHub
from appliance.uplink.destination import Destination
from tests.daemon_proc import free_port, running_daemon
from tests.uplink_peer_common import require, wait_for
from tests.uplink_peer_hub import ObservedHub, section, wait_state
from tests.uplink_peer_media import MediaFeeder, uplink
from tests.uplink_peer_nginx import nginx_rtmp
from tests.uplink_peer_probe import (
    codecs_of,
    dts_regressions,
    ffprobe_packets,
    ffprobe_streams,
    media_span,
)

GOP_S = 1.0  # MediaFeeder's keyframe interval: a fragment per GOP
NAME = re.compile(r"^rec-(\d{8}T\d{6}Z)(-\d+)?\.mp4$")


def recorder(directory: Path, bus: MediaBus, hub: StatusHub, file_s: float,
             max_bytes: int, fatal: list[BaseException]) -> Recorder:
    rec = Recorder(directory, "main", "audio", bus, hub, file_s, max_bytes, fatal.append)
    rec.start()
    return rec


def assert_plays(path: Path, min_span: float, max_span: float | None = None) -> float:
    """`path` holds H.264 + AAC from a keyframe on, decodes, and its video spans
    `min_span` .. `max_span` seconds; returns the span."""
    assert codecs_of(path) == {"video": "h264", "audio": "aac"}, path
    packets = ffprobe_packets(path)
    assert dts_regressions(packets) == [], path
    first = next(p for p in packets if p["codec_type"] == "video")
    assert "K" in first["flags"], f"{path.name} does not start at a keyframe"
    span = media_span(packets, "video")
    assert span >= min_span and (max_span is None or span <= max_span), (path.name, span)
    decode = subprocess.run([require("ffmpeg"), "-v", "error", "-i", str(path), "-f", "null",
                             "-"], capture_output=True, text=True, timeout=60)
    assert decode.returncode == 0, decode.stderr[-2000:]
    return span


def test_files_play_and_rotate_oldest_first_within_the_cap(tmp_path: Path) -> None:
    bus, hub, fatal = MediaBus(), ObservedHub(), list[BaseException]()
    directory, by_size = tmp_path / "rec", tmp_path / "by-size"
    cap = 400_000  # about two and a half 2-second files at this rate
    totals, size_totals = [], []
    with MediaFeeder(bus):
        rec = recorder(directory, bus, hub, 2.0, cap, fatal)
        # Files longer than the whole cap holds: they must be cut by size instead.
        big_hub = ObservedHub()
        big = recorder(by_size, bus, big_hub, 60.0, cap, fatal)
        try:
            deadline = time.monotonic() + 11.5
            while time.monotonic() < deadline:
                time.sleep(0.25)
                totals.append(sum(r.size for r in list_recordings(directory)))
                size_totals.append(sum(r.size for r in list_recordings(by_size)))
        finally:
            rec.stop()
            big.stop()
    assert fatal == []
    cut_by_size = list_recordings(by_size)
    files = [f for f in big_hub.values("recording", "file") if f]
    print(f"\ncut by size: {len(files)} files, {[r.size for r in cut_by_size]} kept, "
          f"at most {max(size_totals)} bytes")
    assert len(files) >= 4 and len(cut_by_size) >= 2, (files, cut_by_size)
    assert max(size_totals) <= cap * 1.25, (size_totals, cap)
    created = [f for f in hub.values("recording", "file") if f]
    remaining = list_recordings(directory)
    names = [r.name for r in remaining]
    removed = [f for f in created if f not in names]
    print(f"\ncreated {created}\nremaining {names}\ntotal bytes sampled: max {max(totals)}")
    assert len(created) >= 5, created
    assert all(NAME.match(n) for n in created), created
    # Oldest first: everything removed is older than everything kept, and the newest
    # files are kept.
    assert removed and created[: len(removed)] == removed, (created, removed)
    assert names == created[len(removed):], (names, created)
    assert names == sorted(names) and not any(r.active for r in remaining)
    # The cap is enforced at each keyframe: in between, the total grows by a fragment.
    fragment = max(r.size for r in remaining) / 2  # a file is two 1-second fragments
    assert max(totals) <= cap + 1.5 * fragment, (max(totals), cap, fragment)
    assert sum(r.size for r in remaining) <= cap + 1.5 * fragment
    assert sizes_match(directory, remaining)
    for r in remaining[:-1]:  # the last one was cut short by the stop
        assert_plays(directory / r.name, 1.5, 2.5)
        match = NAME.match(r.name)
        assert match is not None
        started = calendar.timegm(time.strptime(match.group(1), "%Y%m%dT%H%M%SZ"))
        assert r.started == started
    assert_plays(directory / remaining[-1].name, 0.0)
    state = section(hub, "recording")
    assert state["state"] == "stopped" and state["dropped_packets"] == 0, state


def sizes_match(directory: Path, recordings: list[Recording]) -> bool:
    return all((directory / r.name).stat().st_size == r.size for r in recordings)


def test_a_file_cut_short_still_plays_up_to_its_last_fragment(tmp_path: Path) -> None:
    """A power cut leaves a file that ends anywhere: copies taken while it is written,
    and the finished file cut at arbitrary points, all play up to their last fragment."""
    bus, hub, fatal = MediaBus(), ObservedHub(), list[BaseException]()
    directory = tmp_path / "rec"
    copies: list[tuple[Path, float]] = []  # (copy, seconds recorded when taken)
    with MediaFeeder(bus):
        rec = recorder(directory, bus, hub, 60.0, 10**9, fatal)
        try:
            wait_for(lambda: rec.active, 5, "the first file")
            started = time.monotonic()
            for i, at in enumerate((2.3, 3.55, 4.8, 6.1)):
                time.sleep(max(0.0, started + at - time.monotonic()))
                active = rec.active
                assert active is not None
                copy = tmp_path / f"copy{i}.mp4"
                shutil.copyfile(directory / active, copy)
                copies.append((copy, time.monotonic() - started))
            time.sleep(1.0)
        finally:
            rec.stop()
    assert fatal == []
    (whole,) = list_recordings(directory)
    full = directory / whole.name
    full_span = assert_plays(full, 6.0)
    for copy, recorded in copies:
        # Up to its last complete fragment (a GOP), less the muxer's lag of a frame or two.
        assert_plays(copy, recorded - 2 * GOP_S - 0.3, recorded + 0.5)
    data = full.read_bytes()
    for fraction in (0.3, 0.55, 0.8, 0.97):
        cut = tmp_path / f"cut{int(fraction * 100)}.mp4"
        cut.write_bytes(data[: int(len(data) * fraction)])
        assert_plays(cut, fraction * full_span - 2 * GOP_S, full_span)


def test_recording_goes_on_while_the_origin_is_down(tmp_path: Path) -> None:
    bus, hub, fatal = MediaBus(), ObservedHub(), list[BaseException]()
    directory = tmp_path / "rec"
    with contextlib.ExitStack() as stack:
        nginx = stack.enter_context(nginx_rtmp(tmp_path / "nginx"))
        stack.enter_context(MediaFeeder(bus))
        rec = recorder(directory, bus, hub, 60.0, 10**9, fatal)
        stack.callback(rec.stop)
        dest = Destination(uplink(name="origin", url=nginx.url, key="rec"), "main", bus, hub,
                           fatal.append)
        stack.callback(dest.stop)
        dest.start()
        wait_state(hub, "origin", "live", 5)
        time.sleep(2.0)
        nginx.stop()
        down_at = time.monotonic()
        wait_state(hub, "origin", "retrying", 3)
        size_down = section(hub, "recording")["bytes"]
        time.sleep(4.0)
        size_later = section(hub, "recording")["bytes"]
        uplink_down = section(hub, "uplink.origin")
        nginx.start()
        wait_for(lambda: hub.first("origin", "live", down_at), 5, "the origin back")
        time.sleep(2.0)
        rec.stop()
        recording = section(hub, "recording")
    assert fatal == []
    assert uplink_down["state"] == "retrying", uplink_down
    # The dead connection's rate and uptime are not shown beside "retrying".
    assert uplink_down["bitrate_kbps"] == 0 and uplink_down["uptime_s"] == 0, uplink_down
    assert size_later - size_down > 4 * 40_000, "the recording stalled with the uplink"
    assert recording["dropped_packets"] == 0, recording
    (only,) = list_recordings(directory)
    packets = ffprobe_packets(directory / only.name)
    video = sorted(float(p["pts_time"]) for p in packets if p["codec_type"] == "video")
    gaps = [b - a for a, b in zip(video, video[1:], strict=False)]
    assert max(gaps) < 2.5 / 30, f"a hole of {max(gaps):.3f} s in the recording"
    assert video[-1] - video[0] >= 7.0
    assert len(nginx.recordings()) == 2, "before and after the outage"


def test_daemon_killed_leaves_a_playable_recording(tmp_path: Path) -> None:
    """The real daemon recording while its only uplink's origin is not there, killed
    without warning: the file plays up to its last fragment."""
    extra = ('[recording]\nenabled = true\nfile_s = 60\nmax_mb = 64\n'
             f'[[uplink]]\nname = "nowhere"\nurl = "rtmp://127.0.0.1:{free_port()}/live"\n'
             'key = "k"\n')
    with running_daemon(tmp_path, extra=extra) as d:
        directory = tmp_path / "state" / "recordings"
        wait_for(lambda: list_recordings(directory) if directory.exists() else None, 20,
                 "a recording file")
        time.sleep(6.0)
        assert '"connecting"' in d.get("/healthz").decode()
        killed_wall = time.time()
        d.stop(signal.SIGKILL)
    (rec,) = list_recordings(directory)
    info = ffprobe_streams(directory / rec.name)
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    assert (video["width"], video["height"]) == (1280, 720)
    # The name gives the first picture's time to the second; the daemon's GOP is 2 s.
    recorded = killed_wall - rec.started
    assert_plays(directory / rec.name, recorded - 1.0 - 2 * 2.0 - 0.5, recorded + 1.0)
