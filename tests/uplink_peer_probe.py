"""ffprobe on what a peer received: per stream and per packet."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.uplink_peer_common import require


def ffprobe_streams(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        [require("ffprobe"), "-v", "error", "-of", "json", "-show_streams", "-show_format",
         str(path)], capture_output=True, check=True, timeout=60)
    return dict(json.loads(out.stdout))


def ffprobe_packets(path: Path) -> list[dict[str, Any]]:
    """Every packet: codec_type, stream_index, pts_time, dts_time, flags."""
    out = subprocess.run(
        [require("ffprobe"), "-v", "error", "-of", "json", "-show_entries",
         "packet=stream_index,codec_type,pts_time,dts_time,flags,size", "-show_packets",
         str(path)], capture_output=True, check=True, timeout=60)
    return list(json.loads(out.stdout).get("packets", []))


def codecs_of(path: Path) -> dict[str, str]:
    """{"video": "h264", "audio": "aac"} for a file with those streams."""
    return {s["codec_type"]: s["codec_name"] for s in ffprobe_streams(path)["streams"]}


def dts_regressions(packets: list[dict[str, Any]]) -> list[str]:
    """Where a stream's decoding time goes back (one line each; empty when none)."""
    last: dict[int, float] = {}
    bad = []
    for i, p in enumerate(packets):
        if p.get("dts_time") in (None, "N/A"):
            continue
        s, dts = int(p["stream_index"]), float(p["dts_time"])
        if s in last and dts < last[s]:
            bad.append(f"packet {i} stream {s}: dts {dts} after {last[s]}")
        last[s] = dts
    return bad


def media_span(packets: list[dict[str, Any]], kind: str) -> float:
    """Last minus first pts of the `kind` packets, in seconds."""
    times = [float(p["pts_time"]) for p in packets
             if p.get("codec_type") == kind and p.get("pts_time") not in (None, "N/A")]
    return max(times) - min(times) if times else 0.0
