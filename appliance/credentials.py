"""The on-disk secrets of the device: admin password hash, API tokens, playback key.

One JSON file in the state directory, mode 0600, written with `save_atomic` (never in
place). The daemon and the command line (`appliance passwd`, `appliance token`) both
change it, so every change is a read-modify-write under an exclusive lock on a file
beside it, and every read notices a newer file (its inode changes with each rename).

API tokens are kept only as their SHA-256: a 256-bit random token cannot be guessed, so a
slow hash would add nothing, and the file alone never lets anyone in.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.config.load import save_atomic
from appliance.passwords import hash_password, needs_rehash, verify_password

FILE_NAME = "secrets.json"
TOKEN_PREFIX = "apl_"
TOKEN_NAME = re.compile(r"[A-Za-z0-9 _.@-]{1,64}")
MAX_TOKENS = 100


class CredentialError(ValueError):
    """A request the store refuses (a bad token name, too many tokens)."""


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: str
    name: str
    created: float  # Unix time

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "created": self.created}


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class CredentialStore:
    def __init__(self, state_dir: Path):
        self.path = state_dir / FILE_NAME
        self._lock_path = state_dir / f".{FILE_NAME}.lock"
        self._mutex = threading.Lock()  # threads of one process; flock is per open file
        self._data: dict[str, Any] = {}
        self._stamp: tuple[int, int, int] | None = None

    # -- file ----------------------------------------------------------------------------

    def _read(self) -> dict[str, Any]:
        """The current contents, re-read only when the file was replaced."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._data, self._stamp = {}, None
            return self._data
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            self._data = data if isinstance(data, dict) else {}
            self._stamp = stamp
        return self._data

    @contextlib.contextmanager
    def _changing(self) -> Iterator[dict[str, Any]]:
        """A copy of the contents to change; written back atomically on success."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._mutex, open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = json.loads(json.dumps(self._read()))
            yield data
            save_atomic(self.path, json.dumps(data, indent=1, sort_keys=True) + "\n", 0o600)
            self._read()

    def _snapshot(self) -> dict[str, Any]:
        with self._mutex:
            return self._read()

    # -- admin password --------------------------------------------------------------------

    def setup_required(self) -> bool:
        return not self._snapshot().get("admin_hash")

    def set_password(self, password: str, *, only_if_unset: bool = False) -> bool:
        """Store `password` (PasswordError if too short); False if `only_if_unset` and one
        was set meanwhile (two first-run setups racing: the first wins)."""
        encoded = hash_password(password)  # outside the lock: it takes a while
        with self._changing() as data:
            if only_if_unset and data.get("admin_hash"):
                return False
            data["admin_hash"] = encoded
            data["admin_set_at"] = time.time()
        return True

    def verify_password(self, password: str) -> bool:
        encoded = self._snapshot().get("admin_hash")
        if not isinstance(encoded, str) or not verify_password(password, encoded):
            return False
        if needs_rehash(encoded):
            self._rehash(password, encoded)
        return True

    def _rehash(self, password: str, old: str) -> None:
        new = hash_password(password)
        with self._changing() as data:
            if data.get("admin_hash") == old:  # unless it was changed meanwhile
                data["admin_hash"] = new

    def password_stamp(self) -> str:
        """Changes whenever the password does: sessions made before a change end with it."""
        encoded = self._snapshot().get("admin_hash") or ""
        return hashlib.sha256(str(encoded).encode()).hexdigest()[:16]

    # -- API tokens ------------------------------------------------------------------------

    def create_token(self, name: str) -> tuple[TokenInfo, str]:
        """A new token: its description, and the token itself (shown once, never stored)."""
        if not TOKEN_NAME.fullmatch(name):
            raise CredentialError("a token name has 1-64 letters, digits, space or _.@-")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        info = TokenInfo(secrets.token_hex(8), name, round(time.time(), 3))
        with self._changing() as data:
            tokens = data.setdefault("tokens", [])
            if len(tokens) >= MAX_TOKENS:
                raise CredentialError(f"at most {MAX_TOKENS} tokens: revoke one first")
            tokens.append({"id": info.id, "name": name, "created": info.created,
                           "sha256": _sha256(token)})
        return info, token

    def tokens(self) -> list[TokenInfo]:
        return [TokenInfo(t["id"], t["name"], t["created"])
                for t in self._snapshot().get("tokens", [])]

    def revoke_token(self, token_id: str) -> bool:
        with self._changing() as data:
            tokens = data.get("tokens", [])
            kept = [t for t in tokens if t["id"] != token_id]
            data["tokens"] = kept
            return len(kept) != len(tokens)

    def check_token(self, token: str) -> TokenInfo | None:
        if not token.startswith(TOKEN_PREFIX) or len(token) > 100:
            return None
        digest = _sha256(token)
        for t in self._snapshot().get("tokens", []):
            if secrets.compare_digest(t["sha256"], digest):
                return TokenInfo(t["id"], t["name"], t["created"])
        return None

    # -- playback URL signing key ----------------------------------------------------------

    def playback_key(self) -> bytes:
        """The device's key for signed /live URLs, made on first use."""
        key = self._snapshot().get("playback_key")
        if not key:
            with self._changing() as data:
                key = data.get("playback_key") or base64.b64encode(os.urandom(32)).decode()
                data["playback_key"] = key
        return base64.b64decode(key)
