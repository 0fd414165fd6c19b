"""All `[[uplink]]` destinations at once; a config change touches only what changed."""

from __future__ import annotations

import logging
from collections.abc import Callable

from appliance.config.schema import Uplink
from appliance.media.bus import MediaBus
from appliance.status import StatusHub
from appliance.uplink.destination import Destination

log = logging.getLogger(__name__)


class UplinkManager:
    def __init__(self, bus: MediaBus, hub: StatusHub, top_rung: str, audio: str | None,
                 on_fatal: Callable[[BaseException], None]):
        self.bus, self.hub = bus, hub
        self.on_fatal = on_fatal
        self.top_rung, self.audio = top_rung, audio
        self.destinations: dict[str, Destination] = {}

    def apply(self, uplinks: list[Uplink]) -> None:
        """Run exactly `uplinks`: stop removed or changed ones, start new or changed ones."""
        wanted = {u.name: u for u in uplinks}
        for name, dest in list(self.destinations.items()):
            if wanted.get(name) != dest.cfg:
                log.info("uplink %s: %s", name, "changed" if name in wanted else "removed")
                dest.stop()
                del self.destinations[name]
                if name not in wanted:
                    self.hub.remove(dest.section)
        for name, cfg in wanted.items():
            if name not in self.destinations:
                dest = Destination(cfg, cfg.rung or self.top_rung, self.bus, self.hub,
                                   self.on_fatal, audio=self.audio)
                self.destinations[name] = dest
                dest.start()

    def stop(self) -> None:
        for dest in self.destinations.values():
            dest.stop()
        self.destinations.clear()
