"""What the fleet agent publishes, built from a status hub snapshot: telemetry documents
(keyed maps, so generic bridges can flatten them) and the events derived from changes.

No secret may leave the device: `scrub` replaces every configured secret in a payload.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from typing import Any

from appliance.web.masking import MASK

RUNG_KEYS = ("encoder", "bitrate_kbps", "frames", "repeated_frames", "dropped_frames",
             "lateness_ms_avg", "lateness_ms_max")
UPLINK_KEYS = ("enabled", "state", "protocol", "rung", "bytes_sent", "bitrate_kbps",
               "reconnects", "dropped_packets", "uptime_s", "srt_rtt_ms", "srt_lost_packets",
               "srt_retransmitted_packets", "srt_dropped_packets")
HEALTHY = frozenset({"live", "live_local", "degraded"})


def _pick(section: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: section[k] for k in keys if k in section}


def _keyed(sections: dict[str, dict[str, Any]], prefix: str,
           keys: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    return {name[len(prefix):]: _pick(sec, keys) for name, sec in sorted(sections.items())
            if name.startswith(prefix)}


def telemetry(snapshot: dict[str, Any], session: int, seq: int) -> dict[str, Any]:
    """One telemetry document: rungs and uplinks are objects keyed by name."""
    sections: dict[str, dict[str, Any]] = snapshot["sections"]
    video = sections.get("media.video", {})
    thermal = sections.get("thermal", {})
    modem = sections.get("modem", {})
    recording = sections.get("recording", {})
    doc: dict[str, Any] = {
        "ts": round(time.time(), 3),
        "session": session,
        "seq": seq,
        "state": snapshot["state"],
        "uptime_s": snapshot["uptime_s"],
        "video": _pick(video, ("state", "fps", "frames", "dropped")),
        "rungs": _keyed(sections, "encode.", RUNG_KEYS),
        "uplinks": _keyed(sections, "uplink.", UPLINK_KEYS),
        "device": {
            "cpu_percent": sections.get("device", {}).get("cpu_percent"),
            "temp_c": thermal.get("temp_c"),
            "thermal_level": thermal.get("level"),
            "degraded": thermal.get("degraded"),
            "throttled": thermal.get("throttled") or {},
        },
        "recording": _pick(recording, ("state", "bytes")),
    }
    if modem:
        doc["modem"] = _pick(modem, ("signal_dbm", "registered", "operator", "technology"))
    state_dir = sections.get("daemon", {}).get("state_dir")
    if isinstance(state_dir, str):
        with contextlib.suppress(OSError):
            doc["device"]["disk_free_bytes"] = shutil.disk_usage(state_dir).free
    return doc


def events(before: dict[str, Any] | None, after: dict[str, Any]) -> list[dict[str, Any]]:
    """The events between two snapshots: source lost / back, uplink down / up, throttled /
    cooled, device state changes."""
    if before is None:
        return []
    out: list[dict[str, Any]] = []
    b, a = before["sections"], after["sections"]
    old_src, new_src = b.get("media.video", {}).get("state"), a.get("media.video", {}).get(
        "state")
    if new_src != old_src:
        if new_src == "no_source":
            out.append({"type": "source_lost"})
        elif new_src == "live" and old_src == "no_source":
            out.append({"type": "source_restored"})
    for name in sorted(set(a) | set(b)):
        if not name.startswith("uplink."):
            continue
        old, new = b.get(name, {}).get("state"), a.get(name, {}).get("state")
        uplink = name[len("uplink."):]
        if old == "live" and new != "live":
            out.append({"type": "uplink_down", "uplink": uplink, "state": new})
        elif new == "live" and old != "live":
            out.append({"type": "uplink_up", "uplink": uplink})
    old_hot = bool(b.get("thermal", {}).get("degraded"))
    new_hot = bool(a.get("thermal", {}).get("degraded"))
    if new_hot != old_hot:
        thermal = a.get("thermal", {})
        out.append({"type": "throttled" if new_hot else "cooled",
                    "temp_c": thermal.get("temp_c"), "level": thermal.get("level")})
    if before["state"] != after["state"]:
        out.append({"type": "state", "from": before["state"], "to": after["state"]})
    return out


def scrub(value: Any, secrets: list[str]) -> Any:
    """`value` with every occurrence of a secret in its strings (and keys) masked."""
    live = [s for s in secrets if s]
    if not live:
        return value
    if isinstance(value, str):
        for s in live:
            value = value.replace(s, MASK)
        return value
    if isinstance(value, dict):
        return {scrub(k, live): scrub(v, live) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v, live) for v in value]
    return value
