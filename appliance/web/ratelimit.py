"""Login rate limiting: a growing lockout per client address, and a cap for everyone.

Per address: FREE_FAILURES wrong passwords in a row cost nothing (typos); each one after
that locks the address out for 2, 4, 8 ... seconds, up to MAX_LOCK_S, counted from that
failure. A right password clears the count; so does a quiet FORGET_S. A locked-out
client is refused before its password is even hashed.
For everyone: more than GLOBAL_FAILURES failures within GLOBAL_WINDOW_S (many addresses
guessing at once) refuse every login until the window has room again.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

FREE_FAILURES = 5
MAX_LOCK_S = 15 * 60.0
FORGET_S = 2 * MAX_LOCK_S
GLOBAL_FAILURES = 30
GLOBAL_WINDOW_S = 60.0
MAX_CLIENTS = 4096  # addresses remembered; the least recently failed go first


@dataclass(slots=True)
class _Client:
    failures: int = 0
    last: float = 0.0


def lock_s(failures: int) -> float:
    """How long an address is locked out after its `failures`-th failure in a row."""
    if failures <= FREE_FAILURES:
        return 0.0
    return min(2.0 ** (failures - FREE_FAILURES), MAX_LOCK_S)


class LoginLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._clients: OrderedDict[str, _Client] = OrderedDict()
        self._recent: deque[float] = deque()

    def retry_after(self, client: str) -> int:
        """Whole seconds until `client` may try again; 0 if it may now."""
        now = self._clock()
        while self._recent and now - self._recent[0] > GLOBAL_WINDOW_S:
            self._recent.popleft()
        wait = 0.0
        if len(self._recent) >= GLOBAL_FAILURES:
            wait = GLOBAL_WINDOW_S - (now - self._recent[0])
        entry = self._clients.get(client)
        if entry is not None:
            if now - entry.last > FORGET_S:
                del self._clients[client]
            else:
                wait = max(wait, lock_s(entry.failures) - (now - entry.last))
        return math.ceil(wait) if wait > 0 else 0

    def failure(self, client: str) -> int:
        """Count a wrong password; returns the lockout it earned (seconds, 0 = none)."""
        now = self._clock()
        self._recent.append(now)
        entry = self._clients.pop(client, None) or _Client()
        entry.failures += 1
        entry.last = now
        self._clients[client] = entry
        while len(self._clients) > MAX_CLIENTS:
            self._clients.popitem(last=False)
        return math.ceil(lock_s(entry.failures))

    def success(self, client: str) -> None:
        self._clients.pop(client, None)
