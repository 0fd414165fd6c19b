"""Debian's Chromium plays the appliance's own page (hls.js from npm, LL-HLS from the real
daemon) for 30 s: playback advances steadily, nothing stalls, hls.js reports a latency, and
the latency read from the picture's stamp is plausible."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage

from tests.daemon_proc import DaemonProc

pytestmark = pytest.mark.browser

PLAY_S = 30
# Same machine, same clock: a stamp latency outside this is a broken reader or player,
# not a slow one (the benchmark, not this test, holds the latency targets).
MAX_STAMP_LATENCY_MS = 5000


def page_stats(page: Any) -> dict[str, Any]:
    return dict(
        page.evaluate(
            """() => {
                const p = window.player, s = p.stats, v = p.video;
                return {
                    currentTime: v.currentTime, paused: v.paused, started: s.started,
                    stalls: s.stalls, waiting: s.waitingEvents,
                    bufferStalled: s.bufferStalledErrors, errors: s.errors.slice(),
                    hlsLatency: p.hls ? p.hls.latency : null,
                    targetLatency: p.hls ? p.hls.targetLatency : null,
                    stampCount: s.stampSamples.length, noStamp: s.framesWithoutStamp,
                    stampRecent: s.stampSamples.slice(-300),
                    shown: {
                        hls: document.getElementById('hls-latency').textContent,
                        stamp: document.getElementById('stamp-latency').textContent,
                        stalls: document.getElementById('stalls').textContent,
                    },
                };
            }"""
        )
    )


def test_own_page_plays_live_without_stalls(
    browser: Browser, live_daemon: DaemonProc, artifacts: Path
) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page_errors: list[str] = []
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    console_errors: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            console_errors.append(msg.text)

    page.on("console", on_console)
    page.goto(live_daemon.url + "/")

    # Started: the first 'playing' event, within the time a player needs to fetch
    # the playlists, the init segments and a few parts.
    page.wait_for_function("() => window.player && window.player.stats.started", timeout=20_000)
    start = page_stats(page)

    # Sample once a second: every second of wall time must move the playhead, not only
    # the total (a player that freezes for 10 s and then jumps would pass a total).
    samples = [start]
    t0 = time.monotonic()
    for i in range(1, PLAY_S + 1):
        time.sleep(max(0.0, t0 + i - time.monotonic()))
        samples.append(page_stats(page))
    end = samples[-1]
    elapsed = time.monotonic() - t0

    shot = artifacts / "hls_playback.png"
    page.screenshot(path=str(shot))
    print(f"\nscreenshot: {shot}")

    diag = (
        f"first: {start}\nlast: {end}\npage errors: {page_errors}\nconsole: {console_errors}\n"
        f"daemon log (end):\n{live_daemon.log()[-3000:]}"
    )
    assert not page_errors, diag
    assert not end["paused"], diag

    advanced = end["currentTime"] - start["currentTime"]
    # Live playback runs at 1x, a little faster while hls.js catches up (rate <= 1.5).
    assert 0.9 * elapsed <= advanced <= 1.6 * elapsed, diag
    times = [s["currentTime"] for s in samples]
    steps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(steps) > 0.5, f"playhead nearly stopped in some second: {steps}\n{diag}"

    assert end["stalls"] == 0, f"stalled after start\n{diag}"
    assert end["waiting"] == 0 and end["bufferStalled"] == 0, diag

    hls_latency = end["hlsLatency"]
    assert hls_latency is not None and 0 < hls_latency < 5, diag
    print(f"hls.js latency: {hls_latency:.3f} s (its target: {end['targetLatency']} s)")
    # The page shows the same figures it computes.
    assert end["shown"]["hls"].endswith(" s") and end["shown"]["stalls"] == "0", diag

    # Every rendered frame of the synthetic source carries a stamp: at 30 fps the reader
    # must have seen most frames of the 30 s, and nearly all of them must decode.
    assert end["stampCount"] - start["stampCount"] >= 15 * PLAY_S, diag
    assert end["noStamp"] <= 0.05 * end["stampCount"], diag
    recent = end["stampRecent"]
    stamp_p50 = statistics.median(recent)
    print(
        f"stamp latency over the last {len(recent)} frames: p50 {stamp_p50:.0f} ms, "
        f"min {min(recent):.0f} ms, max {max(recent):.0f} ms"
    )
    assert min(recent) > 0 and max(recent) < MAX_STAMP_LATENCY_MS, diag
    # A stamp latency below hls.js's own latency would mean the reader decodes garbage:
    # the stamp is older than the live edge hls.js measures from.
    assert stamp_p50 >= 0.8 * hls_latency * 1000, diag
    page.close()
