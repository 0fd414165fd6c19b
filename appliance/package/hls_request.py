"""The LL-HLS delivery directives of a playlist request (§6.2.5 of rfc8216bis).

Parsing only: whether a valid request may block, or must be refused, depends on the
track and is decided in appliance.package.hls.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

# Request parameters are decimal-integers (§4.2); more digits than this is no real client.
_MSN_RE = re.compile(r"[0-9]{1,15}")
_PART_RE = re.compile(r"[0-9]{1,9}")


class HlsRequestError(ValueError):
    """A playlist or media request the spec says to refuse with Bad Request (400)."""


@dataclass(frozen=True, slots=True)
class Directives:
    msn: int | None = None
    part: int | None = None
    skip: Literal["YES", "v2"] | None = None


def parse_directives(query: Iterable[tuple[str, str]]) -> Directives:
    """The _HLS_ delivery directives of a media playlist request; HlsRequestError if bad.

    Other query parameters (a playback token, a cache buster) are left alone.
    """
    seen: dict[str, str] = {}
    for key, value in query:
        if key not in ("_HLS_msn", "_HLS_part", "_HLS_skip"):
            continue
        if key in seen:
            raise HlsRequestError(f"{key} given more than once")
        seen[key] = value
    msn = _parse_int(seen, "_HLS_msn", _MSN_RE)
    part = _parse_int(seen, "_HLS_part", _PART_RE)
    if part is not None and msn is None:
        # §6.2.5.2: _HLS_part without _HLS_msn MUST get Bad Request.
        raise HlsRequestError("_HLS_part needs _HLS_msn")
    return Directives(msn, part, _parse_skip(seen.get("_HLS_skip")))


def _parse_skip(value: str | None) -> Literal["YES", "v2"] | None:
    # §6.2.5.1: the only values are YES and v2 (enumerated strings are case-sensitive).
    if value is None:
        return None
    if value == "YES":
        return "YES"
    if value == "v2":
        return "v2"
    raise HlsRequestError("_HLS_skip must be YES or v2")


def _parse_int(seen: dict[str, str], key: str, pattern: re.Pattern[str]) -> int | None:
    value = seen.get(key)
    if value is None:
        return None
    # fullmatch on [0-9]: no sign, space, underscore or non-ASCII digit that int() takes.
    if not pattern.fullmatch(value):
        raise HlsRequestError(f"{key} must be a decimal integer")
    return int(value)
