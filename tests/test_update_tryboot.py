"""The tryboot backend (appliance/update/tryboot.py) on a real vfat image (mkfs.vfat, mtools):
the autoboot.txt transitions of an update that is kept, one that fails its trial boot, and
the requests RAUC may make that must be refused."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.update.tryboot import (
    AUTOBOOT,
    TRYBOOT_FLAG,
    Autoboot,
    Backend,
    BootError,
    DirStore,
    MtoolsStore,
    booted_slot,
    reboot_argv,
)

for _tool in ("mkfs.vfat", "mcopy", "mtype"):
    if shutil.which(_tool) is None:
        pytest.skip(f"{_tool} not installed (scripts/setup.sh --test)", allow_module_level=True)


def vfat_image(path: Path, size_mb: int = 8) -> Path:
    with open(path, "wb") as f:
        f.truncate(size_mb << 20)
    subprocess.run(["mkfs.vfat", "-n", "BOOTSEL", str(path)], check=True, capture_output=True)
    return path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance.update.tryboot", *args],
                          capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture
def bootsel(tmp_path: Path) -> str:
    """A boot selection partition image as the image build leaves it: slot a committed."""
    image = str(vfat_image(tmp_path / "bootsel.vfat"))
    r = cli("--image", image, "init", "a")
    assert r.returncode == 0, r.stderr
    return image


def sections(store: MtoolsStore) -> dict[str, str]:
    """[section] -> its lines, as the firmware would read the file."""
    text = store.read(AUTOBOOT)
    assert text is not None
    out: dict[str, str] = {}
    name = ""
    for line in text.splitlines():
        if line.startswith("["):
            name = line.strip("[]")
        else:
            out[name] = out.get(name, "") + line + "\n"
    return out


def test_update_kept_after_a_good_trial_boot(bootsel: str) -> None:
    store = MtoolsStore(bootsel)
    # Nothing armed: a tryboot would start the committed slot too.
    assert sections(store) == {"all": "tryboot_a_b=1\nboot_partition=2\n",
                               "tryboot": "boot_partition=2\n"}
    in_a = Backend(store, booted="a")
    assert in_a.get_primary() == "a" and not in_a.armed(in_a.load())
    assert (in_a.get_state("a"), in_a.get_state("b")) == ("good", "bad")

    # RAUC's install: target marked bad, written, then made primary (armed).
    in_a.set_state("b", "bad")
    assert Autoboot.parse(store.read(AUTOBOOT) or "") == Autoboot("a", "a")
    in_a.set_primary("b")
    assert sections(store) == {"all": "tryboot_a_b=1\nboot_partition=2\n",
                               "tryboot": "boot_partition=3\n"}
    assert in_a.get_primary() == "b" and in_a.armed(in_a.load())

    # The reboot: a trial boot. Off a Pi, tryboot.flag asks the firmware stand-in for it.
    assert store.read(TRYBOOT_FLAG) is None
    assert reboot_argv(in_a, pi=False) == ["systemctl", "reboot"]
    assert store.read(TRYBOOT_FLAG) == ""
    store.remove(TRYBOOT_FLAG)
    assert reboot_argv(in_a, pi=True) == ["systemctl", "reboot", "0 tryboot"]
    assert store.read(TRYBOOT_FLAG) is None  # the Pi's firmware keeps its own flag
    assert in_a.load().partition(tryboot=True) == 3

    # In the trial boot of b: a plain reboot would still start a; mark-good commits b.
    in_b = Backend(store, booted="b")
    assert in_b.get_primary() == "a" and in_b.get_state("b") == "bad"
    in_b.set_state("b", "good")
    assert sections(store)["all"] == "tryboot_a_b=1\nboot_partition=3\n"
    assert in_b.get_primary() == "b" and in_b.get_state("b") == "good"
    assert in_b.get_state("a") == "bad"  # the firmware no longer starts a on its own
    assert reboot_argv(in_b, pi=False) == ["systemctl", "reboot"]
    assert store.read(TRYBOOT_FLAG) is None  # nothing armed: a plain reboot


def test_failed_trial_boot_returns_to_the_old_slot(bootsel: str) -> None:
    store = MtoolsStore(bootsel)
    Backend(store, booted="a").set_primary("b")
    ab = Backend(store, booted="b").load()
    # The trial boot of b fails its health checks (no mark-good) and reboots plainly.
    assert ab.partition(tryboot=False) == 2
    in_a = Backend(store, booted="a")
    in_a.set_state("a", "good")  # appliance-mark-good.service in the old slot: disarms
    assert Autoboot.parse(store.read(AUTOBOOT) or "") == Autoboot("a", "a")
    assert in_a.get_primary() == "a" and not in_a.armed(in_a.load())


def test_refused_requests(bootsel: str) -> None:
    store = MtoolsStore(bootsel)
    in_a = Backend(store, booted="a")
    with pytest.raises(BootError, match="committed"):
        in_a.set_state("a", "bad")
    in_a.set_primary("b")
    in_b = Backend(store, booted="b")
    with pytest.raises(BootError, match="committed"):
        in_b.set_state("a", "bad")  # an install during a trial boot would overwrite a
    with pytest.raises(BootError, match="good or bad"):
        in_b.set_state("b", "fine")
    before = store.read(AUTOBOOT)
    in_a.set_state("b", "good")  # neither committed nor running: commits nothing
    assert store.read(AUTOBOOT) == before
    with pytest.raises(BootError, match="names no slot"):
        Autoboot.parse("[all]\nboot_partition=5\n")


def test_cli_as_rauc_calls_it(tmp_path: Path, bootsel: str) -> None:
    """RAUC runs `<backend> get-primary` etc.; errors are a non-zero exit and a message."""
    r = cli("--image", bootsel, "--booted", "a", "set-primary", "b")
    assert r.returncode == 0, r.stderr
    assert cli("--image", bootsel, "--booted", "a", "get-primary").stdout == "b\n"
    assert cli("--image", bootsel, "--booted", "a", "get-state", "b").stdout == "bad\n"
    # The QEMU firmware stand-in: one trial boot of b per flag, then a again.
    MtoolsStore(bootsel).write(TRYBOOT_FLAG, "")
    assert cli("--image", bootsel, "firmware").stdout == "3\n"
    assert cli("--image", bootsel, "firmware").stdout == "2\n"
    r = cli("--image", bootsel, "--booted", "a", "set-state", "a", "bad")
    assert r.returncode == 1 and "cannot be marked bad" in r.stderr
    r = cli("--image", bootsel, "--booted", "a", "get-state", "c")
    assert r.returncode == 1 and "unknown slot" in r.stderr
    assert cli("--image", bootsel, "--booted", "b", "get-current").stdout == "b\n"
    # The device's mounted partition: a directory, files replaced whole.
    d = tmp_path / "select"
    d.mkdir()
    assert cli("--bootsel", str(d), "init", "b").returncode == 0
    assert Autoboot.parse((d / AUTOBOOT).read_text()) == Autoboot("b", "b")
    assert [p.name for p in d.iterdir()] == [AUTOBOOT]  # no temp file left behind
    assert Backend(DirStore(d), booted="b").get_primary() == "b"
    # Later changes overwrite the file in place (same size, same inode): on vfat a rename
    # rewrites the FAT and the directory entry apart, which a power cut can split.
    inode = (d / AUTOBOOT).stat().st_ino
    backend = Backend(DirStore(d), booted="b")
    backend.set_primary("a")
    assert Autoboot.parse((d / AUTOBOOT).read_text()) == Autoboot("b", "a")
    assert (d / AUTOBOOT).stat().st_ino == inode


def test_booted_slot_from_the_kernel_command_line() -> None:
    assert booted_slot("console=ttyS0 root=PARTLABEL=system_b rauc.slot=b quiet") == "b"
    assert booted_slot("console=ttyS0") is None
