"""The setup access point, through NetworkManager's nmcli (argv lists, never a shell).

SSID "Appliance-XXXX", XXXX from the board's serial number (else a network MAC); WPA2
with a password of this device's own, made once at random and kept in the state
directory (hotspot-password, mode 0600) for the label or the installer to read. The
password never goes on a command line: nmcli reads it from a 0600 file given as
`passwd-file` when the connection comes up, and the connection itself is added with
psk-flags 2 ("not saved"), so NetworkManager does not store it either.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from appliance.config.load import save_atomic

CONNECTION = "appliance-setup"
PASSWORD_FILE = "hotspot-password"
# No 0/O, 1/l/I: read off a label and typed on a phone.
_ALPHABET = "23456789abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ"
_HEX = re.compile(r"[0-9a-fA-F]+")
NMCLI_TIMEOUT_S = 60


class HotspotError(Exception):
    """nmcli refused or failed; the message carries the last lines it wrote."""


def nmcli_path() -> str | None:
    """nmcli on PATH, None where NetworkManager's client is not installed."""
    return shutil.which("nmcli")


def device_suffix(root: Path = Path("/")) -> str:
    """Four upper-case hex digits naming this device: the end of the SoC serial number
    (device tree or /proc/cpuinfo), else of a network interface's MAC address."""
    for rel in ("proc/device-tree/serial-number", "sys/firmware/devicetree/base/serial-number"):
        with contextlib.suppress(OSError):
            serial = (root / rel).read_bytes().strip(b"\0\n ").decode("ascii", "replace")
            if _HEX.fullmatch(serial) and int(serial, 16):
                return serial[-4:].upper()
    with contextlib.suppress(OSError):
        for line in (root / "proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            value = value.strip()
            if key.strip() == "Serial" and _HEX.fullmatch(value) and int(value, 16):
                return value[-4:].upper()
    net = root / "sys/class/net"
    names = sorted(p.name for p in net.iterdir()) if net.is_dir() else []
    for name in sorted(names, key=lambda n: (not n.startswith(("wlan", "eth", "en")), n)):
        with contextlib.suppress(OSError):
            mac = (net / name / "address").read_text().strip().replace(":", "")
            if _HEX.fullmatch(mac) and int(mac, 16):
                return mac[-4:].upper()
    return "0000"


def ssid(root: Path = Path("/")) -> str:
    return f"Appliance-{device_suffix(root)}"


def hotspot_password(state_dir: Path) -> str:
    """This device's access point password, made on first use."""
    path = state_dir / PASSWORD_FILE
    with contextlib.suppress(FileNotFoundError):
        password = path.read_text(encoding="utf-8").strip()
        if len(password) >= 8:
            return password
    password = "".join(secrets.choice(_ALPHABET) for _ in range(12))
    save_atomic(path, password + "\n", mode=0o600)
    return password


def _nmcli(nmcli: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run([nmcli, *args], capture_output=True, text=True,
                              timeout=NMCLI_TIMEOUT_S, stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HotspotError(f"nmcli {args[0]}: {exc}") from None
    if check and done.returncode != 0:
        tail = " / ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise HotspotError(f"nmcli {' '.join(args[:2])} failed ({done.returncode}): {tail}")
    return done


def start_access_point(nmcli: str, interface: str, name: str, password: str,
                       private_dir: Path) -> None:
    """Bring up the access point `name` on `interface` (NetworkManager shares its
    connection to clients: DHCP and NAT, the device at 10.42.0.1)."""
    # Start from a clean profile: a previous one may name another SSID or interface.
    _nmcli(nmcli, "connection", "delete", "id", CONNECTION, check=False)
    _nmcli(nmcli, "connection", "add", "type", "wifi", "ifname", interface,
           "con-name", CONNECTION, "autoconnect", "no", "ssid", name,
           "802-11-wireless.mode", "ap", "802-11-wireless.band", "bg",
           "ipv4.method", "shared", "ipv6.method", "ignore",
           # WPA2-PSK with CCMP only; PMF off, which the Pi's brcmfmac needs in AP mode.
           "wifi-sec.key-mgmt", "wpa-psk", "wifi-sec.proto", "rsn",
           "wifi-sec.pairwise", "ccmp", "wifi-sec.group", "ccmp", "wifi-sec.pmf", "disable",
           "wifi-sec.psk-flags", "2")
    fd, secret_file = tempfile.mkstemp(dir=private_dir, prefix=".hotspot-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:  # mkstemp: mode 0600
            f.write(f"802-11-wireless-security.psk:{password}\n")
        _nmcli(nmcli, "--wait", "30", "connection", "up", "id", CONNECTION,
               "passwd-file", secret_file)
    finally:
        Path(secret_file).unlink(missing_ok=True)


def stop_access_point(nmcli: str) -> None:
    _nmcli(nmcli, "connection", "down", "id", CONNECTION)
