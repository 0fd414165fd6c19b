"""/metrics: Prometheus text read from the status hub, names and access per SPEC."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from appliance import metrics
from appliance.status import StatusHub
from tests.api_client import Client, bearer, raw_get
from tests.daemon_proc import DaemonProc, free_port, running_daemon

NAME = re.compile(r"^appliance_[a-z0-9_]+$")
PROMTOOL = shutil.which("promtool")


def samples(text: str) -> dict[str, list[Sample]]:
    """Samples by sample name (with its _total / _info suffix)."""
    out: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append(s)
    return out


def value(found: dict[str, list[Sample]], name: str, **labels: str) -> float:
    matches = [s.value for s in found.get(name, [])
               if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(matches) == 1, (name, labels, found.get(name))
    return float(matches[0])


def promtool_check(text: str) -> None:
    if PROMTOOL is None:
        pytest.skip("promtool (Debian package prometheus) not installed")
    done = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(),
                          capture_output=True, timeout=30)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()


def test_collector_reads_the_hub_at_scrape_time(tmp_path: Path) -> None:
    hub = StatusHub()
    hub.update("daemon", state_dir=str(tmp_path))
    hub.update("media.video", state="live", fps=29.5, frames=120, dropped=3)
    hub.update("encode.720p", encoder="x264", input="main", bitrate_kbps=3000, frames=118,
               repeated_frames=2, dropped_frames=1, lateness_ms_avg=12.5, lateness_ms_max=40)
    hub.update("uplink.a", enabled=True, state="retrying", protocol="rtmp", rung="720p",
               reconnects=4, bytes_sent=1000, bitrate_kbps=8.0, srt_rtt_ms=None)
    hub.update("uplink.b", enabled=True, state="live", protocol="srt", rung="720p",
               reconnects=0, bytes_sent=5, srt_rtt_ms=25.0, srt_lost_packets=7,
               srt_retransmitted_packets=9, srt_dropped_packets=1)
    hub.update("thermal", temp_c=61.5, throttled={"throttled": True, "under_voltage": False},
               level=1, degraded=True)
    hub.update("device", cpu_percent=42.0)
    hub.update("modem", signal_dbm=-71, registered=True, operator="x")
    hub.update("recording", state="recording", bytes=4096)
    registry = metrics.make_registry(hub)
    text = metrics.render(registry).decode()
    found = samples(text)
    assert all(NAME.match(name) for name in found), sorted(found)
    assert value(found, "appliance_up") == 1
    assert value(found, "appliance_video_fps") == 29.5
    assert value(found, "appliance_video_frames_total") == 120
    assert value(found, "appliance_video_dropped_frames_total") == 3
    assert value(found, "appliance_encoder_bitrate_bytes_per_second", rendition="720p") \
        == 3000 * 1000 / 8
    assert value(found, "appliance_encoder_lateness_avg_seconds", rendition="720p") \
        == pytest.approx(0.0125)
    assert value(found, "appliance_encoder_lateness_max_seconds", rendition="720p") \
        == pytest.approx(0.04)
    assert value(found, "appliance_encoder_repeated_frames_total", rendition="720p") == 2
    assert value(found, "appliance_encoder_info", rendition="720p", encoder="x264") == 1
    assert value(found, "appliance_uplink_state", uplink="a", state="retrying") == 1
    assert value(found, "appliance_uplink_state", uplink="a", state="live") == 0
    assert value(found, "appliance_uplink_state", uplink="b", state="live") == 1
    assert value(found, "appliance_uplink_reconnects_total", uplink="a") == 4
    assert value(found, "appliance_uplink_sent_bytes_total", uplink="a") == 1000
    assert value(found, "appliance_uplink_send_rate_bytes_per_second", uplink="a") == 1000
    # No RTT for an uplink that has none (RTMP, or SRT before its first stats).
    assert [s.labels["uplink"] for s in found["appliance_uplink_srt_rtt_seconds"]] == ["b"]
    assert value(found, "appliance_uplink_srt_rtt_seconds", uplink="b") == 0.025
    assert value(found, "appliance_uplink_srt_lost_packets_total", uplink="b") == 7
    assert value(found, "appliance_uplink_srt_retransmitted_packets_total", uplink="b") == 9
    assert value(found, "appliance_uplink_srt_dropped_packets_total", uplink="b") == 1
    assert value(found, "appliance_cpu_usage_ratio") == pytest.approx(0.42)
    assert value(found, "appliance_temperature_celsius") == 61.5
    assert value(found, "appliance_throttled", flag="throttled") == 1
    assert value(found, "appliance_throttled", flag="under_voltage") == 0
    assert value(found, "appliance_modem_signal_dbm") == -71
    assert value(found, "appliance_recording_bytes") == 4096
    assert value(found, "appliance_disk_free_bytes", path=str(tmp_path)) > 0
    # The connecting uplink "a" and a live "b": degraded, one-hot.
    states = {s.labels["state"]: s.value for s in found["appliance_device_state"]}
    assert states[hub.state()] == 1 and sum(states.values()) == 1
    promtool_check(text)

    # No copy: the next scrape sees the hub as it is now.
    hub.update("uplink.a", state="live", reconnects=5)
    hub.remove("uplink.b")
    found = samples(metrics.render(registry).decode())
    assert value(found, "appliance_uplink_state", uplink="a", state="live") == 1
    assert value(found, "appliance_uplink_reconnects_total", uplink="a") == 5
    assert not [s for s in found["appliance_uplink_state"] if s.labels["uplink"] == "b"]


DEAD_UPLINK = """
[[uplink]]
name = "dead"
url = "rtmp://127.0.0.1:{port}/live"
key = "metrics-secret-key"
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    with running_daemon(tmp_path_factory.mktemp("metrics"),
                        extra=DEAD_UPLINK.format(port=free_port())) as d:
        yield d


