"""/metrics: the status hub in Prometheus text format (prometheus_client).

A custom collector reads `hub.snapshot()` at scrape time, so there is no second copy of
the state. Names are `appliance_*` in base units (seconds, bytes, celsius; rates in bytes
per second, as promtool's lint wants bytes, not bits; a 0..1 ratio for CPU); counters end
in `_total`; states are one-hot gauges with a `state` label; labels-only facts are `_info`
gauges of value 1. Labels: `rendition` per video rung, `uplink` per destination,
`track` per packaged track.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any, get_args

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from appliance.status import DeviceState, StatusHub

# The classic text format, which every Prometheus version reads (what generate_latest
# writes for names like ours).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
__all__ = ["CONTENT_TYPE", "CollectorRegistry", "HubCollector", "make_registry", "render"]
DEVICE_STATES: tuple[str, ...] = get_args(DeviceState)
UPLINK_STATES = ("connecting", "retrying", "live", "stopped", "disabled")
RECORDING_STATES = ("recording", "stopped", "error")


def _num(value: Any) -> float | None:
    """A number the hub holds, or None for absent / unknown values."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


class _Family:
    """A metric family filled from the sections; added to the scrape only if it has
    samples, so a device without a modem shows no modem metrics."""

    def __init__(self, metric: GaugeMetricFamily | CounterMetricFamily) -> None:
        self.metric = metric
        self.count = 0

    def add(self, labels: list[str], value: Any, scale: float = 1.0) -> None:
        v = _num(value)
        if v is not None:
            self.metric.add_metric(labels, v * scale)
            self.count += 1


