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

from appliance.board import BoardProfile
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


_KEY_PART = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\.")


def _key_to_loc(key: str) -> tuple[int | str, ...]:
    return tuple(name or int(index) for name, index in _KEY_PART.findall(key) if name or index)


# A rule that spans several keys names the one to change at the start of its message.
_NAMED = re.compile(r"^([A-Za-z_]\w*(?:\[\d+\])*(?:\.[A-Za-z_]\w*(?:\[\d+\])*)*): ")


def _own_key(key: str, msg: str) -> tuple[str, str]:
    """(key, message), taking a more precise key from "video.ladder: ..." messages."""
    m = _NAMED.match(msg)
    if m and (not key or m.group(1) == key or m.group(1).startswith((key + ".", key + "["))):
        return m.group(1), msg[m.end():]
    return key, msg


def _header_line(lines: list[str], path: str, index: int) -> int | None:
    """Line of the `index`-th [path] or [[path]] header."""
    header = re.compile(r"^\s*\[\[?\s*" + re.escape(path) + r"\s*\]\]?\s*(#.*)?$")
    found = [n for n, line in enumerate(lines) if header.match(line)]
    return found[index] + 1 if index < len(found) else None


def _line_of(text: str, loc: tuple[int | str, ...]) -> int | None:
    """Best-effort line number of the key at `loc`, for errors a person can find."""
    tables = [p for p in loc if isinstance(p, str)]
    if not tables:
        return None
    lines = text.splitlines()
    index = next((p for p in loc if isinstance(p, int)), 0)
    # A whole table or array of tables (e.g. video.ladder): its header.
    whole = _header_line(lines, ".".join(tables), index)
    if whole is not None:
        return whole
    # Else the key inside the innermost table, counting [[array]] occurrences.
    start = 0
    header_path = ".".join(tables[:-1])
    if header_path:
        start = (_header_line(lines, header_path, index) or 1) - 1
    key = re.compile(r"^\s*" + re.escape(tables[-1]) + r"\s*=")
    for n in range(start, len(lines)):
        if key.match(lines[n]):
            return n + 1
        if n > start and lines[n].lstrip().startswith("[") and header_path:
            break
    return start + 1 if header_path else None


def key_errors(exc: ValidationError, text: str = "") -> ConfigError:
    """pydantic's errors as "key: message (line N)", N found in `text` where given."""
    errors = []
    for err in exc.errors():
        key, msg = _own_key(_loc_to_key(tuple(err["loc"])),
                            err["msg"].removeprefix("Value error, "))
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        line = _line_of(text, _key_to_loc(key)) if text else None
        errors.append(f"{key or '(top level)'}: {msg}" + (f" (line {line})" if line else ""))
    return ConfigError(errors)


def validate(data: dict[str, Any], text: str = "", board: BoardProfile | None = None) -> Config:
    """`data` as a Config for `board` (default: this machine's, see appliance.board)."""
    try:
        return Config.model_validate(data, context={"board": board} if board else None)
    except ValidationError as exc:
        raise key_errors(exc, text) from None


def parse(text: str, board: BoardProfile | None = None) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"TOML syntax: {exc}"]) from None
    return validate(data, text, board)


def load(path: Path, board: BoardProfile | None = None) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    return parse(text, board)


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
