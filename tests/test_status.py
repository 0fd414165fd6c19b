"""The device state that LEDs, page and API show is derived from what components publish."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from appliance.board import GENERIC
from appliance.capture.pipeline import CapturePipeline
from appliance.capture.source import Captured
from appliance.capture.synthetic import SyntheticVideo
from appliance.config.load import parse
from appliance.media.bus import MediaBus
from appliance.media.clock import MediaClock
from appliance.status import StatusHub


def test_state_follows_the_published_sections() -> None:
    hub = StatusHub()
    assert hub.state() == "starting"
    hub.update("media.video", state="no_source", error="no camera")
    assert hub.state() == "no_source"
    hub.update("media.video", state="live", error=None)
    assert hub.state() == "live_local"  # no uplink configured
    hub.update("uplink.primary", enabled=True, state="connecting")
    assert hub.state() == "connecting"
    hub.update("uplink.backup", enabled=True, state="live")
    assert hub.state() == "degraded"  # one of two enabled uplinks down
    hub.update("uplink.primary", state="live")
    assert hub.state() == "live"
    hub.update("uplink.backup", enabled=False, state="disabled")
    assert hub.state() == "live"  # a disabled uplink does not count
    hub.update("daemon", safe_mode=True)
    assert hub.state() == "safe_mode"
    hub.update("daemon", maintenance=True)
    assert hub.state() == "maintenance"


def test_snapshot_is_a_copy_and_updates_from_threads_all_land() -> None:
    hub = StatusHub()

    def publish(n: int) -> None:
        for i in range(500):
            hub.update(f"package.t{n}", parts=i)

    threads = [threading.Thread(target=publish, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = hub.snapshot()
    assert {snap["sections"][f"package.t{n}"]["parts"] for n in range(4)} == {499}
    assert hub.version == 2000
    snap["sections"]["package.t0"]["parts"] = -1  # a view cannot write back
    assert hub.snapshot()["sections"]["package.t0"]["parts"] == 499


def test_encoder_sections_leave_the_device_state_alone() -> None:
    hub = StatusHub()
    hub.update("media.video", state="live")
    hub.update("encode.720p", encoder="x264", repeated_frames=40, lateness_ms_max=900.0)
    hub.update("encode.360p", encoder="hardware", enabled=True, state="failed")
    assert hub.state() == "live_local"


class LateCamera(SyntheticVideo):
    """A camera whose driver hands over every 10th frame three frame periods late."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.reads = 0

    def read(self) -> Captured:
        self.reads += 1
        if self.reads % 10 == 0:
            time.sleep(3 / self.fps)
        return super().read()


CONFIG = """
[video]
source = "synthetic"
width = 640
height = 360
[[video.ladder]]
name = "360p"
width = 640
height = 360
bitrate_kbps = 800
[[video.ladder]]
name = "180p"
width = 320
height = 180
bitrate_kbps = 300
[audio]
enabled = false
"""


def test_rungs_publish_encoder_lateness_and_repeats_that_count_up(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import appliance.capture.open as open_mod

    monkeypatch.setattr(open_mod, "open_video",
                        lambda cfg, clock: LateCamera(cfg.width, cfg.height, cfg.fps, clock))
    hub, failed = StatusHub(), list[BaseException]()
    pipeline = CapturePipeline(parse(CONFIG, GENERIC), MediaClock(), MediaBus(), hub,
                               lambda info: None, failed.append, board=GENERIC)

    def rung(name: str) -> dict[str, Any]:
        return dict(hub.snapshot()["sections"].get(f"encode.{name}", {}))

    def wait_for(done: Any) -> None:
        deadline = time.monotonic() + 15
        while not done():
            assert time.monotonic() < deadline and not failed, (hub.snapshot(), failed)
            time.sleep(0.05)

    pipeline.start()
    try:
        # Before any frame: which encoder each rung runs on is already shown.
        wait_for(lambda: "encode.180p" in hub.snapshot()["sections"])
        assert rung("360p")["encoder"] == rung("180p")["encoder"] == "x264"
        wait_for(lambda: (rung("180p").get("repeated_frames") or 0) > 0)
        first = {n: rung(n) for n in ("360p", "180p")}
        wait_for(lambda: rung("180p")["repeated_frames"] > first["180p"]["repeated_frames"])
        later = {n: rung(n) for n in ("360p", "180p")}
    finally:
        pipeline.stop()
    assert not failed
    assert hub.snapshot()["sections"]["media.video"]["dropped"] > 0  # what the source skipped
    for name in ("360p", "180p"):
        assert later[name]["frames"] > first[name]["frames"]
        assert later[name]["repeated_frames"] > first[name]["repeated_frames"]
        assert later[name]["dropped_frames"] == 0  # short gaps are filled, not left
        assert later[name]["input"] == ("main" if name == "360p" else "main, scaled")
        # The repeats fill slots captured up to 100 ms before: they leave late.
        assert 50 <= later[name]["lateness_ms_max"] < 1000
        assert 0 < later[name]["lateness_ms_avg"] < later[name]["lateness_ms_max"]
