"""Signed A/B updates on the ci-amd64 image in QEMU, with tests/image/firmware.py playing the
Pi firmware's tryboot: RAUC refuses bad bundles, a good one uploaded on the page commits
after a trial boot, a failing health check returns to the old slot after one reboot, and
a power cut in mid-install boots the old slot.

One device (conftest's, after test_image_boot.py's checks of its first boot) goes through
these in order, each boot costing about a minute under software emulation: the tests of
this module depend on the ones before them."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.api_client import Client
from tests.image.conftest import (
    ADMIN_PASSWORD,
    IMAGE_VERSION,
    Device,
    Image,
    make_bundle,
    rootfs_variant,
)
from tests.image.test_image_boot import tls_client
from tests.test_update_bundle import flipped, slot_images

# Software emulation: a boot takes about a minute, an install a few (pyproject's 300 s
# timeout is for ordinary tests).
pytestmark = pytest.mark.timeout(1800)

NEW = "1.2.0"
BROKEN = "1.3.0"


@pytest.fixture(scope="module")
def bad_bundles(image: Image, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Bundles the device must refuse before it writes anything: small slot images."""
    d = tmp_path_factory.mktemp("bad-bundles")
    _, small_root = slot_images(d)
    return {
        "older": make_bundle(image, small_root, "1.0.0", d / "older.raucb"),
        "other-board": make_bundle(image, small_root, NEW, d / "rpi.raucb",
                                   compatible="appliance-rpi"),
        "other-ca": make_bundle(image, small_root, NEW, d / "other.raucb", pki="other"),
        "tampered": flipped(make_bundle(image, small_root, NEW, d / "small.raucb"),
                            d / "tampered.raucb", 4096),
    }


