"""Debian's Chromium driven by Python Playwright, shared by the browser tests and bench/.

Playwright's own browser download cannot work here (only PyPI, apt and npm are reachable),
so the system Chromium that scripts/setup.sh --test installs is launched instead.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, sync_playwright

ROOT = Path(__file__).resolve().parents[2]
HLS_JS = ROOT / "node_modules" / "hls.js" / "dist" / "hls.mjs"

# Root needs --no-sandbox; the --disable-* flags stop Chromium's background calls to
# Google, which a closed network refuses many at a time; muted autoplay without a click.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]

SETUP_HINT = "run `bash scripts/setup.sh --test` (it installs Chromium and the npm packages)"


class MissingTool(RuntimeError):
    pass


def find_chromium() -> str:
    """The system Chromium: $APPLIANCE_CHROMIUM, else Debian's or Raspberry Pi OS's name."""
    env = os.environ.get("APPLIANCE_CHROMIUM")
    candidates = [env] if env else ["chromium", "chromium-browser"]
    for name in candidates:
        path = shutil.which(name)
        if path:
            return path
    raise MissingTool(f"Chromium not found ({', '.join(candidates)}): {SETUP_HINT}")


def check_hls_js() -> None:
    if not HLS_JS.is_file():
        raise MissingTool(f"{HLS_JS.relative_to(ROOT)} is missing: {SETUP_HINT}")


@contextmanager
def launch_chromium() -> Iterator[Browser]:
    """A headless Chromium; Playwright gives each launch a fresh, throwaway profile
    (it refuses --user-data-dir in args for that reason)."""
    executable = find_chromium()
    try:
        pw = sync_playwright().start()
    except Exception as exc:  # the driver's own stderr (printed above) says why
        raise MissingTool(f"Playwright's driver did not start ({exc}): {SETUP_HINT}") from exc
    try:
        try:
            browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        except Exception as exc:
            raise MissingTool(f"{executable} did not start ({exc}): {SETUP_HINT}") from exc
        try:
            yield browser
        finally:
            browser.close()
    finally:
        pw.stop()


DASH_JS = ROOT / "node_modules" / "dashjs" / "dist" / "modern" / "esm" / "dash.mediaplayer.min.js"


def check_dash_js() -> None:
    """dash.js as the page imports it (static/dash-player.js), installed by npm."""
    if not DASH_JS.is_file():
        raise MissingTool(f"{DASH_JS.relative_to(ROOT)} is missing: {SETUP_HINT}")
