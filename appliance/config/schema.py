"""The configuration schema: one model per TOML table.

Models forbid unknown keys so a typo is an error that names the key; titles and
descriptions are kept on the fields because the settings page is generated from
this schema.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from appliance.board import (
    BoardProfile,
    LadderError,
    Preset,
    default_ladder,
    detect_board,
    plan_encoders,
)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Rung(Section):
    name: str = Field(title="Name", pattern=r"^[A-Za-z0-9_-]{1,32}$")
    width: int = Field(title="Width", ge=64, le=3840, multiple_of=2)
    height: int = Field(title="Height", ge=64, le=2160, multiple_of=2)
    bitrate_kbps: int = Field(title="Bitrate (kbit/s)", ge=100, le=50_000)

    @field_validator("name")
    @classmethod
    def _not_audio(cls, v: str) -> str:
        # The name is the rung's URL path (/live/<name>/...), and "audio" is taken.
        if v == "audio":
            raise ValueError('"audio" is reserved for the audio track')
        return v


def board_of(info: ValidationInfo | None) -> BoardProfile:
    """The board to validate for: `context={"board": ...}` when given, else this machine's."""
    context = info.context if info is not None else None
    board = context.get("board") if isinstance(context, dict) else None
    return board if isinstance(board, BoardProfile) else detect_board()


def _detected_ladder() -> list[Rung]:
    board = detect_board()
    return [Rung(**asdict(r)) for r in default_ladder(board, *board.capture)]


class Video(Section):
    """Capture size, preset and ladder default to the board's (see appliance.board)."""

    source: Literal["synthetic", "v4l2", "picamera2", "auto"] = Field(
        "auto", title="Video source", description="auto: Pi camera, else V4L2, else synthetic"
    )
    device: str = Field("/dev/video0", title="V4L2 device")
    synthetic_pattern: Literal["plain", "noisy"] = Field(
        "plain", title="Synthetic picture",
        description="plain: the test card, which encodes to far less than any rung's bitrate; "
        "noisy: the same under moving grain, so that every rung uses its bitrate as with a "
        "camera (for testing ABR)",
    )
    width: int = Field(default_factory=lambda: detect_board().capture[0], title="Capture width",
                       ge=64, le=3840, multiple_of=2)
    height: int = Field(default_factory=lambda: detect_board().capture[1],
                        title="Capture height", ge=64, le=2160, multiple_of=2)
    fps: int = Field(30, title="Frames per second", ge=1, le=60)
    encoder: Literal["auto", "x264", "hardware"] = Field(
        "auto", title="H.264 encoder", description="auto: hardware where the board has one"
    )
    x264_preset: Preset = Field(default_factory=lambda: detect_board().x264_preset,
                                title="x264 preset")
    ladder: list[Rung] = Field(default_factory=_detected_ladder, min_length=1, max_length=6)

    @model_validator(mode="before")
    @classmethod
    def _board_defaults(cls, data: Any, info: ValidationInfo) -> Any:
        """Keys left out take the board's defaults; the ladder follows the capture size."""
        if not isinstance(data, dict):
            return data
        board = board_of(info)
        data = {"width": board.capture[0], "height": board.capture[1],
                "x264_preset": board.x264_preset, **data}
        width, height = data["width"], data["height"]
        if "ladder" not in data and isinstance(width, int) and isinstance(height, int):
            data["ladder"] = [asdict(r) for r in default_ladder(board, width, height)]
        return data

    @model_validator(mode="after")
    def _ladder_fits(self, info: ValidationInfo) -> Video:
        names = [r.name for r in self.ladder]
        if len(set(names)) != len(names):
            raise ValueError("video.ladder: rung names must be unique")
        for i, rung in enumerate(self.ladder):
            if rung.width > self.width or rung.height > self.height:
                raise ValueError(
                    f"video.ladder[{i}]: {rung.name} ({rung.width}x{rung.height}) is larger "
                    f"than the capture size {self.width}x{self.height}"
                )
        try:
            plan_encoders(self, board_of(info))
        except LadderError as exc:
            raise ValueError(f"video.{exc.key}: {exc}") from None
        return self


class Audio(Section):
    enabled: bool = Field(True, title="Audio enabled")
    source: Literal["synthetic", "alsa"] = Field("synthetic", title="Audio source")
    device: str = Field("default", title="ALSA device")
    sample_rate: Literal[44100, 48000] = Field(48000, title="Sample rate (Hz)")
    channels: int = Field(2, title="Channels", ge=1, le=2)
    bitrate_kbps: int = Field(128, title="AAC bitrate (kbit/s)", ge=32, le=320)


