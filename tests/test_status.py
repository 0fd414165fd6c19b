"""The device state that LEDs, page and API show is derived from what components publish."""

from __future__ import annotations

import threading

from appliance.status import StatusHub


def test_state_follows_the_published_sections() -> None:
    hub = StatusHub()
    assert hub.state() == "starting"
    hub.update("media.video", state="no_source", error="no camera")
    assert hub.state() == "no_source"
    hub.update("media.video", state="live", error=None)
    assert hub.state() == "live_local"  # no uplink configured
    hub.update("uplink.primary", enabled=True, state="connecting")
    assert hub.state() == "connecting"
    hub.update("uplink.backup", enabled=True, state="live")
    assert hub.state() == "degraded"  # one of two enabled uplinks down
    hub.update("uplink.primary", state="live")
    assert hub.state() == "live"
    hub.update("uplink.backup", enabled=False, state="disabled")
    assert hub.state() == "live"  # a disabled uplink does not count
    hub.update("daemon", safe_mode=True)
    assert hub.state() == "safe_mode"
    hub.update("daemon", maintenance=True)
    assert hub.state() == "maintenance"


def test_snapshot_is_a_copy_and_updates_from_threads_all_land() -> None:
    hub = StatusHub()

    def publish(n: int) -> None:
        for i in range(500):
            hub.update(f"package.t{n}", parts=i)

    threads = [threading.Thread(target=publish, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = hub.snapshot()
    assert {snap["sections"][f"package.t{n}"]["parts"] for n in range(4)} == {499}
    assert hub.version == 2000
    snap["sections"]["package.t0"]["parts"] = -1  # a view cannot write back
    assert hub.snapshot()["sections"]["package.t0"]["parts"] == 499
