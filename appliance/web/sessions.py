"""Login sessions, kept in memory only: a restart of the daemon logs everyone out.

The cookie carries a random 256-bit id; the store keys sessions by its SHA-256, so a
lookup's timing says nothing about stored ids. A session ends after IDLE_S without a
request, ABSOLUTE_S after login whatever happens, at logout, or when the admin password
changes (each session remembers the password it was opened with).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

IDLE_S = 30 * 60.0
ABSOLUTE_S = 12 * 3600.0
MAX_SESSIONS = 32  # beyond that the least recently used goes


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "replace")).hexdigest()


@dataclass(slots=True)
class Session:
    key: str
    csrf_token: str
    created: float
    seen: float
    password_stamp: str


class SessionStore:
    def __init__(self, idle_s: float = IDLE_S, absolute_s: float = ABSOLUTE_S,
                 max_sessions: int = MAX_SESSIONS,
                 clock: Callable[[], float] = time.monotonic):
        self.idle_s, self.absolute_s = idle_s, absolute_s
        self.max_sessions = max_sessions
        self._clock = clock
        self._sessions: dict[str, Session] = {}

    def create(self, password_stamp: str) -> tuple[str, Session]:
        """A new session: the id for the cookie (never stored) and the session."""
        self._expire()
        while len(self._sessions) >= self.max_sessions:
            oldest = min(self._sessions.values(), key=lambda s: s.seen)
            del self._sessions[oldest.key]
        session_id = secrets.token_urlsafe(32)
        now = self._clock()
        session = Session(_key(session_id), secrets.token_urlsafe(32), now, now, password_stamp)
        self._sessions[session.key] = session
        return session_id, session

    def get(self, session_id: str, password_stamp: str, touch: bool = True) -> Session | None:
        """The live session with this id, or None (unknown, expired, password changed)."""
        if not session_id or len(session_id) > 128:
            return None
        session = self._sessions.get(_key(session_id))
        if session is None:
            return None
        now = self._clock()
        if (now - session.seen > self.idle_s or now - session.created > self.absolute_s
                or not secrets.compare_digest(session.password_stamp, password_stamp)):
            del self._sessions[session.key]
            return None
        if touch:
            session.seen = now
        return session

    def drop(self, session: Session) -> None:
        self._sessions.pop(session.key, None)

    def __len__(self) -> int:
        return len(self._sessions)

    def _expire(self) -> None:
        now = self._clock()
        for s in list(self._sessions.values()):
            if now - s.seen > self.idle_s or now - s.created > self.absolute_s:
                del self._sessions[s.key]
