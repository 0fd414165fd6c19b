"""The config the fleet wants: applied with a health check and a rollback, and reported back.

`config/desired` (retained by the fleet side): `{"version": int, "config": {...}, "hash"?:
sha256 hex of the config's canonical JSON}`; a version above the last one handled is applied
like the apply_config command. `config/reported` (retained): `{"version", "hash", "status":
applied | rejected | rolled_back, "error", "config_hash", "ts"}` (kept in
`<state_dir>/fleet/reported.json`); desired and reported have converged when version and
hash match.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from appliance.config.load import ConfigError, dump, save_atomic, validate
from appliance.config.schema import DAEMON_SECTIONS, Config
from appliance.fleet import telemetry as tm
from appliance.web.masking import mask, unmask

log = logging.getLogger(__name__)

HEALTHY_HOLD_S = 2.0  # healthy this long, after at least SETTLE_S, counts as healthy
SETTLE_S = 3.0


class ConfigBackend(Protocol):
    """What applying a config needs of the daemon."""

    cfg: Config

    def config_file(self) -> Path: ...

    async def apply_config(self, cfg: Config) -> list[str]: ...

    async def restart_media(self) -> bool: ...


class AddEvent(Protocol):
    """Sends an event to the fleet (config_applied, config_rolled_back)."""

    def __call__(self, type_: str, **fields: Any) -> None: ...


def config_hash(config: Any) -> str:
    """sha256 of the canonical JSON of a config document (sorted keys, no spaces)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


class ConfigRejected(Exception):
    """A config not applied: invalid, or rolled back (`rolled_back`); the message says why."""

    def __init__(self, message: str, rolled_back: bool = False) -> None:
        super().__init__(message)
        self.rolled_back = rolled_back


class DesiredConfig:
    def __init__(self, backend: ConfigBackend, stream_state: Callable[[], str],
                 add_event: AddEvent, reported_file: Path, apply_timeout_s: float) -> None:
        """`stream_state`: the device state now; `reported_file`: the reported document."""
        self.backend = backend
        self._stream_state = stream_state
        self._add_event = add_event
        self._reported_file = reported_file
        self._apply_timeout_s = apply_timeout_s
        # One config change at a time, whether from a command or config/desired.
        self._lock = asyncio.Lock()

    async def apply(self, data: Any, source: str) -> list[str]:
        """Validate, apply, and roll back unless the stream is healthy in time."""
        if not isinstance(data, dict):
            raise ConfigRejected("config must be an object")
        async with self._lock:
            old = self.backend.cfg
            try:
                cfg = validate(unmask(Config, data, old))
            except ConfigError as exc:
                raise ConfigRejected("invalid config: " + "; ".join(exc.errors)) from None
            pending = await self.backend.apply_config(cfg)
            media = [s for s in pending if s not in DAEMON_SECTIONS]
            if media:
                await self.backend.restart_media()
            timeout = self._apply_timeout_s
            healthy, state = await self._wait_healthy(timeout)
            if not healthy:
                log.warning("fleet: config from %s: stream %s after %.0f s: rolling back",
                            source, state, timeout)
                await self.backend.apply_config(old)
                if media:
                    await self.backend.restart_media()
                self._add_event("config_rolled_back", source=source, state=state)
                raise ConfigRejected(f"rolled back: the stream was not healthy within "
                                     f"{timeout:g} s (state {state})", rolled_back=True)
            path = self.backend.config_file()
            try:
                await asyncio.to_thread(save_atomic, path, dump(cfg))
            except OSError as exc:
                log.error("fleet: cannot save the config to %s: %s", path, exc.strerror)
            log.info("fleet: config from %s applied", source)
            self._add_event("config_applied", source=source, restart_needed=pending)
            return pending

    async def _wait_healthy(self, timeout: float) -> tuple[bool, str]:
        start = time.monotonic()
        healthy_since: float | None = None
        while True:
            now = time.monotonic()
            state = self._stream_state()
            if state in tm.HEALTHY:
                healthy_since = now if healthy_since is None else healthy_since
                if now - healthy_since >= HEALTHY_HOLD_S and now - start >= SETTLE_S:
                    return True, state
            else:
                healthy_since = None
            if now - start >= timeout:
                return False, state
            await asyncio.sleep(0.25)

    def reported(self) -> dict[str, Any]:
        """The last reported document kept (before any: version 0)."""
        try:
            doc = json.loads(self._reported_file.read_text())
            if isinstance(doc, dict):
                return doc
        except (OSError, ValueError):
            pass
        return {"version": 0, "hash": None, "status": None}

    def report(self, doc: dict[str, Any]) -> dict[str, Any]:
        """The config/reported payload for `doc`: with the running config's hash."""
        running = mask(Config, self.backend.cfg.model_dump(mode="json"))
        return {**doc, "config_hash": config_hash(running), "ts": round(time.time(), 3)}

    async def handle(self, body: Any) -> dict[str, Any] | None:
        """Apply a config/desired body; the document to report, None if nothing to report."""
        if not isinstance(body, dict) or not isinstance(body.get("version"), int):
            log.warning("fleet: config/desired without an integer version: ignored")
            return None
        version = body["version"]
        if version <= int(self.reported().get("version") or 0):
            return None  # handled before (the retained document after a reconnect)
        data = body.get("config")
        digest = config_hash(data)
        doc: dict[str, Any] = {"version": version, "hash": digest, "error": None}
        if body.get("hash") not in (None, digest):
            doc.update(status="rejected", error="hash does not match the config")
        else:
            try:
                doc["restart_needed"] = await self.apply(data, source="desired")
                doc["status"] = "applied"
            except ConfigRejected as exc:
                doc.update(status="rolled_back" if exc.rolled_back else "rejected",
                           error=str(exc))
        save_atomic(self._reported_file, json.dumps(doc), mode=0o644)
        return doc
