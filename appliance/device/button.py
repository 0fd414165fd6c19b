"""The button (SPEC: BCM 22, optional): what a press does depends on how long it was held.

Released after `setup_hold_s` (5 s): start the setup access point. Released after
`reset_hold_s` (15 s): factory reset. A shorter press stops the access point when it
is up, else does nothing. Acting on release, not while held, means one press never
does both, and a button stuck down (or shorted) never wipes the device.

The action runs on a worker thread (nmcli can take seconds; gpiozero's callback thread
must stay free), one at a time. Hub section `button`: pin, mock, held (what releasing
now would do), last_press_s, action (setup_ap / stop_ap / factory_reset), action_state
(running / done / failed / not available), error, ssid, and maintenance while a factory
reset runs (the LEDs alternate) until the daemon restarts into the defaults.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from appliance.config.schema import Button as ButtonConfig
from appliance.device import hotspot
from appliance.device.reset import factory_reset
from appliance.status import StatusHub

log = logging.getLogger(__name__)

Action = Literal["setup_ap", "stop_ap", "factory_reset"]


class DeviceButton:
    def __init__(self, cfg: ButtonConfig, hub: StatusHub, *, config_path: Path | None,
                 state_dir: Path, recordings_dir: Path | None,
                 on_factory_reset: Callable[[], None] | None = None, root: Path = Path("/"),
                 on_fatal: Callable[[BaseException], None] | None = None):
        """`on_factory_reset` is called (on the worker thread) once the files are reset:
        the daemon restarts then, into the defaults. `root` is where /proc and /sys are,
        for the device's serial number. `on_fatal`: called with an unexpected exception
        of an action (a bug; nmcli's and the file system's faults are handled)."""
        self.cfg, self.hub = cfg, hub
        self.config_path, self.state_dir, self.recordings_dir = (
            config_path, state_dir, recordings_dir)
        self.on_factory_reset = on_factory_reset
        self.on_fatal = on_fatal
        self.root = root
        self._button: Any = None
        self._pressed_at: float | None = None
        self._busy = threading.Lock()
        self._worker: threading.Thread | None = None
        self.ap_up = False

    def start(self) -> None:
        if not self.cfg.enabled:
            self.hub.update("button", enabled=False)
            return
        from gpiozero import Button
        from gpiozero.exc import GPIOZeroError

        from appliance.device.gpio import pin_factory

        factory, mock = pin_factory()
        try:
            button = Button(self.cfg.pin, pull_up=True, bounce_time=0.05,
                            hold_time=self.cfg.setup_hold_s, pin_factory=factory)
        except (GPIOZeroError, OSError) as exc:
            log.error("button: cannot use GPIO %d: %s", self.cfg.pin, exc)
            self.hub.update("button", enabled=True, error=str(exc))
            return
        button.when_pressed = self._pressed
        button.when_released = self._released
        button.when_held = self._held
        self._button = button
        self.hub.update("button", enabled=True, pin=self.cfg.pin, mock=mock, held=None,
                        error=None)

    def stop(self) -> None:
        if self._button is not None:
            self._button.close()
            self._button = None
        worker = self._worker
        if worker is not None:
            worker.join(timeout=5)  # an nmcli still running ends with its own timeout

    # -- gpiozero callbacks (its own thread) ------------------------------------------------

    def _pressed(self) -> None:
        self._pressed_at = time.monotonic()

    def _held(self) -> None:
        # Past the first threshold: tell the page what letting go now would do. A timer
        # says when the second one passes too.
        self.hub.update("button", held="setup_ap")
        pressed_at = self._pressed_at
        timer = threading.Timer(self.cfg.reset_hold_s - self.cfg.setup_hold_s,
                                self._still_held, args=(pressed_at,))
        timer.daemon = True
        timer.start()

    def _still_held(self, pressed_at: float | None) -> None:
        if self._pressed_at == pressed_at and pressed_at is not None:
            self.hub.update("button", held="factory_reset")

    def _released(self) -> None:
        pressed_at, self._pressed_at = self._pressed_at, None
        if pressed_at is None:
            return
        held = time.monotonic() - pressed_at
        self.hub.update("button", held=None, last_press_s=round(held, 2))
        action: Action | None
        if held >= self.cfg.reset_hold_s:
            action = "factory_reset"
        elif held >= self.cfg.setup_hold_s:
            action = "setup_ap"
        else:
            action = "stop_ap" if self.ap_up else None
        log.info("button: released after %.1f s%s", held, f": {action}" if action else "")
        if action is not None:
            self.run_action(action)

    # -- actions ----------------------------------------------------------------------------

    def run_action(self, action: Action) -> bool:
        """Start `action` on the worker thread; False when another one is still running."""
        if not self._busy.acquire(blocking=False):
            log.warning("button: %s ignored, an action is still running", action)
            return False
        self.hub.update("button", action=action, action_state="running", error=None)
        self._worker = threading.Thread(target=self._act, args=(action,),
                                        name=f"button-{action}", daemon=True)
        self._worker.start()
        return True

    def _act(self, action: Action) -> None:
        try:
            if action == "factory_reset":
                self._factory_reset()
            else:
                self._access_point(action)
        except Exception as exc:
            log.exception("button: %s failed", action)
            self.hub.update("button", action_state="failed", error=repr(exc))
            if self.on_fatal is not None:
                self.on_fatal(exc)
        finally:
            self._busy.release()

    def _access_point(self, action: Action) -> None:
        nmcli = hotspot.nmcli_path()
        if nmcli is None:
            log.warning("button: %s not available here (no nmcli: NetworkManager's client)",
                        action)
            self.hub.update("button", action_state="not available",
                            error="no nmcli (NetworkManager) on this system")
            return
        try:
            if action == "setup_ap":
                name = hotspot.ssid(self.root)
                self.state_dir.mkdir(parents=True, exist_ok=True)
                password = hotspot.hotspot_password(self.state_dir)
                hotspot.start_access_point(nmcli, self.cfg.hotspot_interface, name, password,
                                           self.state_dir)
                self.ap_up = True
                log.info("button: setup access point %s is up on %s", name,
                         self.cfg.hotspot_interface)
                self.hub.update("button", action_state="done", ssid=name, access_point=True)
            else:
                hotspot.stop_access_point(nmcli)
                self.ap_up = False
                self.hub.update("button", action_state="done", access_point=False)
        except (hotspot.HotspotError, OSError) as exc:
            log.error("button: %s failed: %s", action, exc)
            self.hub.update("button", action_state="failed", error=str(exc))

    def _factory_reset(self) -> None:
        self.hub.update("button", maintenance=True)  # the LEDs alternate from here
        log.warning("button: factory reset")
        try:
            factory_reset(self.config_path, self.state_dir, self.recordings_dir)
        except OSError as exc:
            log.error("button: factory reset failed: %s", exc)
            self.hub.update("button", action_state="failed", error=str(exc), maintenance=False)
            return
        self.hub.update("button", action_state="done")
        if self.on_factory_reset is not None:
            self.on_factory_reset()