class Packager(Section):
    segment_s: float = Field(2.0, title="Segment duration (s)", ge=1.0, le=10.0)
    part_s: float = Field(0.2, title="Part duration (s)", ge=0.1, le=1.0)
    window_s: float = Field(
        24.0, title="Playlist window (s)", ge=12.0, le=120.0,
        description="How much media is kept; playlists list a little less, so that a segment "
        "stays downloadable for a while after it leaves them",
    )

    @model_validator(mode="after")
    def _parts_fit(self) -> Packager:
        if self.part_s * 2 > self.segment_s:
            raise ValueError("packager.part_s: must be at most half of packager.segment_s")
        if self.window_s < 6 * self.segment_s:
            raise ValueError("packager.window_s: must be at least 6 x packager.segment_s")
        return self


class Web(Section):
    listen: str = Field("127.0.0.1:8080", title="Listen address (host:port)")
    tls_cert: str | None = Field(
        None, title="TLS certificate (PEM file)",
        description="With tls_key: serve HTTPS instead of HTTP (the cookie is then Secure)",
    )
    tls_key: str | None = Field(None, title="TLS private key (PEM file)")
    # Loopback by default: the device's nginx connects from there, also with the config
    # a factory reset writes (without it, a browser's https Origin would not match the
    # request's scheme and every login would be refused); only local processes can claim
    # it, and those can reach the daemon anyway.
    trusted_proxies: str = Field(
        "127.0.0.1 ::1", title="Trusted reverse proxies",
        description="Addresses or networks, space-separated, whose X-Forwarded-For and "
        "X-Forwarded-Proto are believed (the device's nginx); from any other peer those "
        "headers are ignored",
    )
    tls_dir: str | None = Field(
        None, title="HTTPS front certificate directory",
        description="Where the front end (nginx on the device) reads cert.pem and key.pem, "
        "shown and replaced in Settings; default: /data/tls on the device, else "
        "<state dir>/tls",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, v: str) -> str:
        for item in v.split():
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network") from None
        return v

    @property
    def proxies(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(i, strict=False) for i in self.trusted_proxies.split())

    @model_validator(mode="after")
    def _tls_pair(self) -> Web:
        if (self.tls_cert is None) != (self.tls_key is None):
            missing = "tls_key" if self.tls_key is None else "tls_cert"
            raise ValueError(f"web.{missing}: HTTPS needs both tls_cert and tls_key")
        return self

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be host:port, e.g. 127.0.0.1:8080")
        return v

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class Playback(Section):
    require_token: bool = Field(
        False, title="Signed playback URLs",
        description="/live needs a signed, expiring URL (from /api/v1/playback-url) or a "
        "login; off: anyone who reaches the device can watch",
    )
    token_ttl_s: int = Field(3600, title="Playback URL lifetime (s)", ge=60, le=7 * 86400)


