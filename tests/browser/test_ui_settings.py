"""Settings and the live dashboard in Debian's Chromium against the real daemon: forms
generated from the config schema change the config (a ladder bitrate, an uplink's SRT
latency) and the daemon applies it; a destination added through the page gets its card
with its live state; the API's validation errors appear next to their fields; secrets
never appear in clear; the pages fit a phone; the virtual LEDs follow the source failing.

One daemon for the module, two unreachable uplinks with secrets; the tests run in order
and the last one breaks the video source on purpose.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, ViewportSize, expect

from tests.api_client import LIGHT, Client, admin, login_browser
from tests.browser.conftest import wait_for_media
from tests.daemon_proc import DaemonProc, free_port, running_daemon

pytestmark = pytest.mark.browser

MASK = "**********"
KEY, PASSPHRASE = "sk-live-3f9a1c7e5d2b", "srt-pass-4e6c8a0b2d"
NEW_KEY = "sk-new-8d7c6b5a4f3e"
UPLINKS = """
[[uplink]]
name = "rtmp-a"
url = "rtmp://127.0.0.1:{rtmp_port}/live"
key = "{key}"

[[uplink]]
name = "srt-b"
url = "srt://127.0.0.1:{srt_port}"
passphrase = "{passphrase}"
latency_ms = 200
"""
CONNECTING = re.compile(r"^(connecting|retrying)$")
PHONE: ViewportSize = {"width": 390, "height": 844}

# What a person could see or copy from the page: markup, text, and every input's value
# (an input's value is not in the markup once typed or set by script).
VISIBLE_JS = """() => ({
    html: document.documentElement.outerHTML,
    text: document.body.innerText,
    values: [...document.querySelectorAll('input, select, textarea')].map(e => e.value),
})"""

# The lit layer of a virtual LED (style.css): opacity, and the blink animation on it.
LED_JS = """(el) => {
    const s = getComputedStyle(el, '::after');
    return {mode: el.dataset.mode, opacity: s.opacity, animation: s.animationName,
            period: s.animationDuration};
}"""

# Elements wider than the viewport, for the diagnosis of a horizontal scroll.
OVERFLOW_JS = """() => ({
    scrollWidth: document.documentElement.scrollWidth,
    clientWidth: document.documentElement.clientWidth,
    wide: [...document.querySelectorAll('body *')]
        .filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth + 1)
        .slice(0, 8).map(e => `${e.tagName.toLowerCase()}#${e.id}.${e.className}`),
})"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    extra = LIGHT + UPLINKS.format(rtmp_port=free_port(), srt_port=free_port(), key=KEY,
                                   passphrase=PASSPHRASE)
    with running_daemon(tmp_path_factory.mktemp("ui-settings"), extra=extra) as d:
        wait_for_media(d)
        yield d


@pytest.fixture
def context(browser: Browser, daemon: DaemonProc) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    yield ctx
    ctx.close()


@pytest.fixture
def ui(context: BrowserContext, daemon: DaemonProc) -> Iterator[Page]:
    """A logged-in page; fails the test on any uncaught script error."""
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    login_browser(page, daemon.url)
    yield page
    assert not errors, errors


def shot(page: Page, path: Path, full: bool = True) -> None:
    page.screenshot(path=str(path), full_page=full)
    print(f"\nscreenshot: {path}")


def api_json(d: DaemonProc, path: str) -> Any:
    r = admin(d).get(path)
    assert r.status == 200, r.body
    return r.json()


def dest(page: Page, name: str) -> Locator:
    return page.locator(f'#dest-list .dest-card[data-uplink="{name}"]')


def assert_no_secret(page: Page, *secrets: str) -> None:
    seen = page.evaluate(VISIBLE_JS)
    for secret in secrets:
        assert secret not in seen["html"], f"{secret!r} in the page's markup"
        assert secret not in seen["text"], f"{secret!r} in the page's text"
        assert all(secret not in v for v in seen["values"]), f"{secret!r} in an input"


def restart_stream(page: Page) -> None:
    """Save said a restart is needed: the banner's button restarts the stream."""
    expect(page.locator("#restart-banner")).to_be_visible()
    expect(page.locator("#restart-text")).to_contain_text("[video]")
    page.click("#restart-stream")
    expect(page.locator("#restart-result")).to_have_text("restarted", timeout=15_000)


