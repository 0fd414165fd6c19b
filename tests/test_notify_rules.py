"""sd_notify rules alone: watchdog env, media progress and stalls, tick, status lines.

A real StatusHub and a clock of our own; no daemon, no socket.
"""

from __future__ import annotations

import os
from typing import Any

from appliance.notify import (
    LIVE_TOLERANCE_S,
    RETRY_TOLERANCE_S,
    START_GRACE_S,
    MediaProgress,
    Notifier,
    ready_reason,
    status_line,
    watchdog_seconds,
)
from appliance.status import StatusHub

# -- the rules, with a real hub and a clock of our own ------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def live(hub: StatusHub, frames: int) -> None:
    hub.update("media.video", state="live", frames=frames)


def test_watchdog_usec_is_for_this_process_only() -> None:
    assert watchdog_seconds({"WATCHDOG_USEC": "10000000"}) == 10.0
    assert watchdog_seconds({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "42"}, pid=42) == 4.0
    assert watchdog_seconds({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "41"}, pid=42) is None
    assert watchdog_seconds({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_seconds({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_seconds({}) is None


def test_without_notify_socket_nothing_is_sent() -> None:
    sent: list[str] = []
    env = {"WATCHDOG_USEC": "2000000"}
    n = Notifier(StatusHub(), env=env, send=sent.append)
    assert not n.enabled and n.interval is None
    n.hub.update("daemon", safe_mode=True)
    n.tick()
    n.stopping()
    n.notify("READY=1")
    assert sent == []


def test_notifier_env_is_read_once_and_the_watchdog_not_handed_down() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}
    n = Notifier(StatusHub(), env=env, send=lambda m: None)
    assert n.interval == 5.0
    assert env == {"NOTIFY_SOCKET": "/run/x"}  # children must not think they are watched


def test_live_media_progress_and_stall() -> None:
    hub, clock = StatusHub(), Clock()
    p = MediaProgress(floor_s=1.0)
    p.media_started(clock(), ["video"])
    for i in range(5):  # reports every second, busy or not
        clock.now += 1
        live(hub, 30 * i)
        p.observe(hub.snapshot()["sections"], clock())
        assert p.stall(hub.snapshot()["sections"], clock()) is None
    for _ in range(int(LIVE_TOLERANCE_S)):  # no more reports: the capture is stuck
        clock.now += 1
        p.observe(hub.snapshot()["sections"], clock())
        assert p.stall(hub.snapshot()["sections"], clock()) is None
    clock.now += 1
    assert p.stall(hub.snapshot()["sections"], clock()) == (
        "video capture made no progress for 4 s (state live)")
    live(hub, 200)  # it comes back
    p.observe(hub.snapshot()["sections"], clock())
    assert p.stall(hub.snapshot()["sections"], clock()) is None


def test_a_slow_but_moving_pipeline_is_not_a_stall() -> None:
    """An overloaded board reports late (every 2.5 s): still progress."""
    hub, clock = StatusHub(), Clock()
    p = MediaProgress(floor_s=1.0)
    p.media_started(clock(), ["video"])
    for i in range(10):
        clock.now += 2.5
        live(hub, i)
        p.observe(hub.snapshot()["sections"], clock())
        clock.now += 0.4
        assert p.stall(hub.snapshot()["sections"], clock()) is None


def test_start_grace_retries_and_the_floor() -> None:
    hub, clock = StatusHub(), Clock()
    p = MediaProgress(floor_s=1.0)
    p.media_started(clock(), ["video", "audio"])
    clock.now += START_GRACE_S - 1
    hub.update("media.video", state="starting")
    p.observe(hub.snapshot()["sections"], clock())
    assert p.stall(hub.snapshot()["sections"], clock()) is None
    clock.now += 2  # audio never reported at all
    assert p.stall(hub.snapshot()["sections"], clock()) == (
        "audio capture made no progress for 21 s (state not reported)")
    # No source: a report per retry, up to RETRY_TOLERANCE_S apart, is progress.
    p.media_started(clock(), ["video"])
    for _ in range(5):
        clock.now += RETRY_TOLERANCE_S - 2
        hub.update("media.video", state="no_source", error="gone")
        p.observe(hub.snapshot()["sections"], clock())
        assert p.stall(hub.snapshot()["sections"], clock()) is None
    # A long watchdog interval raises every tolerance to it.
    slow = MediaProgress(floor_s=30.0)
    slow.media_started(clock(), ["video"])
    live(hub, 1)
    slow.observe(hub.snapshot()["sections"], clock())
    clock.now += 25
    assert slow.stall(hub.snapshot()["sections"], clock()) is None


def test_a_stuck_packager_is_a_stall_once_its_source_is_live() -> None:
    hub, clock = StatusHub(), Clock()
    p = MediaProgress(floor_s=1.0)
    p.media_started(clock(), ["video"])
    hub.update("package.720p", parts=1)
    for i in range(8):
        clock.now += 1
        live(hub, i)
        if i < 4:
            hub.update("package.720p", parts=5 * i)
        p.observe(hub.snapshot()["sections"], clock())
    assert p.stall(hub.snapshot()["sections"], clock()) == "packager 720p made no part for 4 s"
    # The camera goes missing: no parts are expected, nor reported as a stall.
    hub.update("media.video", state="no_source")
    p.observe(hub.snapshot()["sections"], clock())
    assert p.stall(hub.snapshot()["sections"], clock()) is None


def test_safe_mode_and_media_off_are_not_stalls() -> None:
    hub, clock = StatusHub(), Clock()
    p = MediaProgress()
    assert p.stall({}, clock()) is None  # before media
    p.media_started(clock(), ["video"])
    clock.now += 100
    assert p.stall(hub.snapshot()["sections"], clock()) is not None
    p.media_stopped()
    assert p.stall(hub.snapshot()["sections"], clock()) is None
    p.media_started(clock(), ["video"])
    clock.now += 100
    hub.update("daemon", safe_mode=True)
    assert p.stall(hub.snapshot()["sections"], clock()) is None


def test_tick_sends_ready_once_status_on_change_and_pings_on_time() -> None:
    hub, clock = StatusHub(), Clock()
    sent: list[str] = []
    n = Notifier(hub, env={"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "2000000"},
                 send=sent.append, clock=clock)
    n.media_started(["video"])
    n.tick()
    assert sent == ["STATUS=starting\nWATCHDOG=1"]
    clock.now += 0.5
    live(hub, 10)
    n.tick()  # live, but nothing packaged yet: not ready; no ping due
    assert sent[-1] == "STATUS=live: video, no uplink" and n.ready is False
    hub.update("encode.720p", frames=10)
    hub.update("package.720p", parts=1)
    clock.now += 0.5
    n.tick()
    assert sent[-1] == "READY=1\nSTATUS=live: 720p, no uplink\nWATCHDOG=1"
    count = len(sent)
    clock.now += 0.3
    n.tick()  # nothing new
    assert len(sent) == count
    for i in range(3):
        clock.now += 1
        live(hub, 20 + i)
        hub.update("package.720p", parts=5 + i)
        n.tick()
        assert sent[-1] == "WATCHDOG=1"
    clock.now += 5  # no progress since: stalled, no ping
    n.tick()
    assert sent[-1].startswith("STATUS=stalled: video capture made no progress")
    assert "WATCHDOG=1" not in sent[-1]
    n.reloading()
    assert sent[-1].startswith("RELOADING=1\nMONOTONIC_USEC=")
    n.reloaded()
    assert sent[-1] == "READY=1"
    n.stopping()
    assert sent[-1] == "STOPPING=1\nSTATUS=stopping"
    assert sum(m.count("READY=1") for m in sent) == 2  # the start, and the reload's end


def test_status_lines() -> None:
    def line(**sections: dict[str, Any]) -> str:
        hub = StatusHub()
        for name, fields in sections.items():
            hub.update(name.replace("_", "."), **fields)
        return status_line(hub.snapshot())

    assert line() == "starting"
    assert line(daemon={"safe_mode": True, "config_errors": ["a", "b"]}) == (
        "safe mode: config invalid (2 errors), media off, web page up")
    assert line(media_video={"state": "no_source", "error": "camera\ngone"}) == (
        "no source: camera gone")
    video = {"media_video": {"state": "live"}, "encode_720p": {}, "encode_360p": {}}
    assert line(**video) == "live: 720p/360p, no uplink"
    up = {"enabled": True, "state": "live"}
    down = {"enabled": True, "state": "retrying"}
    assert line(**video, uplink_a=up, uplink_b=up) == "live: 720p/360p, 2 uplinks live"
    assert line(**video, uplink_a=up, uplink_b=down) == "degraded: 720p/360p, 1 of 2 uplinks live"
    assert line(**video, uplink_a=down) == "connecting: 720p/360p, 0 of 1 uplink live"
    assert len(line(media_video={"state": "no_source", "error": "x" * 500})) == 200
    assert ready_reason({"media.video": {"state": "live"}}) is None
    assert ready_reason({"package.audio": {"parts": 3}}) is None  # audio alone is not video
