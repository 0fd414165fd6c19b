"""`appliance run`: component lifecycle and supervision.

Expected faults (camera missing) are retried inside components and shown as
state. An unexpected exception anywhere ends the process with status 1 so that
systemd restarts it. An invalid config starts safe mode: web up, media off.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import tomllib
from pathlib import Path

from aiohttp import web

from appliance.capture.pipeline import CapturePipeline
from appliance.config.load import DEVICE_CONFIG, ConfigError, dump, load, save_atomic
from appliance.config.schema import Config, Web
from appliance.media.bus import MediaBus
from appliance.media.clock import MediaClock
from appliance.media.packet import TrackInfo
from appliance.package.packager import TrackPackager
from appliance.package.store import SegmentStore
from appliance.record.recorder import Recorder
from appliance.status import StatusHub
from appliance.uplink.manager import UplinkManager
from appliance.web.app import make_app

log = logging.getLogger(__name__)


def last_good_path(config_path: Path) -> Path:
    return config_path.with_name(config_path.name + ".last-good")


def resolve_config(path: Path | None, hub: StatusHub) -> tuple[Config, bool]:
    """The config to run with and whether media may start (False = safe mode)."""
    if path is None:
        if not DEVICE_CONFIG.exists():
            log.info("no config file: using the built-in defaults")
            return Config(), True
        path = DEVICE_CONFIG
    try:
        cfg = load(path)
    except ConfigError as exc:
        for err in exc.errors:
            log.error("config %s: %s", path, err)
        hub.update("daemon", safe_mode=True, config_errors=exc.errors, config_path=str(path))
        return safe_mode_config(path), False
    try:
        save_atomic(last_good_path(path), dump(cfg))
    except OSError as exc:
        log.warning("cannot keep the last-known-good config beside %s: %s", path, exc)
    return cfg, True


def safe_mode_config(path: Path) -> Config:
    """What to serve the web page with while the config at `path` is invalid.

    The last-known-good config, else the defaults; with the broken file's own [web]
    table when that part is valid, so the page is where the user expects it.
    """
    try:
        cfg = load(last_good_path(path))
    except ConfigError:
        cfg = Config()
    try:
        web = Web.model_validate(tomllib.loads(path.read_text(encoding="utf-8")).get("web", {}))
    except (OSError, ValueError, AttributeError):  # unreadable, bad TOML, or bad [web]
        return cfg
    return cfg.model_copy(update={"web": web})


class Daemon:
    def __init__(self, config_path: Path | None, state_dir: Path):
        self.config_path = config_path
        self.state_dir = state_dir
        self.hub = StatusHub()
        self.store = SegmentStore()
        self.bus = MediaBus()
        self.packagers: list[TrackPackager] = []
        self.pipeline: CapturePipeline | None = None
        self.uplinks: UplinkManager | None = None
        self.recorder: Recorder | None = None
        self.cfg = Config()
        self._stopping = asyncio.Event()
        self._fatal: BaseException | None = None

    def fatal(self, exc: BaseException) -> None:
        """Called on the loop when a component hit an unexpected error."""
        if self._fatal is None:
            self._fatal = exc
        self._stopping.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.hub.update("daemon", safe_mode=False, state_dir=str(self.state_dir))
        cfg, media_ok = resolve_config(self.config_path, self.hub)
        self.cfg = cfg

        runner = web.AppRunner(make_app(self.hub, self.store), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, cfg.web.host, cfg.web.port)
        await site.start()
        log.info("serving on http://%s:%d/", cfg.web.host, cfg.web.port)

        if media_ok:
            self._start_media(cfg)
        else:
            log.error("safe mode: media is off until the config is fixed")
        try:
            await self._stopping.wait()
        finally:
            log.info("stopping")
            if self.uplinks:
                await asyncio.to_thread(self.uplinks.stop)
            if self.recorder:
                await asyncio.to_thread(self.recorder.stop)
            if self.pipeline:
                await asyncio.to_thread(self.pipeline.stop)
            for p in self.packagers:
                await asyncio.to_thread(p.stop)
            await runner.cleanup()
        if self._fatal is not None:
            log.error("exiting after an unexpected error: %r", self._fatal)
            return 1
        return 0

    async def reload(self) -> None:
        """SIGHUP: read the config file again and apply it (see apply_config)."""
        path = self.config_path or DEVICE_CONFIG
        try:
            cfg = load(path)
        except ConfigError as exc:
            for err in exc.errors:
                log.error("reload: config %s: %s (kept the running config)", path, err)
            self.hub.update("daemon", reload_errors=exc.errors)
            return
        self.hub.update("daemon", reload_errors=[])
        await self.apply_config(cfg)

    async def apply_config(self, cfg: Config) -> list[str]:
        """Apply a valid config while running; returns the sections that need a restart.

        Uplink destinations are applied one by one (an unchanged one keeps its
        connection). Leaving safe mode starts media. Other changes wait for a restart.
        """
        old, self.cfg = self.cfg, cfg
        if self.pipeline is None:  # safe mode: the config is good now
            self.hub.update("daemon", safe_mode=False, config_errors=[])
            log.info("config fixed: starting media")
            self._start_media(cfg)
            return []
        assert self.uplinks is not None
        await asyncio.to_thread(self.uplinks.apply, cfg.uplink)
        pending = [name for name in type(cfg).model_fields
                   if name != "uplink" and getattr(cfg, name) != getattr(old, name)]
        for name in pending:
            log.warning("config: changes to [%s] apply at the next restart", name)
        self.hub.update("daemon", restart_needed=pending)
        return pending

    def _start_media(self, cfg: Config) -> None:
        loop = asyncio.get_running_loop()
        clock = MediaClock()

        def fatal_threadsafe(exc: BaseException) -> None:
            loop.call_soon_threadsafe(self.fatal, exc)

        # Media sequence numbers must keep growing across restarts, or a player or cache
        # could take new media for old. Start at the start time in tenths of a second:
        # that outpaces a run's own (at most 1 segment/s), so a run that lasted over 0.1 s
        # ended below the next run's first number.
        first_msn = clock.start_wall_ns // 100_000_000

        def on_track(info: TrackInfo) -> None:
            # Called on a capture thread before the track's first packet is published.
            packager = TrackPackager(info, cfg.packager, self.bus, self.store, self.hub, loop,
                                     fatal_threadsafe, first_msn)
            self.packagers.append(packager)
            packager.start()

        self.store.expected = {r.name for r in cfg.video.ladder}
        if cfg.audio.enabled:
            self.store.expected.add("audio")
        top = cfg.video.ladder[0].name
        audio = "audio" if cfg.audio.enabled else None
        # Consumers subscribe before capture starts, so they miss nothing from the start.
        if cfg.recording.enabled:
            directory = Path(cfg.recording.directory or self.state_dir / "recordings")
            self.recorder = Recorder(directory, top, audio, self.bus, self.hub,
                                     cfg.recording.file_s, cfg.recording.max_mb * 1_000_000,
                                     fatal_threadsafe)
            self.recorder.start()
        self.uplinks = UplinkManager(self.bus, self.hub, top, audio, fatal_threadsafe)
        self.uplinks.apply(cfg.uplink)
        self.pipeline = CapturePipeline(cfg, clock, self.bus, self.hub, on_track,
                                        fatal_threadsafe)
        self.pipeline.start()


def run(config_path: Path | None, state_dir: Path) -> int:
    return asyncio.run(Daemon(config_path, state_dir).run())
