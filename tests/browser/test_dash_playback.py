"""Debian's Chromium plays the appliance's own page with dash.js from npm (/?player=dash,
LL-DASH from the real daemon) for 30 s: playback advances steadily, nothing stalls,
dash.js runs in low-latency mode and reports a live latency, and the latency read from
the picture's stamp agrees with it."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage

from tests.browser.chromium import MissingTool, check_dash_js
from tests.daemon_proc import DaemonProc

pytestmark = pytest.mark.browser

PLAY_S = 30
# The MPD asks for 1.0 s (ServiceDescription Latency@target) and dash.js seeks back to it
# beyond Latency@max + 0.5 s = 2.5 s. Without low-latency delivery (availabilityTimeOffset
# and chunked transfer of the open segment) a player could not start a segment before it
# is complete, 2 s of media, and would sit above 2 s; so 2 s separates LL from not, with
# room for this shared 2-core machine (the benchmark, not this test, holds the 1.5 s p50).
MAX_LATENCY_S = 2.0
SETTLE_S = 10  # dash.js catches up from its start-up latency within this


def page_stats(page: Any) -> dict[str, Any]:
    return dict(
        page.evaluate(
            """() => {
                const p = window.player, s = p.stats, v = p.video, d = p.dash;
                const ready = d && d.isReady();
                return {
                    kind: p.kind, currentTime: v.currentTime, paused: v.paused,
                    started: s.started, stalls: s.stalls, waiting: s.waitingEvents,
                    bufferStalled: s.bufferStalledErrors, errors: s.errors.slice(),
                    dashLatency: ready ? d.getCurrentLiveLatency() : null,
                    targetLatency: ready ? d.getTargetLiveDelay() : null,
                    lowLatency: ready ? d.getLowLatencyModeEnabled() : null,
                    rate: v.playbackRate,
                    stampCount: s.stampSamples.length, noStamp: s.framesWithoutStamp,
                    stampRecent: s.stampSamples.slice(-300),
                    shown: {
                        latency: document.getElementById('hls-latency').textContent,
                        stalls: document.getElementById('stalls').textContent,
                        player: document.getElementById('player-kind').textContent,
                    },
                };
            }"""
        )
    )


def test_dash_js_plays_ll_dash_without_stalls(
    browser: Browser, live_daemon: DaemonProc, artifacts: Path
) -> None:
    try:
        check_dash_js()
    except MissingTool as exc:
        pytest.fail(str(exc), pytrace=False)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page_errors: list[str] = []
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    console_errors: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            console_errors.append(msg.text)

    page.on("console", on_console)
    page.goto(live_daemon.url + "/?player=dash")
    page.wait_for_function("() => window.player && window.player.stats.started", timeout=20_000)
    start = page_stats(page)

    # Once a second: every second of wall time must move the playhead.
    samples = [start]
    t0 = time.monotonic()
    for i in range(1, PLAY_S + 1):
        time.sleep(max(0.0, t0 + i - time.monotonic()))
        samples.append(page_stats(page))
    end = samples[-1]
    elapsed = time.monotonic() - t0

    shot = artifacts / "dash_playback.png"
    page.screenshot(path=str(shot))
    print(f"\nscreenshot: {shot}")

    diag = (
        f"first: {start}\nlast: {end}\npage errors: {page_errors}\nconsole: {console_errors}\n"
        f"daemon log (end):\n{live_daemon.log()[-3000:]}"
    )
    assert not page_errors, diag
    assert end["kind"] == "dash" and end["shown"]["player"].startswith("dash.js"), diag
    assert not end["paused"], diag

    # 1x live, between the catch-up rates the MPD allows (0.95 .. 1.2).
    advanced = end["currentTime"] - start["currentTime"]
    assert 0.9 * elapsed <= advanced <= 1.25 * elapsed, diag
    times = [s["currentTime"] for s in samples]
    steps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(steps) > 0.5, f"playhead nearly stopped in some second: {steps}\n{diag}"

    assert end["stalls"] == 0, f"stalled after start\n{diag}"
    assert end["waiting"] == 0 and end["bufferStalled"] == 0, diag

    # dash.js took the MPD's low-latency signals: LL mode (availabilityTimeComplete=false)
    # and the ServiceDescription's target.
    assert end["lowLatency"] is True, diag
    assert end["targetLatency"] == pytest.approx(1.0), diag
    settled = [s["dashLatency"] for s in samples[SETTLE_S:]]
    assert all(lat is not None and 0 < lat < MAX_LATENCY_S for lat in settled), diag
    latency = statistics.median(settled)
    print(f"dash.js live latency: median {latency:.3f} s after {SETTLE_S} s, "
          f"min {min(settled):.3f}, max {max(settled):.3f} (target {end['targetLatency']} s)")
    assert end["shown"]["latency"].endswith(" s") and end["shown"]["stalls"] == "0", diag

    # The stamp: most frames of the 30 s seen and decoded, a latency that is plausible and
    # not below dash.js's own (that is measured to the same capture clock, minus display).
    assert end["stampCount"] - start["stampCount"] >= 15 * PLAY_S, diag
    assert end["noStamp"] <= 0.05 * end["stampCount"], diag
    recent = end["stampRecent"]
    stamp_p50 = statistics.median(recent)
    print(f"stamp latency over the last {len(recent)} frames: p50 {stamp_p50:.0f} ms, "
          f"min {min(recent):.0f} ms, max {max(recent):.0f} ms")
    assert min(recent) > 0 and stamp_p50 < MAX_LATENCY_S * 1000, diag
    assert stamp_p50 >= 0.8 * latency * 1000, diag
    page.close()
