"""The status hub as the uplink tests watch it: a section's fields, waiting for an
uplink's state, and a hub that notes every update with its time."""

from __future__ import annotations

import time
from typing import Any

from appliance.status import StatusHub
from tests.uplink_peer_common import wait_for


def section(hub: StatusHub, name: str) -> dict[str, Any]:
    return dict(hub.snapshot()["sections"].get(name, {}))


def wait_state(hub: StatusHub, name: str, state: str, timeout: float) -> float:
    """Wait until `uplink.<name>` is in `state`; time.monotonic() when it was seen."""
    wait_for(lambda: section(hub, f"uplink.{name}").get("state") == state, timeout,
             f"uplink.{name} to be {state} (now {section(hub, f'uplink.{name}')})", step=0.01)
    return time.monotonic()


class ObservedHub(StatusHub):
    """The real status hub, noting every update with its time, so that no state is
    missed however briefly a section was in it."""

    def __init__(self) -> None:
        super().__init__()
        self.updates: list[tuple[float, str, dict[str, Any]]] = []  # (monotonic, section, …)
        self.transitions: list[tuple[float, str, str]] = []  # (monotonic, section, state)

    def update(self, section: str, **fields: Any) -> None:
        now = time.monotonic()
        self.updates.append((now, section, dict(fields)))
        if "state" in fields:
            self.transitions.append((now, section, str(fields["state"])))
        super().update(section, **fields)

    def values(self, section: str, key: str) -> list[Any]:
        """The distinct values `key` of `section` was given, in order."""
        out: list[Any] = []
        for _, sec, fields in list(self.updates):
            if sec == section and key in fields and (not out or out[-1] != fields[key]):
                out.append(fields[key])
        return out

    def states(self, name: str, after: float = 0.0) -> list[str]:
        """The states `uplink.<name>` was given since `after`."""
        return [st for t, sec, st in list(self.transitions)
                if sec == f"uplink.{name}" and t >= after]

    def first(self, name: str, state: str, after: float) -> float | None:
        """When `uplink.<name>` was first given `state` at or after `after`."""
        return next((t for t, sec, st in list(self.transitions)
                     if sec == f"uplink.{name}" and st == state and t >= after), None)