class HubCollector(Collector):
    def __init__(self, hub: StatusHub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        snap = self.hub.snapshot()
        sections: dict[str, dict[str, Any]] = snap["sections"]
        families: list[_Family] = []

        def gauge(name: str, doc: str, labels: list[str] | None = None) -> _Family:
            f = _Family(GaugeMetricFamily(name, doc, labels=labels or []))
            families.append(f)
            return f

        def counter(name: str, doc: str, labels: list[str] | None = None) -> _Family:
            f = _Family(CounterMetricFamily(name, doc, labels=labels or []))
            families.append(f)
            return f

        up = gauge("appliance_up", "1 while the daemon runs")
        up.add([], 1)
        uptime = gauge("appliance_uptime_seconds", "Seconds since the daemon started")
        uptime.add([], snap["uptime_s"])
        state = gauge("appliance_device_state", "Device state (one-hot, as the LEDs show it)",
                      ["state"])
        for s in DEVICE_STATES:
            state.add([s], s == snap["state"])
        daemon = sections.get("daemon", {})
        safe = gauge("appliance_safe_mode", "1 while an invalid config keeps media off")
        safe.add([], bool(daemon.get("safe_mode")))

        # -- media: the source -----------------------------------------------------------
        video = sections.get("media.video", {})
        gauge("appliance_video_fps", "Frames per second from the video source").add(
            [], video.get("fps"))
        counter("appliance_video_frames", "Frames captured from the video source").add(
            [], video.get("frames"))
        counter("appliance_video_dropped_frames",
                "Frames the video source skipped").add([], video.get("dropped"))
        source_up = gauge("appliance_video_source_up", "1 while the video source delivers")
        if video:
            source_up.add([], video.get("state") == "live")

        # -- encoders, per rendition -----------------------------------------------------
        r = ["rendition"]
        enc_info = InfoMetricFamily("appliance_encoder", "What each rendition's encoder is",
                                    labels=r)
        enc_count = 0
        bitrate = gauge("appliance_encoder_bitrate_bytes_per_second",
                        "Target video bitrate of the rendition (bytes/s: bits / 8)", r)
        frames = counter("appliance_encoder_frames", "Frames encoded", r)
        repeated = counter("appliance_encoder_repeated_frames",
                           "Frames repeated to fill slots the source skipped", r)
        dropped = counter("appliance_encoder_dropped_frames", "Frames the encoder dropped", r)
        late_avg = gauge("appliance_encoder_lateness_avg_seconds",
                         "Mean encoder output time minus capture time over the last second", r)
        late_max = gauge("appliance_encoder_lateness_max_seconds",
                         "Max encoder output time minus capture time over the last second", r)
        for name, sec in _sections(sections, "encode."):
            enc_info.add_metric([name], {"encoder": str(sec.get("encoder", "")),
                                         "input": str(sec.get("input", ""))})
            enc_count += 1
            bitrate.add([name], sec.get("bitrate_kbps"), 125)
            frames.add([name], sec.get("frames"))
            repeated.add([name], sec.get("repeated_frames"))
            dropped.add([name], sec.get("dropped_frames"))
            late_avg.add([name], sec.get("lateness_ms_avg"), 0.001)
            late_max.add([name], sec.get("lateness_ms_max"), 0.001)

        # -- packager, per track ---------------------------------------------------------
        t = ["track"]
        parts = counter("appliance_package_parts", "CMAF parts packaged", t)
        pbytes = counter("appliance_package_bytes", "Bytes packaged", t)
        for name, sec in _sections(sections, "package."):
            parts.add([name], sec.get("parts"))
            pbytes.add([name], sec.get("bytes"))

        # -- uplinks, per destination ----------------------------------------------------
        u = ["uplink"]
        up_info = InfoMetricFamily("appliance_uplink", "An uplink destination", labels=u)
        up_count = 0
        up_state = gauge("appliance_uplink_state", "Uplink state (one-hot)", ["uplink", "state"])
        up_enabled = gauge("appliance_uplink_enabled", "1 if the uplink is enabled", u)
        sent = counter("appliance_uplink_sent_bytes", "Bytes sent to the destination", u)
        up_rate = gauge("appliance_uplink_send_rate_bytes_per_second",
                        "Send rate over the last stats window (bytes/s)", u)
        reconnects = counter("appliance_uplink_reconnects", "Reconnections to the destination",
                             u)
        up_dropped = counter("appliance_uplink_dropped_packets",
                             "Packets dropped because the connection fell behind", u)
        rtt = gauge("appliance_uplink_srt_rtt_seconds", "SRT round-trip time", u)
        lost = counter("appliance_uplink_srt_lost_packets", "SRT packets lost", u)
        retrans = counter("appliance_uplink_srt_retransmitted_packets",
                          "SRT packets retransmitted", u)
        srt_drop = counter("appliance_uplink_srt_dropped_packets",
                           "SRT packets dropped as too late", u)
        for name, sec in _sections(sections, "uplink."):
            up_info.add_metric([name], {"protocol": str(sec.get("protocol", "")),
                                        "rung": str(sec.get("rung", ""))})
            up_count += 1
            current = sec.get("state")
            for s in UPLINK_STATES:
                up_state.add([name, s], s == current)
            if current is not None and current not in UPLINK_STATES:
                up_state.add([name, str(current)], 1)
            up_enabled.add([name], sec.get("enabled"))
            sent.add([name], sec.get("bytes_sent"))
            up_rate.add([name], sec.get("bitrate_kbps"), 125)
            reconnects.add([name], sec.get("reconnects"))
            up_dropped.add([name], sec.get("dropped_packets"))
            rtt.add([name], sec.get("srt_rtt_ms"), 0.001)
            lost.add([name], sec.get("srt_lost_packets"))
            retrans.add([name], sec.get("srt_retransmitted_packets"))
            srt_drop.add([name], sec.get("srt_dropped_packets"))

        # -- device --------------------------------------------------------------------
        gauge("appliance_cpu_usage_ratio", "CPU busy share of all cores (0..1)").add(
            [], sections.get("device", {}).get("cpu_percent"), 0.01)
        thermal = sections.get("thermal", {})
        gauge("appliance_temperature_celsius", "SoC temperature").add([], thermal.get("temp_c"))
        throttled = gauge("appliance_throttled", "Throttling flags of the board (1 = set)",
                          ["flag"])
        flags = thermal.get("throttled")
        if isinstance(flags, dict):
            for flag, value in sorted(flags.items()):
                throttled.add([str(flag)], bool(value))
        gauge("appliance_thermal_level", "Load step-down level of the thermal governor").add(
            [], thermal.get("level"))
        degraded = gauge("appliance_thermal_degraded",
                         "1 while throttling or the load is stepped down")
        if thermal:
            degraded.add([], bool(thermal.get("degraded")))
        modem = sections.get("modem", {})
        gauge("appliance_modem_signal_dbm", "Modem signal strength (dBm)").add(
            [], modem.get("signal_dbm"))
        gauge("appliance_modem_registered", "1 if the modem is registered on a network").add(
            [], modem.get("registered"))

        state_dir = daemon.get("state_dir")
        if isinstance(state_dir, str):
            try:
                free = shutil.disk_usage(state_dir).free
            except OSError:
                free = None
            gauge("appliance_disk_free_bytes", "Free bytes on the state directory's disk",
                  ["path"]).add([state_dir], free)

        recording = sections.get("recording", {})
        gauge("appliance_recording_bytes", "Size of the file being recorded").add(
            [], recording.get("bytes"))
        rec_state = gauge("appliance_recording_state", "Recorder state (one-hot)", ["state"])
        if recording:
            for s in RECORDING_STATES:
                rec_state.add([s], s == recording.get("state"))

        if enc_count:
            yield enc_info
        if up_count:
            yield up_info
        for f in families:
            if f.count:
                yield f.metric


def _sections(sections: dict[str, dict[str, Any]], prefix: str,
              ) -> Iterator[tuple[str, dict[str, Any]]]:
    for key in sorted(sections):
        if key.startswith(prefix):
            yield key[len(prefix):], sections[key]


def make_registry(hub: StatusHub) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector(hub))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
