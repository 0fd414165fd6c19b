"""The four device components together, for the daemon to start and stop as one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from appliance.config.schema import Config
from appliance.device.button import DeviceButton
from appliance.device.leds import StatusLeds
from appliance.device.modem import ModemMonitor
from appliance.device.thermal import ThermalGovernor
from appliance.status import StatusHub


class DeviceComponents:
    """Status LEDs, button, modem monitor and thermal governor, each per its config
    section (a disabled one does nothing). `on_fatal` gets an unexpected exception from
    any of their threads; `on_factory_reset` is called once the button's factory reset
    has reset the files (the daemon must restart then)."""

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

    def start(self) -> None:
        """Starts threads only; returns at once (no component blocks on its hardware)."""
        self.leds.start()
        self.button.start()
        self.modem.start()
        self.thermal.start()

    def stop(self) -> None:
        """Blocks up to a few seconds (joins threads): call through asyncio.to_thread."""
        self.thermal.stop()
        self.modem.stop()
        self.button.stop()
        self.leds.stop()
