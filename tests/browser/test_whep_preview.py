"""The WHEP preview in Debian's Chromium: a plain RTCPeerConnection page (whep_page.html)
does WHEP against the real server (capture, x264, AAC, setup_whep, as a process), and
WebRTC's own statistics and the picture's latency stamp say what it plays.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page

from tests.browser.chromium import MissingTool
from tests.whep_peers import (
    HEIGHT,
    WIDTH,
    PreviewProcess,
    http_status,
    open_whep_page,
    preview_process,
    webrtc_chromium,
)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PreviewProcess]:
    with preview_process(tmp_path_factory.mktemp("whep")) as p:
        yield p


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    try:
        with webrtc_chromium() as b:
            yield b
    except MissingTool as exc:
        pytest.fail(str(exc), pytrace=False)


def stats(page: Page) -> dict[str, Any]:
    out: dict[str, Any] = page.evaluate("() => window.whepStats()")
    return out


def until_decoded(page: Page, timeout: float) -> dict[str, Any]:
    """The stats once the page has decoded a video frame (wait_for_function does not wait
    for an async predicate's promise, so poll from here)."""
    deadline = time.monotonic() + timeout
    while True:
        s = stats(page)
        if s.get("video", {}).get("framesDecoded"):
            return s
        if time.monotonic() > deadline:
            raise TimeoutError(f"no video frame decoded in {timeout} s: {s}")
        time.sleep(0.1)


def test_preview_plays_in_chromium(server: PreviewProcess, chromium: Browser,
                                   artifacts: Path) -> None:
    page = open_whep_page(chromium, server.url)
    try:
        page.wait_for_function(
            "() => window.whep.connection === 'connected' || window.whep.error", timeout=20_000)
        whep = page.evaluate("() => window.whep")
        assert whep["error"] is None and whep["status"] == 201, whep
        # The first picture comes with the next regular IDR (segments are 2 s).
        first = until_decoded(page, timeout=10)
        time.sleep(2.0)
        second = stats(page)
        video, audio = second["video"], second["audio"]
        assert video["framesDecoded"] - first["video"]["framesDecoded"] >= 45, (first, second)
        assert (video["frameWidth"], video["frameHeight"]) == (WIDTH, HEIGHT)
        assert video["mimeType"] == "video/H264"
        assert "packetization-mode=1" in video["fmtp"]
        assert audio["mimeType"] == "audio/opus"
        # Two seconds of 48 kHz audio came in, give or take the jitter buffer.
        samples = audio["totalSamplesReceived"] - first["audio"]["totalSamplesReceived"]
        assert samples >= 48_000 * 1.5, (first["audio"], audio)

        # Glass to glass: the stamp read from each presented frame against the clock.
        page.evaluate("() => { window.whep.recording = true; }")
        time.sleep(3.0)
        whep = page.evaluate("() => { window.whep.recording = false; return window.whep; }")
        samples_ms = whep["samples"]
        assert len(samples_ms) >= 60, whep["noStamp"]
        p50 = statistics.median(samples_ms)
        assert 0 < p50 < 500, f"glass-to-glass p50 {p50:.0f} ms"
        page.screenshot(path=str(artifacts / "whep_preview.png"))

        # DELETE ends it: the server stops sending, and the session is gone.
        assert page.evaluate("() => window.whepDelete()") == 200
        time.sleep(0.5)
        stopped = stats(page)["video"]["framesDecoded"]
        time.sleep(1.0)
        assert stats(page)["video"]["framesDecoded"] == stopped
        assert http_status(server.url + whep["location"], "DELETE") == 404
    finally:
        page.close()
