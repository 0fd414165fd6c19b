"""Status LEDs, button and thermal readings on the real board (SPEC's default pins: green
LED on BCM 17, red on BCM 27, button to ground on BCM 22).

The LED tests read each output pin's level back through the GPIO chip while the driver
blinks it, so they say the pins toggle at SPEC's rates; whether the LEDs light is for
the eye. Two tests need a person or change the network, so they run only when asked:
  APPLIANCE_HW_BUTTON=1   press and hold the button when told (checks wiring and timing)
  APPLIANCE_HW_HOTSPOT=1  brings the setup access point up on wlan0 through nmcli, then
                          down again (the Wi-Fi client connection drops meanwhile)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.config.schema import Button as ButtonConfig
from appliance.config.schema import Leds as LedsConfig
from appliance.config.schema import Thermal as ThermalConfig
from appliance.device import hotspot
from appliance.device.leds import StatusLeds
from appliance.device.thermal import Sensors, ThermalGovernor
from appliance.status import StatusHub

pytestmark = pytest.mark.pi


@pytest.fixture
def real_gpio() -> Iterator[None]:
    from gpiozero import Device

    from appliance.device.gpio import pin_factory

    _, mock = pin_factory()
    if mock:
        pytest.skip("no real GPIO pin factory loaded (install python3-lgpio and make the venv "
                    "with --system-site-packages)")
    yield
    Device.pin_factory.reset()


def sample(pins: list[Any], seconds: float, every: float = 0.01) -> list[tuple[float, ...]]:
    """(time, level of each pin, read back from the chip) every `every` seconds."""
    out = []
    t0 = time.monotonic()
    while (now := time.monotonic()) - t0 < seconds:
        out.append((now - t0, *(int(p.state) for p in pins)))
        time.sleep(every)
    return out


def toggles(samples: list[tuple[float, ...]], index: int) -> int:
    return sum(1 for a, b in zip(samples, samples[1:], strict=False) if a[index] != b[index])


def test_led_pins_follow_the_state(real_gpio: None) -> None:
    hub = StatusHub()
    leds = StatusLeds(LedsConfig.model_validate({}), hub, poll_s=0.02)
    leds.start()
    try:
        assert leds._board is not None
        pins = [leds._board.green.pin, leds._board.red.pin]
        hub.update("media.video", state="starting")  # green 1 Hz, red off
        time.sleep(0.2)
        s = sample(pins, 3.0)
        assert 5 <= toggles(s, 1) <= 7 and toggles(s, 2) == 0
        hub.update("media.video", state="live")  # green on
        time.sleep(0.2)
        s = sample(pins, 0.5)
        assert {x[1] for x in s} == {1} and {x[2] for x in s} == {0}
        hub.update("uplink.a", enabled=True, state="connecting")  # green 4 Hz
        time.sleep(0.2)
        assert 10 <= toggles(sample(pins, 1.6), 1) <= 14
        hub.update("daemon", maintenance=True)  # alternate 2 Hz
        time.sleep(0.2)
        s = sample(pins, 2.0)
        assert 6 <= toggles(s, 1) <= 9
        together = sum(1 for x in s if x[1] == x[2])
        assert together <= 2, "green and red lit (or dark) together: not in antiphase"
    finally:
        leds.stop()


def test_button_reads_released(real_gpio: None) -> None:
    from gpiozero import Button

    button = Button(ButtonConfig.model_validate({}).pin, pull_up=True)
    try:
        assert not button.is_pressed, "BCM 22 reads low with the pull-up: button stuck or " \
                                      "shorted to ground?"
    finally:
        button.close()


@pytest.mark.skipif(os.environ.get("APPLIANCE_HW_BUTTON") != "1",
                    reason="needs a person at the button: APPLIANCE_HW_BUTTON=1")
def test_button_hold_time(real_gpio: None) -> None:
    from gpiozero import Button

    button = Button(ButtonConfig.model_validate({}).pin, pull_up=True, bounce_time=0.05)
    try:
        print("\nPress the button and hold it for about 6 s, then let go.")
        assert button.wait_for_press(timeout=60), "no press within 60 s"
        pressed = time.monotonic()
        assert button.wait_for_release(timeout=30)
        held = time.monotonic() - pressed
        assert 4.0 < held < 10.0, f"held {held:.1f} s"
    finally:
        button.close()


@pytest.mark.skipif(os.environ.get("APPLIANCE_HW_HOTSPOT") != "1",
                    reason="changes the Wi-Fi: APPLIANCE_HW_HOTSPOT=1")
def test_setup_access_point_comes_up(tmp_path: Path) -> None:
    nmcli = hotspot.nmcli_path()
    if nmcli is None:
        pytest.skip("no nmcli (NetworkManager) on this board")
    name = hotspot.ssid()
    hotspot.start_access_point(nmcli, "wlan0", name, hotspot.hotspot_password(tmp_path),
                               tmp_path)
    try:
        state = subprocess.run([nmcli, "-g", "GENERAL.STATE", "connection", "show",
                                hotspot.CONNECTION], capture_output=True, text=True, check=True)
        assert state.stdout.strip() == "activated"
    finally:
        hotspot.stop_access_point(nmcli)
        subprocess.run([nmcli, "connection", "delete", "id", hotspot.CONNECTION], check=False)


def test_thermal_readings() -> None:
    reading = Sensors().read()
    assert reading.temp_c is not None and 15 < reading.temp_c < 95, reading
    if shutil.which("vcgencmd"):
        assert reading.flags is not None and "under_voltage" in reading.flags
        assert not reading.flags["under_voltage"], "under-voltage now: check the power supply"
    hub = StatusHub()
    ThermalGovernor(ThermalConfig.model_validate({}), hub).poll()
    print(f"\nthermal: {hub.snapshot()['sections']['thermal']}")
