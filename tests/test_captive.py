"""The captive portal, against the real daemon: while NetworkManager (the stand-in of
tests/nmcli_sim.py) reports the setup access point up, requests for other sites' names
are sent to the setup page at the access point's address; once it is down, they are not.
"""

from __future__ import annotations

import http.client
import re
import socket
import time
from pathlib import Path

from appliance.device.hotspot import AP_ADDRESS, CONNECTION
from appliance.web.captive import from_elsewhere, own_host
from tests import nmcli_sim
from tests.api_client import LIGHT, admin
from tests.daemon_proc import DaemonProc, running_daemon

ROOT = Path(__file__).resolve().parents[1]
DNSMASQ = ROOT / "image/rootfs/etc/NetworkManager/dnsmasq-shared.d"
# The connectivity checks of Android, Apple's systems and Windows.
PROBES = [("connectivitycheck.gstatic.com", "/generate_204"),
          ("captive.apple.com", "/hotspot-detect.html"),
          ("www.msftconnecttest.com", "/connecttest.txt")]
CONFIG = ('[web]\nlisten = "127.0.0.1:{port}"\ntrusted_proxies = "127.0.0.1"\n'
          '[audio]\nenabled = false\n'
          + LIGHT.replace("[video]\n", '[video]\nsource = "synthetic"\n'))


def get(d: DaemonProc, host: str, path: str, **headers: str) -> tuple[int, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", int(d.url.rsplit(":", 1)[1]), timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host, **headers})
        resp = conn.getresponse()
        resp.read()
        return resp.status, dict(resp.getheaders())
    finally:
        conn.close()


def hotspot_section(d: DaemonProc) -> dict[str, object]:
    section: dict[str, object] = admin(d).get("/api/v1/status").json()["sections"]["hotspot"]
    return section


def test_redirects_while_the_access_point_is_up(tmp_path: Path) -> None:
    state = nmcli_sim.OFFLINE | {"devices": [
        {"device": "wlan0", "type": "wifi", "state": "connected", "connection": CONNECTION},
        {"device": "eth0", "type": "ethernet", "state": "unavailable", "connection": ""}]}
    env = nmcli_sim.install(tmp_path, state)
    with running_daemon(tmp_path / "d", CONFIG, env=env) as d:
        # The policy's first look at NetworkManager comes right after the start.
        deadline = time.monotonic() + 20
        while get(d, *PROBES[0])[0] != 302 and time.monotonic() < deadline:
            time.sleep(0.2)
        for host, path in PROBES:
            status, headers = get(d, host, path)
            assert status == 302, host
            assert headers["Location"] == f"http://{AP_ADDRESS}/setup"
            assert headers["Cache-Control"] == "no-store"
        # A client on the access point, through nginx: redirected too.
        status, _ = get(d, "captive.apple.com", "/", **{"X-Forwarded-For": "10.42.0.23"})
        assert status == 302
        # The page itself at the access point's address: the setup form (no password yet).
        assert get(d, AP_ADDRESS, "/setup")[0] == 200
        section = hotspot_section(d)  # (sets the password)
        assert (section["active"], section["address"]) == (True, AP_ADDRESS)
        assert re.fullmatch(r"Appliance-[0-9A-F]{4}", str(section["ssid"]))
        assert section["online"] is False and section["started_by"] == "other"
        assert get(d, AP_ADDRESS, "/setup")[1]["Location"] == "/login"
        # The device's own names, and a LAN client whatever name it uses, as always.
        assert get(d, f"{socket.gethostname()}.local", "/healthz")[0] == 200
        assert get(d, "cam.example.lan", "/healthz", **{"X-Forwarded-For": "192.168.1.20"}
                   )[0] == 200

        # The access point goes down (a short press): foreign names are served again.
        nmcli_sim.set_device(Path(env["NMCLI_STATE"]), "wlan0", "disconnected")
        deadline = time.monotonic() + 20
        while hotspot_section(d)["active"] and time.monotonic() < deadline:
            time.sleep(0.5)
        assert hotspot_section(d)["active"] is False
        assert get(d, "connectivitycheck.gstatic.com", "/healthz")[0] == 200


def test_own_hosts_and_clients() -> None:
    for host in (f"{AP_ADDRESS}", f"{AP_ADDRESS}:80", "127.0.0.1:8080", "[::1]:8080", "::1",
                 "localhost", f"{socket.gethostname()}.local", socket.gethostname().upper()):
        assert own_host(host), host
    for host in ("captive.apple.com", "captive.apple.com:80", "example.com."):
        assert not own_host(host), host
    assert from_elsewhere("192.168.1.20") and from_elsewhere("2001:db8::1")
    assert not from_elsewhere("127.0.0.1") and not from_elsewhere("10.42.0.99")
    assert not from_elsewhere(None)


def test_dnsmasq_sends_every_name_to_the_access_point() -> None:
    lines = [ln.strip() for f in sorted(DNSMASQ.glob("*.conf"))
             for ln in f.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert f"address=/#/{AP_ADDRESS}" in lines
