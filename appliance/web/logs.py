"""Recent log records for /api/v1/logs, and a filter that keeps known secrets out of logs.

The ring is a logging handler the daemon adds at start: bounded, so it costs the same
after a month as after a minute. The redacting filter is a second line of defence (no
code logs a secret on purpose): it replaces the current config's secret values, should
one ever be part of a message, before any handler sees the record.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

from appliance.web.masking import MASK

RING_RECORDS = 1000


class LogRing(logging.Handler):
    def __init__(self, capacity: int = RING_RECORDS):
        super().__init__()
        self._records: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._ring_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not break logging
            message = str(record.msg)
        if record.exc_info and record.exc_info[0] is not None:
            # The exception's type, not its traceback: the page shows a line per record.
            message += f" ({record.exc_info[0].__name__})"
        entry = {"time": round(record.created, 3), "level": record.levelname,
                 "logger": record.name, "message": message}
        with self._ring_lock:
            self._records.append(entry)

    def recent(self, lines: int) -> list[dict[str, Any]]:
        """The last `lines` records, oldest first."""
        with self._ring_lock:
            records = list(self._records)
        return records[-lines:] if lines > 0 else []


class RedactSecrets(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self._secrets: tuple[str, ...] = ()

    def set_secrets(self, values: list[str]) -> None:
        # Longest first, so a secret that contains another is masked whole.
        self._secrets = tuple(sorted({v for v in values if len(v) >= 4}, key=len,
                                     reverse=True))

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:
            return True
        if any(s in message for s in self._secrets):
            for s in self._secrets:
                message = message.replace(s, MASK)
            record.msg, record.args = message, None
        return True


def install(ring: LogRing, redact: RedactSecrets) -> None:
    """Put the filter on every root handler and the ring beside them."""
    root = logging.getLogger()
    ring.addFilter(redact)
    for handler in root.handlers:
        handler.addFilter(redact)
    root.addHandler(ring)


def uninstall(ring: LogRing, redact: RedactSecrets) -> None:
    root = logging.getLogger()
    root.removeHandler(ring)
    for handler in root.handlers:
        handler.removeFilter(redact)
