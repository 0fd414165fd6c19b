"""The device components together, for the daemon to start and stop as one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from appliance.board import detect_board
from appliance.config.schema import Config
from appliance.credentials import CredentialStore
from appliance.device.button import DeviceButton
from appliance.device.hotspot import AUTO_START_S, SetupAccessPointPolicy
from appliance.device.leds import StatusLeds
from appliance.device.modem import ModemMonitor
from appliance.device.thermal import ThermalGovernor
from appliance.provision.firstboot import read_report
from appliance.status import StatusHub
from appliance.update.handlers import image_version


class DeviceComponents:
    """Status LEDs, button, modem monitor, thermal governor and the setup access point
    policy, each per its config section (a disabled one does nothing). `on_fatal` gets an
    unexpected exception from any of their threads; `on_factory_reset` is called once the
    button's factory reset has reset the files (the daemon must restart then)."""

    def __init__(self, cfg: Config, hub: StatusHub, *, config_path: Path | None,
                 state_dir: Path, recordings_dir: Path | None,
                 on_fatal: Callable[[BaseException], None],
                 on_factory_reset: Callable[[], None]):
        self.leds = StatusLeds(cfg.leds, hub, on_fatal=on_fatal)
        self.button = DeviceButton(cfg.button, hub, config_path=config_path,
                                   state_dir=state_dir, recordings_dir=recordings_dir,
                                   on_factory_reset=on_factory_reset, on_fatal=on_fatal)
        self.modem = ModemMonitor(cfg.modem, hub, on_fatal=on_fatal)
        self.thermal = ThermalGovernor(cfg.thermal, hub, on_fatal=on_fatal)
        self.hub, self.state_dir = hub, state_dir
        creds = CredentialStore(state_dir)
        # The access point comes up by itself only on the appliance: one of its boards, or
        # any machine running its OS image. On a desktop that merely lacks a network it
        # would take over the Wi-Fi.
        appliance = detect_board().key != "generic" or image_version() is not None
        self.setup_ap = SetupAccessPointPolicy(
            cfg.button.hotspot_interface, hub, state_dir,
            configured=lambda: not creds.setup_required(),
            auto_start_s=AUTO_START_S if appliance else None,
            on_active=self._access_point_seen, on_fatal=on_fatal)

    def _access_point_seen(self, active: bool) -> None:
        # A short press of the button takes down an access point it did not start itself
        # (the policy's), and does nothing once something else took the button's down.
        self.button.ap_up = active

    def start(self) -> None:
        """Starts threads only; returns at once (no component blocks on its hardware)."""
        # What this boot's `appliance firstboot` did with the setup file (errors included).
        report = read_report(self.state_dir)
        if report is not None:
            self.hub.update("firstboot", **report)
        self.leds.start()
        self.button.start()
        self.modem.start()
        self.thermal.start()
        self.setup_ap.start()

    def stop(self) -> None:
        """Blocks up to a few seconds (joins threads): call through asyncio.to_thread."""
        self.setup_ap.stop()
        self.thermal.stop()
        self.modem.stop()
        self.button.stop()
        self.leds.stop()
