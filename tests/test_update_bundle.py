"""Bundles made by image/bundle.sh with the real `rauc`, from small synthetic slot images,
and checked by the real `rauc` against the keyring; RAUC's system handlers (pre-install:
board and version, post-install: the new boot slot's cmdline.txt) run against them."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.update.handlers import Refused, check_bundle, image_version
from appliance.update.tryboot import MtoolsStore

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"
COMPATIBLE = "appliance-ci-amd64"
CMDLINE = "root=PARTLABEL=system_a rauc.slot=a console=ttyS0 quiet\n"

for _tool in ("rauc", "mksquashfs", "mkfs.vfat", "mkfs.ext4", "mcopy", "openssl"):
    if shutil.which(_tool) is None:
        pytest.skip(f"{_tool} not installed (scripts/setup.sh --test)", allow_module_level=True)


def run(*argv: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=120,
                          check=False, env={**os.environ, **(env or {})})


@dataclass
class Bundles:
    dir: Path
    keyring: Path  # the development CA the device trusts
    other_keyring: Path  # another CA
    good: Path  # 1.2.0 for appliance-ci-amd64, signed by the development CA
    older: Path  # 1.1.0
    other_board: Path  # 1.3.0 for appliance-rpi
    other_ca: Path  # signed by the other CA
    unsigned: Path  # a squashfs of the same content, no signature
    boot_image: Path  # the boot slot's vfat image inside the bundles

    def system_conf(self, path: Path, **subst: str) -> Path:
        """The image's system.conf for COMPATIBLE (as image/build.sh makes it), with `subst`
        replacing text in it."""
        text = (ROOT / "image/rootfs/etc/rauc/system.conf").read_text().replace(
            "\nCOMPATIBLE_PLACEHOLDER\n", f"\ncompatible={COMPATIBLE}\n")
        for old, new in subst.items():
            text = text.replace(old, new)
        path.write_text(text)
        return path


def slot_images(d: Path) -> tuple[Path, Path]:
    """A boot.vfat with cmdline.txt, and a rootfs.ext4 with random content (squashfs must
    not shrink the bundle to nothing) and its version file."""
    boot = d / "boot.vfat"
    with open(boot, "wb") as f:
        f.truncate(8 << 20)
    assert run("mkfs.vfat", "-n", "BOOT", boot).returncode == 0
    MtoolsStore(str(boot)).write("cmdline.txt", CMDLINE)
    tree = d / "rootfs"
    (tree / "usr/lib").mkdir(parents=True)
    (tree / "usr/lib/appliance-version").write_text("1.2.0\n")
    (tree / "blob").write_bytes(os.urandom(256 << 10))
    rootfs = d / "rootfs.ext4"
    r = run("mkfs.ext4", "-q", "-d", tree, rootfs, "16M")
    assert r.returncode == 0, r.stderr
    return boot, rootfs


def bundle(d: Path, name: str, version: str, pki: Path, compatible: str = COMPATIBLE,
           images: tuple[Path, Path] | None = None) -> Path:
    boot, rootfs = images or (d / "boot.vfat", d / "rootfs.ext4")
    out = d / name
    r = run(ROOT / "image/bundle.sh", "--boot", boot, "--rootfs", rootfs, "--version", version,
            "--compatible", compatible, "--cert", pki / "signing.cert.pem",
            "--key", pki / "signing.key.pem", "--keyring", pki / "ca.cert.pem", "--out", out)
    assert r.returncode == 0, r.stderr
    return out


def make_bundles(d: Path) -> Bundles:
    for name, cn in (("dev", "appliance dev CA"), ("other", "someone else's CA")):
        r = run(ROOT / "image/rauc/dev-ca.sh", d / name, cn)
        assert r.returncode == 0, r.stderr
    boot, _ = slot_images(d)
    content = d / "unsigned-content"
    content.mkdir()
    for f in ("boot.vfat", "rootfs.ext4"):
        shutil.copy(d / f, content / f)
    (content / "manifest.raucm").write_text(
        f"[update]\ncompatible={COMPATIBLE}\nversion=1.2.0\n\n[image.rootfs]\n"
        "filename=rootfs.ext4\n\n[image.boot]\nfilename=boot.vfat\n")
    assert run("mksquashfs", content, d / "unsigned.raucb", "-quiet").returncode == 0
    return Bundles(
        dir=d, keyring=d / "dev/ca.cert.pem", other_keyring=d / "other/ca.cert.pem",
        good=bundle(d, "good.raucb", "1.2.0", d / "dev"),
        older=bundle(d, "older.raucb", "1.1.0", d / "dev"),
        other_board=bundle(d, "rpi.raucb", "1.3.0", d / "dev", compatible="appliance-rpi"),
        other_ca=bundle(d, "other-ca.raucb", "1.2.0", d / "other"),
        unsigned=d / "unsigned.raucb", boot_image=boot)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    return make_bundles(tmp_path_factory.mktemp("bundles"))


def info(b: Bundles, bundle: Path, keyring: Path | None = None) -> subprocess.CompletedProcess[str]:
    conf = b.system_conf(b.dir / "system.conf")
    return run("rauc", f"--conf={conf}", f"--keyring={keyring or b.keyring}", "info",
               "--output-format=shell", bundle)


def manifest_env(b: Bundles, bundle: Path) -> dict[str, str]:
    """RAUC_MF_* of a bundle, as `rauc info` reads them from its signed manifest."""
    r = info(b, bundle)
    assert r.returncode == 0, r.stderr
    return {k: v for k, _, v in (ln.partition("=") for ln in shlex.split(r.stdout)) if v}


def flipped(src: Path, dst: Path, offset: int) -> Path:
    data = bytearray(src.read_bytes())
    data[offset] ^= 0xFF
    dst.write_bytes(bytes(data))
    return dst


def test_keyring_accepts_only_bundles_signed_by_its_ca(bundles: Bundles) -> None:
    good = info(bundles, bundles.good)
    assert good.returncode == 0, good.stderr
    assert f"RAUC_MF_COMPATIBLE='{COMPATIBLE}'" in good.stdout
    assert "RAUC_MF_VERSION='1.2.0'" in good.stdout
    r = info(bundles, bundles.other_ca)
    assert r.returncode != 0 and "signature verification failed" in r.stderr
    # The other CA's keyring takes its own bundle, not ours: the keyring is what decides.
    assert info(bundles, bundles.other_ca, bundles.other_keyring).returncode == 0
    assert info(bundles, bundles.good, bundles.other_keyring).returncode != 0
    r = info(bundles, bundles.unsigned)
    assert r.returncode != 0 and "Signature size is 0" in r.stderr


def test_tampered_bundles_are_refused(bundles: Bundles, tmp_path: Path) -> None:
    size = bundles.good.stat().st_size
    # The signature and the manifest it covers (the bundle's end).
    sig = flipped(bundles.good, tmp_path / "sig.raucb", size - 200)
    assert info(bundles, sig).returncode != 0
    # The payload: `rauc info` reads only the signed manifest (verity root hash included);
    # reading the payload against that hash fails, as the device's dm-verity would.
    payload = flipped(bundles.good, tmp_path / "payload.raucb", 100_000)
    conf = bundles.system_conf(tmp_path / "system.conf")
    r = run("rauc", f"--conf={conf}", f"--keyring={bundles.keyring}", "extract", payload,
            tmp_path / "out-bad")
    assert r.returncode != 0 and "bundle payload is corrupted" in r.stderr
    r = run("rauc", f"--conf={conf}", f"--keyring={bundles.keyring}", "extract", bundles.good,
            tmp_path / "out-good")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out-good/boot.vfat").read_bytes() == bundles.boot_image.read_bytes()


def test_pre_install_refuses_older_and_other_boards(bundles: Bundles, tmp_path: Path) -> None:
    version_file = tmp_path / "appliance-version"
    version_file.write_text("1.2.0\n")
    running = image_version(version_file)
    assert running == "1.2.0" and image_version(tmp_path / "none") is None
    system = {"RAUC_SYSTEM_COMPATIBLE": COMPATIBLE}
    check_bundle({**system, **manifest_env(bundles, bundles.good)}, running)  # same: a repair
    with pytest.raises(Refused, match="1.1.0 is older than the running 1.2.0"):
        check_bundle({**system, **manifest_env(bundles, bundles.older)}, running)
    with pytest.raises(Refused, match="appliance-rpi"):
        check_bundle({**system, **manifest_env(bundles, bundles.other_board)}, running)
    with pytest.raises(Refused, match="no version"):
        check_bundle({**system, **manifest_env(bundles, bundles.good)}, None)
    # Compared as numbers, not as text ("1.10.0" < "1.9.7" as strings).
    check_bundle({**system, "RAUC_MF_COMPATIBLE": COMPATIBLE, "RAUC_MF_VERSION": "1.10.0"},
                 "1.9.7")
    with pytest.raises(Refused, match="not dotted numbers"):
        check_bundle({**system, "RAUC_MF_COMPATIBLE": COMPATIBLE, "RAUC_MF_VERSION": "2.0-rc1"},
                     "1.9.7")
    # As RAUC runs it: the console script, the system.conf RAUC names, exit 1 and a reason.
    conf = bundles.system_conf(tmp_path / "system.conf")
    r = run(BIN / "appliance-rauc-pre-install",
            env={"RAUC_SYSTEM_CONFIG": str(conf), **manifest_env(bundles, bundles.other_board)})
    assert r.returncode == 1 and "bundle is for 'appliance-rpi'" in r.stderr
    # RAUC 1.8 passes no RAUC_MF_* to handlers, only the mounted bundle: the manifest
    # there is read (the content directory bundle.sh packed stands for the mount).
    mounted = tmp_path / "bundle"
    mounted.mkdir()
    (mounted / "manifest.raucm").write_text(
        "[update]\ncompatible=appliance-rpi\nversion=1.3.0\n")
    r = run(BIN / "appliance-rauc-pre-install",
            env={"RAUC_SYSTEM_CONFIG": str(conf), "RAUC_BUNDLE_MOUNT_POINT": str(mounted)})
    assert r.returncode == 1 and "bundle is for 'appliance-rpi'" in r.stderr


def test_post_install_points_the_new_boot_slot_at_its_system(bundles: Bundles,
                                                             tmp_path: Path) -> None:
    boot_b = tmp_path / "boot_b.vfat"
    shutil.copy(bundles.boot_image, boot_b)  # what RAUC wrote into boot_b
    slots = [("rootfs.0", "rootfs", "/dev/disk/by-partlabel/system_a", "a", ""),
             ("rootfs.1", "rootfs", "/dev/disk/by-partlabel/system_b", "b", ""),
             ("boot.0", "boot", "/dev/disk/by-partlabel/boot_a", "", "rootfs.0"),
             ("boot.1", "boot", str(boot_b), "", "rootfs.1")]
    env = {"RAUC_SLOTS": "1 2 3 4", "RAUC_TARGET_SLOTS": "2 4"}
    for i, (name, cls, device, bootname, parent) in enumerate(slots, 1):
        env |= {f"RAUC_SLOT_NAME_{i}": name, f"RAUC_SLOT_CLASS_{i}": cls,
                f"RAUC_SLOT_DEVICE_{i}": device, f"RAUC_SLOT_BOOTNAME_{i}": bootname,
                f"RAUC_SLOT_PARENT_{i}": parent}
    r = run(BIN / "appliance-rauc-post-install", env=env)
    assert r.returncode == 0, r.stderr
    assert MtoolsStore(str(boot_b)).read("cmdline.txt") == \
        "root=PARTLABEL=system_b rauc.slot=b console=ttyS0 quiet\n"
    # A boot slot without a parent that has a bootname is an error, not a guess.
    r = run(BIN / "appliance-rauc-post-install", env={**env, "RAUC_SLOT_PARENT_4": ""})
    assert r.returncode == 1 and "no parent with a bootname" in r.stderr
