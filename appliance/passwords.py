"""Admin password hashing: scrypt from the standard library, one random salt per password.

The parameters travel inside the stored string ("scrypt$N$r$p$salt$hash"), so they can be
raised later without locking anyone out: `needs_rehash` tells when a login should store
the password again with the current ones.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

# 64 MiB of memory per hash (128 * r * N bytes), about 0.2 s on a desktop core and
# 1-2 s on a Pi Zero 2 W: the most a 512 MB board can afford on each login attempt.
SCRYPT_N = 2**16
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32
MIN_LENGTH = 10
MAX_LENGTH = 1024  # scrypt takes any length; a bound keeps request bodies small


class PasswordError(ValueError):
    """A password that may not be set (too short, too long)."""


def check_new(password: str) -> None:
    if len(password) < MIN_LENGTH:
        raise PasswordError(f"the password needs at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise PasswordError(f"the password may have at most {MAX_LENGTH} characters")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    # OpenSSL refuses by default above 32 MiB: allow what these parameters need, no more.
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                          maxmem=129 * r * n + (1 << 20), dklen=KEY_BYTES)


def hash_password(password: str) -> str:
    check_new(password)
    salt = os.urandom(SALT_BYTES)
    key = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def _parse(encoded: str) -> tuple[int, int, int, bytes, bytes] | None:
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return None
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, key = base64.b64decode(parts[4], validate=True), base64.b64decode(parts[5],
                                                                              validate=True)
    except ValueError:
        return None
    # Bounds, so a tampered file cannot make a login take gigabytes.
    if not (2 <= n <= 2**20 and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16):
        return None
    return n, r, p, salt, key


def verify_password(password: str, encoded: str) -> bool:
    parsed = _parse(encoded)
    if parsed is None or len(password) > MAX_LENGTH:
        return False
    n, r, p, salt, key = parsed
    return hmac.compare_digest(_scrypt(password, salt, n, r, p), key)


def needs_rehash(encoded: str) -> bool:
    parsed = _parse(encoded)
    return parsed is None or parsed[:3] != (SCRYPT_N, SCRYPT_R, SCRYPT_P)
