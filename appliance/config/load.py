"""Reading, validating and atomically saving the TOML configuration."""

from __future__ import annotations

import os
import re
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import ValidationError

from appliance.config.schema import Config

DEVICE_CONFIG = Path("/etc/appliance/appliance.toml")


class ConfigError(Exception):
    """A config that cannot be used; `errors` has one line per problem, each naming its key."""

    def __init__(self, errors: list[str]):
        super().__init__("; ".join(errors))
        self.errors = errors


def _loc_to_key(loc: tuple[int | str, ...]) -> str:
    key = ""
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        else:
            key += ("." if key else "") + part
    return key


def _line_of(text: str, loc: tuple[int | str, ...]) -> int | None:
    """Best-effort line number of the key at `loc`, for errors a person can find."""
    tables = [p for p in loc if isinstance(p, str)]
    if not tables:
        return None
    lines = text.splitlines()
    # Find the header of the innermost table, counting [[array]] occurrences.
    start = 0
    header_path = ".".join(tables[:-1])
    if header_path:
        index = next((p for p in loc if isinstance(p, int)), 0)
        seen = -1
        header = re.compile(r"^\s*\[\[?\s*" + re.escape(header_path) + r"\s*\]\]?\s*(#.*)?$")
        for n, line in enumerate(lines):
            if header.match(line):
                seen += 1
                start = n
                if seen == index:
                    break
    key = re.compile(r"^\s*" + re.escape(tables[-1]) + r"\s*=")
    for n in range(start, len(lines)):
        if key.match(lines[n]):
            return n + 1
        if n > start and lines[n].lstrip().startswith("[") and header_path:
            break
    return start + 1 if header_path else None


def validate(data: dict[str, Any], text: str = "") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        errors = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            key = _loc_to_key(loc) or "(top level)"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            line = _line_of(text, loc) if text else None
            errors.append(f"{key}: {msg}" + (f" (line {line})" if line else ""))
        raise ConfigError(errors) from None


def parse(text: str) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"TOML syntax: {exc}"]) from None
    return validate(data, text)


def load(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    return parse(text)


def dump(config: Config) -> str:
    return tomli_w.dumps(config.model_dump(exclude_none=True, mode="json"))


def save_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    """Write `text` so that a power cut leaves either the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), mode)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
