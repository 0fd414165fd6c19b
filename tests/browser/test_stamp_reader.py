"""stamp.js against stamps drawn by the SPEC's rules, in Chromium (no daemon needed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Route

pytestmark = pytest.mark.browser

STATIC = Path(__file__).resolve().parents[2] / "appliance" / "web" / "static"
ORIGIN = "http://stamp.test"  # made up: every request is answered by page.route

# Draws the stamp exactly as SPEC.md says, with chosen white/black levels, on a grey
# picture, then reads it back with stamp.js from the canvas.
DRAW_AND_READ = """async ([ms, width, height, white, black, stamped]) => {
    const { readStamp } = await import('/static/stamp.js');
    const frame = document.createElement('canvas');
    frame.width = width; frame.height = height;
    const ctx = frame.getContext('2d');
    ctx.fillStyle = 'rgb(128,128,128)';
    ctx.fillRect(0, 0, width, height);
    if (stamped) {
        const c = Math.floor(width / 64);
        const level = (on) => { const v = on ? white : black; return `rgb(${v},${v},${v})`; };
        const bits = [true, false];
        for (let b = 47; b >= 0; b--) bits.push(Math.floor(ms / 2 ** b) % 2 === 1);
        bits.forEach((on, i) => { ctx.fillStyle = level(on); ctx.fillRect(c * (i + 1), c, c, c); });
    }
    return readStamp(frame, width, document.createElement('canvas'));
}"""


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    page = browser.new_page()

    def serve(route: Route) -> None:
        name = route.request.url.removeprefix(f"{ORIGIN}/static/")
        path = STATIC / name
        if path.is_file() and path.parent == STATIC:
            route.fulfill(path=str(path), content_type="text/javascript")
        else:
            route.fulfill(status=404, body="")

    page.route(f"{ORIGIN}/static/*", serve)
    page.route(f"{ORIGIN}/", lambda r: r.fulfill(body="<!doctype html>", content_type="text/html"))
    page.goto(f"{ORIGIN}/")
    yield page
    page.close()


@pytest.mark.parametrize(
    ("width", "height"), [(1280, 720), (854, 480), (640, 360), (1920, 1080)]
)
def test_reads_the_stamp_at_every_rung_size(page: Page, width: int, height: int) -> None:
    ms = 1_764_000_123_457  # odd, and both halves of the 48 bits carry ones and zeros
    assert page.evaluate(DRAW_AND_READ, [ms, width, height, 255, 0, True]) == ms


def test_reads_limited_levels_the_spec_allows(page: Page) -> None:
    # White >= 200 and black <= 40 (what an encoder's range squeeze can leave).
    ms = (1 << 47) | 0b1010_0101
    assert page.evaluate(DRAW_AND_READ, [ms, 1280, 720, 200, 40, True]) == ms


def test_a_picture_without_a_stamp_reads_as_none(page: Page) -> None:
    assert page.evaluate(DRAW_AND_READ, [0, 1280, 720, 255, 0, False]) is None