def test_secrets_are_never_shown(daemon: DaemonProc, ui: Page, artifacts: Path) -> None:
    ui.goto(daemon.url + "/settings")
    expect(ui.locator("#dest-list .dest-card")).to_have_count(2)
    for name in ("rtmp-a", "srt-b"):
        dest(ui, name).get_by_role("button", name="Edit").click()
    key = dest(ui, "rtmp-a").locator('input[data-key="key"]')
    passphrase = dest(ui, "srt-b").locator('input[data-key="passphrase"]')
    for field in (key, passphrase):
        expect(field).to_have_attribute("type", "password")
        expect(field).to_have_value(MASK)
    ui.evaluate("() => document.querySelectorAll('details').forEach(d => { d.open = true; })")
    assert_no_secret(ui, KEY, PASSPHRASE)
    ui.goto(daemon.url + "/")
    expect(ui.locator('.uplink-card[data-uplink="rtmp-a"]')).to_be_visible()
    assert_no_secret(ui, KEY, PASSPHRASE)


def test_ladder_bitrate_change_is_applied(daemon: DaemonProc, ui: Page,
                                          artifacts: Path) -> None:
    ui.goto(daemon.url + "/settings")
    field = ui.locator('input[data-key="video.ladder[0].bitrate_kbps"]')
    expect(field).to_have_value("300")
    expect(ui.locator('label[for]', has_text="Bitrate (kbit/s)").first).to_be_visible()
    assert field.get_attribute("min") == "100" and field.get_attribute("max") == "50000"
    field.fill("450")
    ui.click("#save")
    expect(ui.locator("#save-status")).to_contain_text("Saved")
    assert api_json(daemon, "/api/v1/config")["video"]["ladder"][0]["bitrate_kbps"] == 450
    shot(ui, artifacts / "ui_settings_restart_needed.png", full=False)
    # [video] waits for a stream restart; the page offers it, and then the encoder runs
    # at the new rate.
    restart_stream(ui)
    deadline = time.monotonic() + 15
    while True:
        enc = api_json(daemon, "/api/v1/status")["sections"].get("encode.180p", {})
        if enc.get("bitrate_kbps") == 450:
            break
        assert time.monotonic() < deadline, enc
        time.sleep(0.3)
    ui.goto(daemon.url + "/")
    rung = ui.locator('.rung[data-rung="180p"]')
    expect(rung.locator('[data-field="target"]')).to_have_text("450 kbit/s", timeout=10_000)
    expect(ui.locator("#restart-banner")).to_be_hidden()


def test_uplink_latency_change_keeps_the_secret(daemon: DaemonProc, ui: Page) -> None:
    ui.goto(daemon.url + "/settings")
    card = dest(ui, "srt-b")
    card.get_by_role("button", name="Edit").click()
    latency = card.locator('input[data-key="latency_ms"]')
    expect(latency).to_have_value("200")
    expect(card.locator('input[data-key="name"]')).to_be_disabled()
    latency.fill("350")
    card.get_by_role("button", name="Save").click()
    # Saved: the list reloads with the editor closed.
    expect(dest(ui, "srt-b").locator("form")).to_have_count(0)
    uplink = api_json(daemon, "/api/v1/uplinks/srt-b")
    assert uplink["latency_ms"] == 350
    assert uplink["passphrase"] == MASK  # the mask sent back kept the stored passphrase
    card = dest(ui, "srt-b")
    card.get_by_role("button", name="Edit").click()
    expect(card.locator('input[data-key="latency_ms"]')).to_have_value("350")


def test_server_errors_are_shown_at_their_fields(daemon: DaemonProc, ui: Page,
                                                 artifacts: Path) -> None:
    ui.goto(daemon.url + "/settings")
    fps = ui.locator('input[data-key="video.fps"]')
    fps.fill("500")
    ui.click("#save")
    error = ui.locator('.field[data-key="video.fps"] .field-error')
    expect(error).to_contain_text("less than or equal to 60")
    expect(fps).to_have_attribute("aria-invalid", "true")
    expect(ui.locator("#save-status")).to_contain_text("Not saved")
    assert api_json(daemon, "/api/v1/config")["video"]["fps"] == 15
    # A rung whose bitrate is missing: the error names the rung's own field.
    ui.locator("#config-fields fieldset.repeat").get_by_role("button", name="Add rung").click()
    new_rung = ui.locator("#config-fields fieldset.item").nth(1)
    new_rung.locator('input[data-key="video.ladder[1].name"]').fill("90p")
    new_rung.locator('input[data-key="video.ladder[1].width"]').fill("160")
    new_rung.locator('input[data-key="video.ladder[1].height"]').fill("90")
    fps.fill("15")
    ui.click("#save")
    expect(ui.locator('.field[data-key="video.ladder[1].bitrate_kbps"] .field-error')
           ).to_contain_text("required")
    expect(error).to_be_empty()
    assert len(api_json(daemon, "/api/v1/config")["video"]["ladder"]) == 1
    shot(ui, artifacts / "ui_settings_inline_error.png", full=False)
    ui.click("#revert")
    expect(ui.locator("#config-fields fieldset.item")).to_have_count(1)

    # Rules only the server knows, on a new destination: the URL's scheme, and RTMP
    # needing a stream key.
    ui.click("#add-dest")
    form = ui.locator("#dest-new")
    form.locator('input[data-key="name"]').fill("bad-one")
    form.locator('input[data-key="url"]').fill("http://127.0.0.1/live")
    form.get_by_role("button", name="Add destination").click()
    expect(form.locator('.field[data-key="url"] .field-error')).to_contain_text("scheme")
    form.locator('input[data-key="url"]').fill("rtmp://127.0.0.1/live")
    form.get_by_role("button", name="Add destination").click()
    expect(form.locator('.field[data-key="key"] .field-error')).to_contain_text("stream key")
    expect(form.locator('.field[data-key="url"] .field-error')).to_be_empty()
    names = [u["name"] for u in api_json(daemon, "/api/v1/uplinks")["uplinks"]]
    assert "bad-one" not in names


