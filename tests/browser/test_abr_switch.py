"""hls.js on the appliance's own page switches down when the network gets slow, stays
down and keeps playing: Chromium's network emulation (CDP) throttles the page to a link
that carries the lowest rung and no other.

The daemon draws the synthetic source's "noisy" pattern, whose encoded size follows each
rung's bitrate as a camera's does (the plain test card costs ~0.3 Mbit/s on every rung,
so every rung would fit any throttle and hls.js would flip between them).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, CDPSession, Page

from tests.api_client import login_browser
from tests.browser.conftest import wait_for_media
from tests.daemon_proc import DaemonProc, running_daemon
from tests.test_ladder_media import CONFIG, LADDER, wait_segments

pytestmark = pytest.mark.browser

# test_ladder_media's ladder, its lowest rung at 400 kbit/s instead of 700: that rung with
# audio measures 0.47-0.58 Mbit/s (AVERAGE-BANDWIDTH), the next one 1.2-1.5. The link
# carries the lowest with 70 % to spare (with a quarter to spare, the 0.6 s live buffer ran
# dry every few segments on a loaded machine), and hls.js's estimate of it, times its 0.7
# factor for switching up, stays far below the next rung.
LOW_KBPS = 400
THROTTLE_BITS = 1_000_000
ABR_CONFIG = CONFIG.replace("[video]\n", '[video]\nsynthetic_pattern = "noisy"\n', 1).replace(
    f"bitrate_kbps = {LADDER[-1].kbps}\n", f"bitrate_kbps = {LOW_KBPS}\n")
TOP_TIMEOUT_S = 15  # from 'playing' to playing the top rung on an unthrottled loopback
# hls.js abandons a top-rung part that loads at a third of real time within a part or two;
# the lowest rung's picture shows once the buffered higher-rung media has played out.
SWITCH_TIMEOUT_S = 20
# The first seconds on the lowest rung belong to the switch: the buffer, run dry on the way
# down, refills from the lowest rung's parts (a CI run stalled 2 s, 3 s after the switch).
SETTLE_S = 5
THROTTLED_PLAY_S = 15
LIFTED_PLAY_S = 5
# From throttling until settled on the lowest rung, the 0.6 s buffer runs dry: hls.js keeps its
# unthrottled estimate until a top-rung part crawls in at a third of real time, and may
# step down through the middle rung. Traces here: 0 s frozen (the throttle landed between
# parts) to 6.7 s with two stall episodes (two busy loops beside the test), and three
# episodes once in CI. So what is bounded is the time the picture stood still, as a viewer
# sees it; if hls.js stayed on the top rung it would stand still two thirds of the time.
# Settled on the lowest rung at most two stall episodes in 15 s (CDP's pacing is coarse for
# 0.2 s parts: most runs have none, a CI run had two, 0.4 s and 1 s, while
# assert_kept_playing still held); lifting may cost one (a switch up).
SWITCH_FROZEN_S = 8.0
SETTLED_STALLS = 2
LIFTED_STALLS = 1

# The player's state, read from what player.js exposes on window.player.
STATE_JS = """() => {
    const p = window.player, h = p.hls, v = p.video;
    return {
        now: performance.now() / 1000, currentTime: v.currentTime, paused: v.paused,
        started: p.stats.started, stalls: p.stats.stalls, errors: p.stats.errors.slice(),
        videoWidth: v.videoWidth, sameHls: !!h && h === window.__abrHls,
        level: h ? h.currentLevel : null, loadLevel: h ? h.loadLevel : null,
        autoLevel: h ? h.autoLevelEnabled : null,
        estimate: h ? h.bandwidthEstimate : null,
        levels: h ? h.levels.map(l => ({width: l.width, height: l.height, bitrate: l.bitrate,
                                         average: l.averageBitrate})) : [],
        switches: (window.__abrSwitches || []).slice(),
    };
}"""

# Records LEVEL_SWITCHED ('hlsLevelSwitched') of the page's hls.js instance: a switch
# between two samples still shows. Listening changes nothing in the player.
HOOK_JS = """() => {
    const h = window.player.hls;
    window.__abrHls = h;
    window.__abrSwitches = [];
    h.on('hlsLevelSwitched', (_event, data) => {
        window.__abrSwitches.push({at: performance.now() / 1000, level: data.level});
    });
}"""


@pytest.fixture(scope="module")
def ladder_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    with running_daemon(tmp_path_factory.mktemp("abr"), extra=ABR_CONFIG) as d:
        wait_for_media(d)
        # A complete segment in every rung, so the player starts on a steady stream.
        wait_segments(d, 1)
        yield d


def emulate(cdp: CDPSession, download_bits: int | None) -> None:
    """Throttle the page's downloads to `download_bits` per second; None lifts it."""
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "uploadThroughput": -1,
        "downloadThroughput": -1 if download_bits is None else download_bits / 8,
    })


def state(page: Page) -> dict[str, Any]:
    return dict(page.evaluate(STATE_JS))


def poll(page: Page, until: Any, timeout: float, what: str, diag: list[dict[str, Any]]
         ) -> dict[str, Any]:
    """Sample the player every 0.5 s until `until(sample)`; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        s = state(page)
        diag.append(s)
        if until(s):
            return s
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout} s; last samples: {diag[-6:]}")
        time.sleep(0.5)


def play_for(page: Page, seconds: int, diag: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One sample per second of wall time, for `seconds` s."""
    samples = [state(page)]
    t0 = time.monotonic()
    for i in range(1, seconds + 1):
        time.sleep(max(0.0, t0 + i - time.monotonic()))
        samples.append(state(page))
    diag += samples
    return samples


