"""The dashboard's preview in Debian's Chromium against the real daemon: WebRTC over WHEP
first (WebRTC's own statistics show frames decoded, the picture's stamp a low latency),
and LL-HLS through hls.js when WHEP cannot play (the endpoint refusing, as a daemon
without it or with every viewer slot taken does).

Chromium runs with its defaults (host addresses hidden behind mDNS names), as a user's
browser does: the daemon's ICE learns the page's address from its connectivity checks.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Route, expect

from tests.api_client import LIGHT, Client, admin, login_browser
from tests.browser.conftest import wait_for_media
from tests.daemon_proc import DaemonProc, running_daemon

pytestmark = pytest.mark.browser

STATE_JS = """async () => {
    const p = window.player, s = p.stats, v = p.video;
    const rtc = p.kind === 'whep' && p.whepStats ? await p.whepStats() : {};
    return {
        kind: p.kind, requested: p.requested, fallback: p.fallbackReason,
        whep: p.whep && {status: p.whep.status, error: p.whep.error,
                         connection: p.whep.connection},
        started: s.started, currentTime: v.currentTime, width: v.videoWidth,
        stalls: s.stalls, errors: s.errors.slice(), stampCount: s.stampSamples.length,
        stampRecent: s.stampSamples.slice(-60), video: rtc.video || null,
        audio: rtc.audio || null, hls: !!p.hls,
        shown: document.getElementById('player-kind').textContent,
    };
}"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    with running_daemon(tmp_path_factory.mktemp("ui-preview"), extra=LIGHT) as d:
        wait_for_media(d)
        yield d


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    yield ctx
    ctx.close()


def state(page: Page) -> dict[str, Any]:
    out: dict[str, Any] = page.evaluate(STATE_JS)
    return out


def until(page: Page, ok: Any, timeout: float, what: str) -> dict[str, Any]:
    """Poll the page's state until `ok(state)` (async stats rule out wait_for_function)."""
    deadline = time.monotonic() + timeout
    while True:
        s = state(page)
        if ok(s):
            return s
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout} s: {s}")
        time.sleep(0.2)


def preview_viewers(d: DaemonProc) -> int | None:
    section = admin(d).get("/api/v1/status").json()["sections"].get("preview")
    return None if section is None else int(section["viewers"])


def test_preview_plays_over_whep(daemon: DaemonProc, context: BrowserContext,
                                 artifacts: Path) -> None:
    probe = admin(daemon).call("POST", "/api/v1/whep", raw=b"not sdp",
                               headers={"Content-Type": "application/sdp"})
    if probe.status in (404, 405):
        pytest.skip(f"WHEP is not wired into the daemon (POST /api/v1/whep answered "
                    f"{probe.status}): the page falls back to LL-HLS, which "
                    "test_preview_falls_back_to_ll_hls covers")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    login_browser(page, daemon.url)
    page.goto(daemon.url + "/")
    # The first picture comes with the next IDR, at most a segment (2 s) away.
    first = until(page, lambda s: s["kind"] != "whep" or (s["video"] or {}).get("framesDecoded"),
                  timeout=15, what="no WebRTC frame decoded")
    assert first["kind"] == "whep" and first["requested"] == "auto", first
    assert first["whep"]["status"] == 201 and first["fallback"] is None, first
    time.sleep(2.0)
    second = state(page)
    video = second["video"]
    assert second["kind"] == "whep", second
    # 15 fps for 2 s: WebRTC's decoder keeps decoding, at the rung's size, in H.264.
    assert video["framesDecoded"] - first["video"]["framesDecoded"] >= 20, (first, second)
    assert (video["frameWidth"], video["frameHeight"]) == (320, 180), video
    assert video["mimeType"] == "video/H264", video
    assert second["audio"] and second["audio"]["mimeType"] == "audio/opus", second["audio"]
    # The picture's stamp, read from the presented frames: far below LL-HLS's ~0.6 s.
    assert second["stampCount"] >= 20, second
    p50 = statistics.median(second["stampRecent"])
    print(f"\nWHEP preview on the dashboard: stamp latency p50 {p50:.0f} ms")
    assert 0 < p50 < 400, second
    expect(page.locator("#player-kind")).to_have_text("WebRTC (WHEP)")
    expect(page.locator("#viewers")).to_have_text("1 of 4", timeout=5_000)
    page.screenshot(path=str(artifacts / "ui_preview_whep.png"))
    print(f"screenshot: {artifacts / 'ui_preview_whep.png'}")
    assert not errors, errors

    # Leaving the page ends the session (DELETE on pagehide): the slot is free again.
    page.goto(daemon.url + "/logs")
    deadline = time.monotonic() + 10
    while preview_viewers(daemon) != 0:
        assert time.monotonic() < deadline, admin(daemon).get("/api/v1/status").json()
        time.sleep(0.3)


def test_preview_falls_back_to_ll_hls(daemon: DaemonProc, context: BrowserContext,
                                      artifacts: Path) -> None:
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    offers: list[str] = []

    def refuse(route: Route) -> None:
        # What the daemon answers with every preview slot taken (preview.max_viewers).
        offers.append(route.request.method)
        route.fulfill(status=503, headers={"Retry-After": "2"},
                      json={"error": "the preview has its 4 viewers already"})

    page.route(daemon.url + "/api/v1/whep", refuse)
    login_browser(page, daemon.url)
    page.goto(daemon.url + "/")
    first = until(page, lambda s: s["started"], timeout=20, what="nothing played")
    assert offers == ["POST"], offers
    assert first["kind"] == "hls" and first["hls"], first
    assert "503" in first["fallback"] and "viewers already" in first["fallback"], first
    expect(page.locator("#player-kind")).to_have_text("hls.js (fallback)")
    time.sleep(3.0)
    later = state(page)
    assert later["currentTime"] - first["currentTime"] >= 2.4, (first, later)
    assert later["stalls"] == 0 and later["width"] == 320, later
    page.screenshot(path=str(artifacts / "ui_preview_fallback.png"))
    print(f"\nscreenshot: {artifacts / 'ui_preview_fallback.png'}")

    # Asked for LL-HLS by name, the page does not try WHEP at all.
    page.goto(daemon.url + "/?player=hls")
    chosen = until(page, lambda s: s["started"], timeout=20, what="nothing played")
    assert (chosen["kind"], chosen["requested"], chosen["fallback"]) == ("hls", "hls", None)
    assert offers == ["POST"], offers
    expect(page.locator("#player-kind")).to_have_text("hls.js")
    assert not errors, errors
    assert Client(daemon.url).get("/healthz").status == 200
