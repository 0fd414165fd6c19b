"""The status hub: the one source of truth that every view (API, LEDs, metrics, fleet) reads.

Components on any thread publish their own section with `update`; views read a
snapshot or the derived device state. Nothing else keeps a copy of this state.

Sections: `daemon`; `media.video` / `media.audio` (a source: state, error, source,
frames, fps, dropped); `encode.<rung>` (a video rung's encoder: encoder "hardware" or
"x264", input "main" / "lores" / "..., scaled", width, height, bitrate_kbps, frames,
repeated_frames, dropped_frames, lateness_ms_avg / lateness_ms_max over the last second:
wall time as a packet leaves the encoder minus its capture time); `package.<track>`;
`uplink.<name>`; `leds`, `button`, `modem`, `thermal` (appliance.device: `thermal.degraded`
shows the device as degraded, `button.maintenance` as in maintenance during a factory reset);
`update` (appliance.update.installer: in maintenance while a bundle downloads or installs).
"""

from __future__ import annotations

import copy
import threading
import time
from typing import Any, Literal

DeviceState = Literal[
    "starting", "safe_mode", "no_source", "live_local", "connecting", "live", "degraded",
    "maintenance",
]


class StatusHub:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sections: dict[str, dict[str, Any]] = {}
        self.version = 0
        self.started = time.time()

    def update(self, section: str, **fields: Any) -> None:
        """Merge `fields` into `section` (e.g. "media.video", "encode.720p")."""
        with self._lock:
            self._sections.setdefault(section, {}).update(fields)
            self._sections[section]["updated"] = time.time()
            self.version += 1

    def remove(self, section: str) -> None:
        """Forget a section whose component is gone (a removed uplink)."""
        with self._lock:
            if self._sections.pop(section, None) is not None:
                self.version += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            sections = copy.deepcopy(self._sections)
        return {
            "state": derive_state(sections),
            "uptime_s": round(time.time() - self.started, 1),
            "sections": sections,
        }

    def state(self) -> DeviceState:
        with self._lock:
            return derive_state(self._sections)


def derive_state(sections: dict[str, dict[str, Any]]) -> DeviceState:
    """The device state of SPEC's LED table, from the published sections."""
    daemon = sections.get("daemon", {})
    if daemon.get("maintenance") or sections.get("button", {}).get("maintenance"):
        return "maintenance"  # the factory reset the button started
    if sections.get("update", {}).get("state") in ("downloading", "installing", "rebooting"):
        return "maintenance"  # an update (appliance.update.installer)
    if daemon.get("safe_mode"):
        return "safe_mode"
    video = sections.get("media.video", {})
    if video.get("state") == "no_source":
        return "no_source"
    if video.get("state") != "live":
        return "starting"
    uplinks = [v for k, v in sections.items() if k.startswith("uplink.") and v.get("enabled")]
    states = [u.get("state") for u in uplinks]
    if uplinks and not any(s == "live" for s in states):
        return "connecting"
    if sections.get("thermal", {}).get("degraded"):
        return "degraded"  # throttling, or the load stepped down against it
    if not uplinks:
        return "live_local"
    if all(s == "live" for s in states):
        return "live"
    return "degraded"
