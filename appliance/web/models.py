"""Request and response bodies of the API, as pydantic models: the handlers validate
with them and the OpenAPI document takes its schemas from them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from appliance.config.schema import Uplink
from appliance.credentials import TOKEN_NAME
from appliance.passwords import MAX_LENGTH, MIN_LENGTH


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorItem(Body):
    key: str = Field(description='The config key or body field, e.g. "uplink[0].url"')
    message: str


class ErrorReply(Body):
    error: str
    errors: list[ErrorItem] = []


class Ok(Body):
    ok: bool


class PasswordBody(Body):
    password: str = Field(min_length=MIN_LENGTH, max_length=MAX_LENGTH)


class LoginBody(Body):
    password: str = Field(max_length=MAX_LENGTH)


class LoginReply(Body):
    ok: bool
    csrf_token: str = Field(description="Send it back as X-CSRF-Token on every change")


class SessionReply(Body):
    authenticated: bool
    setup_required: bool
    csrf_token: str | None = None


class Leds(Body):
    green: Literal["off", "on", "blink-1hz", "blink-4hz", "alternate-2hz"]
    red: Literal["off", "on", "blink-1hz", "blink-0.5hz", "alternate-2hz"]


class StatusReply(Body):
    state: str
    uptime_s: float
    leds: Leds
    sections: dict[str, dict[str, Any]]


class ValidateReply(Body):
    ok: bool
    errors: list[ErrorItem] = []


class ApplyReply(Body):
    ok: bool
    restart_needed: list[str] = Field(
        description="Config sections whose change waits for a restart of the daemon")


class TestReply(Body):
    ok: bool
    message: str


class LogRecord(Body):
    time: float
    level: str
    logger: str
    message: str


class LogsReply(Body):
    records: list[LogRecord]


class RecordingItem(Body):
    name: str
    size: int
    started: float
    active: bool


class RecordingsReply(Body):
    recordings: list[RecordingItem]


class TokenItem(Body):
    id: str
    name: str
    created: float


class TokensReply(Body):
    tokens: list[TokenItem]


class TokenCreate(Body):
    name: str = Field(pattern="^" + TOKEN_NAME.pattern + "$")


class TokenCreated(TokenItem):
    token: str = Field(description="The bearer token: shown this once, never again")


class PlaybackUrlReply(Body):
    url: str = Field(description="The LL-HLS multivariant playlist, signed")
    mpd_url: str = Field(description="The LL-DASH MPD, signed")
    token: str | None = Field(description="None when playback needs no token")
    expires: int | None = Field(description="Unix time the URLs stop working")


class UplinksReply(Body):
    uplinks: list[Uplink]
