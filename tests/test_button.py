"""The button on a gpiozero mock pin: how long it is held picks the action.

NetworkManager's nmcli cannot run here, so a stand-in `nmcli` on PATH records each
command line (and the passwd-file it is given) to check what the access point would
be; the factory reset runs on a temporary state directory.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from appliance.config.load import dump, load
from appliance.config.schema import Button as ButtonConfig
from appliance.config.schema import Config
from appliance.credentials import CredentialStore
from appliance.device import hotspot
from appliance.device.button import DeviceButton
from appliance.device.reset import factory_reset
from appliance.status import StatusHub

SETUP_S, RESET_S = 0.3, 0.8  # injected through the config; SPEC's are 5 and 15 s
PIN = 22

FAKE_NMCLI = """#!{python}
# Stand-in for NetworkManager's nmcli: records its argv, and the passwd-file's contents.
import json, os, sys
args = sys.argv[1:]
record = {{"argv": args}}
if "passwd-file" in args:
    path = args[args.index("passwd-file") + 1]
    record["passwd_file"] = open(path).read()
    record["passwd_mode"] = oct(os.stat(path).st_mode & 0o777)
with open(os.environ["NMCLI_LOG"], "a") as f:
    f.write(json.dumps(record) + "\\n")
if os.environ.get("NMCLI_FAIL") and args[:2] == ["connection", "add"]:
    sys.stderr.write("Error: Failed to add 'appliance-setup' connection: no wlan0\\n")
    sys.exit(1)
if args[:2] == ["connection", "delete"]:
    sys.stderr.write("Error: unknown connection 'appliance-setup'.\\n")
    sys.exit(10)
"""


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    old = Device.pin_factory
    Device.pin_factory = f = MockFactory()
    yield f
    f.reset()
    Device.pin_factory = old


@pytest.fixture
def nmcli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in nmcli first on PATH; returns its log (a JSON line per call)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "nmcli"
    exe.write_text(FAKE_NMCLI.format(python=sys.executable))
    exe.chmod(0o755)
    log = tmp_path / "nmcli.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("NMCLI_LOG", str(log))
    return log


def calls(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def device(tmp_path: Path) -> dict[str, Path]:
    """A device's files: a changed config with its last-good copy, secrets, recordings."""
    root = tmp_path / "root"
    (root / "proc/device-tree").mkdir(parents=True)
    (root / "proc/device-tree/serial-number").write_bytes(b"10000000c0ffee42\0")
    etc = tmp_path / "etc"
    etc.mkdir()
    config = etc / "appliance.toml"
    config.write_text('[web]\nlisten = "0.0.0.0:9000"\n')
    config.chmod(0o640)
    (etc / "appliance.toml.last-good").write_text('[web]\nlisten = "0.0.0.0:9000"\n')
    state = tmp_path / "state"
    state.mkdir()
    CredentialStore(state).set_password("correct horse battery")
    (state / "recordings").mkdir()
    (state / "recordings" / "rec-20250101T000000Z.mp4").write_bytes(b"\0" * 100)
    return {"root": root, "config": config, "state": state, "recordings": state / "recordings"}


def make_button(hub: StatusHub, device: dict[str, Path], **kw: Any) -> DeviceButton:
    cfg = ButtonConfig.model_validate({"setup_hold_s": SETUP_S, "reset_hold_s": RESET_S})
    return DeviceButton(cfg, hub, config_path=device["config"], state_dir=device["state"],
                        recordings_dir=device["recordings"], root=device["root"], **kw)


def press(factory: MockFactory, seconds: float) -> None:
    pin = factory.pin(PIN)
    pin.drive_low()  # the button pulls the pin (pulled up) to ground
    time.sleep(seconds)
    pin.drive_high()


