"""`appliance run`: component lifecycle and supervision.

Expected faults (camera missing) are retried inside components and shown as
state. An unexpected exception anywhere ends the process with status 1 so that
systemd restarts it. An invalid config starts safe mode: web up, media off.
Under systemd (Type=notify) the daemon reports readiness, its state and, while media
makes progress, watchdog pings (appliance.notify).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import time
import tomllib
from pathlib import Path

from aiohttp import web

from appliance.capture.pipeline import CapturePipeline
from appliance.config.load import DEVICE_CONFIG, ConfigError, dump, load, save_atomic
from appliance.config.schema import DAEMON_SECTIONS, Config, Web
from appliance.credentials import CredentialStore
from appliance.device.components import DeviceComponents
from appliance.fleet.agent import FleetAgent
from appliance.media.bus import MediaBus
from appliance.media.clock import MediaClock
from appliance.media.packet import TrackInfo
from appliance.notify import Notifier
from appliance.package.packager import TrackPackager
from appliance.package.store import SegmentStore
from appliance.record.recorder import Recorder
from appliance.status import StatusHub
from appliance.update.installer import Updater, update_dir
from appliance.uplink.manager import UplinkManager
from appliance.web import logs
from appliance.web.app import make_app
from appliance.web.logs import LogRing, RedactSecrets
from appliance.web.masking import secret_values
from appliance.web.whep import setup_whep

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


# Config sections applied while running; any other change waits for a restart: of the
# media (restart_media) or, for these, of the daemon.
HOT_SECTIONS = frozenset({"uplink", "playback"})
# Exit status asking systemd for a restart (EX_TEMPFAIL): not a crash, but Restart=on-failure
# only restarts on a non-zero status.
RESTART_STATUS = 75


class Daemon:
    def __init__(self, config_path: Path | None, state_dir: Path):
        self.config_path = config_path
        self.state_dir = state_dir
        self.hub = StatusHub()
        self.store = SegmentStore()
        self.bus = MediaBus()
        # One media clock for the daemon's life: a stream restart is a jump on the same
        # timeline (a new DASH Period), not a new timeline. A new clock would move the
        # MPD's availabilityStartTime, which must not change between MPD updates, and
        # players already playing would lose their place for good.
        self.clock = MediaClock()
        self.packagers: list[TrackPackager] = []
        self.pipeline: CapturePipeline | None = None
        self.uplinks: UplinkManager | None = None
        self.recorder: Recorder | None = None
        self.device: DeviceComponents | None = None
        self.fleet: FleetAgent | None = None
        self._restart_requested = False
        self.cfg = Config()
        self.creds = CredentialStore(state_dir)
        self.log_ring = LogRing()
        self._redact = RedactSecrets()
        # The config whose settings are in effect: `cfg` less what waits for a restart.
        self._effective = self.cfg
        self._media_lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._fatal: BaseException | None = None
        self.notifier = Notifier(self.hub)
        self.updater = Updater(self.hub, update_dir(state_dir))

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
        logs.install(self.log_ring, self._redact)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.hub.update("daemon", safe_mode=False, state_dir=str(self.state_dir))
        cfg, media_ok = resolve_config(self.config_path, self.hub)
        self.cfg = self._effective = cfg
        self._redact.set_secrets(secret_values(cfg))
        if self.creds.setup_required():
            log.warning("no admin password yet: open the web page's /setup, or run "
                        "`appliance passwd`")

        app = make_app(self, self.store, self.creds)
        setup_whep(app, self.bus, self.hub, cfg, on_fatal=self.fatal)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=5)
        await runner.setup()
        host, ssl_context = cfg.web.host, self._tls_context(cfg)
        if cfg.web.tls and ssl_context is None:
            host = "127.0.0.1"  # never the admin password in clear text over the LAN
        site = web.TCPSite(runner, host, cfg.web.port, ssl_context=ssl_context)
        await site.start()
        log.info("serving on %s://%s:%d/", "https" if ssl_context else "http", host,
                 cfg.web.port)

        # Before media: the LEDs must show safe mode and a missing camera too.
        def fatal_threadsafe(exc: BaseException) -> None:
            loop.call_soon_threadsafe(self.fatal, exc)

        def after_factory_reset() -> None:
            loop.call_soon_threadsafe(self.request_restart, "factory reset")

        self.device = DeviceComponents(
            cfg, self.hub, config_path=self.config_file(), state_dir=self.state_dir,
            recordings_dir=self.recordings_dir(), on_fatal=fatal_threadsafe,
            on_factory_reset=after_factory_reset)
        self.device.thermal.on_level(self._on_load_level)
        self.device.start()
        if media_ok:
            self._start_media(cfg)
        else:
            log.error("safe mode: media is off until the config is fixed")
        if cfg.fleet is not None:  # remote monitoring (appliance.fleet.agent)
            self.fleet = FleetAgent(cfg.fleet, self.hub, self, self.state_dir,
                                    updater=self.updater)
            self.fleet.start()
        notifier = asyncio.create_task(self.notifier.run(), name="sd-notify")
        notifier.add_done_callback(self._task_done)
        try:
            await self._stopping.wait()
        finally:
            log.info("stopping")
            self.notifier.stopping()
            notifier.cancel()
            if self.fleet is not None:  # first: the explicit offline
                await self.fleet.stop()
            await self._stop_media()
            if self.device is not None:
                await asyncio.to_thread(self.device.stop)
            await runner.cleanup()
            logs.uninstall(self.log_ring, self._redact)
        if self._restart_requested:
            return RESTART_STATUS
        if self._fatal is not None:
            log.error("exiting after an unexpected error: %r", self._fatal)
            return 1
        return 0

    def request_restart(self, reason: str) -> None:
        """End with a non-zero status, so that systemd (Restart=on-failure) starts us
        again: after a factory reset, into the default config."""
        log.warning("restarting the daemon: %s", reason)
        self._restart_requested = True
        self._stopping.set()

    def _on_load_level(self, level: int) -> None:
        """The thermal governor's step (on its thread): fewer frames on some rungs."""
        pipeline = self.pipeline
        if pipeline is not None:
            pipeline.set_load_level(level)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        """A component task that ends with an error ends the daemon."""
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("task %s failed: %r", task.get_name(), exc)
            self.fatal(exc)

    def _tls_context(self, cfg: Config) -> ssl.SSLContext | None:
        if not cfg.web.tls:
            return None
        assert cfg.web.tls_cert is not None and cfg.web.tls_key is not None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(cfg.web.tls_cert, cfg.web.tls_key)
        except (OSError, ssl.SSLError) as exc:
            error = f"{cfg.web.tls_cert}, {cfg.web.tls_key}: {exc}"
            log.error("web: cannot use the TLS certificate and key (%s): serving plain "
                      "HTTP on 127.0.0.1 only until they are fixed", error)
            self.hub.update("daemon", tls_error=error)
            return None
        return context

    # -- what the web API uses (appliance.web.backend.Backend) -----------------------------

    def config_file(self) -> Path:
        return self.config_path or DEVICE_CONFIG

    def recordings_dir(self) -> Path:
        return Path(self.cfg.recording.directory or self.state_dir / "recordings")

    def active_recording(self) -> str | None:
        return self.recorder.active if self.recorder else None

    async def reload(self) -> None:
        """SIGHUP: read the config file again and apply it (see apply_config)."""
        self.notifier.reloading()
        try:
            await self._reload()
        finally:
            self.notifier.reloaded()

    async def _reload(self) -> None:
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
        connection) and playback rules at once. Leaving safe mode starts media. Other
        changes wait for restart_media, or for web and fleet a restart of the daemon.
        """
        async with self._media_lock:
            self.cfg = cfg
            self._redact.set_secrets(secret_values(cfg))
            if self.pipeline is None:  # safe mode: the config is good now
                self.hub.update("daemon", safe_mode=False, config_errors=[])
                log.info("config fixed: starting media")
                self._effective = self._effective.model_copy(
                    update=self._sections(cfg, exclude=DAEMON_SECTIONS))
                self._start_media(cfg)
                return self._publish_pending()
            assert self.uplinks is not None
            await asyncio.to_thread(self.uplinks.apply, cfg.uplink)
            self._effective = self._effective.model_copy(
                update=self._sections(cfg, only=HOT_SECTIONS))
            return self._publish_pending()

    async def restart_media(self) -> bool:
        """Stop and start capture, encoders, packagers, recording and uplinks with the
        current config (so changes to those sections take effect); False in safe mode."""
        async with self._media_lock:
            if self.pipeline is None:
                return False
            log.info("restarting media")
            await self._stop_media()
            for section in self.hub.snapshot()["sections"]:
                if section.startswith(("encode.", "package.", "media.")):
                    self.hub.remove(section)
            self.store.clear()
            # The same bus: consumers that outlive the media (the WHEP preview) keep their
            # subscriptions; only the track list starts again.
            self.bus.clear_tracks()
            self._effective = self._effective.model_copy(
                update=self._sections(self.cfg, exclude=DAEMON_SECTIONS))
            self._start_media(self.cfg)
            self._publish_pending()
            return True

    @staticmethod
    def _sections(cfg: Config, only: frozenset[str] | None = None,
                  exclude: frozenset[str] = frozenset()) -> dict[str, object]:
        return {name: getattr(cfg, name) for name in type(cfg).model_fields
                if (only is None or name in only) and name not in exclude}

    def _publish_pending(self) -> list[str]:
        pending = [name for name in type(self.cfg).model_fields
                   if getattr(self.cfg, name) != getattr(self._effective, name)]
        for name in pending:
            log.warning("config: changes to [%s] apply at the next restart", name)
        self.hub.update("daemon", restart_needed=pending)
        return pending

    async def _stop_media(self) -> None:
        self.notifier.media_stopped()  # media off on purpose: not a stall
        if self.uplinks:
            await asyncio.to_thread(self.uplinks.stop)
        if self.recorder:
            await asyncio.to_thread(self.recorder.stop)
        if self.pipeline:
            await asyncio.to_thread(self.pipeline.stop)
        for p in self.packagers:
            p.stop()
        self.uplinks = self.recorder = self.pipeline = None
        self.packagers = []

    def _start_media(self, cfg: Config) -> None:
        loop = asyncio.get_running_loop()
        clock = self.clock

        def fatal_threadsafe(exc: BaseException) -> None:
            loop.call_soon_threadsafe(self.fatal, exc)

        # Media sequence numbers must keep growing across restarts, or a player or cache
        # could take new media for old. Start at this start's wall time in tenths of a
        # second: that outpaces a run's own (at most 1 segment/s), so a run that lasted
        # over 0.1 s ended below the next run's first number.
        first_msn = time.time_ns() // 100_000_000

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
        self.notifier.media_started(("video", "audio") if cfg.audio.enabled else ("video",))
        if self.device is not None:
            self.pipeline.load_level = self.device.thermal.level
        self.pipeline.start()


def run(config_path: Path | None, state_dir: Path) -> int:
    return asyncio.run(Daemon(config_path, state_dir).run())
