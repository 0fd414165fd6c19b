"""Captive portal: while the setup access point is up, its clients land on the setup page.

The access point's DNS answers every name with the device's address
(image/rootfs/etc/NetworkManager/dnsmasq-shared.d/), so a phone's connectivity check
(connectivitycheck.gstatic.com/generate_204, captive.apple.com/hotspot-detect.html,
www.msftconnecttest.com/connecttest.txt) reaches this server with another site's name in
Host. Any such request gets a 302 to the setup page at the access point's address, which
makes the phone offer "sign in to network" and open it. Requests for the device's own
names or addresses are served as always; so are clients known to be elsewhere (on the
LAN, as nginx reports them in X-Forwarded-For), whatever name they use.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from appliance.device.hotspot import AP_ADDRESS, AP_PREFIX
from appliance.web.backend import BACKEND_KEY

SETUP_PATH = "/setup"
_AP_NETWORK = ipaddress.ip_network(f"{AP_ADDRESS}/{AP_PREFIX}", strict=False)


def _host_name(host: str) -> str:
    """The name in a Host header, without port or IPv6 brackets, lower case."""
    if host.startswith("["):
        return host[1:].partition("]")[0].lower()
    return host.rpartition(":")[0].lower() if host.count(":") == 1 else host.lower()


def own_host(host: str) -> bool:
    """Whether `host` (a Host header) names this device: an address, or its host name."""
    name = _host_name(host).rstrip(".")
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    hostname = socket.gethostname().lower()
    return name in ("", "localhost", hostname, f"{hostname}.local")


def from_elsewhere(remote: str | None) -> bool:
    """A client known not to be on the access point (loopback: nginx, or a test)."""
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return False
    return not address.is_loopback and address not in _AP_NETWORK


@web.middleware
async def captive_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if own_host(request.host) or from_elsewhere(request.remote):
        return await handler(request)
    # Another site's name: only now read the status (a copy), rarely on the LAN.
    hotspot: dict[str, Any] = request.app[BACKEND_KEY].hub.snapshot()["sections"].get(
        "hotspot", {})
    if not hotspot.get("active"):
        return await handler(request)
    location = f"http://{hotspot.get('address') or AP_ADDRESS}{SETUP_PATH}"
    # Never cached: the same check must reach the network itself once it is set up.
    return web.Response(status=302, headers={"Location": location,
                                             "Cache-Control": "no-store"})
