"""The first-boot file, `appliance-setup.toml`: its schema and how it is read.

Every key is checked before anything is applied (appliance.provision.firstboot), and each
error names its key and line. image/appliance-setup.toml is the commented template.
"""

from __future__ import annotations

import base64
import binascii
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from appliance.config.load import ConfigError, key_errors
from appliance.config.schema import Fleet, Section, Uplink
from appliance.passwords import PasswordError, check_new

SETUP_FILE = "appliance-setup.toml"
_HOSTNAME = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_KEY_TYPES = frozenset({
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com"})


# -- the file's schema ----------------------------------------------------------------------

class WifiNetwork(Section):
    ssid: str = Field(title="Network name (SSID)")
    psk: str | None = Field(None, title="Password", description="none: an open network",
                            json_schema_extra={"secret": True})
    hidden: bool = Field(False, title="Hidden network")
    priority: int = Field(0, title="Priority (higher first)", ge=-999, le=999)

    @field_validator("ssid")
    @classmethod
    def _ssid(cls, v: str) -> str:
        if not 1 <= len(v.encode("utf-8")) <= 32:
            raise ValueError("an SSID has 1 to 32 bytes")
        if any(ord(c) < 32 or ord(c) == 127 for c in v):
            raise ValueError("an SSID has no control characters")
        return v

    @field_validator("psk")
    @classmethod
    def _psk(cls, v: str | None) -> str | None:
        if v is None or re.fullmatch(r"[0-9a-fA-F]{64}", v):
            return v
        if not 8 <= len(v) <= 63 or not all(32 <= ord(c) < 127 for c in v):
            raise ValueError("a WPA password has 8 to 63 printable ASCII characters "
                             "(or is 64 hex digits)")
        return v


class Wifi(Section):
    country: str | None = Field(None, title="Country (ISO 3166, e.g. GB)",
                                pattern=r"^[A-Za-z]{2}$")
    network: list[WifiNetwork] = Field(default_factory=list, max_length=16)

    @model_validator(mode="after")
    def _unique(self) -> Wifi:
        seen: set[str] = set()
        for i, net in enumerate(self.network):
            if net.ssid in seen:
                raise ValueError(f"wifi.network[{i}].ssid: {net.ssid!r} is listed twice")
            seen.add(net.ssid)
        return self


class SetupFleet(Fleet):
    """The config's [fleet], with the certificates as PEM text (ca, cert, key) or as files
    next to the setup file (ca_file, cert_file, key_file); both are copied to the state
    directory and the config names the copies."""

    ca: str | None = Field(None, title="Broker CA (PEM)")
    cert: str | None = Field(None, title="Client certificate (PEM)")
    key: str | None = Field(None, title="Client key (PEM)", json_schema_extra={"secret": True})

    @model_validator(mode="after")
    def _cert_pair(self) -> SetupFleet:  # replaces Fleet's: here a pair may mix both forms
        for name in ("ca", "cert", "key"):
            given = getattr(self, f"{name}_file")
            if getattr(self, name) is not None and given is not None:
                raise ValueError(f"fleet.{name}_file: give {name} or {name}_file, not both")
            if given is not None and Path(given).name != given:
                raise ValueError(f"fleet.{name}_file: the name of a file next to {SETUP_FILE}")
        has_cert = self.cert is not None or self.cert_file is not None
        has_key = self.key is not None or self.key_file is not None
        if has_cert != has_key:
            missing = "key" if has_cert else "cert"
            raise ValueError(f"fleet.{missing}: a client certificate needs cert and key")
        return self


class Ssh(Section):
    authorized_keys: list[str] = Field(default_factory=list, max_length=64)

    @field_validator("authorized_keys")
    @classmethod
    def _keys(cls, keys: list[str]) -> list[str]:
        for i, line in enumerate(keys):
            problem = _ssh_key_problem(line)
            if problem:
                raise ValueError(f"ssh.authorized_keys[{i}]: {problem}")
        return keys


class SetupFile(Section):
    hostname: str | None = Field(None, title="Host name (<name>.local on the LAN)")
    admin_password: str | None = Field(None, json_schema_extra={"secret": True})
    wifi: Wifi | None = None
    uplink: list[Uplink] = Field(default_factory=list)
    fleet: SetupFleet | None = None
    ssh: Ssh | None = None

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, v: str | None) -> str | None:
        if v is not None and not _HOSTNAME.fullmatch(v.lower()):
            raise ValueError("1 to 63 letters, digits and '-', not starting or ending with '-'")
        return v.lower() if v is not None else None

    @field_validator("admin_password")
    @classmethod
    def _password(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                check_new(v)
            except PasswordError as exc:
                raise ValueError(str(exc)) from None
        return v

    @field_validator("uplink")
    @classmethod
    def _uplinks(cls, uplinks: list[Uplink]) -> list[Uplink]:
        # The config's own rules for a list of uplinks (Config._uplink_names), with this
        # file's indexes in the keys; a field validator, so it runs whatever else is wrong.
        names = [u.name for u in uplinks]
        if len(set(names)) != len(names):
            raise ValueError("uplink: names must be unique")
        for i, u in enumerate(uplinks):
            for key, msg in u.problems():
                raise ValueError(f"uplink[{i}].{key}: {msg}")
        return uplinks


def _ssh_key_problem(line: str) -> str | None:
    """Why `line` is no OpenSSH public key line ("type base64 [comment]"), else None."""
    parts = line.strip().split(None, 2)
    if len(parts) < 2 or parts[0] not in _KEY_TYPES:
        return f"not an SSH public key (\"{' | '.join(sorted(_KEY_TYPES))} AAAA... comment\")"
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except binascii.Error:
        return "the key is not valid base64"
    # The blob starts with its own type as a length-prefixed string.
    size = int.from_bytes(blob[:4], "big")
    if blob[4:4 + size].decode("ascii", "replace") != parts[0]:
        return f"the key's data is not a {parts[0]} key"
    return None


# -- reading --------------------------------------------------------------------------------

def parse(text: str) -> tuple[SetupFile, dict[str, Any]]:
    """The checked file and its raw tables; ConfigError naming each bad key."""
    text = text.removeprefix("\ufeff")  # Windows editors on the card add a BOM
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"TOML syntax: {exc}"]) from None
    try:
        return SetupFile.model_validate(raw), raw
    except ValidationError as exc:
        raise key_errors(exc, text) from None
