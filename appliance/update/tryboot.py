"""RAUC's custom bootloader backend for the Raspberry Pi firmware's tryboot, and the reboot.

The boot selection partition (vfat, mounted at /boot/select) holds `autoboot.txt`:

    [all]
    tryboot_a_b=1
    boot_partition=2        <- the committed slot: what every plain boot starts
    [tryboot]
    boot_partition=3        <- what one boot started with `reboot "0 tryboot"` starts

Slot `a` boots from partition 2 (boot_a), `b` from 3 (boot_b); the booted slot is named
on the kernel command line (`rauc.slot=a|b`). That file is the whole state, so nothing
can disagree with what the firmware will do:

- committed slot: [all] boot_partition. Its state is "good"; the other slot's is "bad"
  (the firmware never boots it on its own).
- armed: [tryboot] names another slot than [all] while the committed slot runs; the
  next reboot through `reboot()` is then a trial boot of it.
- RAUC's install marks the target bad (disarms: a half-written slot is never tried),
  writes it, then sets it primary (arms). The trial boot's health checks pass ->
  `rauc status mark-good` -> set-state <booted> good -> [all] names it (committed).
  They fail, or it hangs, or power goes -> the next boot is a plain one: the old slot.

RAUC calls this as `appliance-boot-backend get-primary | set-primary <slot> | get-state
<slot> | set-state <slot> good|bad | get-current` ([handlers] bootloader-custom-backend).
Further commands for the installer, the image build and the QEMU firmware stand-in:
`init <slot>`, `reboot`, `firmware`. On a machine without the Pi firmware (ci-amd64) the
one-shot tryboot request is the file `tryboot.flag` beside autoboot.txt; `firmware` does
what the Pi firmware does at power-on: prints the partition to boot, and consumes the flag.

Standard library only: RAUC runs this several times per install.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

AUTOBOOT = "autoboot.txt"
TRYBOOT_FLAG = "tryboot.flag"
PARTITIONS = {"a": 2, "b": 3}  # bootname -> partition number of its boot slot
SLOTS = {n: s for s, n in PARTITIONS.items()}
DEFAULT_BOOTSEL = "/boot/select"


class BootError(Exception):
    """A request the boot selection cannot honour; RAUC sees a non-zero exit."""


class Store(Protocol):
    """Files at the top of the boot selection partition."""

    def read(self, name: str) -> str | None: ...

    def write(self, name: str, text: str) -> None: ...

    def remove(self, name: str) -> None: ...


class DirStore:
    """The partition mounted (the device). A file of the same size is overwritten in place
    (autoboot.txt always is: Autoboot.render has one length): only its one data sector
    changes. A rename or truncate on vfat rewrites the FAT and the directory entry
    separately, and a power cut between the two left autoboot.txt pointing at a freed
    cluster (the QEMU power-cut test): a board that cannot read it does not boot. Other
    files are replaced by an fsynced rename."""

    def __init__(self, root: Path):
        self.root = root

    def read(self, name: str) -> str | None:
        try:
            return (self.root / name).read_text()
        except FileNotFoundError:
            return None

    def write(self, name: str, text: str) -> None:
        data = text.encode()
        with contextlib.suppress(FileNotFoundError), open(self.root / name, "r+b") as f:
            if os.fstat(f.fileno()).st_size == len(data):
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
                return
        tmp = self.root / f".{name}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / name)
        _fsync_dir(self.root)

    def remove(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)
        _fsync_dir(self.root)


class MtoolsStore:
    """A vfat image or an unmounted partition, through mtools (no mount, no root): the
    image build writes the first autoboot.txt this way, and the post-install handler a
    new boot slot's cmdline.txt. `image` may carry mtools' "@@offset"."""

    def __init__(self, image: str):
        self.image = image

    def _run(self, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}  # images without a BIOS geometry
        return subprocess.run([*argv], input=stdin, capture_output=True, text=True, env=env,
                              check=False)

    def read(self, name: str) -> str | None:
        r = self._run("mtype", "-i", self.image, f"::{name}")
        if r.returncode != 0:
            if "not found" in r.stderr.lower():
                return None
            raise BootError(f"mtype {self.image} ::{name}: {r.stderr.strip()}")
        return r.stdout

    def write(self, name: str, text: str) -> None:
        r = self._run("mcopy", "-o", "-i", self.image, "-", f"::{name}", stdin=text)
        if r.returncode != 0:
            raise BootError(f"mcopy {self.image} ::{name}: {r.stderr.strip()}")

    def remove(self, name: str) -> None:
        r = self._run("mdel", "-i", self.image, f"::{name}")
        if r.returncode != 0 and "not found" not in r.stderr.lower():
            raise BootError(f"mdel {self.image} ::{name}: {r.stderr.strip()}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Autoboot:
    committed: str  # the slot of [all] boot_partition
    tryboot: str  # the slot of [tryboot] boot_partition

    @classmethod
    def parse(cls, text: str) -> Autoboot:
        parts: dict[str, int] = {}
        section = "all"
        for raw in text.splitlines():
            line = raw.split("#", 1)[0].strip()
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1].strip().lower()
            elif line.partition("=")[0].strip() == "boot_partition":
                value = line.partition("=")[2].strip()
                if not value.isdigit() or int(value) not in SLOTS:
                    raise BootError(f"{AUTOBOOT}: [{section}] boot_partition={value} names "
                                    f"no slot (partitions {sorted(SLOTS)})")
                parts[section] = int(value)
        if "all" not in parts:
            raise BootError(f"{AUTOBOOT}: no [all] boot_partition")
        committed = SLOTS[parts["all"]]
        return cls(committed, SLOTS[parts.get("tryboot", parts["all"])])

    def render(self) -> str:
        return (f"[all]\ntryboot_a_b=1\nboot_partition={PARTITIONS[self.committed]}\n"
                f"[tryboot]\nboot_partition={PARTITIONS[self.tryboot]}\n")

    def partition(self, tryboot: bool) -> int:
        """The partition the firmware boots: the tried one only on a tryboot reboot."""
        return PARTITIONS[self.tryboot if tryboot else self.committed]


def booted_slot(cmdline: str | None = None) -> str | None:
    """The slot named by `rauc.slot=` on the kernel command line."""
    if cmdline is None:
        try:
            cmdline = Path("/proc/cmdline").read_text()
        except OSError:
            return None
    for word in cmdline.split():
        if word.startswith("rauc.slot="):
            return word.partition("=")[2]
    return None


def _slot(name: str) -> str:
    if name not in PARTITIONS:
        raise BootError(f"unknown slot {name!r} (slots: {', '.join(PARTITIONS)})")
    return name


class Backend:
    """The transitions of the module docstring, on one Store."""

    def __init__(self, store: Store, booted: str | None):
        self.store, self.booted = store, booted

    def load(self) -> Autoboot:
        text = self.store.read(AUTOBOOT)
        if text is None:
            raise BootError(f"no {AUTOBOOT} on the boot selection partition")
        return Autoboot.parse(text)

    def _save(self, ab: Autoboot) -> None:
        if ab != self.load():
            self.store.write(AUTOBOOT, ab.render())

    def armed(self, ab: Autoboot) -> bool:
        return ab.tryboot != ab.committed and self.booted in (None, ab.committed)

    def get_primary(self) -> str:
        ab = self.load()
        return ab.tryboot if self.armed(ab) else ab.committed

    def set_primary(self, slot: str) -> None:
        ab = self.load()
        if slot == self.booted or slot == ab.committed:
            self._save(Autoboot(slot, slot))  # commit the running trial, or disarm
        else:
            self._save(Autoboot(ab.committed, slot))  # arm: the next tryboot tries it

    def get_state(self, slot: str) -> str:
        return "good" if slot == self.load().committed else "bad"

    def set_state(self, slot: str, state: str) -> None:
        ab = self.load()
        if state == "good":
            if slot == ab.committed or slot == self.booted:
                self._save(Autoboot(slot, slot))  # mark-good in a trial boot commits it
            # "good" for a slot neither committed nor running changes nothing the
            # firmware does: only a booted, checked slot gets committed.
        elif state == "bad":
            if slot == ab.committed:
                raise BootError(f"slot {slot} is the committed one: it cannot be marked "
                                "bad (finish or end the trial boot first)")
            if slot == ab.tryboot:
                self._save(Autoboot(ab.committed, ab.committed))  # never try it
        else:
            raise BootError(f"state must be good or bad, not {state!r}")

    def init(self, slot: str) -> None:
        """The image build's first autoboot.txt: `slot` committed, nothing armed."""
        self.store.write(AUTOBOOT, Autoboot(slot, slot).render())


