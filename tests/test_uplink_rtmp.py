"""RTMP and RTMPS to a real nginx-rtmp on loopback.

End to end: the real daemon pushes to nginx (which records what it gets, ffprobe'd here)
and to srt-live-transmit, with a stream key and a passphrase that must never show on a
command line or in the log. In process: states and stats in the status hub, a refused
key, and the TLS front's certificate checks.
"""

from __future__ import annotations

import json
import logging
import secrets
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.media.bus import MediaBus
from appliance.status import StatusHub
from appliance.uplink.destination import Destination
from tests.daemon_proc import running_daemon
from tests.uplink_peer_common import cmdlines, wait_for
from tests.uplink_peer_hub import ObservedHub, section, wait_state
from tests.uplink_peer_media import MediaFeeder, uplink
from tests.uplink_peer_nginx import NginxRtmp, nginx_rtmp
from tests.uplink_peer_probe import (
    codecs_of,
    dts_regressions,
    ffprobe_packets,
    ffprobe_streams,
    media_span,
)
from tests.uplink_peer_srt import SrtPeer
from tests.uplink_peer_tls import make_ca, make_tls

PUSH_S = 8.0  # how long the daemon pushes once the origin has accepted the stream
DAEMON_GOP_S = 2.0  # packager.segment_s: a new connection starts at the next keyframe


# -- the real daemon, end to end ----------------------------------------------------------


@dataclass
class EndToEnd:
    key: str
    passphrase: str
    nginx: NginxRtmp
    srt: SrtPeer
    pushed_s: float  # from the origin accepting the publish to the daemon stopping
    secret_holders: list[str]  # command lines, other than the test peers', with a secret
    peer_lines: list[str]  # the test peers' command lines that have one (the scan works)
    daemon_seen: bool  # the scan saw the daemon's own command line
    states: list[str]  # /healthz states while live
    exit_code: int
    log: str


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EndToEnd]:
    """The daemon pushing to nginx-rtmp (RTMP, stream key checked by on_publish) and to
    srt-live-transmit (SRT with a passphrase) for PUSH_S, then stopped."""
    tmp = tmp_path_factory.mktemp("uplink-e2e")
    key = "live_" + secrets.token_hex(12)
    passphrase = "pp" + secrets.token_hex(12)
    srt = SrtPeer(tmp / "srt", passphrase=passphrase, latency_ms=200)
    with nginx_rtmp(tmp / "nginx", keys={key}) as nginx:
        srt.start()
        try:
            extra = (f'[[uplink]]\nname = "rtmp-origin"\nurl = "{nginx.url}"\nkey = "{key}"\n'
                     f'[[uplink]]\nname = "srt-origin"\nurl = "srt://127.0.0.1:{srt.port}"\n'
                     f'passphrase = "{passphrase}"\nlatency_ms = 200\n')
            with running_daemon(tmp / "daemon", extra=extra) as d:
                def state() -> str:
                    return str(json.loads(d.get("/healthz"))["state"])

                wait_for(lambda: state() == "live", 30, "the device state live")
                accepted = nginx.publishes(name=key)[0].at
                states = [state()]
                peers = {*nginx.pids(), *(p for p in [srt.proc.pid if srt.proc else 0] if p)}
                holders, peer_lines, daemon_seen = [], [], False
                for pid, line in cmdlines().items():
                    has_secret = key in line or passphrase in line
                    if pid == d.proc.pid:
                        daemon_seen = "appliance" in line and "run" in line
                    if has_secret and pid in peers:
                        peer_lines.append(line)
                    elif has_secret:
                        holders.append(f"{pid}: {line}")
                while time.monotonic() < accepted + PUSH_S:
                    states.append(state())
                    time.sleep(0.5)
                stopped = time.monotonic()
                code = d.stop(signal.SIGTERM)
                log = d.log()
            time.sleep(1.0)  # nginx closes its recording when the connection ends
        finally:
            srt.stop()
        yield EndToEnd(key, passphrase, nginx, srt, stopped - accepted, holders, peer_lines,
                       daemon_seen, states, code, log)


def test_daemon_goes_live_and_stops_cleanly(e2e: EndToEnd) -> None:
    assert set(e2e.states) == {"live"}, e2e.states
    assert e2e.exit_code == 0, e2e.log[-3000:]
    assert len(e2e.nginx.publishes(name=e2e.key)) == 1, "one connection, no reconnects"


