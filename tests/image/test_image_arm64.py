"""The ci-arm64 image, built under emulation (qemu-user through binfmt_misc) and booted in
qemu-system-aarch64 (the `virt` board, TCG) by the same firmware stand-in as ci-amd64:
first boot to live, root read-only, the slot marked good. Slow (the base root filesystem
alone takes many minutes to build under emulation): `pytest -m slow tests/image`."""

from __future__ import annotations

import re
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest

from tests.image.conftest import Device, Image, booted
from tests.image.firmware import have_tools

pytestmark = [pytest.mark.slow, pytest.mark.timeout(5400)]

_missing = have_tools("arm64")
if _missing:
    pytest.skip(f"arm64 image tests: {_missing}", allow_module_level=True)


@pytest.fixture(scope="module")
def arm64_device(arm64_image: Image,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Device]:
    with booted(arm64_image, tmp_path_factory.mktemp("device-arm64"), live_timeout=1200,
                grow_mb=1024) as dev:
        yield dev


def get(dev: Device, path: str) -> str:
    with urllib.request.urlopen(dev.fw.url(path), timeout=30) as r:
        assert r.status == 200, path
        return r.read().decode()


def last_segment(playlist: str) -> int:
    """Media sequence number of the newest complete segment (-1: none yet)."""
    return max((int(n) for n in re.findall(r"^seg(\d+)\.m4s", playlist, re.M)), default=-1)


def test_arm64_first_boot_to_live(arm64_image: Image, arm64_device: Device) -> None:
    print(f"\nci-arm64: built in {arm64_image.build_s:.0f} s; in qemu-system-aarch64 (TCG), "
          f"power on to /healthz {arm64_device.live_after:.1f} s", file=sys.stderr)
    assert arm64_device.sh("uname -m").strip() == "aarch64"
    variant = next(line for line in get(arm64_device, "/live/index.m3u8").splitlines()
                   if line and not line.startswith("#"))
    # The stream is live: segments keep coming, even at emulated speed.
    first = last_segment(get(arm64_device, f"/live/{variant}"))
    deadline = time.monotonic() + 120
    while last_segment(get(arm64_device, f"/live/{variant}")) <= first:
        assert time.monotonic() < deadline, f"/live/{variant} did not grow in 120 s"
        time.sleep(2)


def test_arm64_read_only_root_and_slot_marked_good(arm64_device: Device) -> None:
    assert "ro" in arm64_device.sh("findmnt -no OPTIONS /").strip().split(",")
    arm64_device.wait_committed(timeout=900)
    assert arm64_device.sh("systemctl --failed --no-legend --plain").strip() == ""
