"""Audio and video leave the appliance in sync: the flash and the beep of each second
line up within one frame in what is served (the 10-minute drift run is bench/av_sync.py)."""

from __future__ import annotations

from pathlib import Path

from tests.av_sync import av_offsets
from tests.daemon_proc import running_daemon
from tests.test_live_e2e import wait_playlist


def test_flash_and_beep_line_up_within_one_frame(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        for track in ("720p", "audio"):
            wait_playlist(d, f"/live/{track}/index.m3u8", r"(?s)(#EXTINF.*){4}")
        offsets = av_offsets(d)
    assert len(offsets) >= 4, offsets
    # The beep starts on the exact sample of each second; the flash on the first frame at
    # or after it: so the flash is 0 to 1 frame late, never early. On a loaded machine the
    # source may skip the flash frame (its slot is filled with the frame before), and the
    # flash then shows on the next frame it draws: a frame or two later, still never early.
    frame = 1 / 30
    assert all(-0.002 <= off <= 3 * frame + 0.002 for off in offsets), offsets
    on_time = [off for off in offsets if off <= frame + 0.002]
    assert len(on_time) >= 0.75 * len(offsets), offsets
