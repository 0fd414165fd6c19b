"""Signed, expiring playback URLs for /live when `playback.require_token` is on.

A token is "<expiry>.<mac>": the Unix time it stops working and HMAC-SHA256, under the
device's key, of the path prefix it opens ("/live/") and that expiry. It is made only of
digits, letters, "-", "_" and ".", so it goes unescaped into a query, a playlist URI and
a DASH template (which reserves "$").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time

PREFIX = "/live/"
PARAM = "token"
_TOKEN = re.compile(r"([0-9]{1,12})\.([A-Za-z0-9_-]{43})")


def _mac(key: bytes, expires: int) -> str:
    digest = hmac.new(key, f"{PREFIX}\n{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def sign(key: bytes, expires: int) -> str:
    return f"{expires}.{_mac(key, expires)}"


def verify(key: bytes, token: str, now: float | None = None) -> bool:
    m = _TOKEN.fullmatch(token)
    if m is None:
        return False
    expires = int(m.group(1))
    if expires < (time.time() if now is None else now):
        return False
    return hmac.compare_digest(m.group(2), _mac(key, expires))