def frozen_s(samples: list[dict[str, Any]]) -> float:
    """Wall time between samples in which the playhead moved less than 0.1 s."""
    return sum(b["now"] - a["now"] for a, b in zip(samples, samples[1:], strict=False)
               if b["currentTime"] - a["currentTime"] < 0.1)


def assert_kept_playing(samples: list[dict[str, Any]], what: str) -> None:
    first, last = samples[0], samples[-1]
    elapsed = last["now"] - first["now"]
    advanced = last["currentTime"] - first["currentTime"]
    times = [s["currentTime"] for s in samples]
    diag = f"{what}: {samples}"
    assert not last["paused"], diag
    # The same hls.js instance throughout: player.js replaces it after a fatal error.
    assert last["sameHls"], f"{what}: hls.js was restarted after a fatal error\n{diag}"
    # Live at 1x, a little faster while the page catches up (rate <= 1.2), plus a seek
    # over a hole or to the live edge after a stall.
    assert 0.75 * elapsed <= advanced <= 1.5 * elapsed + 2, diag
    # No 2 s of wall time without half a second of playback: a stall, if any, is short.
    moved = [b - a for a, b in zip(times, times[2:], strict=False)]
    assert min(moved) > 0.5, f"{what}: the playhead stopped: {moved}\n{diag}"


def test_hls_js_switches_down_stays_down_and_keeps_playing_when_throttled(
    browser: Browser, ladder_daemon: DaemonProc
) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page_errors: list[str] = []
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    diag: list[dict[str, Any]] = []
    try:
        login_browser(page, ladder_daemon.url)
        page.goto(ladder_daemon.url + "/?player=hls")
        page.wait_for_function("() => window.player && window.player.stats.started",
                               timeout=20_000)
        page.evaluate(HOOK_JS)
        first = state(page)
        levels = first["levels"]
        assert sorted((lv["width"], lv["height"]) for lv in levels) == sorted(
            (r.width, r.height) for r in LADDER), levels
        assert first["autoLevel"], "the page must leave the choice of rung to hls.js's ABR"
        by_rate = sorted(range(len(levels)), key=lambda i: levels[i]["average"])
        low, top = by_rate[0], by_rate[-1]
        # The measured rates (AVERAGE-BANDWIDTH) rank as configured, and only the lowest
        # rung fits through the throttle.
        assert [levels[i]["width"] for i in by_rate] == sorted(r.width for r in LADDER), levels
        assert levels[low]["average"] < 0.6 * THROTTLE_BITS < THROTTLE_BITS < min(
            levels[i]["average"] for i in by_rate[1:]), levels

        # Unthrottled loopback: ABR climbs to the top rung, and the picture is that rung's.
        poll(page, lambda s: s["level"] == top and s["videoWidth"] == levels[top]["width"],
             TOP_TIMEOUT_S, "hls.js did not reach the top rung", diag)

        emulate(cdp, THROTTLE_BITS)
        throttled = state(page)
        since = throttled["now"]
        switching_from = len(diag)
        down = poll(
            page, lambda s: s["level"] == low and s["videoWidth"] == levels[low]["width"],
            SWITCH_TIMEOUT_S, "hls.js did not switch down to the lowest rung", diag)
        switch_s = down["now"] - since
        # It switched for the right reason: its estimate no longer carries the top rung.
        assert down["estimate"] < levels[top]["bitrate"], down
        settling = play_for(page, SETTLE_S, diag)
        assert all(s["level"] == low for s in settling), settling
        switch_frozen_s = frozen_s([throttled, *diag[switching_from:]])

        # Stays on the lowest rung (loading and showing it) and keeps playing.
        during = play_for(page, THROTTLED_PLAY_S, diag)
        assert_kept_playing(during, "throttled")
        assert all(s["level"] == low and s["loadLevel"] == low
                   and s["videoWidth"] == levels[low]["width"] for s in during), during
        assert not [e for e in during[-1]["switches"] if e["at"] > down["now"]], during[-1]

        # Lifted: playback goes on. (hls.js's climb back is only reported: on a loaded box
        # its estimate of the unthrottled loopback can be as low as the throttled one.)
        emulate(cdp, None)
        lifted = play_for(page, LIFTED_PLAY_S, diag)
        assert_kept_playing(lifted, "after lifting the throttle")

        end = lifted[-1]
        stalls = [settling[-1]["stalls"] - throttled["stalls"],
                  during[-1]["stalls"] - during[0]["stalls"],
                  end["stalls"] - lifted[0]["stalls"]]
        assert switch_frozen_s <= SWITCH_FROZEN_S, (
            f"the picture stood still {switch_frozen_s:.1f} s while switching "
            f"({stalls[0]} stalls)", diag[switching_from:])
        assert stalls[1] <= SETTLED_STALLS and stalls[2] <= LIFTED_STALLS, (
            f"stalls switching, settled, lifted: {stalls}", during + lifted)
        assert not page_errors, page_errors
        print(f"\nthrottled to {THROTTLE_BITS} bit/s: on the lowest rung after {switch_s:.1f} s "
              f"(estimate {down['estimate']:.0f} bit/s, picture still {switch_frozen_s:.1f} s "
              f"until {SETTLE_S} s later), "
              f"stayed there {THROTTLED_PLAY_S} s; "
              f"stalls switching, settled, lifted: {stalls}; {LIFTED_PLAY_S} s after lifting: "
              f"level {end['level']}, estimate {end['estimate']:.0f} bit/s; levels {levels}")
    except AssertionError:
        print(f"samples: {diag[-25:]}\npage errors: {page_errors}\n"
              f"daemon log (end):\n{ladder_daemon.log()[-2000:]}")
        raise
    finally:
        page.close()
