"""The status LEDs follow the hub through every state of SPEC's table, on gpiozero mock pins.

A MockPin records each change of its level with the time since the previous one, so
the tests read back what the LEDs did: steady levels, blink half-periods and the
antiphase of the alternating pair.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from typing import Any, get_args

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from appliance.config.schema import Leds as LedsConfig
from appliance.device.leds import LEDS, Mode, StatusLeds, leds_for, rate_hz
from appliance.status import DeviceState, StatusHub

GREEN, RED = 17, 27  # SPEC's default BCM pins


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    old = Device.pin_factory
    Device.pin_factory = f = MockFactory()
    yield f
    f.reset()
    Device.pin_factory = old


# How to bring the hub into each device state, as the components publish them.
SECTIONS: dict[DeviceState, dict[str, dict[str, Any]]] = {
    "starting": {"media.video": {"state": "starting"}},
    "safe_mode": {"daemon": {"safe_mode": True}},
    "no_source": {"media.video": {"state": "no_source"}},
    "live_local": {"media.video": {"state": "live"}},
    "connecting": {"media.video": {"state": "live"},
                   "uplink.a": {"enabled": True, "state": "connecting"}},
    "live": {"media.video": {"state": "live"}, "uplink.a": {"enabled": True, "state": "live"}},
    "degraded": {"media.video": {"state": "live"}, "thermal": {"degraded": True}},
    "maintenance": {"button": {"maintenance": True}},
}


def enter(hub: StatusHub, state: DeviceState) -> None:
    for section, fields in SECTIONS[state].items():
        hub.update(section, **fields)


def reset_hub(hub: StatusHub) -> None:
    for section in list(hub.snapshot()["sections"]):
        if section != "leds":
            hub.remove(section)


def edges(pin: Any) -> list[tuple[float, bool]]:
    """(seconds since clear_states, level) of every recorded change, the first being the
    level at clear_states."""
    t, out = 0.0, []
    for s in pin.states:
        t += s.timestamp
        out.append((t, bool(s.state)))
    return out


def check_mode(mode: Mode, pin: Any, window: float) -> list[tuple[float, bool]]:
    """The pin did `mode` for the `window` seconds recorded (after the first 0.2 s, in
    which the driver reacts); its edges from then on."""
    ch = [e for e in edges(pin) if e[0] > 0.2]
    level = pin.state
    hz = rate_hz(mode)
    if hz is None:
        assert ch == [], f"{mode}: the level changed after it was set: {ch}"
        assert bool(level) == (mode == "on")
        return ch
    half = 1 / (2 * hz)
    gaps = [b[0] - a[0] for a, b in zip(ch, ch[1:], strict=False)]
    expected = (window - 0.2) / half
    assert expected - 2 <= len(ch) <= expected + 1, f"{mode}: {len(ch)} edges in {window} s"
    assert statistics.median(gaps) == pytest.approx(half, rel=0.08), gaps
    assert all(abs(g - half) < 0.4 * half for g in gaps), gaps  # no missed or extra toggle
    assert all(a[1] != b[1] for a, b in zip(ch, ch[1:], strict=False))  # real toggles
    return ch


def window_for(modes: tuple[Mode, Mode]) -> float:
    rates = [r for m in modes if (r := rate_hz(m)) is not None]
    return 0.2 + (2.2 / min(rates) if rates else 0.4)  # two full periods of the slowest


def test_one_table_for_every_state_and_the_api() -> None:
    from appliance.web import api

    assert set(LEDS) == set(get_args(DeviceState))
    assert api.leds_for is leds_for
    assert leds_for("degraded") == {"green": "on", "red": "blink-0.5hz"}
    assert [rate_hz(m) for m in ("blink-0.5hz", "blink-1hz", "blink-4hz", "alternate-2hz",
                                 "on", "off")] == [0.5, 1.0, 4.0, 2.0, None, None]


# Each state of SPEC's table, entered from a state that shows something else.
TRANSITIONS: list[tuple[DeviceState, DeviceState]] = [
    ("live", "starting"), ("starting", "safe_mode"), ("starting", "no_source"),
    ("connecting", "live_local"), ("live", "connecting"), ("degraded", "live"),
    ("live", "degraded"), ("live", "maintenance"), ("maintenance", "starting"),
]


@pytest.mark.parametrize(("before", "after"), TRANSITIONS, ids=[f"{a}->{b}" for a, b in
                                                                TRANSITIONS])
def test_pins_follow_the_state(factory: MockFactory, before: DeviceState,
                               after: DeviceState) -> None:
    hub = StatusHub()
    enter(hub, before)
    leds = StatusLeds(LedsConfig.model_validate({}), hub, poll_s=0.02)
    leds.start()
    try:
        time.sleep(0.3)
        green, red = factory.pin(GREEN), factory.pin(RED)
        assert hub.snapshot()["sections"]["leds"]["green"] == LEDS[before][0]
        reset_hub(hub)
        green.clear_states()
        red.clear_states()
        changed = time.time()
        enter(hub, after)
        assert hub.state() == after
        modes = LEDS[after]
        window = window_for(modes)
        time.sleep(window)
        g = check_mode(modes[0], green, window)
        r = check_mode(modes[1], red, window)
        section = hub.snapshot()["sections"]["leds"]
        assert (section["green"], section["red"]) == modes
        assert section["mock"] is True and section["green_pin"] == GREEN
        # The driver reacted within a poll or two of the change: a steady LED's level,
        # or a blink's first toggle (half a period after it began, lit, if it was lit).
        assert section["updated"] - changed < 0.15
        for mode, pin in zip(modes, (green, red), strict=True):
            hz = rate_hz(mode)
            if len(edges(pin)) > 1:
                assert edges(pin)[1][0] < 0.15 + (1 / (2 * hz) if hz else 0)
        if after == "maintenance":
            # Antiphase: each red edge is the opposite level of a green edge at the
            # same instant, so exactly one of the two is lit at any time.
            assert len(g) == len(r)
            for (tg, lg), (tr, lr) in zip(g, r, strict=True):
                assert abs(tg - tr) < 0.01 and lg != lr
    finally:
        leds.stop()


def test_same_modes_leave_the_pins_alone(factory: MockFactory) -> None:
    """live_local -> live shows the same LEDs: no glitch on the pins."""
    hub = StatusHub()
    enter(hub, "live_local")
    leds = StatusLeds(LedsConfig.model_validate({}), hub, poll_s=0.02)
    leds.start()
    try:
        time.sleep(0.2)
        green = factory.pin(GREEN)
        green.clear_states()
        enter(hub, "live")
        time.sleep(0.3)
        assert hub.state() == "live"
        assert [s.state for s in green.states] == [True]
    finally:
        leds.stop()


def test_configured_pins_and_stop(factory: MockFactory) -> None:
    hub = StatusHub()
    enter(hub, "no_source")
    leds = StatusLeds(LedsConfig.model_validate({"green_pin": 5, "red_pin": 6}), hub, poll_s=0.02)
    leds.start()
    time.sleep(0.2)
    assert factory.pin(6).state is True and factory.pin(5).state is False
    leds.stop()
    # Off, and released: the pins are inputs again, free for another device.
    assert factory.pin(6).state is False
    assert factory.pin(5).function == factory.pin(6).function == "input"


def test_disabled_leaves_gpio_alone(factory: MockFactory) -> None:
    hub = StatusHub()
    leds = StatusLeds(LedsConfig.model_validate({"enabled": False}), hub)
    leds.start()
    leds.stop()
    assert hub.snapshot()["sections"]["leds"] == {"enabled": False,
                                                  "updated": pytest.approx(time.time(), abs=5)}
    assert factory.pin(GREEN).function == "input"


def test_a_pin_in_use_is_reported_not_fatal(factory: MockFactory) -> None:
    from gpiozero import LED

    other = LED(RED)  # something else holds the red pin
    hub = StatusHub()
    leds = StatusLeds(LedsConfig.model_validate({}), hub)
    try:
        leds.start()
        assert "27" in hub.snapshot()["sections"]["leds"]["error"]
    finally:
        leds.stop()
        other.close()
