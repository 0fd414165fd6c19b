"""The setup access point, through NetworkManager's nmcli (argv lists, never a shell).

SSID "Appliance-XXXX", XXXX from the board's serial number (else a network MAC); WPA2
with a password of this device's own, made once at random and kept in the state
directory (hotspot-password, mode 0600) for the label or the installer to read. The
password never goes on a command line: nmcli reads it from a 0600 file given as
`passwd-file` when the connection comes up, and the connection itself is added with
psk-flags 2 ("not saved"), so NetworkManager does not store it either.

`SetupAccessPointPolicy` decides when the access point comes up and goes down by itself
(issue 8): up when the device has had no network for `auto_start_s` (60 s), down once it
is configured (an admin password set) and online through another interface. It reads
NetworkManager's own view of the devices and connectivity, so it also sees an access
point the button started. Its state is the hub section `hotspot`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.config.load import save_atomic
from appliance.status import StatusHub

log = logging.getLogger(__name__)

CONNECTION = "appliance-setup"
PASSWORD_FILE = "hotspot-password"
# No 0/O, 1/l/I: read off a label and typed on a phone.
_ALPHABET = "23456789abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ"
_HEX = re.compile(r"[0-9a-fA-F]+")
NMCLI_TIMEOUT_S = 60
# NetworkManager's shared-mode default, set explicitly: the captive portal's DNS
# (image/rootfs/etc/NetworkManager/dnsmasq-shared.d/) and redirects name this address.
AP_ADDRESS = "10.42.0.1"
AP_PREFIX = 24
# A channel every regulatory domain allows an access point on (1 to 11). Left to itself,
# NetworkManager may pick 13, where the world domain (no country set) forbids starting a
# network: wpa_supplicant then fails to start the access point (seen with "Appliance-3456").
AP_CHANNEL = 6
# The button and the policy both drive the one connection: one nmcli sequence at a time.
_NM_LOCK = threading.Lock()


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
    with _NM_LOCK:
        _start_access_point(nmcli, interface, name, password, private_dir)


def _start_access_point(nmcli: str, interface: str, name: str, password: str,
                        private_dir: Path) -> None:
    # Start from a clean profile: a previous one may name another SSID or interface.
    _nmcli(nmcli, "connection", "delete", "id", CONNECTION, check=False)
    _nmcli(nmcli, "connection", "add", "type", "wifi", "ifname", interface,
           "con-name", CONNECTION, "autoconnect", "no", "ssid", name,
           "802-11-wireless.mode", "ap", "802-11-wireless.band", "bg",
           "802-11-wireless.channel", str(AP_CHANNEL),
           "ipv4.method", "shared", "ipv4.addresses", f"{AP_ADDRESS}/{AP_PREFIX}",
           "ipv6.method", "ignore",
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
    with _NM_LOCK:
        _nmcli(nmcli, "connection", "down", "id", CONNECTION)


# -- the policy -----------------------------------------------------------------------------

AUTO_START_S = 60.0
# An access point the policy started on a configured device gives way after this long,
# so that the device's own Wi-Fi (on the same radio) is tried again for AUTO_START_S: a
# router that boots slower than the camera after a power cut must not strand it as an AP.
RETRY_S = 600.0
POLL_S = 5.0
# A policy started this soon after power-on counts the time without a network from
# power-on: "no network 60 s after plugging in" is what the user sees, and the daemon
# itself takes a while to start (half a minute under emulation).
BOOT_WINDOW_S = 120.0


def _terse_fields(line: str) -> list[str]:
    """One line of `nmcli -t`: fields split at ':', where values escape ':' and '\\'."""
    fields: list[str] = []
    current: list[str] = []
    chars = iter(line)
    for ch in chars:
        if ch == "\\":
            current.append(next(chars, ""))
        elif ch == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(ch)
    fields.append("".join(current))
    return fields


@dataclass(frozen=True, slots=True)
class NetworkView:
    """What NetworkManager says about the network, less the access point itself."""

    connectivity: str  # none | portal | limited | full | unknown
    ap_active: bool
    connected: tuple[str, ...]  # devices connected by any other connection

    @property
    def online(self) -> bool:
        # "limited" (a LAN without Internet) counts: the appliance serves its LAN. A
        # connected device settles it while NetworkManager's check is off ("unknown").
        return bool(self.connected) and self.connectivity != "none"


def network_view(nmcli: str) -> NetworkView:
    devices = _nmcli(nmcli, "-t", "-f", "DEVICE,TYPE,STATE,CONNECTION", "device", "status")
    ap_active, connected = False, []
    for line in devices.stdout.splitlines():
        fields = _terse_fields(line)
        if len(fields) != 4:
            continue
        device, kind, state, connection = fields
        if not state.startswith("connected") or kind == "loopback":
            continue
        if connection == CONNECTION:
            ap_active = True
        else:
            connected.append(device)
    connectivity = _nmcli(nmcli, "-t", "networking", "connectivity").stdout.strip() or "unknown"
    return NetworkView(connectivity, ap_active, tuple(connected))


class SetupAccessPointPolicy:
    """Polls NetworkManager every `poll_s` on its own thread and starts or stops the
    access point on `interface`:

    - start: no network for `auto_start_s` since power-on (when the policy starts within
      `BOOT_WINDOW_S` of it, as at the box's boot; else since the policy's start, knowing
      nothing of the network before), since the network went, or since the access point
      went down (whoever took it down: a short press of the button is not undone at
      once); None: never by itself (a desktop);
    - stop: the device became configured and online while the access point was up (an
      access point the button brought up on a device that already was both stays up until
      the button takes it down), or it was ours, the device is configured and it has been
      up for `retry_s`.

    `configured` says whether an admin password is set; `on_active` hears whether the
    access point is up after each look. `clock` is monotonic seconds since power-on
    (Linux's CLOCK_MONOTONIC).
    """

    def __init__(self, interface: str, hub: StatusHub, state_dir: Path, *,
                 configured: Callable[[], bool], auto_start_s: float | None = AUTO_START_S,
                 retry_s: float = RETRY_S, poll_s: float = POLL_S, root: Path = Path("/"),
                 clock: Callable[[], float] = time.monotonic,
                 on_active: Callable[[bool], None] | None = None,
                 on_fatal: Callable[[BaseException], None] | None = None):
        self.interface, self.hub, self.state_dir, self.root = interface, hub, state_dir, root
        self.configured, self.on_active = configured, on_active
        self.auto_start_s, self.retry_s, self.poll_s = auto_start_s, retry_s, poll_s
        self.clock, self.on_fatal = clock, on_fatal
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        started = clock()
        self._offline_since: float | None = 0.0 if started < BOOT_WINDOW_S else started
        self._ap_since: float | None = None
        self._ours = False
        self._last_ready: bool | None = None  # unknown until the first look

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="setup-ap", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)  # an nmcli still running ends with its own timeout

    def _run(self) -> None:
        try:
            while True:
                if not self.step():
                    return
                if self._stop.wait(self.poll_s):
                    return
        except Exception as exc:
            log.exception("setup access point: unexpected error")
            if self.on_fatal is not None:
                self.on_fatal(exc)

    def step(self) -> bool:
        """Look once and act; False when there is no NetworkManager to ask."""
        nmcli = nmcli_path()
        if nmcli is None:
            self.hub.update("hotspot", available=False, active=False,
                            error="no nmcli (NetworkManager) on this system")
            return False
        try:
            view = network_view(nmcli)
        except HotspotError as exc:
            self.hub.update("hotspot", available=True, error=str(exc))
            return True
        now = self.clock()
        configured = self.configured()
        ready = configured and view.online
        if view.online:
            self._offline_since = None
        elif self._offline_since is None:
            self._offline_since = now
        if view.ap_active and self._ap_since is None:
            self._ap_since = now
        elif not view.ap_active and self._ap_since is not None:
            self._ap_since, self._ours = None, False
            if not view.online:
                self._offline_since = now
        status: dict[str, Any] = {
            "available": True, "interface": self.interface, "connectivity": view.connectivity,
            "online": view.online, "configured": configured, "auto_start_s": self.auto_start_s,
            "error": None}
        if view.ap_active:
            if ready and self._last_ready is False:
                view = self._take_down(nmcli, view, "configured and online", status)
            elif self._ours and configured and now - (self._ap_since or now) >= self.retry_s:
                view = self._take_down(nmcli, view, "trying the configured networks again",
                                       status)
        elif (self.auto_start_s is not None and self._offline_since is not None
              and now - self._offline_since >= self.auto_start_s):
            view = self._bring_up(nmcli, view, now, status)
        self._last_ready = ready
        if self.on_active is not None:
            self.on_active(view.ap_active)
        self.hub.update("hotspot", **status, active=view.ap_active,
                        ssid=ssid(self.root) if view.ap_active else None,
                        address=AP_ADDRESS if view.ap_active else None,
                        started_by=("policy" if self._ours else "other") if view.ap_active
                        else None)
        return True

    def _bring_up(self, nmcli: str, view: NetworkView, now: float,
                  status: dict[str, Any]) -> NetworkView:
        name = ssid(self.root)
        log.warning("setup access point: no network for %.0f s: starting %s on %s",
                    now - (self._offline_since or now), name, self.interface)
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            start_access_point(nmcli, self.interface, name, hotspot_password(self.state_dir),
                               self.state_dir)
        except (HotspotError, OSError) as exc:
            log.error("setup access point: cannot start it: %s", exc)
            self._offline_since = now  # try again after another auto_start_s
            status.update(error=str(exc), last_action="start failed")
            return view
        self._ap_since, self._ours = now, True
        status.update(last_action="started", reason="no network")
        return NetworkView(view.connectivity, True, view.connected)

    def _take_down(self, nmcli: str, view: NetworkView, reason: str,
                   status: dict[str, Any]) -> NetworkView:
        log.info("setup access point: stopping it: %s", reason)
        try:
            stop_access_point(nmcli)
        except HotspotError as exc:
            log.error("setup access point: cannot stop it: %s", exc)
            status.update(error=str(exc), last_action="stop failed")
            return view
        self._ap_since, self._ours = None, False
        if not view.online:
            self._offline_since = self.clock()
        status.update(last_action="stopped", reason=reason)
        return NetworkView(view.connectivity, False, view.connected)
