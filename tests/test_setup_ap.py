"""The setup access point's policy: up after a minute without network, down once the
device is configured and online. NetworkManager is the stand-in of tests/nmcli_sim.py
(its state a file the test changes); the clock is a fake one the test advances."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.credentials import CredentialStore
from appliance.device import hotspot
from appliance.device.hotspot import SetupAccessPointPolicy
from appliance.status import StatusHub
from tests import nmcli_sim

PASSWORD = "correct horse battery"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def nm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Path]]:
    env = nmcli_sim.install(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield {"state": Path(env["NMCLI_STATE"]), "log": Path(env["NMCLI_LOG"])}


@pytest.fixture
def device(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "root"
    (root / "proc/device-tree").mkdir(parents=True)
    (root / "proc/device-tree/serial-number").write_bytes(b"10000000c0ffee42\0")
    state = tmp_path / "state"
    state.mkdir()
    return {"root": root, "state": state}


def policy(hub: StatusHub, device: dict[str, Path], clock: FakeClock,
           **kw: Any) -> SetupAccessPointPolicy:
    creds = CredentialStore(device["state"])
    return SetupAccessPointPolicy("wlan0", hub, device["state"], root=device["root"],
                                  configured=lambda: not creds.setup_required(), clock=clock,
                                  **kw)


def section(hub: StatusHub) -> dict[str, Any]:
    s: dict[str, Any] = hub.snapshot()["sections"]["hotspot"]
    return s


def active_after(p: SetupAccessPointPolicy, clock: FakeClock, hub: StatusHub,
                 seconds: float) -> bool:
    """Whether the access point is up after `seconds` more and one look by the policy."""
    clock.now += seconds
    p.step()
    return bool(section(hub)["active"])


def commands(log: Path) -> list[list[str]]:
    return [c["argv"] for c in nmcli_sim.calls(log)
            if "status" not in c["argv"] and "connectivity" not in c["argv"]]


def test_no_network_for_a_minute_starts_it_and_configured_online_stops_it(
        nm: dict[str, Path], device: dict[str, Path]) -> None:
    hub, clock = StatusHub(), FakeClock()
    p = policy(hub, device, clock)
    for t in (0, 30, 59.9):
        clock.now = 1000 + t
        assert p.step()
        assert section(hub)["active"] is False and section(hub)["online"] is False
    assert commands(nm["log"]) == []
    clock.now = 1060
    p.step()
    s = section(hub)
    assert (s["active"], s["started_by"], s["ssid"], s["address"]) == (
        True, "policy", "Appliance-EE42", "10.42.0.1")
    assert s["configured"] is False and s["connectivity"] == "none"
    log = nmcli_sim.calls(nm["log"])
    add = next(c["argv"] for c in log if c["argv"][:2] == ["connection", "add"])
    assert add[add.index("ssid") + 1] == "Appliance-EE42"
    assert add[add.index("ipv4.addresses") + 1] == "10.42.0.1/24"
    password = (device["state"] / hotspot.PASSWORD_FILE).read_text().strip()
    up = next(c for c in log if "up" in c["argv"])
    assert up["passwd_file"] == f"802-11-wireless-security.psk:{password}\n"
    assert all(password not in " ".join(c["argv"]) for c in log)
    assert nmcli_sim.read_state(nm["state"])["devices"][1]["connection"] == "appliance-setup"

    # A cable, but no admin password yet: the access point is how it gets one.
    nmcli_sim.set_device(nm["state"], "eth0", "connected", "Wired connection 1", "full")
    clock.now += 30
    p.step()
    assert section(hub)["active"] is True and section(hub)["online"] is True
    # The password set (on the page, through the access point): configured and online.
    CredentialStore(device["state"]).set_password(PASSWORD)
    clock.now += 5
    p.step()
    s = section(hub)
    assert (s["active"], s["configured"], s["reason"]) == (False, True, "configured and online")
    assert commands(nm["log"])[-1] == ["connection", "down", "id", "appliance-setup"]
    assert nmcli_sim.read_state(nm["state"])["devices"][1]["state"] == "disconnected"
    # Online from here on: it stays down.
    assert not active_after(p, clock, hub, 3600)
    assert commands(nm["log"])[-1][:2] == ["connection", "down"]


def test_online_at_start_never_starts_it_until_the_network_is_gone_a_minute(
        nm: dict[str, Path], device: dict[str, Path]) -> None:
    # A Wi-Fi connection whose name has a ':' (nmcli escapes it in terse output).
    nmcli_sim.set_device(nm["state"], "wlan0", "connected", "Café:5G", "limited")
    hub, clock = StatusHub(), FakeClock()
    p = policy(hub, device, clock)
    for _ in range(4):
        clock.now += 40
        p.step()
    assert section(hub)["online"] is True and section(hub)["active"] is False
    assert commands(nm["log"]) == []
    nmcli_sim.set_device(nm["state"], "wlan0", "disconnected", "", "none")
    clock.now += 1
    p.step()
    assert not active_after(p, clock, hub, 59)
    assert active_after(p, clock, hub, 1)


def test_started_at_boot_it_counts_the_minute_from_power_on(
        nm: dict[str, Path], device: dict[str, Path]) -> None:
    # The daemon starts 25 s after power-on (the clock: seconds since then): the access
    # point comes 60 s after power-on, not 60 s after the daemon.
    hub, clock = StatusHub(), FakeClock()
    clock.now = 25.0
    p = policy(hub, device, clock)
    assert not active_after(p, clock, hub, 34.9)
    assert active_after(p, clock, hub, 0.1)
    # Started long after power-on (a restart), it knows nothing of the network before
    # itself, and waits the whole minute.
    nmcli_sim.set_device(nm["state"], "wlan0", "disconnected", "", "none")
    hub, clock = StatusHub(), FakeClock()
    clock.now = hotspot.BOOT_WINDOW_S + 1
    p = policy(hub, device, clock)
    assert not active_after(p, clock, hub, 59.9)
    assert active_after(p, clock, hub, 0.1)


def test_an_access_point_the_button_started_on_a_ready_device_stays_up(
        nm: dict[str, Path], device: dict[str, Path]) -> None:
    CredentialStore(device["state"]).set_password(PASSWORD)
    nmcli_sim.set_device(nm["state"], "eth0", "connected", "Wired connection 1", "full")
    hub, clock = StatusHub(), FakeClock()
    p = policy(hub, device, clock)
    p.step()
    # The button brings it up (its own nmcli calls): the policy sees it but leaves it.
    hotspot.start_access_point("nmcli", "wlan0", "Appliance-EE42", "labelled-pw",
                               device["state"])
    for _ in range(5):
        clock.now += 300
        p.step()
    s = section(hub)
    assert (s["active"], s["started_by"], s["online"], s["configured"]) == (
        True, "other", True, True)
    assert commands(nm["log"])[-1][:2] != ["connection", "down"]
    # A short press takes it down; with the network there it is not started again.
    hotspot.stop_access_point("nmcli")
    assert not active_after(p, clock, hub, 500)


def test_configured_device_without_network_retries_its_own_wifi(
        nm: dict[str, Path], device: dict[str, Path]) -> None:
    """A configured camera whose router came back slower than it did after a power cut
    gives its radio back to its own Wi-Fi now and then, or it would stay an AP for ever."""
    CredentialStore(device["state"]).set_password(PASSWORD)
    hub, clock = StatusHub(), FakeClock()
    p = policy(hub, device, clock, retry_s=600)
    assert active_after(p, clock, hub, 60)
    assert active_after(p, clock, hub, 599)
    clock.now += 1
    p.step()
    s = section(hub)
    assert s["active"] is False and s["reason"] == "trying the configured networks again"
    assert not active_after(p, clock, hub, 59)  # a full minute for the Wi-Fi first
    assert active_after(p, clock, hub, 1)


def test_short_press_stop_is_not_undone_at_once(nm: dict[str, Path],
                                                device: dict[str, Path]) -> None:
    hub, clock = StatusHub(), FakeClock()
    p = policy(hub, device, clock)
    assert active_after(p, clock, hub, 60)
    hotspot.stop_access_point("nmcli")  # the button's short press
    assert not active_after(p, clock, hub, 5)
    assert not active_after(p, clock, hub, 50)
    assert active_after(p, clock, hub, 10)


def test_without_auto_start_it_only_watches(nm: dict[str, Path],
                                            device: dict[str, Path]) -> None:
    hub, clock = StatusHub(), FakeClock()
    p = policy(hub, device, clock, auto_start_s=None)
    for _ in range(5):
        clock.now += 600
        p.step()
    assert section(hub)["active"] is False and section(hub)["auto_start_s"] is None
    assert commands(nm["log"]) == []


def test_a_failed_start_is_shown_and_retried_a_minute_later(
        nm: dict[str, Path], device: dict[str, Path]) -> None:
    hub, clock = StatusHub(), FakeClock()
    creds = CredentialStore(device["state"])
    p = SetupAccessPointPolicy("wlan1", hub, device["state"], root=device["root"],
                               configured=lambda: not creds.setup_required(), clock=clock)
    clock.now += 60
    p.step()
    s = section(hub)
    assert s["active"] is False and s["last_action"] == "start failed"
    assert "No suitable device" in s["error"]  # nmcli's own words
    ups = len([c for c in commands(nm["log"]) if "up" in c])
    clock.now += 30
    p.step()
    assert len([c for c in commands(nm["log"]) if "up" in c]) == ups
    clock.now += 30
    p.step()
    assert len([c for c in commands(nm["log"]) if "up" in c]) == ups + 1


def test_no_networkmanager(tmp_path: Path, device: dict[str, Path],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    hub = StatusHub()
    p = policy(hub, device, FakeClock())
    assert p.step() is False
    assert section(hub)["available"] is False and "nmcli" in section(hub)["error"]


def test_thread_polls_and_starts_it(nm: dict[str, Path], device: dict[str, Path]) -> None:
    hub = StatusHub()
    creds = CredentialStore(device["state"])
    fatal: list[BaseException] = []
    p = SetupAccessPointPolicy("wlan0", hub, device["state"], root=device["root"],
                               configured=lambda: not creds.setup_required(),
                               auto_start_s=0.3, poll_s=0.05, on_fatal=fatal.append)
    p.start()
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not hub.snapshot()["sections"].get(
                "hotspot", {}).get("active"):
            time.sleep(0.05)
        assert section(hub)["active"] is True
    finally:
        t0 = time.monotonic()
        p.stop()
    assert time.monotonic() - t0 < 3 and fatal == []


def test_a_short_press_takes_down_an_access_point_the_button_did_not_start(
        nm: dict[str, Path], device: dict[str, Path]) -> None:
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    from appliance.config.schema import Config
    from appliance.device.components import DeviceComponents

    nmcli_sim.set_device(nm["state"], "wlan0", "connected", hotspot.CONNECTION)
    old, Device.pin_factory = Device.pin_factory, MockFactory()
    hub = StatusHub()
    fatal: list[BaseException] = []
    parts = DeviceComponents(Config(), hub, config_path=None, state_dir=device["state"],
                             recordings_dir=None, on_fatal=fatal.append,
                             on_factory_reset=lambda: None)
    parts.start()
    try:
        deadline = time.monotonic() + 10
        while not hub.snapshot()["sections"].get("hotspot", {}).get("active"):
            assert time.monotonic() < deadline, hub.snapshot()["sections"].get("hotspot")
            time.sleep(0.05)
        pin = Device.pin_factory.pin(22)
        pin.drive_low()
        time.sleep(0.05)
        pin.drive_high()
        while hub.snapshot()["sections"].get("button", {}).get("access_point") is not False:
            assert time.monotonic() < deadline, hub.snapshot()["sections"].get("button")
            time.sleep(0.05)
        assert commands(nm["log"])[-1] == ["connection", "down", "id", hotspot.CONNECTION]
        assert nmcli_sim.read_state(nm["state"])["devices"][1]["state"] == "disconnected"
    finally:
        parts.stop()
        Device.pin_factory.reset()
        Device.pin_factory = old
    assert fatal == []
