"""A booted ci-amd64 or ci-arm64 image in QEMU, with this module playing the Raspberry Pi
firmware.

On a Pi 4/5 the firmware reads `autoboot.txt` on partition 1 and boots the partition named
by `[all] boot_partition`, or, once, the `[tryboot]` one after `reboot "0 tryboot"`. The
PC has no such firmware, so `Firmware` does the same from outside the guest: before each
boot it reads autoboot.txt from the card's bootsel partition, consumes the one-shot flag
file `tryboot.flag` there (the guest's stand-in for the reboot argument, written by
appliance/update/tryboot.py), and boots the kernel, initrd and cmdline.txt of the chosen
vfat partition. QEMU runs with -no-reboot, so a guest reboot ends the process and the loop
boots again, as a board would. The card's architecture (the GPT type of its root slots)
picks the emulated machine: a PC, or the aarch64 `virt` board for ci-arm64.
"""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.daemon_proc import free_port

SECTOR = 512
NETDEV = "eth"  # QEMU's name for the board's Ethernet (its user-network back end)


@dataclass(frozen=True)
class Machine:
    """What differs between the architectures' QEMU; a boot is otherwise the same."""

    qemu: str
    uname: str  # platform.machine() of a host that can run it with KVM
    board: tuple[str, ...]
    cpu: str  # under TCG


MACHINES = {
    "amd64": Machine("qemu-system-x86_64", "x86_64", (), "max"),
    # The Pi 4's core; under TCG also cheaper than "max", whose pointer authentication is
    # slow to emulate.
    "arm64": Machine("qemu-system-aarch64", "aarch64", ("-M", "virt"), "cortex-a72"),
}
# GPT type of the root slots, "Linux root (arch)", as image/build.sh sets it.
ROOT_TYPES = {
    "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709": "amd64",
    "B921B045-1DF0-41C3-AF44-4C6F280D3FAE": "arm64",
}


@dataclass(frozen=True)
class Partition:
    number: int
    label: str
    type: str  # GPT type UUID
    offset: int  # bytes
    size: int  # bytes


class Card:
    """The SD card: a raw disk image with a GPT, read and written with mtools."""

    def __init__(self, path: Path) -> None:
        self.path = path
        table = json.loads(subprocess.run(
            ["sfdisk", "--json", str(path)], check=True, capture_output=True, text=True,
        ).stdout)["partitiontable"]
        self.partitions = [
            Partition(int(p["node"].rsplit("img", 1)[1]), p.get("name", ""), p["type"].upper(),
                      p["start"] * SECTOR, p["size"] * SECTOR)
            for p in table["partitions"]
        ]

    def partition(self, key: int | str) -> Partition:
        for p in self.partitions:
            if key in (p.number, p.label):
                return p
        raise KeyError(f"no partition {key!r} on {self.path}")

    @property
    def arch(self) -> str:
        """The Debian architecture the card's system is built for."""
        return ROOT_TYPES[self.partition("system_a").type]

    def _img(self, key: int | str) -> str:
        return f"{self.path}@@{self.partition(key).offset}"

    def read(self, key: int | str, name: str) -> bytes | None:
        out = subprocess.run(["mtype", "-i", self._img(key), f"::{name}"], capture_output=True)
        return out.stdout if out.returncode == 0 else None

    def write(self, key: int | str, name: str, data: bytes) -> None:
        with tempfile.NamedTemporaryFile() as f:
            f.write(data)
            f.flush()
            subprocess.run(["mcopy", "-o", "-i", self._img(key), f.name, f"::{name}"],
                           check=True, capture_output=True)

    def delete(self, key: int | str, name: str) -> bool:
        return subprocess.run(["mdel", "-i", self._img(key), f"::{name}"],
                              capture_output=True).returncode == 0

    def extract(self, key: int | str, name: str, dest: Path) -> None:
        subprocess.run(["mcopy", "-o", "-n", "-i", self._img(key), f"::{name}", str(dest)],
                       check=True, capture_output=True)


    def dump(self, key: int | str, dest: Path) -> Path:
        """A copy of one partition as a file (for debugfs, mtools or hashing)."""
        part = self.partition(key)
        with self.path.open("rb") as src, dest.open("wb") as out:
            src.seek(part.offset)
            left = part.size
            while left:
                chunk = src.read(min(left, 1 << 22))
                out.write(chunk)
                left -= len(chunk)
        return dest

    def journal(self, workdir: Path, *args: str) -> str:
        """The guest's persistent journal, read from the data partition (no boot needed)."""
        data = self.dump("data", workdir / "data.ext4")
        out = workdir / "journal-dump"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        subprocess.run(["debugfs", "-R", f"rdump /journal {out}", str(data)], check=True,
                       capture_output=True)
        data.unlink()
        return subprocess.run(["journalctl", "-D", str(out / "journal"), "--no-pager",
                               "-o", "short-monotonic", *args],
                              capture_output=True, text=True).stdout