def test_nginx_recorded_h264_and_aac_for_as_long_as_was_pushed(e2e: EndToEnd) -> None:
    files = e2e.nginx.recordings()
    assert len(files) == 1, files
    info = ffprobe_streams(files[0])
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", 1280, 720)
    assert codecs_of(files[0]) == {"video": "h264", "audio": "aac"}
    packets = ffprobe_packets(files[0])
    assert dts_regressions(packets) == []
    first_video = next(p for p in packets if p["codec_type"] == "video")
    assert "K" in first_video["flags"], "the stream starts at a keyframe"
    # The stream starts at the first keyframe after the publish (up to a GOP later).
    span = media_span(packets, "video")
    print(f"\nnginx recorded {span:.2f} s of video, {media_span(packets, 'audio'):.2f} s of "
          f"audio; pushed {e2e.pushed_s:.2f} s")
    assert e2e.pushed_s - DAEMON_GOP_S - 0.7 <= span <= e2e.pushed_s + 0.3, (span, e2e.pushed_s)
    assert abs(media_span(packets, "audio") - span) < 0.5


def test_srt_listener_received_h264_and_aac(e2e: EndToEnd) -> None:
    assert codecs_of(e2e.srt.out) == {"video": "h264", "audio": "aac"}
    packets = ffprobe_packets(e2e.srt.out)
    assert dts_regressions(packets) == []
    assert media_span(packets, "video") >= e2e.pushed_s - DAEMON_GOP_S - 1.5


def test_stream_key_and_passphrase_never_on_a_command_line(e2e: EndToEnd) -> None:
    assert e2e.daemon_seen, "the scan of /proc/*/cmdline missed the daemon"
    # srt-live-transmit, the test's own peer, takes its passphrase in its URL: the scan
    # finds it there, which shows that it would find the appliance's.
    assert any("srt-live-transmit" in line for line in e2e.peer_lines)
    assert e2e.secret_holders == []


def test_stream_key_and_passphrase_never_in_the_log(e2e: EndToEnd) -> None:
    assert "rtmp-origin" in e2e.log or "serving" in e2e.log, "the log is empty"
    assert e2e.key not in e2e.log
    assert e2e.passphrase not in e2e.log


# -- in process: states, stats, a refused key ---------------------------------------------


def assert_no_secret(hub: StatusHub, text: str, *values: str) -> None:
    snapshot = json.dumps(hub.snapshot())
    for value in values:
        assert value not in snapshot, "a secret in the status hub"
        assert value not in text, "a secret in the log"


