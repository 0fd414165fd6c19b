"""On-device tests. Each needs real hardware and is skipped elsewhere, saying why.

Run on the device: `.venv/bin/pytest hw-tests` (the venv needs --system-site-packages
to see Raspberry Pi OS's python3-picamera2 and libcamera bindings).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def _device_tree(name: str) -> str:
    try:
        return Path("/proc/device-tree", name).read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def pi_skip_reason() -> str | None:
    model = _device_tree("model")
    if "Raspberry Pi" not in model:
        return f"not a Raspberry Pi (/proc/device-tree/model: {model or 'absent'})"
    return None


def pi_camera_skip_reason() -> str | None:
    if (reason := pi_skip_reason()) is not None:
        return reason
    if importlib.util.find_spec("picamera2") is None:
        return ("picamera2 not importable: apt install python3-picamera2 and make the venv "
                "with --system-site-packages")
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "picamera: needs a Raspberry Pi with picamera2")
    config.addinivalue_line("markers", "pi: needs a Raspberry Pi (no camera)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reasons = {"picamera": pi_camera_skip_reason(), "pi": pi_skip_reason()}
    for item in items:
        for marker, reason in reasons.items():
            if reason is not None and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def pi_model() -> str:
    return _device_tree("model")


@pytest.fixture
def pi_compatible() -> str:
    """e.g. "raspberrypi,5-model-b brcm,bcm2712": names the SoC, whatever the board."""
    return _device_tree("compatible")
