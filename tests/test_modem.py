"""The modem monitor against a modem simulated on a pty pair (tests/modem_sim.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.config.schema import Modem as ModemConfig
from appliance.device.modem import (
    ModemMonitor,
    csq_dbm,
    parse_cops,
    parse_csq,
    parse_registration,
    signal_quality,
)
from appliance.status import StatusHub
from tests.modem_sim import GARBAGE, ModemSim

CMD_TIMEOUT_S = 0.3


@pytest.fixture
def link(tmp_path: Path) -> Path:
    return tmp_path / "ttyMODEM"


@pytest.fixture
def sim(link: Path) -> Iterator[ModemSim]:
    s = ModemSim(link)
    yield s
    s.close()


def monitor(hub: StatusHub, link: Path, poll_s: float = 0.1) -> ModemMonitor:
    cfg = ModemConfig.model_validate({"enabled": True, "port": str(link), "poll_s": poll_s})
    return ModemMonitor(cfg, hub, cmd_timeout_s=CMD_TIMEOUT_S, reopen_first_s=0.05,
                        reopen_cap_s=0.3)


def modem(hub: StatusHub) -> dict[str, Any]:
    section: dict[str, Any] = hub.snapshot()["sections"].get("modem", {})
    return section


def wait_until(hub: StatusHub, cond: Callable[[dict[str, Any]], bool],
               timeout: float = 8) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = modem(hub)
        if cond(m):
            return m
        time.sleep(0.02)
    raise AssertionError(f"modem section never got there: {modem(hub)}")


def fresh_ok(hub: StatusHub, after: int = 1) -> dict[str, Any]:
    """Wait for `after` more polls that answered (polls done before now do not count)."""
    start = modem(hub).get("polls", 0)
    return wait_until(hub, lambda m: m.get("state") == "ok" and m["polls"] >= start + after)


EXPECTED = {"state": "ok", "error": None, "csq": 18, "signal_dbm": -77,
            "signal_quality": "good", "registered": True, "roaming": False,
            "registration": "home", "operator": "Example Tel", "technology": "LTE"}


def subset(m: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
    return {k: m.get(k) for k in expected}


def test_parsers() -> None:
    assert [csq_dbm(r) for r in (0, 1, 18, 31, 99, None)] == [-113, -111, -77, -51, None, None]
    assert [signal_quality(r) for r in (0, 5, 12, 17, 25, 99)] == [
        "none", "poor", "fair", "good", "excellent", None]
    assert parse_csq("+CSQ: 18,99") == 18
    assert parse_csq("+CSQ: 99,99") is None
    assert parse_csq("+CREG: 0,1") is None
    # The reply to AT+CREG? carries <n> first; the unsolicited form starts with <stat>.
    assert parse_registration("+CREG: 0,5", "+CREG") == 5
    assert parse_registration('+CREG: 2,1,"00C3","0000A0C1",7', "+CREG") == 1
    assert parse_registration("+CREG: 1", "+CREG") is None
    assert parse_registration('+CREG: 1,"00C3","0000A0C1",7', "+CREG") is None
    assert parse_registration("+CEREG: 0,1", "+CREG") is None
    assert parse_cops('+COPS: 0,0,"Vodafone UK",7') == ("Vodafone UK", "LTE")
    assert parse_cops('+COPS: 0,0,"Op, Ltd",2') == ("Op, Ltd", "UMTS")
    assert parse_cops('+COPS: 1,0,"X"') == ("X", None)
    assert parse_cops("+COPS: 0") == (None, None)
    assert parse_cops("OK") is None


@pytest.mark.parametrize("echo", [True, False], ids=["echo-stays-on", "echo-off"])
def test_reads_the_modem(sim: ModemSim, link: Path, echo: bool) -> None:
    sim.echo_locked = echo  # one that ignores ATE0 keeps echoing every command
    hub = StatusHub()
    mon = monitor(hub, link)
    mon.start()
    try:
        m = fresh_ok(hub, after=2)
        assert subset(m, EXPECTED) == EXPECTED
        assert m["port"] == str(link) and m["opens"] == 1
        assert sim.echo is echo
        assert sim.commands[:3] == ["ATE0", "AT+CMEE=1", "AT+COPS=3,0"]
        assert sim.commands[3:7] == ["AT+CSQ", "AT+CREG?", "AT+CEREG?", "AT+COPS?"]
        # Changes show at the next poll: roaming, weaker signal, 3G.
        sim.creg, sim.cereg, sim.csq, sim.act = 5, 5, (7, 99), 2
        m = fresh_ok(hub, after=2)
        assert subset(m, {"registered": True, "roaming": True, "registration": "roaming",
                          "signal_dbm": -99, "signal_quality": "poor", "technology": "UMTS"})
        sim.creg = sim.cereg = 2
        sim.csq, sim.operator = (99, 99), None
        m = fresh_ok(hub, after=2)
        assert subset(m, {"registered": False, "registration": "searching", "csq": None,
                          "signal_dbm": None, "operator": None, "technology": None})
    finally:
        mon.stop()


def test_lte_only_registration_counts(sim: ModemSim, link: Path) -> None:
    sim.creg, sim.cereg = 0, 1  # not on circuit-switched, registered on EPS
    hub = StatusHub()
    mon = monitor(hub, link)
    mon.start()
    try:
        assert fresh_ok(hub, after=2)["registered"] is True
    finally:
        mon.stop()


def test_garbage_and_urcs_in_the_middle(sim: ModemSim, link: Path) -> None:
    hub = StatusHub()
    mon = monitor(hub, link)
    mon.start()
    try:
        fresh_ok(hub)
        sim.fault = "garbage"  # noise before every reply
        sim.urc_in_replies = "+CREG: 5"  # a URC (unsolicited form) inside every reply
        sim.send(GARBAGE + b"\r\nRING\r\n")
        m = fresh_ok(hub, after=3)
        assert subset(m, EXPECTED) == EXPECTED  # "+CREG: 5" is not the reply: still home
        assert mon._port is not None and mon._port.urcs > 0
        sim.urc_in_replies = '+CEREG: 1,"1A2B","01A2B3C4",7'
        m = fresh_ok(hub, after=2)
        assert subset(m, EXPECTED) == EXPECTED
        assert m["opens"] == 1  # noise never made it reopen the port
    finally:
        mon.stop()


def test_error_replies(sim: ModemSim, link: Path) -> None:
    sim.faults = {"AT+CEREG?": "error", "AT+CSQ": "cme_error"}
    hub = StatusHub()
    mon = monitor(hub, link)
    mon.start()
    try:
        m = fresh_ok(hub, after=2)
        # What answered is known; what failed is unknown and said so.
        assert subset(m, {"registered": True, "operator": "Example Tel", "csq": None,
                          "signal_dbm": None})
        assert m["error"] == "AT+CSQ: +CME ERROR: 10; AT+CEREG?: ERROR"
        sim.faults = {}
        m = fresh_ok(hub, after=2)
        assert m["error"] is None and m["csq"] == 18
    finally:
        mon.stop()


def test_silence_then_recovery(sim: ModemSim, link: Path) -> None:
    hub = StatusHub()
    mon = monitor(hub, link)
    mon.start()
    try:
        fresh_ok(hub)
        sim.fault = "silence"
        m = wait_until(hub, lambda m: m.get("state") == "no_response")
        assert m["signal_dbm"] is None and m["registered"] is None  # not stale values
        # Still silent after several polls: the port is reopened (and set up again).
        wait_until(hub, lambda m: m.get("opens", 0) >= 2, timeout=15)
        sim.fault = None
        m = fresh_ok(hub)
        assert subset(m, EXPECTED) == EXPECTED
    finally:
        mon.stop()


def test_unplug_and_replug(sim: ModemSim, link: Path) -> None:
    hub = StatusHub()
    mon = monitor(hub, link)
    mon.start()
    try:
        fresh_ok(hub)
        sim.unplug()
        m = wait_until(hub, lambda m: m.get("state") == "absent")
        assert m["registered"] is None and m["signal_dbm"] is None  # not stale values
        m = wait_until(hub, lambda m: "does not exist" in (m.get("error") or ""))
        assert m["state"] == "absent"
        time.sleep(0.5)  # it keeps trying, backing off, without failing
        assert mon._thread is not None and mon._thread.is_alive()
        sim.plug()
        m = fresh_ok(hub)
        assert subset(m, EXPECTED) == EXPECTED
        assert m["opens"] == 2
        assert sim.commands.count("ATE0") == 2  # set up again after the replug
    finally:
        mon.stop()


def test_absent_at_start_then_plugged(link: Path) -> None:
    hub = StatusHub()
    mon = monitor(hub, link)
    mon.start()
    try:
        m = wait_until(hub, lambda m: m.get("state") == "absent" and bool(m.get("error")))
        assert "does not exist" in m["error"]
        sim = ModemSim(link)
        try:
            assert subset(fresh_ok(hub), EXPECTED) == EXPECTED
        finally:
            sim.close()
    finally:
        mon.stop()


async def test_polls_off_the_event_loop_and_stops_promptly(sim: ModemSim, link: Path) -> None:
    sim.fault = "silence"  # every command waits for its timeout
    hub = StatusHub()
    mon = monitor(hub, link, poll_s=0.1)
    t0 = time.monotonic()
    mon.start()
    assert time.monotonic() - t0 < 0.1
    # The loop keeps its pace while the monitor waits on the silent modem.
    lags = []
    for _ in range(40):
        t = time.monotonic()
        await asyncio.sleep(0.01)
        lags.append(time.monotonic() - t - 0.01)
    assert max(lags) < 0.05
    assert "AT+CSQ" in sim.commands or "ATE0" in sim.commands
    t0 = time.monotonic()
    mon.stop()
    assert time.monotonic() - t0 < 0.5
    assert mon._thread is None and mon._port is None


def test_disabled_does_nothing(link: Path) -> None:
    hub = StatusHub()
    mon = ModemMonitor(ModemConfig.model_validate({"port": str(link)}), hub)
    mon.start()
    mon.stop()
    assert "modem" not in hub.snapshot()["sections"]
