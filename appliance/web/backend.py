"""What the web app needs from the daemon, and the keys it keeps its parts under."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from aiohttp import web

from appliance.config.schema import Config
from appliance.credentials import CredentialStore
from appliance.package.store import SegmentStore
from appliance.status import StatusHub
from appliance.update.installer import Updater
from appliance.web.logs import LogRing


class Backend(Protocol):
    """The daemon as the API sees it (appliance.daemon.Daemon)."""

    hub: StatusHub
    cfg: Config  # the running config
    log_ring: LogRing
    state_dir: Path  # credentials, recordings; the front's certificate by default
    updater: Updater  # bundles uploaded on the page (appliance.update)

    def config_file(self) -> Path:
        """Where the config is saved."""
        ...

    async def apply_config(self, cfg: Config) -> list[str]:
        """Hot-apply a valid config; returns the sections that need a restart."""
        ...

    async def restart_media(self) -> bool:
        """Restart capture to packaging with the current config; False in safe mode."""
        ...

    def recordings_dir(self) -> Path: ...

    def active_recording(self) -> str | None: ...


BACKEND_KEY = web.AppKey("backend", Backend)
CREDS_KEY = web.AppKey("credentials", CredentialStore)
STORE_KEY = web.AppKey("store", SegmentStore)