def wait_for(hub: StatusHub, key: str, value: Any, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        section: dict[str, Any] = hub.snapshot()["sections"].get("button", {})
        if section.get(key) == value:
            return section
        time.sleep(0.02)
    raise AssertionError(f"button.{key} never became {value!r}: {section}")


def test_short_press_does_nothing(factory: MockFactory, nmcli: Path,
                                  device: dict[str, Path]) -> None:
    hub = StatusHub()
    button = make_button(hub, device)
    button.start()
    try:
        assert factory.pin(PIN).pull == "up"
        press(factory, 0.05)
        section = wait_for(hub, "last_press_s", pytest.approx(0.05, abs=0.1))
        time.sleep(0.2)
        assert "action" not in hub.snapshot()["sections"]["button"], section
        assert calls(nmcli) == []
        assert (device["state"] / "secrets.json").exists()
    finally:
        button.stop()


def test_hold_for_setup_starts_the_access_point(factory: MockFactory, nmcli: Path,
                                                device: dict[str, Path]) -> None:
    hub = StatusHub()
    button = make_button(hub, device)
    button.start()
    try:
        pin = factory.pin(PIN)
        pin.drive_low()
        time.sleep(SETUP_S + 0.15)
        # Past the first threshold, the page can say what letting go would do.
        assert hub.snapshot()["sections"]["button"]["held"] == "setup_ap"
        pin.drive_high()
        section = wait_for(hub, "action_state", "done")
        assert section["action"] == "setup_ap" and section["ssid"] == "Appliance-EE42"
        password = (device["state"] / hotspot.PASSWORD_FILE).read_text().strip()
        assert len(password) == 12
        assert stat.S_IMODE((device["state"] / hotspot.PASSWORD_FILE).stat().st_mode) == 0o600
        log = calls(nmcli)
        assert [c["argv"][:2] for c in log] == [["connection", "delete"], ["connection", "add"],
                                                 ["--wait", "30"]]
        add = log[1]["argv"]
        assert add[add.index("ssid") + 1] == "Appliance-EE42"
        assert add[add.index("ifname") + 1] == "wlan0"
        assert add[add.index("802-11-wireless.mode") + 1] == "ap"
        # A channel every regulatory domain allows an access point on, country set or not.
        assert 1 <= int(add[add.index("802-11-wireless.channel") + 1]) <= 11
        assert add[add.index("ipv4.method") + 1] == "shared"
        assert add[add.index("wifi-sec.key-mgmt") + 1] == "wpa-psk"
        up = log[2]
        assert up["argv"][2:6] == ["connection", "up", "id", "appliance-setup"]
        # The password reaches nmcli in a 0600 file, never on a command line.
        assert up["passwd_file"] == f"802-11-wireless-security.psk:{password}\n"
        assert up["passwd_mode"] == "0o600"
        assert all(password not in " ".join(c["argv"]) for c in log)
        assert not list(device["state"].glob(".hotspot-*"))  # the file is gone again
        # The same password next time; a short press takes the access point down.
        press(factory, 0.05)
        wait_for(hub, "access_point", False)
        assert calls(nmcli)[-1]["argv"] == ["connection", "down", "id", "appliance-setup"]
        assert (device["state"] / hotspot.PASSWORD_FILE).read_text().strip() == password
    finally:
        button.stop()


def test_hold_for_reset_resets_the_device(factory: MockFactory, nmcli: Path,
                                          device: dict[str, Path]) -> None:
    hub = StatusHub()
    hub.update("media.video", state="live")
    restarted = threading.Event()
    button = make_button(hub, device, on_factory_reset=restarted.set)
    (device["state"] / hotspot.PASSWORD_FILE).write_text("labelled-pw\n")
    button.start()
    try:
        pin = factory.pin(PIN)
        pin.drive_low()
        time.sleep(RESET_S + 0.15)
        assert hub.snapshot()["sections"]["button"]["held"] == "factory_reset"
        pin.drive_high()
        assert restarted.wait(10)
        section = wait_for(hub, "action_state", "done")
        assert section["action"] == "factory_reset"
        assert hub.state() == "maintenance"  # the LEDs alternate until the restart
        assert calls(nmcli) == []  # no access point on the way
        assert device["config"].read_text() == dump(Config())
        assert load(device["config"]) == Config()
        assert stat.S_IMODE(device["config"].stat().st_mode) == 0o640
        assert not (device["config"].parent / "appliance.toml.last-good").exists()
        assert CredentialStore(device["state"]).setup_required()  # no password any more
        assert sorted(p.name for p in device["state"].iterdir()) == [hotspot.PASSWORD_FILE]
    finally:
        button.stop()


def test_no_nmcli_says_not_available(factory: MockFactory, tmp_path: Path,
                                     device: dict[str, Path],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    hub = StatusHub()
    button = make_button(hub, device)
    button.start()
    try:
        press(factory, SETUP_S + 0.1)
        section = wait_for(hub, "action_state", "not available")
        assert "nmcli" in section["error"]
    finally:
        button.stop()


def test_nmcli_failure_is_reported(factory: MockFactory, nmcli: Path, device: dict[str, Path],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NMCLI_FAIL", "1")
    hub = StatusHub()
    button = make_button(hub, device)
    button.start()
    try:
        press(factory, SETUP_S + 0.1)
        section = wait_for(hub, "action_state", "failed")
        assert "no wlan0" in section["error"]  # nmcli's own words
        assert len(calls(nmcli)) == 2  # never tried to bring it up
    finally:
        button.stop()


def test_factory_reset_keeps_other_files_in_a_chosen_recordings_dir(
        tmp_path: Path, device: dict[str, Path]) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "rec-20250101T000000Z.mp4").write_bytes(b"x")
    (videos / "holiday.mp4").write_bytes(b"y")
    config_in_state = device["state"] / "appliance.toml"
    config_in_state.write_text('[audio]\nenabled = false\n')
    removed = factory_reset(config_in_state, device["state"], videos)
    assert sorted(p.name for p in videos.iterdir()) == ["holiday.mp4"]
    assert videos / "rec-20250101T000000Z.mp4" in removed
    assert device["state"] / "secrets.json" in removed
    # A config kept in the state directory is reset, not removed.
    assert load(config_in_state) == Config()
    assert sorted(p.name for p in device["state"].iterdir()) == ["appliance.toml"]


def test_device_suffix_sources(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "a/proc"
    cpuinfo.mkdir(parents=True)
    (cpuinfo / "cpuinfo").write_text("processor\t: 0\nSerial\t\t: 00000000abcd1234\n")
    assert hotspot.ssid(tmp_path / "a") == "Appliance-1234"
    net = tmp_path / "b/sys/class/net"
    for name, mac in (("lo", "00:00:00:00:00:00"), ("wlan0", "dc:a6:32:01:9a:7f")):
        (net / name).mkdir(parents=True)
        (net / name / "address").write_text(mac + "\n")
    assert hotspot.device_suffix(tmp_path / "b") == "9A7F"
    assert hotspot.device_suffix(tmp_path / "none") == "0000"


def test_device_components_start_and_stop(factory: MockFactory, device: dict[str, Path]) -> None:
    from appliance.config.load import parse
    from appliance.device.components import DeviceComponents

    cfg = parse(f'[modem]\nenabled = true\nport = "{device["state"] / "no-modem"}"\n')
    hub = StatusHub()
    fatal: list[BaseException] = []
    parts = DeviceComponents(cfg, hub, config_path=device["config"], state_dir=device["state"],
                             recordings_dir=device["recordings"], on_fatal=fatal.append,
                             on_factory_reset=lambda: None)
    t0 = time.monotonic()
    parts.start()
    assert time.monotonic() - t0 < 0.5
    try:
        deadline = time.monotonic() + 5
        # The LEDs' section appears at start; their first pattern follows from their thread.
        while time.monotonic() < deadline and not (
                {"leds", "button", "modem", "thermal"} <= set(hub.snapshot()["sections"])
                and "green" in hub.snapshot()["sections"]["leds"]):
            time.sleep(0.02)
        sections = hub.snapshot()["sections"]
        assert sections["leds"]["green"] == "blink-1hz"  # starting
        assert sections["button"]["pin"] == 22 and sections["modem"]["state"] == "absent"
        assert "level" in sections["thermal"]
    finally:
        t0 = time.monotonic()
        parts.stop()
    assert time.monotonic() - t0 < 3 and fatal == []
    assert factory.pin(17).function == "input"  # released
