"""The fleet's commands: a `cmd/req` body checked, run once, and answered.

A body is `{"id": "...", "command": "...", "args": {...}, "expires": unix time}`; commands:
restart_stream, apply_config (`args.config`: a whole config as the API's PUT /api/v1/config
takes it, masked secrets kept), watch (`{"duration_s": 60}`, at most 600: fast telemetry, and
one document at once), reboot (only with `fleet.allow_reboot`), update (`args.url`: an
https:// RAUC bundle, `args.sha256`: its hex digest; downloaded with the certificate
verified, installed, then the device reboots into it; the reply comes when RAUC is done). A
repeated id is not run again (nor answered again); an expired command is dropped unanswered.
The reply is `{"id", "command", "ok", "result" | "error"}`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from appliance.config.schema import Config
from appliance.fleet.desired_config import ConfigRejected
from appliance.update.installer import UpdateError, Updater

log = logging.getLogger(__name__)

COMMANDS = frozenset({"restart_stream", "apply_config", "watch", "reboot", "update"})
REMEMBERED_IDS = 1000
WATCH_MAX_S = 600.0

Reply = Callable[[dict[str, Any]], Awaitable[None]]


class CommandBackend(Protocol):
    """What the commands need of the daemon."""

    cfg: Config

    async def restart_media(self) -> bool: ...


class CommandError(Exception):
    """A refused or failed command: its message is the reply's error."""


class Commands:
    def __init__(self, backend: CommandBackend,
                 apply_config: Callable[[Any, str], Awaitable[list[str]]],
                 watch: Callable[[float], None], watch_period_s: float,
                 reboot: Callable[[], Awaitable[None]] | None = None,
                 updater: Updater | None = None) -> None:
        """`apply_config(data, source)`: applies a config or raises ConfigRejected;
        `watch(duration_s)`: telemetry every `watch_period_s` for that long;
        `updater`: runs the `update` command (None: the command is refused)."""
        self.backend = backend
        self.updater = updater
        self._apply_config = apply_config
        self._watch = watch
        self._watch_period_s = watch_period_s
        self._reboot = reboot or _systemctl_reboot
        self._seen: collections.OrderedDict[str, float] = collections.OrderedDict()

    async def handle(self, body: Any, reply: Reply) -> None:
        """Run a cmd/req body and send its reply with `reply` (unless it is dropped)."""
        if not isinstance(body, dict):
            return await reply({"ok": False, "error": "a command is a JSON object"})
        command_id, command = body.get("id"), body.get("command")
        head = {"id": command_id, "command": command}
        if not isinstance(command_id, str) or not command_id:
            return await reply({**head, "ok": False, "error": "missing id"})
        expires = body.get("expires")
        if isinstance(expires, int | float) and expires <= time.time():
            log.warning("fleet: command %s (%s) expired: dropped", command_id, command)
            return
        if not self._remember(command_id):
            log.info("fleet: command %s (%s) seen before: not run again", command_id, command)
            return
        args = body.get("args") or {}
        try:
            if command not in COMMANDS or not isinstance(args, dict):
                raise CommandError(f"command not allowed: {command!r}" if command not in
                                   COMMANDS else "args must be an object")
            log.info("fleet: running command %s (%s)", command_id, command)
            result = await self.run(str(command), args)
            doc = {**head, "ok": True, "result": result}
        except CommandError as exc:
            doc = {**head, "ok": False, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - a failed command is a reply, not a crash
            log.exception("fleet: command %s failed", command_id)
            doc = {**head, "ok": False, "error": f"failed: {exc!r}"}
        await reply(doc)
        if command == "reboot" and doc["ok"]:
            await self._reboot()  # after the reply: the requester learns it is coming

    def _remember(self, command_id: str) -> bool:
        """False if the id was seen before."""
        if command_id in self._seen:
            return False
        self._seen[command_id] = time.time()
        while len(self._seen) > REMEMBERED_IDS:
            self._seen.popitem(last=False)
        return True

    async def run(self, command: str, args: dict[str, Any]) -> dict[str, Any]:
        """The result of one command; CommandError if it is refused or fails."""
        if command == "restart_stream":
            if not await self.backend.restart_media():
                raise CommandError("media is off (safe mode): nothing to restart")
            return {"restarted": True}
        if command == "watch":
            duration = args.get("duration_s", 60)
            if not isinstance(duration, int | float) or not 0 <= duration <= WATCH_MAX_S:
                raise CommandError(f"duration_s must be 0..{WATCH_MAX_S:g}")
            self._watch(float(duration))
            return {"period_s": self._watch_period_s, "duration_s": duration}
        if command == "apply_config":
            try:
                restart = await self._apply_config(args.get("config"), "command")
            except ConfigRejected as exc:
                raise CommandError(str(exc)) from None
            return {"restart_needed": restart}
        if command == "update":
            url, sha256 = args.get("url"), args.get("sha256")
            if not isinstance(url, str) or not isinstance(sha256, str):
                raise CommandError("update needs args.url and args.sha256 (strings)")
            if self.updater is None:
                raise CommandError("updates are not available on this device")
            try:
                return await self.updater.download_and_install(url, sha256.lower())
            except UpdateError as exc:
                raise CommandError(str(exc)) from None
        if command == "reboot":
            if not self.backend.cfg.fleet or not self.backend.cfg.fleet.allow_reboot:
                raise CommandError("reboot not allowed (fleet.allow_reboot is off)")
            return {"rebooting": True}
        raise CommandError(f"command not allowed: {command!r}")


async def _systemctl_reboot() -> None:
    log.warning("fleet: rebooting on a remote command")
    proc = await asyncio.create_subprocess_exec("systemctl", "reboot", env=dict(os.environ))
    await proc.wait()
