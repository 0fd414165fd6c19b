"""LL-HLS rules checked on playlist text alone, to apply to what any server sends.

`check_media_playlist` and `check_multivariant` return one message per violation (empty
when the playlist is fine); each message starts with the rule's source. They parse the
text and do not use appliance.package.hls, so they can judge it and the running daemon.
Rules: draft-pantos-hls-rfc8216bis (§ numbers) and Apple's LL-HLS profile ("Apple").
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime

_ATTR = re.compile(r'([A-Z0-9-]+)=("[^"\r\n]*"|[^",\s]*)')
_INT = re.compile(r"[0-9]{1,20}")
_FLOAT = re.compile(r"-?[0-9]+(\.[0-9]+)?")
_TOL = 1e-6  # decimal rounding in the text
_SUM_TOL = 0.002  # a segment vs the sum of its parts, each rounded on its own


def parse_attributes(text: str) -> dict[str, str] | None:
    """An attribute-list as a dict (quotes kept off), None if it does not parse (§4.2)."""
    attrs: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        m = _ATTR.match(text, pos)
        if m is None:
            return None
        name, value = m.group(1), m.group(2)
        if name in attrs:
            return None
        attrs[name] = value[1:-1] if value.startswith('"') else value
        pos = m.end()
        if pos < len(text):
            if text[pos] != ",":
                return None
            pos += 1
    return attrs


def _quoted(text: str, name: str) -> bool:
    return re.search(rf'(^|,){name}="', text) is not None


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def _float(value: str | None) -> float | None:
    return float(value) if value is not None and _FLOAT.fullmatch(value) else None


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and _INT.fullmatch(value) else None


def _tag(line: str) -> tuple[str, str]:
    name, _, value = line.partition(":")
    return name, value


# -- media playlist -------------------------------------------------------------------


@dataclass
class _Part:
    duration: float
    uri: str
    independent: bool
    gap: bool


@dataclass
class _Seg:
    pdt: datetime | None = None
    parts: list[_Part] = field(default_factory=list)
    duration: float | None = None  # EXTINF; None for the open (trailing) segment
    uri: str | None = None


@dataclass
class _Media:
    tags: dict[str, list[str]] = field(default_factory=dict)
    segments: list[_Seg] = field(default_factory=list)  # the open one last, if any
    errors: list[str] = field(default_factory=list)

    def one(self, name: str) -> str | None:
        values = self.tags.get(name, [])
        return values[0] if values else None


_ONCE = ("#EXT-X-VERSION", "#EXT-X-TARGETDURATION", "#EXT-X-MEDIA-SEQUENCE",
         "#EXT-X-SERVER-CONTROL", "#EXT-X-PART-INF", "#EXT-X-SKIP")


def _parse_media(text: str) -> _Media:
    media = _Media()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] != "#EXTM3U":
        media.errors.append("§4.4.1.1: the first line must be #EXTM3U")
    current = _Seg()
    for line in lines[1:]:
        if not line.startswith("#"):
            if current.duration is None:
                media.errors.append(f"§4.4.4.1: URI line {line!r} without EXTINF")
            current.uri = line
            media.segments.append(current)
            current = _Seg()
            continue
        if not line.startswith("#EXT"):
            continue  # a comment
        name, value = _tag(line)
        media.tags.setdefault(name, []).append(value)
        if name == "#EXT-X-PROGRAM-DATE-TIME":
            _add_pdt(media, current, value)
        elif name == "#EXT-X-PART":
            _add_part(media, current, value)
        elif name == "#EXTINF":
            duration = _float(value.partition(",")[0])
            if duration is None:
                media.errors.append(f"§4.4.4.1: bad EXTINF {value!r}")
            current.duration = duration if duration is not None else 0.0
    if current.duration is not None:
        media.errors.append("§4.4.4.1: EXTINF without a URI line at the end")
    elif current.parts or current.pdt is not None:
        media.segments.append(current)  # the open segment: parts, no EXTINF yet
    return media


def _add_pdt(media: _Media, seg: _Seg, value: str) -> None:
    if seg.parts:
        media.errors.append("§4.4.4.9: EXT-X-PROGRAM-DATE-TIME after the segment's first part")
    try:
        seg.pdt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        media.errors.append(f"§4.4.4.6: bad EXT-X-PROGRAM-DATE-TIME {value!r}")
        return
    if seg.pdt.tzinfo is None:
        media.errors.append(f"§4.4.4.6: EXT-X-PROGRAM-DATE-TIME {value!r} has no time zone")


def _add_part(media: _Media, seg: _Seg, value: str) -> None:
    attrs = parse_attributes(value)
    if attrs is None:
        media.errors.append(f"§4.2: bad EXT-X-PART attributes {value!r}")
        return
    duration = _float(attrs.get("DURATION"))
    if duration is None or "URI" not in attrs or not _quoted(value, "URI"):
        media.errors.append(f"§4.4.4.9: EXT-X-PART needs DURATION and a quoted URI: {value!r}")
        return
    seg.parts.append(_Part(duration, attrs["URI"], attrs.get("INDEPENDENT") == "YES",
                           attrs.get("GAP") == "YES"))


def check_media_playlist(text: str) -> list[str]:
    """Violations of the LL-HLS media playlist rules in `text`."""
    media = _parse_media(text)
    errors = media.errors
    target = _check_header(media)
    part_target = _check_low_latency_header(media, target)
    _check_segments(media, target)
    if part_target is not None:
        _check_parts(media, part_target)
        if target is not None:
            _check_part_window(media, target)
    _check_hint_and_reports(media)
    return errors


def _check_header(media: _Media) -> int | None:
    errors = media.errors
    for name in _ONCE:
        if len(media.tags.get(name, [])) > 1:
            errors.append(f"§4.4: {name} MUST NOT appear more than once")
    version = _int(media.one("#EXT-X-VERSION"))
    if version is None:
        errors.append("§4.4.1.2: EXT-X-VERSION missing or not an integer")
    target = _int(media.one("#EXT-X-TARGETDURATION"))
    if target is None or target < 1:
        errors.append("§4.4.3.1: EXT-X-TARGETDURATION missing or not a positive integer")
        target = None
    sequence = media.one("#EXT-X-MEDIA-SEQUENCE")
    if _int(sequence) is None:
        errors.append("§6.2.2: a live playlist needs an integer EXT-X-MEDIA-SEQUENCE")
    map_value = media.one("#EXT-X-MAP")
    if map_value is None or not _quoted(map_value, "URI"):
        errors.append("§4.4.4.5: EXT-X-MAP with a quoted URI is missing")
    ended = "#EXT-X-ENDLIST" in media.tags
    if not ended and "#EXT-X-PLAYLIST-TYPE" in media.tags:
        errors.append("§6.2.2: a live playlist MUST NOT carry EXT-X-PLAYLIST-TYPE")
    if version is not None:
        if map_value is not None and version < 6:
            errors.append("§8: EXT-X-MAP needs EXT-X-VERSION 6 or more")
        if "#EXT-X-SKIP" in media.tags and version < 9:
            errors.append("§8: EXT-X-SKIP needs EXT-X-VERSION 9 or more")
    return target


def _check_low_latency_header(media: _Media, target: int | None) -> float | None:
    errors = media.errors
    control = parse_attributes(media.one("#EXT-X-SERVER-CONTROL") or "")
    if control is None or not control:
        errors.append("Apple: EXT-X-SERVER-CONTROL missing or malformed")
        control = {}
    if control.get("CAN-BLOCK-RELOAD") != "YES":
        errors.append("Apple: LL-HLS needs CAN-BLOCK-RELOAD=YES")
    skip_until = _float(control.get("CAN-SKIP-UNTIL"))
    if "CAN-SKIP-UNTIL" in control and skip_until is None:
        errors.append("§4.4.3.8: CAN-SKIP-UNTIL is not a number")
    if skip_until is not None and target is not None and skip_until < 6 * target - _TOL:
        errors.append(f"§4.4.3.8: CAN-SKIP-UNTIL {skip_until} < 6 x target duration {target}")
    _check_skip(media, skip_until)
    part_inf = parse_attributes(media.one("#EXT-X-PART-INF") or "") or {}
    part_target = _float(part_inf.get("PART-TARGET"))
    if part_target is None or part_target <= 0:
        errors.append("§4.4.3.7: EXT-X-PART-INF with a positive PART-TARGET is required")
        return None
    hold_back = _float(control.get("PART-HOLD-BACK"))
    if hold_back is None:
        errors.append("§4.4.3.8: PART-HOLD-BACK is required with EXT-X-PART-INF")
    elif hold_back < 3 * part_target - _TOL:
        errors.append(f"Apple/§4.4.3.8: PART-HOLD-BACK {hold_back} < 3 x PART-TARGET "
                      f"{part_target}")
    return part_target


def _check_skip(media: _Media, skip_until: float | None) -> None:
    skips = media.tags.get("#EXT-X-SKIP", [])
    if not skips:
        return
    attrs = parse_attributes(skips[0]) or {}
    if _int(attrs.get("SKIPPED-SEGMENTS")) is None:
        media.errors.append("§4.4.5.2: EXT-X-SKIP needs an integer SKIPPED-SEGMENTS")
    if skip_until is None:
        media.errors.append("§6.2.5.1: EXT-X-SKIP without CAN-SKIP-UNTIL")


def _check_segments(media: _Media, target: int | None) -> None:
    errors = media.errors
    uris = [s.uri for s in media.segments if s.uri is not None]
    if len(set(uris)) != len(uris):
        errors.append("§6.2.1: a segment URI appears twice")
    previous: datetime | None = None
    for i, seg in enumerate(media.segments):
        if seg.pdt is None:
            errors.append(f"Apple: segment {i} ({seg.uri or 'open'}) has no PROGRAM-DATE-TIME")
        elif previous is not None and seg.pdt <= previous:
            errors.append(f"§6.2.1: PROGRAM-DATE-TIME of segment {i} does not increase")
        previous = seg.pdt or previous
        if seg.duration is None:
            continue
        if target is not None and _round_half_up(seg.duration) > target:
            errors.append(f"§4.4.3.1: EXTINF {seg.duration} rounds above target {target}")
        if seg.parts and abs(sum(p.duration for p in seg.parts) - seg.duration) > _SUM_TOL:
            errors.append(f"§3.2: parts of {seg.uri} do not add up to its EXTINF")
    for seg in media.segments[:-1]:
        if seg.duration is None:
            errors.append("§4.4.4.1: an open segment (parts, no EXTINF) before the last one")
    skipped = "#EXT-X-SKIP" in media.tags
    sequence = _int(media.one("#EXT-X-MEDIA-SEQUENCE")) or 0
    total = sum(s.duration or 0.0 for s in media.segments)
    if target is not None and sequence > 0 and not skipped and total < 3 * target - _TOL:
        errors.append(f"§6.2.2: segments were removed but only {total:.3f} s remain "
                      f"(< 3 target durations)")


def _check_parts(media: _Media, part_target: float) -> None:
    errors = media.errors
    segments = media.segments
    all_parts = [p for s in segments for p in s.parts]
    if not all_parts:
        errors.append("Apple: an LL-HLS playlist lists parts at the live edge")
    uris = [p.uri for p in all_parts]
    if len(set(uris)) != len(uris):
        errors.append("§4.4.4.9: a part URI appears twice")
    with_parts = [bool(s.parts) for s in segments]
    if True in with_parts and not all(with_parts[with_parts.index(True):]):
        errors.append("§6.2.2: parts must be removed oldest first (parts only on a suffix)")
    for i, seg in enumerate(segments):
        for j, part in enumerate(seg.parts):
            if part.duration > part_target + _TOL:
                errors.append(f"§4.4.4.9: part {part.uri} lasts {part.duration} > "
                              f"PART-TARGET {part_target}")
            final = j == len(seg.parts) - 1
            next_gap = not final and seg.parts[j + 1].gap
            if (part.duration < 0.85 * part_target - _TOL and not final and not next_gap
                    and not part.independent and not part.gap):
                errors.append(f"§4.4.4.9: part {part.uri} lasts {part.duration} < 85% of "
                              f"PART-TARGET")
        # Segments start with an IDR; a segment's first part is index 0 when the
        # previous segment lists parts too (parts go oldest first) or all are listed.
        complete_list = seg.duration is not None and abs(
            sum(p.duration for p in seg.parts) - seg.duration) <= _SUM_TOL
        starts_at_zero = (i > 0 and bool(segments[i - 1].parts)) or complete_list
        if seg.parts and starts_at_zero and not seg.parts[0].independent:
            errors.append(f"§4.4.2.7/Apple: first part of a segment ({seg.parts[0].uri}) "
                          f"is not INDEPENDENT=YES")


def _check_part_window(media: _Media, target: int) -> None:
    # §6.2.2: EXT-X-PART tags SHOULD go once more than 3 target durations from the end.
    end = sum((s.duration if s.duration is not None else sum(p.duration for p in s.parts))
              for s in media.segments)
    start = 0.0
    for seg in media.segments:
        offset = start
        for part in seg.parts:
            if end - offset > 3 * target + _SUM_TOL:
                media.errors.append(f"§6.2.2: part {part.uri} starts {end - offset:.3f} s "
                                    f"from the end (> 3 target durations)")
                break
            offset += part.duration
        start += seg.duration if seg.duration is not None else 0.0


def _check_hint_and_reports(media: _Media) -> None:
    errors = media.errors
    hints = [parse_attributes(v) for v in media.tags.get("#EXT-X-PRELOAD-HINT", [])]
    part_hints = [h for h in hints if h is not None and h.get("TYPE") == "PART"]
    if "#EXT-X-ENDLIST" in media.tags:
        if hints:
            errors.append("§4.4.5.3: EXT-X-PRELOAD-HINT in an ended playlist")
    elif len(part_hints) != 1 or not part_hints[0].get("URI"):
        errors.append("§6.2.6/Apple: one EXT-X-PRELOAD-HINT:TYPE=PART with a URI expected")
    listed = {p.uri for s in media.segments for p in s.parts}
    for hint in part_hints:
        if hint.get("URI") in listed:
            errors.append(f"§4.4.5.3: preload hint {hint.get('URI')} is already listed")
    has_parts = bool(listed)
    for value in media.tags.get("#EXT-X-RENDITION-REPORT", []):
        attrs = parse_attributes(value)
        if attrs is None or not _quoted(value, "URI") or _int(attrs.get("LAST-MSN")) is None:
            errors.append(f"§4.4.5.4: rendition report needs URI and LAST-MSN: {value!r}")
        elif has_parts and _int(attrs.get("LAST-PART")) is None:
            errors.append(f"§4.4.5.4: rendition report needs LAST-PART: {value!r}")


# -- multivariant playlist ---------------------------------------------------------------

_MEDIA_ONLY_TAGS = ("#EXTINF", "#EXT-X-TARGETDURATION", "#EXT-X-MEDIA-SEQUENCE", "#EXT-X-PART",
                    "#EXT-X-MAP", "#EXT-X-SERVER-CONTROL", "#EXT-X-PART-INF")
_AUDIO_CODECS = ("mp4a.", "ac-3", "ec-3", "opus", "flac", "alac")


def check_multivariant(text: str) -> list[str]:
    """Violations of the multivariant playlist rules in `text`."""
    errors: list[str] = []
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] != "#EXTM3U":
        errors.append("§4.4.1.1: the first line must be #EXTM3U")
    if "#EXT-X-INDEPENDENT-SEGMENTS" not in lines:
        errors.append("Apple: EXT-X-INDEPENDENT-SEGMENTS expected")
    for line in lines:
        if _tag(line)[0] in _MEDIA_ONLY_TAGS:
            errors.append(f"§4.1: media playlist tag in a multivariant playlist: {line!r}")
    groups = _check_renditions(lines, errors)
    variants = _variants(lines, errors)
    if not variants:
        errors.append("§4.4.6.2: no EXT-X-STREAM-INF")
    uris = [uri for _, uri in variants]
    if len(set(uris)) != len(uris):
        errors.append("§4.4.6.2: two variants share a URI")
    for attrs, uri in variants:
        _check_variant(attrs, uri, groups, errors)
    return errors


def _check_renditions(lines: list[str], errors: list[str]) -> dict[str, int]:
    """Audio groups by GROUP-ID, counting their DEFAULT=YES renditions."""
    groups: dict[str, int] = {}
    names: set[tuple[str, str]] = set()
    for line in lines:
        name, value = _tag(line)
        if name != "#EXT-X-MEDIA":
            continue
        attrs = parse_attributes(value)
        if attrs is None or not {"TYPE", "GROUP-ID", "NAME"} <= attrs.keys():
            errors.append(f"§4.4.6.1: EXT-X-MEDIA needs TYPE, GROUP-ID and NAME: {line!r}")
            continue
        if attrs["TYPE"] != "AUDIO":
            continue
        group = attrs["GROUP-ID"]
        if (group, attrs["NAME"]) in names:
            errors.append(f"§4.4.6.1: two renditions named {attrs['NAME']!r} in {group!r}")
        names.add((group, attrs["NAME"]))
        if not attrs.get("URI") or not _quoted(value, "URI"):
            errors.append(f"§4.4.6.1: audio rendition without a quoted URI: {line!r}")
        default = attrs.get("DEFAULT") == "YES"
        if default and attrs.get("AUTOSELECT") != "YES":
            errors.append("§4.4.6.1: DEFAULT=YES needs AUTOSELECT=YES")
        groups[group] = groups.get(group, 0) + default
    for group, defaults in groups.items():
        if defaults != 1:
            errors.append(f"§4.4.6.1: audio group {group!r} has {defaults} DEFAULT=YES renditions")
    return groups


def _variants(lines: list[str], errors: list[str]) -> list[tuple[dict[str, str], str]]:
    variants = []
    for i, line in enumerate(lines):
        name, value = _tag(line)
        if name != "#EXT-X-STREAM-INF":
            continue
        attrs = parse_attributes(value)
        uri = lines[i + 1] if i + 1 < len(lines) else ""
        if attrs is None:
            errors.append(f"§4.2: bad EXT-X-STREAM-INF attributes: {line!r}")
        elif not uri or uri.startswith("#"):
            errors.append(f"§4.4.6.2: EXT-X-STREAM-INF not followed by a URI: {line!r}")
        else:
            variants.append((attrs, uri))
    return variants


def _check_variant(attrs: dict[str, str], uri: str, groups: dict[str, int],
                   errors: list[str]) -> None:
    where = f"variant {uri}"
    bandwidth = _int(attrs.get("BANDWIDTH"))
    average = _int(attrs.get("AVERAGE-BANDWIDTH"))
    if bandwidth is None or bandwidth <= 0:
        errors.append(f"§4.4.6.2: {where}: BANDWIDTH missing or not positive")
    if average is None or average <= 0:
        errors.append(f"Apple: {where}: AVERAGE-BANDWIDTH missing or not positive")
    elif bandwidth is not None and average > bandwidth:
        errors.append(f"§4.4.6.2: {where}: AVERAGE-BANDWIDTH above the peak BANDWIDTH")
    codecs = [c.strip() for c in attrs.get("CODECS", "").split(",") if c.strip()]
    if not codecs:
        errors.append(f"Apple: {where}: CODECS missing")
    if not re.fullmatch(r"[1-9][0-9]*x[1-9][0-9]*", attrs.get("RESOLUTION", "")):
        errors.append(f"Apple: {where}: RESOLUTION missing or malformed")
    if not re.fullmatch(r"[0-9]+\.[0-9]{3}", attrs.get("FRAME-RATE", "")):
        errors.append(f"Apple: {where}: FRAME-RATE missing or not given to 3 decimals")
    group = attrs.get("AUDIO")
    if groups and group is None:
        errors.append(f"Apple: {where}: no AUDIO group although one is offered")
    if group is not None:
        if group not in groups:
            errors.append(f"§4.4.6.2: {where}: AUDIO group {group!r} not defined")
        if not any(c.startswith(_AUDIO_CODECS) for c in codecs):
            errors.append(f"§6.2.4: {where}: CODECS lacks the audio rendition's codec")