def autoboot_choice(autoboot: bytes, tryboot: bool) -> int:
    """The partition the Pi firmware boots for this autoboot.txt, as it documents:
    `[all] boot_partition`, or `[tryboot] boot_partition` on a tryboot reboot."""
    parser = configparser.ConfigParser()
    parser.read_string(autoboot.decode())
    section = "tryboot" if tryboot and parser.has_option("tryboot", "boot_partition") else "all"
    return parser.getint(section, "boot_partition")


@dataclass
class Boot:
    partition: int
    tryboot: bool
    cmdline: str
    started: float
    ended: float | None = None


def accel(machine: Machine) -> list[str]:
    """TCG unless APPLIANCE_QEMU_KVM=1 on a host of the guest's architecture: a /dev/kvm
    that opens is no proof nested KVM works (on this project's CI machines QEMU with KVM
    hangs before the kernel prints a line)."""
    if os.environ.get("APPLIANCE_QEMU_KVM") == "1" and platform.machine() == machine.uname:
        return ["-enable-kvm", "-cpu", "host"]
    return ["-cpu", machine.cpu]


@dataclass
class Firmware:
    """Boots `card` in QEMU again and again until stop(); `boots` is the history.

    The board has an Ethernet port (QEMU's user network, `ports` forwarded to it), its
    cable plugged in while `cable` (set_cable() pulls or plugs it), and `wifi_radios`
    Wi-Fi radios (mac80211_hwsim's, which hear each other: wlan0, wlan1, ...)."""

    card: Card
    workdir: Path
    memory_mb: int = 1536
    ports: dict[int, int] = field(default_factory=dict)  # guest port -> host port
    cable: bool = True
    wifi_radios: int = 0
    boots: list[Boot] = field(default_factory=list)
    failure: str | None = None
    _proc: subprocess.Popen[bytes] | None = None
    _stopping: bool = False
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        for guest in (22, 80, 443):
            self.ports.setdefault(guest, free_port())

    @property
    def qmp_path(self) -> Path:
        return self.workdir / "qmp.sock"

    @property
    def serial_log(self) -> Path:
        return self.workdir / "serial.log"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="firmware", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stopping:
            tryboot = self.card.delete("bootsel", "tryboot.flag")
            autoboot = self.card.read("bootsel", "autoboot.txt")
            if autoboot is None:
                raise RuntimeError("no autoboot.txt on the bootsel partition")
            number = autoboot_choice(autoboot, tryboot)
            kernel, initrd = self.workdir / "vmlinuz", self.workdir / "initrd.img"
            self.card.extract(number, "vmlinuz", kernel)
            self.card.extract(number, "initrd.img", initrd)
            cmdline = (self.card.read(number, "cmdline.txt") or b"").decode().strip()
            if self.wifi_radios:
                # systemd-modules-load loads it early; modprobe takes the option from here.
                cmdline += (" modules-load=mac80211_hwsim"
                            f" mac80211_hwsim.radios={self.wifi_radios}")
            boot = Boot(number, tryboot, cmdline, time.monotonic())
            self.boots.append(boot)
            machine = MACHINES[self.card.arch]
            fwd = ",".join(f"hostfwd=tcp:127.0.0.1:{h}-:{g}" for g, h in self.ports.items())
            with self.serial_log.open("ab") as log:
                log.write(f"\n==== firmware: boot partition {number}"
                          f"{' (tryboot)' if tryboot else ''}: {cmdline}\n".encode())
                log.flush()
                self._proc = subprocess.Popen(
                    [machine.qemu, *machine.board, *accel(machine),
                     "-m", str(self.memory_mb), "-smp", "2",
                     "-no-reboot", "-nographic", "-monitor", "none", "-serial", "stdio",
                     "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
                     "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline,
                     "-drive", f"file={self.card.path},format=raw,if=virtio,cache=unsafe",
                     "-netdev", f"user,id={NETDEV},{fwd}",
                     "-device", f"virtio-net-pci,netdev={NETDEV}"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                )
                if not self.cable:
                    # Long before the guest's kernel looks for a carrier (seconds in).
                    self._qmp_when_up({"execute": "set_link",
                                       "arguments": {"name": NETDEV, "up": False}})
                code = self._proc.wait()
            boot.ended = time.monotonic()
            if boot.ended - boot.started < 5 and not self._stopping:
                self.failure = f"QEMU exited {code} at once; see {self.serial_log}"
                return

    def kill(self) -> None:
        """Pull the power: the loop boots again, as a board would when power returns."""
        if self._proc and self._proc.poll() is None:
            self._proc.kill()

    def shutdown(self, timeout: float = 90) -> None:
        """Press the power button (ACPI): systemd shuts down cleanly, the journal is
        flushed to /data, and the loop ends. Pulls the power if that takes too long."""
        self._stopping = True
        proc = self._proc
        if proc and proc.poll() is None:
            with contextlib.suppress(OSError):
                self._qmp({"execute": "system_powerdown"})
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        self.stop()

    def set_cable(self, plugged: bool) -> None:
        """Plug or pull the Ethernet cable (the guest sees its carrier come or go)."""
        self.cable = plugged
        self._qmp({"execute": "set_link", "arguments": {"name": NETDEV, "up": plugged}})

    def _qmp(self, *commands: dict[str, object]) -> None:
        with socket.socket(socket.AF_UNIX) as qmp:
            qmp.settimeout(5)
            qmp.connect(str(self.qmp_path))
            qmp.recv(4096)  # greeting
            for cmd in ({"execute": "qmp_capabilities"}, *commands):
                qmp.sendall(json.dumps(cmd).encode() + b"\n")
                # The reply, maybe after events; nothing if QEMU quit (a power-down).
                for line in qmp.recv(65536).decode().splitlines():
                    if "error" in (reply := json.loads(line)):
                        raise RuntimeError(f"QMP {cmd}: {reply['error']}")

    def _qmp_when_up(self, command: dict[str, object]) -> None:
        """`command` as soon as the QEMU just started listens on its QMP socket."""
        deadline = time.monotonic() + 10
        while True:
            try:
                return self._qmp(command)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        self._stopping = True
        self.kill()
        if self._thread:
            self._thread.join(timeout=30)

    def url(self, path: str) -> str:
        """The guest's plain-HTTP port (nginx serves /healthz and /live/ there)."""
        return f"http://127.0.0.1:{self.ports[80]}{path}"

    def wait_boots(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.boots) < count:
            self._check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.boots)} boots after {timeout} s, expected {count}")
            time.sleep(0.5)

    def _check(self) -> None:
        if self.failure:
            raise RuntimeError(self.failure)

    def wait_http(self, path: str, timeout: float) -> float:
        """Seconds from the current boot's start until GET path gives 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check()
            with contextlib.suppress(OSError, urllib.error.URLError), \
                    urllib.request.urlopen(self.url(path), timeout=3) as r:
                if r.status == 200:
                    return time.monotonic() - self.boots[-1].started
            time.sleep(0.5)
        raise TimeoutError(f"{path} did not answer within {timeout} s; serial log:\n"
                           + self.serial_log.read_text(errors="replace")[-4000:])


def ssh(fw: Firmware, key: Path, command: str, timeout: float = 60,
        stdin: str | None = None) -> str:
    """Run a command in the guest as root over SSH (key installed by the first-boot file),
    `stdin` its input."""
    out = subprocess.run(
        ["ssh", "-i", str(key), "-p", str(fw.ports[22]), "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
         "-o", "ConnectTimeout=5", "root@127.0.0.1", command],
        capture_output=True, text=True, timeout=timeout, input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
    )
    if out.returncode != 0:
        raise RuntimeError(f"ssh {command!r} exited {out.returncode}: "
                           f"{out.stdout.strip()} {out.stderr.strip()}")
    return out.stdout


def copy_card(src: Path, dest: Path) -> Card:
    """A fresh card per test: a sparse copy of the built image."""
    subprocess.run(["cp", "--sparse=always", "--reflink=auto", str(src), str(dest)], check=True)
    return Card(dest)


def have_tools(arch: str = "amd64") -> str | None:
    """Why the image tests of this architecture cannot run here, or None."""
    for tool in (MACHINES[arch].qemu, "mtype", "sfdisk", "mmdebstrap", "genimage", "ssh"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup.sh --test installs it)"
    if os.geteuid() != 0:
        return "building the image needs root"
    return None