def test_live_with_stats_and_a_wrong_key_is_auth_failed_without_a_hot_loop(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    key, wrong = "good_" + secrets.token_hex(8), "bad_" + secrets.token_hex(8)
    bus, hub, fatal = MediaBus(), StatusHub(), list[BaseException]()
    with nginx_rtmp(tmp_path / "nginx", keys={key}) as nginx, MediaFeeder(bus) as feeder:
        good = Destination(uplink(name="good", url=nginx.url, key=key), "main", bus, hub,
                           fatal.append)
        bad = Destination(uplink(name="bad", url=nginx.url, key=wrong), "main", bus, hub,
                          fatal.append)
        good.start()
        bad.start()
        try:
            wait_state(hub, "good", "live", 5)
            wait_state(hub, "bad", "auth-failed", 5)
            first = nginx.publishes(allowed=False)[0].at
            time.sleep(max(0.0, first + 12.0 - time.monotonic()))
            refused = [p.at for p in nginx.publishes(allowed=False)]
            g, b = section(hub, "uplink.good"), section(hub, "uplink.bad")
        finally:
            good.stop()
            bad.stop()
    assert fatal == []
    # A refused key is retried every 5 s, not in a loop: 3 tries in 12 s at most.
    gaps = [round(y - x, 2) for x, y in zip(refused, refused[1:], strict=False)]
    assert 2 <= len(refused) <= 3 and all(gap >= 4.5 for gap in gaps), gaps
    assert b["state"] == "auth-failed" and "refused" in b["error"], b
    assert 1 <= len(b["errors"]) <= 5
    assert nginx.publishes(allowed=True, name=wrong) == []

    assert g["state"] == "live" and g["protocol"] == "rtmp", g
    assert g["target"] == f"127.0.0.1:{nginx.port}" and g["rung"] == "main"
    assert g["reconnects"] == 0 and g["dropped_packets"] == 0 and g["errors"] == []
    assert g["uptime_s"] >= 10 and isinstance(g["connected_at"], float)
    # 800 kbit/s of video + 96 kbit/s of audio, with FLV and RTMP framing
    assert 300 <= g["bitrate_kbps"] <= 1600, g
    assert g["bytes_sent"] >= 10 * 300_000 / 8, g
    assert feeder.packets > 0
    assert_no_secret(hub, caplog.text, key, wrong)
    assert len(nginx.publishes(allowed=True, name=key)) == 1


# -- RTMPS ------------------------------------------------------------------------------------


def test_rtmps_verifies_the_origin_certificate_and_sends_sni(tmp_path: Path) -> None:
    tls_dir = tmp_path / "tls"
    ca = make_ca(tls_dir, "ca")
    other_ca, _ = make_ca(tls_dir, "other-ca")
    localhost = make_tls(tls_dir, "localhost", ca)
    elsewhere = make_tls(tls_dir, "origin.example.net", ca)  # right CA, wrong name
    bus, hub, fatal = MediaBus(), StatusHub(), list[BaseException]()
    with nginx_rtmp(tmp_path / "nginx", tls=[localhost, elsewhere]) as nginx, \
            MediaFeeder(bus):
        cases = {
            "trusted": uplink(name="trusted", url=nginx.tls_url(0), key="trusted",
                              ca_file=str(localhost.ca)),
            "system-store": uplink(name="system-store", url=nginx.tls_url(0), key="system"),
            "other-ca": uplink(name="other-ca", url=nginx.tls_url(0), key="other",
                               ca_file=str(other_ca)),
            "wrong-name": uplink(name="wrong-name", url=nginx.tls_url(1), key="wrong",
                                 ca_file=str(localhost.ca)),
        }
        dests = [Destination(cfg, "main", bus, hub, fatal.append) for cfg in cases.values()]
        for d in dests:
            d.start()
        try:
            live_at = wait_state(hub, "trusted", "live", 5)
            for name in ("system-store", "other-ca", "wrong-name"):
                wait_state(hub, name, "error", 5)
            time.sleep(max(0.0, live_at + 4.0 - time.monotonic()))
            states = {name: section(hub, f"uplink.{name}") for name in cases}
        finally:
            for d in dests:
                d.stop()
        time.sleep(0.5)
        tls_log = nginx.tls_log.read_text() if nginx.tls_log.exists() else ""
    assert fatal == []
    assert states["trusted"]["protocol"] == "rtmps"
    assert [p.name for p in nginx.publishes()] == ["trusted"], "only the trusted one got in"
    recording = next(p for p in nginx.recordings() if p.name.startswith("trusted"))
    assert codecs_of(recording) == {"video": "h264", "audio": "aac"}
    assert media_span(ffprobe_packets(recording), "video") >= 2.0
    for name in ("system-store", "other-ca", "wrong-name"):
        s = states[name]
        assert s["state"] == "error", s
        assert "certificate" in s["error"] and "refused" in s["error"], s
        # Refused certificates are retried slowly (every 5 s): not more than twice here.
        assert s["reconnects"] <= 2, s
    assert "mismatch" in states["wrong-name"]["error"].lower() or \
        "hostname" in states["wrong-name"]["error"].lower(), states["wrong-name"]
    assert "sni=localhost" in tls_log, tls_log


def test_a_key_still_held_by_the_origin_is_retried_not_refused(tmp_path: Path) -> None:
    """"Already publishing": the origin still holds this key's previous connection (after
    a stall or a pulled cable it keeps it until its own timeout). That is no refused key:
    the destination retries at the network pace and is live soon after the key frees."""
    bus, hub, fatal = MediaBus(), ObservedHub(), list[BaseException]()
    with nginx_rtmp(tmp_path / "nginx") as nginx, MediaFeeder(bus):
        holder = Destination(uplink(name="holder", url=nginx.url, key="same"), "main", bus,
                             hub, fatal.append)
        second = Destination(uplink(name="second", url=nginx.url, key="same"), "main", bus,
                             hub, fatal.append)
        holder.start()
        try:
            wait_state(hub, "holder", "live", 5)
            second.start()
            wait_for(lambda: "Already publishing" in str(
                section(hub, "uplink.second").get("error")), 5, "the origin to say so")
            time.sleep(2.0)
            released = time.monotonic()
            holder.stop()
            live_at = wait_state(hub, "second", "live", 5)
        finally:
            holder.stop()
            second.stop()
    assert fatal == []
    assert "auth-failed" not in hub.states("second"), hub.states("second")
    assert live_at - released <= 2.0, live_at - released