def test_added_destination_gets_its_card(daemon: DaemonProc, ui: Page,
                                         artifacts: Path) -> None:
    port = free_port()  # nothing listens there
    ui.goto(daemon.url + "/settings")
    ui.click("#add-dest")
    form = ui.locator("#dest-new")
    form.locator('input[data-key="name"]').fill("rtmp-new")
    form.locator('input[data-key="url"]').fill(f"rtmp://127.0.0.1:{port}/live")
    form.locator('input[data-key="key"]').fill(NEW_KEY)
    form.get_by_role("button", name="Add destination").click()
    card = dest(ui, "rtmp-new")
    expect(card).to_be_visible()
    expect(ui.locator("#dest-new form")).to_have_count(0)
    expect(card).to_have_attribute("data-state", CONNECTING, timeout=10_000)
    assert_no_secret(ui, NEW_KEY, KEY, PASSPHRASE)
    card.get_by_role("button", name="Test connection").click()
    expect(card.locator(".test-result")).to_contain_text("Failed:", timeout=15_000)

    ui.goto(daemon.url + "/")
    tile = ui.locator('.uplink-card[data-uplink="rtmp-new"]')
    expect(tile).to_have_attribute("data-state", CONNECTING, timeout=10_000)
    expect(tile.locator('[data-field="target"]')).to_contain_text(f"RTMP → 127.0.0.1:{port}")
    expect(tile.locator(".uplink-state")).to_have_text(CONNECTING)
    shot(ui, artifacts / "ui_dashboard_new_destination.png")

    ui.goto(daemon.url + "/settings")
    card = dest(ui, "rtmp-new")
    card.get_by_role("button", name="Delete").click()
    card.get_by_role("button", name="Confirm delete of rtmp-new").click()
    expect(card).to_have_count(0)
    names = [u["name"] for u in api_json(daemon, "/api/v1/uplinks")["uplinks"]]
    assert names == ["rtmp-a", "srt-b"]


def test_pages_fit_a_phone(browser: Browser, daemon: DaemonProc, artifacts: Path) -> None:
    ctx = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True,
                              has_touch=True)
    try:
        page = ctx.new_page()
        login_browser(page, daemon.url)
        for path, name in (("/", "dashboard"), ("/settings", "settings"), ("/logs", "logs")):
            page.goto(daemon.url + path)
            if path == "/":
                expect(page.locator(".uplink-card")).to_have_count(2)
                page.wait_for_function("() => window.player && window.player.stats.started",
                                       timeout=20_000)
            if path == "/settings":
                # Everything unfolded: the widest the page gets.
                expect(page.locator("#dest-list .dest-card")).to_have_count(2)
                for button in page.get_by_role("button", name="Edit").all():
                    button.click()
                page.click("#add-dest")
                page.evaluate("() => document.querySelectorAll('details')"
                              ".forEach(d => { d.open = true; })")
            if path == "/logs":
                expect(page.locator("#log-list li").first).to_be_visible()
            fit = page.evaluate(OVERFLOW_JS)
            assert fit["scrollWidth"] <= fit["clientWidth"] == PHONE["width"], (path, fit)
            shot(page, artifacts / f"ui_phone_{name}.png")
    finally:
        ctx.close()


LED_PAGE = """<!doctype html><meta charset="utf-8">
<link rel="stylesheet" href="/static/style.css">
<div id="leds"><span id="led-green" class="led green"></span>
<span id="led-red" class="led red"></span></div>
<script type="module">
  import { showLeds } from '/static/leds.js';
  // Show `leds`, then record both LEDs' lit layer at every frame for `ms`.
  window.record = (leds, ms) => new Promise((resolve) => {
    showLeds(leds);
    const lit = (id) => Number(getComputedStyle(document.getElementById(id), '::after').opacity);
    const out = [];
    const t0 = performance.now();
    const frame = (now) => {
      out.push([now - t0, lit('led-green'), lit('led-red')]);
      if (now - t0 < ms) requestAnimationFrame(frame); else resolve(out);
    };
    requestAnimationFrame(frame);
  });
  window.ready = true;
</script>"""
RECORD_MS = 2100
# SPEC's LED table, as the status reports it: mode -> (lit transitions in 2.1 s, share lit).
PATTERNS = {"off": (0, 0.0), "on": (0, 1.0), "blink-0.5hz": (2, 0.5), "blink-1hz": (4, 0.5),
            "blink-4hz": (16, 0.5), "alternate-2hz": (8, 0.5)}


