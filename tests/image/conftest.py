"""The ci-amd64 image, built once per test session by image/build.sh (its base root
filesystem is cached under /var/cache/appliance-image, so a rebuild costs a minute or two),
and the RAUC bundles the update tests install."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.image.firmware import Card, Firmware, copy_card, have_tools, ssh

ROOT = Path(__file__).resolve().parents[2]
# The image's own version: the update tests install newer ones and refuse an older one.
IMAGE_VERSION = "1.1.5"
ADMIN_PASSWORD = "image test password"

_missing = have_tools()
if _missing:
    pytest.skip(f"image tests: {_missing}", allow_module_level=True)


@dataclass(frozen=True)
class Image:
    dir: Path
    pki: Path  # dev CA (the image's keyring) + signing cert; other/ another CA
    build_s: float  # how long image/build.sh took

    @property
    def disk(self) -> Path:
        return self.dir / "disk.img"


def build_image(flavour: str, d: Path) -> Image:
    pki = d / "pki"
    for name, cn in (("dev", "appliance dev CA"), ("other", "someone else's CA")):
        subprocess.run([ROOT / "image/rauc/dev-ca.sh", pki / name, cn], check=True)
    started = time.monotonic()
    out = subprocess.run(
        ["bash", ROOT / "image/build.sh", "--flavour", flavour, "--out", d / "out",
         "--keyring", pki / "dev/ca.cert.pem", "--version", IMAGE_VERSION],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert out.returncode == 0, out.stdout[-6000:]
    build_s = time.monotonic() - started
    print(f"\n{flavour} image built in {build_s:.0f} s", file=sys.stderr)
    return Image(d / "out", pki, build_s)


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    return build_image("ci-amd64", tmp_path_factory.mktemp("image"))


@pytest.fixture(scope="session")
def arm64_image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    """ci-arm64 (slow tests only: its base takes about 25 min under emulation)."""
    return build_image("ci-arm64", tmp_path_factory.mktemp("image-arm64"))


def rootfs_variant(src: Path, dest: Path, version: str, files: dict[str, str]) -> Path:
    """A copy of a root filesystem image with another version file and extra files,
    written with debugfs (no mount), shrunk to its contents so a bundle stays small."""
    subprocess.run(["cp", "--sparse=always", src, dest], check=True)
    staged = dest.parent / f"{dest.name}.files"
    staged.mkdir(exist_ok=True)
    cmds = ["rm /usr/lib/appliance-version"]
    for i, (path, text) in enumerate({"/usr/lib/appliance-version": f"{version}\n",
                                      **files}.items()):
        local = staged / str(i)
        local.write_text(text)
        parent = os.path.dirname(path)
        cmds += [f"mkdir {parent}", f"write {local} {path}"]
    script = dest.parent / f"{dest.name}.debugfs"
    script.write_text("\n".join(cmds) + "\n")
    subprocess.run(["debugfs", "-w", "-f", script, dest], check=True, capture_output=True)
    subprocess.run(["e2fsck", "-fy", dest], capture_output=True)
    subprocess.run(["resize2fs", "-M", dest], check=True, capture_output=True)
    blocks = subprocess.run(["dumpe2fs", "-h", dest], check=True, capture_output=True,
                            text=True).stdout
    fields = dict(line.split(":", 1) for line in blocks.splitlines() if ":" in line)
    size = int(fields["Block count"]) * int(fields["Block size"])
    os.truncate(dest, size)
    shutil.rmtree(staged)
    return dest


def make_bundle(image: Image, rootfs: Path, version: str, out: Path,
                pki: str = "dev", compatible: str = "appliance-ci-amd64") -> Path:
    subprocess.run(
        ["bash", ROOT / "image/bundle.sh", "--boot", image.dir / "boot.vfat",
         "--rootfs", rootfs, "--version", version, "--compatible", compatible,
         "--cert", image.pki / pki / "signing.cert.pem",
         "--key", image.pki / pki / "signing.key.pem", "--out", out],
        check=True, capture_output=True, env={**os.environ, "APPLIANCE_BUNDLE_FAST": "1"},
    )
    return out


@dataclass
class Device:
    fw: Firmware
    card: Card
    key: Path  # SSH private key the first-boot file authorised
    workdir: Path
    live_after: float = 0.0  # power on to /healthz answering, first boot

    def sh(self, command: str, timeout: float = 120, stdin: str | None = None) -> str:
        return ssh(self.fw, self.key, command, timeout, stdin)

    def wait_sh(self, command: str, timeout: float) -> str:
        """Retry until the command succeeds (the guest may be booting)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.sh(command, timeout=30)
            except (RuntimeError, subprocess.TimeoutExpired):
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)

    def wait_committed(self, timeout: float = 400) -> None:
        """Until this boot's health checks passed and the slot was marked good."""
        self.wait_sh("systemctl is-active -q appliance-mark-good.service", timeout)

    def journal(self, *args: str) -> str:
        return self.card.journal(self.workdir, *args)


def first_boot_file(pubkey: str, admin_password: str | None = ADMIN_PASSWORD,
                    **extra: str) -> bytes:
    settings = {"admin_password": admin_password, **extra}
    lines = [*(f'{k} = "{v}"' for k, v in settings.items() if v is not None),
             "[ssh]", f'authorized_keys = ["{pubkey}"]']
    return ("\n".join(lines) + "\n").encode()


HOSTNAME = "cam-ci"


@pytest.fixture(scope="session")
def device(image: Image, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Device]:
    """One card for the session: its first boot (test_image_boot.py checks it), then the
    updates (test_image_update.py, in order). A card with room on /data for a bundle (the
    image has 128 MB there, grown to the card's end at the first boot)."""
    with booted(image, tmp_path_factory.mktemp("device"), live_timeout=400, grow_mb=3072,
                hostname=HOSTNAME) as dev:
        yield dev


@contextlib.contextmanager
def booted(image: Image, workdir: Path, live_timeout: float, grow_mb: int = 0,
           **setup: str) -> Iterator[Device]:
    """new_device() once /healthz answers (`live_after`), shut down cleanly at the end
    (which keeps the journal on /data for a post-mortem)."""
    dev = new_device(image, workdir, grow_mb, setup=setup)
    try:
        dev.live_after = dev.fw.wait_http("/healthz", timeout=live_timeout)
        yield dev
    finally:
        dev.fw.shutdown(timeout=60)


def new_device(image: Image, workdir: Path, grow_mb: int = 0, *,
               admin_password: str | None = ADMIN_PASSWORD, cable: bool = True,
               wifi_radios: int = 0, setup: dict[str, str] | None = None) -> Device:
    """A fresh card with a first-boot file (the admin password unless None, an SSH key,
    `setup`'s other settings), booting on a board with the Ethernet cable in or not and
    `wifi_radios` radios."""
    workdir.mkdir(parents=True, exist_ok=True)
    card = copy_card(image.disk, workdir / "card.img")
    if grow_mb:
        with card.path.open("r+b") as f:
            f.truncate(card.path.stat().st_size + (grow_mb << 20))
    key = workdir / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    pub = key.with_suffix(".pub").read_text().strip()
    settings = first_boot_file(pub, admin_password, **(setup or {}))
    card.write("bootsel", "appliance-setup.toml", settings)
    fw = Firmware(card, workdir, cable=cable, wifi_radios=wifi_radios)
    fw.start()
    return Device(fw, card, key, workdir)
