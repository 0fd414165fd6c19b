"""journald: structured, redacted entries, JOURNAL_STREAM detection and logging setup."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.notify import component, configure_logging, journal_handler, stderr_is_journal
from appliance.web.logs import LogRing, RedactSecrets, install, uninstall
from appliance.web.masking import MASK

# -- journald ------------------------------------------------------------------------------


def test_journal_entries_are_structured_and_redacted() -> None:
    sent: list[tuple[str, dict[str, Any]]] = []
    handler = journal_handler(sender=lambda message, **fields: sent.append((message, fields)))
    root = logging.getLogger()
    ring, redact = LogRing(), RedactSecrets()
    root.addHandler(handler)
    install(ring, redact)  # as the daemon does: the filter on every root handler
    redact.set_secrets(["s3cr3t-stream-key"])
    try:
        logging.getLogger("appliance.uplink.rtmp").warning(
            "publish to %s refused", "rtmp://o/live/s3cr3t-stream-key", extra={"UPLINK": "a"})
        logging.getLogger("aiohttp.server").error("boom")
    finally:
        uninstall(ring, redact)
        root.removeHandler(handler)
    (message, fields), (_, other) = sent
    assert message == f"publish to rtmp://o/live/{MASK} refused"
    assert "s3cr3t" not in repr(fields)
    assert fields["PRIORITY"] == "4" and other["PRIORITY"] == "3"
    assert fields["COMPONENT"] == "uplink" and other["COMPONENT"] == "aiohttp"
    assert fields["LOGGER"] == "appliance.uplink.rtmp" and fields["UPLINK"] == "a"
    assert fields["SYSLOG_IDENTIFIER"] == "appliance"
    assert {"CODE_FILE", "CODE_LINE", "CODE_FUNC", "THREAD_NAME"} <= fields.keys()
    assert not any(k.islower() for k in fields)  # only valid journal field names
    assert component("appliance.capture.pipeline") == "capture"


def test_journal_stream_is_recognised_by_device_and_inode(tmp_path: Path) -> None:
    with open(tmp_path / "stream", "wb") as f:
        st = os.fstat(f.fileno())
        assert stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, f.fileno())
        assert not stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"},
                                     f.fileno())
        assert not stderr_is_journal({"JOURNAL_STREAM": "junk"}, f.fileno())
        assert not stderr_is_journal({}, f.fileno())


@contextlib.contextmanager
def fresh_root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers.clear()
    try:
        yield root
    finally:
        root.handlers[:] = saved
        root.setLevel(level)


def test_logging_goes_to_the_journal_only_when_stderr_is_it_and_journald_listens(
        monkeypatch: pytest.MonkeyPatch) -> None:
    st = os.fstat(2)
    journal_stream = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    here = Path("/run/systemd/journal/socket").exists()
    with fresh_root_logger() as root:  # JOURNAL_STREAM, but no journald: text on stderr
        assert configure_logging("INFO", journal_stream) == ("journal" if here else "stderr")
    with fresh_root_logger() as root:
        assert configure_logging("DEBUG", {}) == "stderr"
        assert root.level == logging.DEBUG
        assert root.handlers[0].formatter is not None
        assert root.handlers[0].formatter._fmt == "%(asctime)s %(levelname)s %(name)s: %(message)s"
    monkeypatch.setattr("appliance.notify.journal_available", lambda: True)
    with fresh_root_logger() as root:
        assert configure_logging("INFO", journal_stream) == "journal"
        (handler,) = root.handlers
        assert type(handler).__name__ == "AppJournalHandler"
        record = logging.LogRecord("appliance.daemon", logging.INFO, __file__, 1, "up %s",
                                   ("now",), None)
        assert handler.format(record) == "up now"  # the journal has the time and level
