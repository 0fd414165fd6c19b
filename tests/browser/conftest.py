"""Fixtures for the browser tests: the real daemon on a free port and Debian's Chromium."""

from __future__ import annotations

import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser

from tests.browser.chromium import MissingTool, check_hls_js, launch_chromium
from tests.daemon_proc import DaemonProc, running_daemon

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


def wait_for_media(d: DaemonProc, timeout: float = 20) -> None:
    """Until the multivariant playlist is served (the pipeline is up, not only the web)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            d.get("/live/index.m3u8", timeout=2)
            return
        except (urllib.error.HTTPError, OSError):
            if d.proc.poll() is not None or time.monotonic() > deadline:
                raise TimeoutError(f"/live/index.m3u8 not served:\n{d.log()}") from None
            time.sleep(0.2)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Module scope, not session: Playwright's sync API keeps an event loop running in this
    # thread while it is open, and pytest-asyncio cannot run the async tests beside it.
    # A missing Chromium or hls.js is a broken setup, not a reason to skip.
    try:
        check_hls_js()
        with launch_chromium() as b:
            yield b
    except MissingTool as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def live_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    """`appliance run` with the default synthetic source (stamped video + tone)."""
    with running_daemon(tmp_path_factory.mktemp("daemon")) as d:
        wait_for_media(d)
        yield d


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
