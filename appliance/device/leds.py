"""Status LEDs: SPEC's table from the device state to what each LED does, and the driver.

`LEDS` is the one table: the GPIO driver below lights the real LEDs from it, and
/api/v1/status reports the same modes for the page's virtual LEDs (`leds_for`).

Modes: "off", "on", "blink-<f>hz" (on half of each 1/f s period, off the other half),
and "alternate-<f>hz" (both LEDs blink at f Hz in antiphase: one is on while the other
is off). The driver follows the hub from a thread of its own: it polls `hub.version`
(a counter read without locking) every `poll_s`, and only when it changed derives the
state and, only when the modes changed, touches the pins, so a state with the same
modes as the last (live_local -> live) leaves a blinking LED's phase alone.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
from collections.abc import Callable
from typing import Any, Literal

from appliance.config.schema import Leds as LedsConfig
from appliance.status import DeviceState, StatusHub

log = logging.getLogger(__name__)

Mode = Literal["off", "on", "blink-0.5hz", "blink-1hz", "blink-4hz", "alternate-2hz"]

LEDS: dict[DeviceState, tuple[Mode, Mode]] = {  # state -> (green, red), SPEC's table
    "starting": ("blink-1hz", "off"),
    "safe_mode": ("off", "blink-1hz"),
    "no_source": ("off", "on"),
    "live_local": ("on", "off"),
    "connecting": ("blink-4hz", "off"),
    "live": ("on", "off"),
    "degraded": ("on", "blink-0.5hz"),
    "maintenance": ("alternate-2hz", "alternate-2hz"),
}

_RATE = re.compile(r"^(blink|alternate)-(\d+(?:\.\d+)?)hz$")


def leds_for(state: DeviceState) -> dict[str, str]:
    """The modes of both LEDs in `state`, as /api/v1/status reports them."""
    green, red = LEDS[state]
    return {"green": green, "red": red}


def rate_hz(mode: Mode) -> float | None:
    """The blink frequency of a blinking or alternating mode; None for on and off."""
    m = _RATE.match(mode)
    return float(m.group(2)) if m else None


class StatusLeds:
    """Drives the green and red LEDs (gpiozero, BCM pins of `[leds]`) from the hub's state.

    Hub section `leds`: green, red (the modes shown), green_pin, red_pin, mock (no real
    GPIO here), error (the pins could not be had).
    """

    def __init__(self, cfg: LedsConfig, hub: StatusHub, poll_s: float = 0.05,
                 on_fatal: Callable[[BaseException], None] | None = None):
        """`on_fatal`: called with an unexpected exception on the LEDs' thread (which has
        ended then); the daemon ends so that systemd restarts it."""
        self.cfg, self.hub, self.poll_s = cfg, hub, poll_s
        self.on_fatal = on_fatal
        self._board: Any = None  # gpiozero.LEDBoard with .green and .red
        self._modes: tuple[Mode, Mode] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self.cfg.enabled:
            self.hub.update("leds", enabled=False)
            return
        from gpiozero import LEDBoard
        from gpiozero.exc import GPIOZeroError

        from appliance.device.gpio import pin_factory

        factory, mock = pin_factory()
        try:
            # Named LEDs come in name order: (green, red), as the modes and values are.
            self._board = LEDBoard(green=self.cfg.green_pin, red=self.cfg.red_pin,
                                   pin_factory=factory)
        except (GPIOZeroError, OSError) as exc:  # pin taken or no access: run without LEDs
            log.error("leds: cannot use GPIO %d and %d: %s", self.cfg.green_pin,
                      self.cfg.red_pin, exc)
            self.hub.update("leds", enabled=True, error=str(exc))
            return
        self.hub.update("leds", enabled=True, mock=mock, green_pin=self.cfg.green_pin,
                        red_pin=self.cfg.red_pin, error=None)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="leds", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop following the hub; both LEDs off and their pins released."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._board is not None:
            self._board.source = None
            self._board.off()
            self._board.close()
            self._board = None
        self._modes = None

    def _run(self) -> None:
        seen = -1
        try:
            while True:
                version = self.hub.version
                if version != seen:
                    seen = version
                    self.show(LEDS[self.hub.state()])
                if self._stop.wait(self.poll_s):
                    return
        except Exception as exc:
            log.exception("leds failed")
            self.hub.update("leds", error=f"failed: {exc!r}")
            if self.on_fatal is not None:
                self.on_fatal(exc)

    def show(self, modes: tuple[Mode, Mode]) -> None:
        """Set both LEDs to `modes` (green, red); nothing happens if they show them already."""
        if modes == self._modes or self._board is None:
            return
        board = self._board
        board.source = None  # ends an alternation (its thread is joined)
        alternate = [hz for m in modes if m.startswith("alternate") and (hz := rate_hz(m))]
        if alternate:
            # One thread sets both LEDs in one step every half period: they cannot drift
            # out of antiphase, as two independent blinks would.
            board.off()
            board.source_delay = 1 / (2 * alternate[0])
            board.source = itertools.cycle(((True, False), (False, True)))
        else:
            for led, mode in zip((board.green, board.red), modes, strict=True):
                hz = rate_hz(mode)
                if hz is not None:
                    led.blink(on_time=1 / (2 * hz), off_time=1 / (2 * hz))
                elif mode == "on":
                    led.on()
                else:
                    led.off()
        self._modes = modes
        self.hub.update("leds", green=modes[0], red=modes[1])
        log.debug("leds: green %s, red %s", *modes)