def is_raspberry_pi() -> bool:
    try:
        return "Raspberry Pi" in Path("/proc/device-tree/model").read_text()
    except OSError:
        return False


def firmware_boot(store: Store) -> int:
    """The QEMU tests' stand-in for the Pi firmware at power-on: the partition to boot, a
    tryboot at most once (the flag is consumed)."""
    tryboot = store.read(TRYBOOT_FLAG) is not None
    if tryboot:
        store.remove(TRYBOOT_FLAG)
    text = store.read(AUTOBOOT)
    if text is None:
        raise BootError(f"no {AUTOBOOT} on the boot selection partition")
    return Autoboot.parse(text).partition(tryboot)


def reboot_argv(backend: Backend, pi: bool) -> list[str]:
    """The reboot that ends an install: a trial boot when a slot is armed. Elsewhere
    than on a Pi the trial is asked for with tryboot.flag (written here)."""
    if not backend.armed(backend.load()):
        return ["systemctl", "reboot"]
    if pi:
        return ["systemctl", "reboot", "0 tryboot"]
    backend.store.write(TRYBOOT_FLAG, "")
    return ["systemctl", "reboot"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="appliance-boot-backend", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--bootsel", type=Path,
                       help=f"the mounted partition (default $APPLIANCE_BOOTSEL or "
                            f"{DEFAULT_BOOTSEL})")
    where.add_argument("--image", help="a vfat image or partition, through mtools")
    p.add_argument("--booted", help="the booted slot (default: rauc.slot= of /proc/cmdline)")
    p.add_argument("command", choices=["get-primary", "set-primary", "get-state", "set-state",
                                       "get-current", "init", "reboot", "firmware"])
    p.add_argument("args", nargs="*")
    a = p.parse_args(argv)
    store: Store = (MtoolsStore(a.image) if a.image else DirStore(
        a.bootsel or Path(os.environ.get("APPLIANCE_BOOTSEL", DEFAULT_BOOTSEL))))
    backend = Backend(store, a.booted or booted_slot())
    want = {"set-primary": 1, "get-state": 1, "set-state": 2, "init": 1}.get(a.command, 0)
    if len(a.args) != want:
        p.error(f"{a.command} takes {want} argument(s)")
    try:
        if a.command == "get-primary":
            print(backend.get_primary())
        elif a.command == "set-primary":
            backend.set_primary(_slot(a.args[0]))
        elif a.command == "get-state":
            print(backend.get_state(_slot(a.args[0])))
        elif a.command == "set-state":
            backend.set_state(_slot(a.args[0]), a.args[1])
        elif a.command == "get-current":
            if backend.booted is None:
                raise BootError("no rauc.slot= on the kernel command line")
            print(backend.booted)
        elif a.command == "init":
            backend.init(_slot(a.args[0]))
        elif a.command == "firmware":
            print(firmware_boot(store))
        else:
            argv_ = reboot_argv(backend, is_raspberry_pi())
            return subprocess.run(argv_, check=False).returncode
    except BootError as exc:
        print(f"appliance-boot-backend: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
