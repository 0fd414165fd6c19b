"""The HTTPS certificate on the settings page, in Debian's Chromium against the real daemon:
it shows the certificate, refuses a key of another certificate at the key's field, and
replaces it with a good pair (the key never shown back)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, FilePayload, Page, expect

from appliance.provision import tls
from tests.api_client import LIGHT, admin, login_browser
from tests.daemon_proc import DaemonProc, running_daemon

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonProc, Path]]:
    tmp = tmp_path_factory.mktemp("ui-tls")
    tls.ensure(tmp / "tls", "cam")
    extra = f'[web]\nlisten = "127.0.0.1:{{port}}"\ntls_dir = "{tmp / "tls"}"\n'
    config = extra + LIGHT.replace("[video]\n", '[video]\nsource = "synthetic"\n', 1)
    with running_daemon(tmp, config=config) as d:
        yield d, tmp / "tls"


@pytest.fixture
def ui(browser: Browser, daemon: tuple[DaemonProc, Path]) -> Iterator[Page]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    login_browser(page, daemon[0].url)
    yield page
    ctx.close()
    assert not errors, errors


def pem_file(name: str, data: bytes) -> FilePayload:
    return {"name": name, "mimeType": "application/x-pem-file", "buffer": data}


def test_certificate_is_shown_and_replaced(daemon: tuple[DaemonProc, Path], ui: Page) -> None:
    d, tls_dir = daemon
    shown = admin(d).get("/api/v1/tls").json()
    ui.goto(d.url + "/settings")
    info = ui.locator("#tls-info")
    expect(info).to_contain_text(shown["sha256"])
    expect(info).to_contain_text("cam.local")

    cert, key = tls.make_self_signed("garage")
    _, other_key = tls.make_self_signed("other")
    ui.set_input_files("#tls-cert", pem_file("cert.pem", cert))
    ui.set_input_files("#tls-key", pem_file("key.pem", other_key))
    ui.click("#tls-upload")
    expect(ui.locator("#tls-key-error")).to_contain_text("does not match the certificate")
    expect(info).to_contain_text(shown["sha256"])  # unchanged

    ui.set_input_files("#tls-key", pem_file("key.pem", key))
    ui.click("#tls-upload")
    expect(ui.locator("#tls-status")).to_contain_text("Replaced")
    expect(ui.locator("#tls-key-error")).to_be_empty()
    now = admin(d).get("/api/v1/tls").json()
    assert now["names"] == ["garage", "garage.local"] and now["sha256"] != shown["sha256"]
    expect(info).to_contain_text(now["sha256"])
    assert "PRIVATE KEY" not in ui.content()
    assert tls.load_pair((tls_dir / "cert.pem").read_bytes(),
                         (tls_dir / "key.pem").read_bytes()).info.sha256 == now["sha256"]