def scrape(client: Client) -> str:
    r = client.get("/metrics")
    assert r.status == 200, r.body
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return r.body.decode()


def test_metrics_of_the_running_daemon(daemon: DaemonProc) -> None:
    client = bearer(daemon, "scraper")
    deadline = time.monotonic() + 30
    while True:  # until the source runs and the dead uplink has retried at least twice
        found = samples(scrape(client))
        reconnects = found.get("appliance_uplink_reconnects_total")
        if ("appliance_video_fps" in found and reconnects and reconnects[0].value >= 2
                and "appliance_encoder_frames_total" in found):
            break
        assert time.monotonic() < deadline, sorted(found)
        time.sleep(0.5)
    assert all(NAME.match(name) for name in found)
    assert value(found, "appliance_up") == 1
    assert value(found, "appliance_video_fps") > 0
    assert value(found, "appliance_encoder_frames_total", rendition="720p") > 0
    assert value(found, "appliance_encoder_bitrate_bytes_per_second", rendition="720p") \
        == 3000 * 1000 / 8
    assert value(found, "appliance_uplink_state", uplink="dead", state="live") == 0
    state = {s.labels["state"] for s in found["appliance_uplink_state"] if s.value == 1}
    assert state <= {"retrying", "connecting"} and state
    assert value(found, "appliance_disk_free_bytes") > 0
    assert value(found, "appliance_device_state", state="connecting") == 1
    first = value(found, "appliance_uplink_reconnects_total", uplink="dead")
    time.sleep(3)
    text = scrape(client)
    found = samples(text)
    assert value(found, "appliance_uplink_reconnects_total", uplink="dead") > first
    assert "metrics-secret-key" not in text
    promtool_check(text)


def test_metrics_need_a_token_when_not_open(daemon: DaemonProc) -> None:
    status, body = raw_get(daemon.url, "/metrics")
    assert status in (401, 303), status  # a page: anonymous GETs go to the login
    assert b"appliance_up" not in body
    status, body = raw_get(daemon.url, "/metrics", {"Authorization": "Bearer not-a-token"})
    assert status in (401, 303)
    assert b"appliance_up" not in body


def test_metrics_open_on_the_lan(tmp_path: Path) -> None:
    with running_daemon(tmp_path, extra="[metrics]\nopen = true\n") as d:
        status, body = raw_get(d.url, "/metrics")
        assert status == 200
        assert "appliance_up 1.0" in body.decode()
