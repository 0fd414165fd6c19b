"""The client's address and scheme behind the HTTPS front (nginx on the device).

nginx connects from loopback, so `request.remote` is 127.0.0.1 for everyone: login rate
limiting would lock every client out together, and each request would look like plain
HTTP (no Secure cookie). nginx says who the client was (X-Forwarded-For) and how it came
(X-Forwarded-Proto). Those headers are believed only from a peer in `web.trusted_proxies`;
from anyone else they are the client's own claim and ignored, or a client could choose
its own rate-limit key or pass plain HTTP off as HTTPS.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _trusted(address: str | None, proxies: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False  # a Unix socket, or nothing
    return any(ip in net for net in proxies)


def client_address(header_values: Sequence[str], proxies: Sequence[Network]) -> str | None:
    """The client in X-Forwarded-For: the rightmost address that is not a trusted proxy.
    What is left of it was written by the client and proves nothing. None if the header
    is missing or the first untrusted entry is not an address."""
    entries = [e.strip() for value in header_values for e in value.split(",")]
    for entry in reversed(entries):
        try:
            ip = ipaddress.ip_address(entry)
        except ValueError:
            return None
        if not any(ip in net for net in proxies):
            return str(ip)
    return None


def forwarded_middleware(proxies: Sequence[Network]) -> Middleware:
    """Rewrites remote and scheme of requests that come through a trusted proxy."""

    @web.middleware
    async def forwarded(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not proxies or not _trusted(request.remote, proxies):
            return await handler(request)
        changes: dict[str, Any] = {}
        client = client_address(request.headers.getall("X-Forwarded-For", []), proxies)
        if client is not None:
            changes["remote"] = client
        proto = request.headers.get("X-Forwarded-Proto", "").strip().lower()
        if proto in ("http", "https"):
            changes["scheme"] = proto
        return await handler(request.clone(**changes) if changes else request)

    return forwarded