class Fleet(Section):
    broker: str = Field(title="MQTT broker URL", pattern=r"^mqtts?://")
    device_id: str = Field(title="Device id", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = Field(None, json_schema_extra={"secret": True})
    telemetry_s: float = Field(5.0, title="Telemetry period (s)", ge=1, le=3600)
    watch_telemetry_s: float = Field(
        1.0, title="Telemetry period while watched (s)", ge=0.2, le=60,
        description="after a `watch` command, for its duration")
    keepalive_s: int = Field(10, title="MQTT keepalive (s)", ge=2, le=600)
    apply_timeout_s: float = Field(
        30.0, title="Remote config rollback timeout (s)", ge=1, le=600,
        description="a remotely applied config is rolled back unless the stream is healthy "
        "within this time")
    allow_reboot: bool = Field(False, title="Allow remote reboot")

    @model_validator(mode="after")
    def _cert_pair(self) -> Fleet:
        if (self.cert_file is None) != (self.key_file is None):
            missing = "key_file" if self.key_file is None else "cert_file"
            raise ValueError(f"fleet.{missing}: a client certificate needs cert_file and "
                             "key_file")
        return self


class Metrics(Section):
    open: bool = Field(
        False, title="Open /metrics",
        description="anyone who reaches the device may scrape /metrics; off: it needs a "
        "login or an API bearer token")


class Uplink(Section):
    name: str = Field(title="Name", pattern=r"^[A-Za-z0-9_-]{1,32}$")
    url: str = Field(
        title="URL", description="srt://host:port, rtmp://host/app or rtmps://host/app"
    )
    enabled: bool = True
    rung: str | None = Field(None, title="Rung to push", description="default: the top rung")
    key: str | None = Field(
        None, title="Stream key", description="RTMP/RTMPS", min_length=1, max_length=512,
        json_schema_extra={"secret": True},
    )
    ca_file: str | None = Field(
        None, title="CA file", description="RTMPS: trust this CA (PEM) instead of the system's"
    )
    mode: Literal["caller", "listener"] = Field(
        "caller", title="SRT mode",
        description="caller: connect to the origin; listener: wait on host:port for it",
    )
    passphrase: str | None = Field(
        None, title="SRT passphrase", min_length=10, max_length=79,
        json_schema_extra={"secret": True},
    )
    streamid: str | None = Field(
        None, title="SRT stream id", max_length=512,
        description='e.g. "#!::r=live/cam1,m=publish" or what the origin asks for',
    )
    latency_ms: int = Field(
        120, title="SRT latency (ms)", ge=20, le=8000,
        description="At least 4 x the round-trip time; on cellular links 1000-2000 ms",
    )

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("srt", "rtmp", "rtmps"):
            raise ValueError("scheme must be srt://, rtmp:// or rtmps://")
        if not parts.hostname:
            raise ValueError("URL has no host")
        try:
            port = parts.port
        except ValueError:
            raise ValueError("URL has an invalid port") from None
        if parts.scheme == "srt":
            if port is None:
                raise ValueError("an SRT URL needs a port: srt://host:port")
            if parts.query or parts.path.strip("/"):
                # One place for each setting, and secrets never inside a URL that gets
                # shown and logged.
                raise ValueError("put SRT options in their keys (mode, latency_ms, streamid, "
                                 "passphrase), not in the URL")
        elif not parts.path.strip("/"):
            raise ValueError("an RTMP URL needs the application: rtmp://host/app")
        if parts.password or parts.username:
            raise ValueError("no credentials in the URL: use the key or passphrase keys")
        return v

    def problems(self) -> list[tuple[str, str]]:
        """(key, message) of settings that do not go with this URL's protocol."""
        srt = urlsplit(self.url).scheme == "srt"
        out = []
        if not srt and self.key is None:
            out.append(("key", "RTMP needs the stream key"))
        for key, only in (("key", "RTMP"), ("ca_file", "RTMPS"), ("passphrase", "SRT"),
                          ("streamid", "SRT")):
            if getattr(self, key) is not None and (only == "SRT") != srt:
                out.append((key, f"only for {only} destinations"))
        if self.ca_file is not None and urlsplit(self.url).scheme == "rtmp":
            out.append(("ca_file", "only for rtmps:// (plain RTMP has no TLS)"))
        return out


class Recording(Section):
    enabled: bool = Field(
        False, title="Record locally",
        description="Keep the top rung and audio in MP4 files, also while uplinks are down",
    )
    max_mb: int = Field(2048, title="Size cap (MB)", ge=64, le=1_000_000,
                        description="The oldest files go when the total passes this")
    file_s: int = Field(300, title="File length (s)", ge=10, le=3600)
    directory: str | None = Field(
        None, title="Directory", description="default: recordings/ in the state directory"
    )


class Preview(Section):
    """The WebRTC preview (WHEP at /api/v1/whep): one rung's H.264 as encoded, audio in Opus."""

    rung: str | None = Field(
        None, title="Preview rung",
        description="The ladder rung sent to WebRTC viewers as encoded, without re-encoding; "
        "default: the lowest rung",
    )
    max_viewers: int = Field(
        4, title="Most preview viewers", ge=1, le=16,
        description="WebRTC viewers at once; one more is refused (503) until one leaves",
    )


class Leds(Section):
    """The two status LEDs of SPEC's table (appliance.device.leds)."""

    enabled: bool = Field(True, title="Status LEDs",
                          description="Drive the green and red status LEDs on the pins below")
    green_pin: int = Field(17, title="Green LED pin (BCM)", ge=0, le=27)
    red_pin: int = Field(27, title="Red LED pin (BCM)", ge=0, le=27)

    @model_validator(mode="after")
    def _two_pins(self) -> Leds:
        if self.green_pin == self.red_pin:
            raise ValueError("leds.red_pin: must differ from leds.green_pin")
        return self


class Button(Section):
    """The optional push button (to ground) of SPEC (appliance.device.button)."""

    enabled: bool = Field(True, title="Button", description="Watch the button on the pin below")
    pin: int = Field(22, title="Button pin (BCM)", ge=0, le=27,
                     description="Wired to ground; the internal pull-up is used")
    setup_hold_s: float = Field(
        5.0, title="Hold for the setup access point (s)", ge=0.1, le=60,
        description="Released after this long (and before the factory reset time): start "
        "the Wi-Fi access point Appliance-XXXX for setting up. A short press stops it",
    )
    reset_hold_s: float = Field(
        15.0, title="Hold for factory reset (s)", ge=0.2, le=120,
        description="Released after this long: restore the default config and wipe "
        "secrets and recordings",
    )
    hotspot_interface: str = Field("wlan0", title="Access point Wi-Fi interface",
                                   pattern=r"^[A-Za-z0-9_.-]{1,15}$")

    @model_validator(mode="after")
    def _order(self) -> Button:
        if self.reset_hold_s <= self.setup_hold_s:
            raise ValueError("button.reset_hold_s: must be longer than button.setup_hold_s")
        return self


class Modem(Section):
    """A cellular modem's AT port, polled for signal and registration (appliance.device.modem)."""

    enabled: bool = Field(False, title="Cellular modem monitor")
    port: str = Field("/dev/ttyUSB2", title="AT command port",
                      description="e.g. /dev/ttyUSB2 (Quectel), /dev/ttyACM0; a /dev/serial/by-id "
                      "path survives re-enumeration")
    baud: int = Field(115200, title="Baud rate", ge=1200, le=4_000_000)
    poll_s: float = Field(10.0, title="Poll interval (s)", ge=0.1, le=3600)


class Thermal(Section):
    """SoC temperature and throttling; steps the video load down (appliance.device.thermal)."""

    enabled: bool = Field(True, title="Thermal governor")
    poll_s: float = Field(2.0, title="Poll interval (s)", ge=0.05, le=60)
    hot_c: float = Field(
        75.0, title="Step down above (°C)", ge=40, le=95,
        description="Below the firmware's own frequency cap at 80 °C, so that the load "
        "goes down in steps we choose before the clock does it for us",
    )
    cool_c: float = Field(65.0, title="Restore below (°C)", ge=30, le=90)
    sustain_s: float = Field(
        30.0, title="Sustained for (s)", ge=0, le=3600,
        description="How long it must stay hot or throttled before each step down",
    )
    cool_s: float = Field(
        120.0, title="Cool for (s)", ge=0, le=3600,
        description="How long it must stay cool and unthrottled before each step back up",
    )

    @model_validator(mode="after")
    def _band(self) -> Thermal:
        if self.cool_c >= self.hot_c:
            raise ValueError("thermal.cool_c: must be below thermal.hot_c")
        return self


# Sections whose change the daemon applies only at its own restart (the others: hot, or at
# a restart of the media).
DAEMON_SECTIONS = frozenset({"web", "fleet", "metrics", "leds", "button", "modem", "thermal"})


class Config(Section):
    video: Video = Field(default_factory=Video)  # type: ignore[arg-type]
    audio: Audio = Field(default_factory=Audio)  # type: ignore[arg-type]
    packager: Packager = Field(default_factory=Packager)  # type: ignore[arg-type]
    web: Web = Field(default_factory=Web)  # type: ignore[arg-type]
    playback: Playback = Field(default_factory=Playback)  # type: ignore[arg-type]
    fleet: Fleet | None = None
    metrics: Metrics = Field(default_factory=Metrics)  # type: ignore[arg-type]
    recording: Recording = Field(default_factory=Recording)  # type: ignore[arg-type]
    preview: Preview = Field(default_factory=Preview)  # type: ignore[arg-type]
    leds: Leds = Field(default_factory=Leds)  # type: ignore[arg-type]
    button: Button = Field(default_factory=Button)  # type: ignore[arg-type]
    modem: Modem = Field(default_factory=Modem)  # type: ignore[arg-type]
    thermal: Thermal = Field(default_factory=Thermal)  # type: ignore[arg-type]
    uplink: list[Uplink] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _tables(cls, data: Any) -> Any:
        # Absent tables are validated as empty ones, so that their defaults see the
        # validation context (the board) as the keys of a table that is there do.
        if isinstance(data, dict):
            return {"video": {}, "audio": {}, "packager": {}, "web": {}, **data}
        return data

    @model_validator(mode="after")
    def _uplink_names(self) -> Config:
        names = [u.name for u in self.uplink]
        if len(set(names)) != len(names):
            raise ValueError("uplink: names must be unique")
        rungs = {r.name for r in self.video.ladder}
        for i, u in enumerate(self.uplink):
            if u.rung is not None and u.rung not in rungs:
                raise ValueError(f"uplink[{i}].rung: no rung named {u.rung!r} in video.ladder")
            for key, msg in u.problems():
                raise ValueError(f"uplink[{i}].{key}: {msg}")
        return self

    @model_validator(mode="after")
    def _preview_rung(self) -> Config:
        rungs = [r.name for r in self.video.ladder]
        if self.preview.rung is not None and self.preview.rung not in rungs:
            raise ValueError(f"preview.rung: no rung named {self.preview.rung!r} in video.ladder "
                             f"({', '.join(rungs)})")
        return self

    @model_validator(mode="after")
    def _gpio_pins(self) -> Config:
        if self.button.enabled and self.leds.enabled and self.button.pin in (
                self.leds.green_pin, self.leds.red_pin):
            raise ValueError(f"button.pin: GPIO {self.button.pin} is already an LED's pin")
        return self