@pytest.fixture(scope="module")
def new_bundle(image: Image, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("new-bundle")
    rootfs = rootfs_variant(image.dir / "rootfs.ext4", d / "new.ext4", NEW, {})
    return make_bundle(image, rootfs, NEW, d / "new.raucb")


@pytest.fixture(scope="module")
def broken_bundle(image: Image, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Its appliance never starts; its health check gives up after 20 s, not 240."""
    d = tmp_path_factory.mktemp("broken-bundle")
    rootfs = rootfs_variant(image.dir / "rootfs.ext4", d / "broken.ext4", BROKEN, {
        "/etc/systemd/system/appliance.service.d/zz-broken.conf":
            "[Service]\nExecStart=\nExecStart=/bin/false\n",
        "/etc/systemd/system/appliance-health.service.d/zz-quick.conf":
            "[Service]\nExecStart=\nExecStart=/opt/appliance/.venv/bin/appliance health"
            " --timeout 20 --reboot-trial\n",
    })
    return make_bundle(image, rootfs, BROKEN, d / "broken.raucb")


def autoboot(dev: Device) -> dict[str, int]:
    text = dev.sh("cat /boot/select/autoboot.txt")
    sections = re.split(r"^\[(\w+)\]\s*$", text, flags=re.M)
    out = {}
    for name, body in zip(sections[1::2], sections[2::2], strict=True):
        m = re.search(r"^boot_partition=(\d+)", body, flags=re.M)
        if m:
            out[name] = int(m.group(1))
    return out


def other(partition: int) -> int:
    """boot_a is partition 2, boot_b 3."""
    return 5 - partition


def version(dev: Device) -> str:
    return dev.sh("cat /usr/lib/appliance-version").strip()


def push(dev: Device, bundle: Path) -> str:
    """Copy a bundle to the device's /data (the root is read-only) and return its path."""
    remote = "/data/state/pushed.raucb"  # a neutral name: errors must not echo a hint
    subprocess.run(["scp", "-q", "-i", str(dev.key), "-P", str(dev.fw.ports[22]),
                    "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                    str(bundle), f"root@127.0.0.1:{remote}"], check=True, timeout=600)
    return remote


@pytest.mark.parametrize("name, why", [
    ("older", "1.0.0 is older than the running 1.1.5"),
    ("other-board", "bundle is for .appliance-rpi."),
    ("other-ca", "signature|certificate|verif"),
    ("tampered", "signature|verif|corrupt|invalid"),
])
def test_bad_bundles_are_refused(device: Device, bad_bundles: dict[str, Path], name: str,
                                 why: str) -> None:
    device.wait_committed()
    before = autoboot(device)
    remote = push(device, bad_bundles[name])
    with pytest.raises(RuntimeError) as refused:
        device.sh(f"rauc install {remote}", timeout=300)
    # RAUC's reason, from the service (the command line's own message is only "failed"),
    # and what the pre-install handler said (RAUC only says that the handler failed).
    reason = device.sh("busctl get-property de.pengutronix.rauc / "
                       "de.pengutronix.rauc.Installer LastError; "
                       "journalctl -u rauc -n 20 -o cat --no-pager")
    print(f"\n{name}: {str(refused.value)[-200:]} / {reason.strip()}")
    assert re.search(why, reason, re.I), reason
    device.sh(f"rm -f {remote}")
    assert autoboot(device) == before
    assert version(device) == IMAGE_VERSION


def page(device: Device) -> Client:
    c = Client(f"https://127.0.0.1:{device.fw.ports[443]}", context=tls_client())
    assert c.login(ADMIN_PASSWORD).status == 200
    return c


def test_page_upload_of_an_older_bundle_says_why(device: Device,
                                                 bad_bundles: dict[str, Path]) -> None:
    c = page(device)
    r = c.call("POST", "/api/v1/update", raw=bad_bundles["older"].read_bytes(),
               headers={"Content-Type": "application/octet-stream"}, timeout=120)
    assert r.status == 202, r.body
    deadline = time.monotonic() + 120
    while (s := c.get("/api/v1/update").json())["state"] != "failed":
        assert s["state"] != "rebooting" and time.monotonic() < deadline, s
        time.sleep(1)
    # The reason, not RAUC's "Pre-install handler error".
    assert "1.0.0 is older than the running 1.1.5" in s["message"], s
    assert version(device) == IMAGE_VERSION


# The install flows below take 4-10 minutes each under software emulation: out of the
# default run (`pytest -m slow tests/image`), which they would push past 20 minutes.
@pytest.mark.slow
def test_upload_on_the_page_commits_after_a_trial_boot(device: Device,
                                                       new_bundle: Path) -> None:
    device.wait_committed()
    committed = autoboot(device)["all"]
    c = page(device)
    boots = len(device.fw.boots)
    started = time.monotonic()
    r = c.call("POST", "/api/v1/update", raw=new_bundle.read_bytes(),
               headers={"Content-Type": "application/octet-stream"}, timeout=600)
    assert r.status == 202, r.body
    states: list[tuple[str, int | None]] = []
    while len(device.fw.boots) == boots:
        assert time.monotonic() - started < 900, states
        try:
            s = c.get("/api/v1/update", timeout=10).json()
            if not states or states[-1] != (s["state"], s.get("percent")):
                states.append((s["state"], s.get("percent")))
            assert s["state"] != "failed", s
        except (OSError, ValueError):
            pass  # going down for the reboot: no answer, or nginx's own error page
        time.sleep(2)
    print(f"\nupdate progress: {states}; install + reboot {time.monotonic() - started:.0f} s")
    assert any(state == "installing" for state, _ in states)
    trial = device.fw.boots[-1]
    assert trial.tryboot and trial.partition == other(committed)
    assert f"system_{'ab'[trial.partition - 2]}" in trial.cmdline
    device.wait_committed()
    assert version(device) == NEW
    assert autoboot(device)["all"] == trial.partition  # committed: a plain reboot stays


@pytest.mark.slow
def test_failing_health_check_returns_to_the_old_slot(device: Device,
                                                      broken_bundle: Path) -> None:
    device.wait_committed()
    committed, running = autoboot(device)["all"], version(device)
    remote = push(device, broken_bundle)
    boots = len(device.fw.boots)
    device.sh(f"rauc install {remote} && rm {remote}", timeout=900)
    device.sh("systemd-run --no-block /opt/appliance/.venv/bin/appliance-boot-backend reboot")
    device.fw.wait_boots(boots + 2, timeout=900)
    trial, after = device.fw.boots[boots], device.fw.boots[boots + 1]
    assert trial.tryboot and trial.partition == other(committed)
    assert not after.tryboot and after.partition == committed
    device.fw.wait_http("/healthz", timeout=400)
    assert version(device) == running
    assert autoboot(device)["all"] == committed


@pytest.mark.slow
def test_power_cut_in_mid_install_boots_the_old_slot(device: Device, new_bundle: Path) -> None:
    device.wait_committed()
    committed, running = autoboot(device)["all"], version(device)
    remote = push(device, new_bundle)
    boots = len(device.fw.boots)
    device.sh(f"systemd-run --unit=cut-me rauc install {remote}")
    # Cut the power once RAUC is writing the other slot: its progress (printed by the
    # `rauc install` client into this boot's journal of the unit) passes 80 % there.
    device.wait_sh("journalctl -b -u cut-me -o cat --no-pager | "
                   "grep -qE '^ *(8[0-9]|9[0-9])% '", 600)
    device.fw.kill()
    device.fw.wait_boots(boots + 1, timeout=120)
    again = device.fw.boots[-1]
    assert not again.tryboot and again.partition == committed
    device.fw.wait_http("/healthz", timeout=400)
    assert version(device) == running
