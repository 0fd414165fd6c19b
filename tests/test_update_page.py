"""Settings › Software update in Chromium: a bundle chosen on the page goes to the real
RAUC service (see test_update_install.py), and the page shows RAUC's verdict."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.api_client import login_browser
from tests.browser.chromium import MissingTool, find_chromium, launch_chromium
from tests.daemon_proc import running_daemon
from tests.test_update_install import Rauc, bundles, on_bus, rauc  # noqa: F401 - fixtures

pytestmark = pytest.mark.browser


def test_page_uploads_a_bundle_and_shows_the_outcome(on_bus: Rauc,  # noqa: F811
                                                      tmp_path: Path) -> None:
    try:
        find_chromium()
    except MissingTool as exc:  # a broken setup, not a reason to skip
        pytest.fail(str(exc), pytrace=False)
    env = {"APPLIANCE_UPDATE_DIR": str(tmp_path / "update"), **on_bus.env}
    with running_daemon(tmp_path / "d", env=env) as d, launch_chromium() as browser:
        page = browser.new_page()
        login_browser(page, d.url)
        page.goto(d.url + "/settings")
        status = page.locator("#update-status")
        # The page has asked for the update state (which would replace a verdict shown
        # before it arrives).
        page.wait_for_function(
            "!document.getElementById('update-version').textContent.includes('Loading')")
        assert status.text_content() == ""  # idle: nothing to say
        page.locator("#update-upload").click()  # nothing chosen: said so, nothing sent
        assert "choose a bundle" in (status.text_content() or "")
        page.locator("#update-file").set_input_files(str(on_bus.bundles.other_ca))
        page.locator("#update-upload").click()
        assert "choose a bundle" not in (status.text_content() or "")  # the old verdict went
        page.wait_for_function(
            "document.getElementById('update-status').textContent.includes('failed')",
            timeout=30_000)
        assert "signature verification failed" in (status.text_content() or "")
        assert page.locator("#update-upload").is_enabled()
        assert page.locator("#update-progress").is_hidden()