def transitions(samples: list[float]) -> int:
    return sum(1 for a, b in zip(samples, samples[1:], strict=False) if a != b)


def test_virtual_led_patterns(browser: Browser, daemon: DaemonProc) -> None:
    """Each mode blinks at its rate with half the time lit; alternate keeps the two LEDs
    in antiphase. (The LED elements as the pages have them, style.css and leds.js.)"""
    page = browser.new_page()
    try:
        page.route(daemon.url + "/led-test.html",
                   lambda route: route.fulfill(body=LED_PAGE, content_type="text/html"))
        page.goto(daemon.url + "/led-test.html")
        page.wait_for_function("() => window.ready === true")
        for mode, (flips, share) in PATTERNS.items():
            colours = ("green", "red") if mode == "alternate-2hz" else ("green",)
            leds = {"green": mode, "red": mode if mode == "alternate-2hz" else "off"}
            rec = page.evaluate("([leds, ms]) => window.record(leds, ms)", [leds, RECORD_MS])
            assert len(rec) > RECORD_MS / 50, f"{mode}: only {len(rec)} frames recorded"
            for i in range(1, len(colours) + 1):  # 1: green, 2: red
                lit = [s[i] for s in rec]
                assert set(lit) <= {0.0, 1.0}, (mode, set(lit))  # a LED is on or off
                n = transitions(lit)
                assert abs(n - flips) <= 1, f"{mode}: {n} transitions, expected {flips}"
                assert abs(sum(lit) / len(lit) - share) <= 0.1, (mode, sum(lit) / len(lit))
            if mode == "alternate-2hz":
                apart = sum(1 for _, g, r in rec if g != r) / len(rec)
                # In antiphase they differ always but at the flips, which sampling on a
                # loaded machine catches now and then; two LEDs blinking independently
                # would differ half of the time.
                assert apart > 0.8, f"alternate: the LEDs differ only {apart:.0%} of the time"
            else:
                assert all(s[2] == 0.0 for s in rec), f"{mode}: red lit"
    finally:
        page.close()


def test_leds_follow_the_source_failing(daemon: DaemonProc, ui: Page, artifacts: Path) -> None:
    ui.goto(daemon.url + "/")
    green, red = ui.locator("#led-green"), ui.locator("#led-red")
    # Uplinks that cannot connect: green blinks at 4 Hz, red is off (SPEC's LED table).
    expect(ui.locator("#device-state")).to_have_attribute("data-state", "connecting",
                                                          timeout=10_000)
    expect(green).to_have_attribute("data-mode", "blink-4hz")
    expect(red).to_have_attribute("data-mode", "off")
    g, r = green.evaluate(LED_JS), red.evaluate(LED_JS)
    assert (g["animation"], g["period"]) == ("led-blink", "0.25s"), g
    assert (r["animation"], r["opacity"]) == ("none", "0"), r

    # A camera that is not there: V4L2 on a missing device, applied by a stream restart.
    ui.goto(daemon.url + "/settings")
    ui.locator('select[data-key="video.source"]').select_option(label="v4l2")
    ui.locator('input[data-key="video.device"]').fill("/dev/video-missing")
    ui.click("#save")
    expect(ui.locator("#save-status")).to_contain_text("Saved")
    restart_stream(ui)

    ui.goto(daemon.url + "/")
    expect(ui.locator("#device-state")).to_have_attribute("data-state", "no_source",
                                                          timeout=15_000)
    expect(red).to_have_attribute("data-mode", "on")
    expect(green).to_have_attribute("data-mode", "off")
    g, r = green.evaluate(LED_JS), red.evaluate(LED_JS)
    assert (r["opacity"], r["animation"]) == ("1", "none"), r
    assert (g["opacity"], g["animation"]) == ("0", "none"), g
    expect(ui.locator("#leds")).to_have_attribute("aria-label", re.compile("red on"))
    expect(ui.locator("#video-state")).to_have_text("no_source")
    expect(ui.locator("#source-error")).to_contain_text("does not exist")
    shot(ui, artifacts / "ui_leds_no_source.png", full=False)
    assert Client(daemon.url).get("/healthz").json()["state"] == "no_source"
