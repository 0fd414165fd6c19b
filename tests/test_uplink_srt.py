"""SRT to and from a real srt-live-transmit on loopback, with a passphrase.

Caller mode (the appliance calls srt-live-transmit listening), listener mode (the
appliance listens, srt-live-transmit calls it), refused passphrases, the sender's
statistics in the status hub; and, where the kernel allows, SRT through a pair of
network namespaces with netem loss and delay.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.media.bus import MediaBus
from appliance.status import StatusHub
from appliance.uplink.destination import Destination
from tests.daemon_proc import ROOT, free_port
from tests.uplink_peer_common import wait_for
from tests.uplink_peer_hub import section, wait_state
from tests.uplink_peer_media import MediaFeeder, uplink
from tests.uplink_peer_probe import codecs_of, dts_regressions, ffprobe_packets, media_span
from tests.uplink_peer_srt import SrtPeer, free_udp_port

GOP_S = 1.0  # MediaFeeder's keyframe interval


def test_caller_and_listener_modes_stats_and_refused_passphrases(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    passphrase = "pp" + secrets.token_hex(10)
    wrong = "wrong" + secrets.token_hex(10)
    origin = SrtPeer(tmp_path / "origin", passphrase=passphrase)  # we call it
    strict = SrtPeer(tmp_path / "strict", passphrase=passphrase)  # refuses our passphrase
    listen_port = free_udp_port()
    caller = SrtPeer(tmp_path / "caller", passphrase=passphrase, mode="caller",
                     port=listen_port)  # calls us
    bus, hub, fatal = MediaBus(), StatusHub(), list[BaseException]()
    cases = [
        uplink(name="caller", url=f"srt://127.0.0.1:{origin.port}", passphrase=passphrase,
               streamid="#!::r=live/cam1,m=publish"),
        uplink(name="wrong-passphrase", url=f"srt://127.0.0.1:{strict.port}",
               passphrase=wrong),
        uplink(name="no-passphrase", url=f"srt://127.0.0.1:{strict.port}"),
        uplink(name="listener", url=f"srt://127.0.0.1:{listen_port}", mode="listener",
               passphrase=passphrase),
    ]
    with contextlib.ExitStack() as stack:
        for peer in (origin, strict, caller):
            stack.callback(peer.stop)
        origin.start()
        strict.start()
        feeder = stack.enter_context(MediaFeeder(bus))
        dests = [Destination(cfg, "main", bus, hub, fatal.append) for cfg in cases]
        for d in dests:
            stack.callback(d.stop)
            d.start()
        time.sleep(0.3)  # the appliance's listener is bound
        caller.start()
        live_at = wait_state(hub, "caller", "live", 5)
        wait_state(hub, "listener", "live", 5)
        wait_state(hub, "wrong-passphrase", "auth-failed", 5)
        wait_state(hub, "no-passphrase", "auth-failed", 5)
        refused_from = time.monotonic()
        time.sleep(max(0.0, live_at + 7.0 - time.monotonic()))
        refused_s = time.monotonic() - refused_from
        states = {cfg.name: section(hub, f"uplink.{cfg.name}") for cfg in cases}
        for d in dests:
            d.stop()
        pushed_s = time.monotonic() - live_at
        time.sleep(0.5)
    assert fatal == [] and feeder.packets > 0

    s = states["caller"]
    assert s["state"] == "live" and s["protocol"] == "srt" and s["reconnects"] == 0, s
    # The sender's own statistics from libsrt, refreshed every second.
    assert isinstance(s["srt_rtt_ms"], float) and 0 <= s["srt_rtt_ms"] < 50, s
    assert s["srt_send_mbps"] > 0.2 and s["srt_bandwidth_mbps"] > 0, s
    for key in ("srt_lost_packets", "srt_retransmitted_packets", "srt_dropped_packets"):
        assert isinstance(s[key], int) and s[key] >= 0, (key, s)
    assert s["srt_dropped_packets"] == 0 and s["dropped_packets"] == 0, s
    assert 300 <= s["bitrate_kbps"] <= 1600, s

    for name, peer in (("caller", origin), ("listener", caller)):
        assert codecs_of(peer.out) == {"video": "h264", "audio": "aac"}, name
        packets = ffprobe_packets(peer.out)
        assert dts_regressions(packets) == [], name
        span = media_span(packets, "video")
        assert span >= pushed_s - GOP_S - 2.5, (name, span, pushed_s)
        assert peer.receiver_drops() == 0, name
    assert states["listener"]["state"] == "live", states["listener"]

    for name in ("wrong-passphrase", "no-passphrase"):
        s = states[name]
        assert s["state"] == "auth-failed", s
        assert "passphrase" in s["error"].lower() or "password" in s["error"].lower(), s
        # Retried every 5 s, not in a loop: at most 3 tries in the ~7 s watched.
        assert s["reconnects"] <= 1 + refused_s // 5 + 1, (s, refused_s)
    rejections = strict.log(whole=True).count("rsp(REJECT)")
    assert 2 <= rejections <= 2 * (2 + refused_s // 5 + 1), strict.log()
    assert origin.receiver_drops() == 0

    snapshot = json.dumps(hub.snapshot())
    for value in (passphrase, wrong):
        assert value not in snapshot and value not in caplog.text


# -- SRT over an impaired link ----------------------------------------------------------


NETEM_DELAY_MS, NETEM_LOSS_PCT = 50, 2
RTT_MS = 2 * NETEM_DELAY_MS
NETNS_RUN_S = 60


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=30)


@contextlib.contextmanager
def netns_pair(tag: str) -> Iterator[tuple[str, str]]:
    """Two network namespaces joined by a veth pair, 10.77.0.1 (a) and 10.77.0.2 (b), with
    netem delay and loss on both ends. Skips with the reason when this kernel or this
    container does not allow it."""
    ip, tc = shutil.which("ip"), shutil.which("tc")
    if ip is None or tc is None:
        pytest.skip("iproute2 (ip, tc) is not installed")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    a, b = f"upl-a-{tag}", f"upl-b-{tag}"
    made: list[str] = []
    try:
        for ns in (a, b):
            res = _run(ip, "netns", "add", ns, check=False)
            if res.returncode != 0:
                pytest.skip(f"network namespaces are not allowed here: {res.stderr.strip()}")
            made.append(ns)
        _run(ip, "link", "add", f"va-{tag}", "netns", a, "type", "veth", "peer", "name",
             f"vb-{tag}", "netns", b)
        for ns, dev, addr in ((a, f"va-{tag}", "10.77.0.1/24"), (b, f"vb-{tag}", "10.77.0.2/24")):
            _run(ip, "-n", ns, "addr", "add", addr, "dev", dev)
            _run(ip, "-n", ns, "link", "set", dev, "up")
            _run(ip, "-n", ns, "link", "set", "lo", "up")
            res = _run(ip, "netns", "exec", ns, tc, "qdisc", "add", "dev", dev, "root", "netem",
                       "delay", f"{NETEM_DELAY_MS}ms", "loss", f"{NETEM_LOSS_PCT}%", check=False)
            if res.returncode != 0:
                pytest.skip(f"tc netem is not available in this kernel: {res.stderr.strip()}")
        yield a, b
    finally:
        for ns in made:
            _run(ip, "netns", "del", ns, check=False)


@pytest.mark.slow
def test_srt_over_lossy_delayed_link_has_no_receiver_drops(tmp_path: Path) -> None:
    """2% loss and 50 ms each way (RTT 100 ms), latency 4 x RTT: SRT's retransmissions
    must repair every loss in time, so the receiver drops nothing over 60 s. The sender
    is the real daemon in namespace a, the receiver srt-live-transmit in namespace b."""
    tag = secrets.token_hex(3)
    with netns_pair(tag) as (ns_a, ns_b):
        passphrase = "pp" + secrets.token_hex(10)
        latency = 4 * RTT_MS
        peer = SrtPeer(tmp_path / "peer", passphrase=passphrase, latency_ms=latency,
                       netns=ns_b, host="10.77.0.2", port=9000)
        peer.start()
        config = tmp_path / "appliance.toml"
        config.write_text(
            f'[web]\nlisten = "127.0.0.1:{free_port()}"\n[video]\nsource = "synthetic"\n'
            '[[video.ladder]]\nname = "720p"\nwidth = 1280\nheight = 720\n'
            'bitrate_kbps = 3000\n'
            f'[[uplink]]\nname = "lossy"\nurl = "srt://10.77.0.2:9000"\n'
            f'passphrase = "{passphrase}"\nlatency_ms = {latency}\n')
        log_path = tmp_path / "daemon.log"
        with open(log_path, "wb") as log:
            daemon = subprocess.Popen(
                [shutil.which("ip") or "ip", "netns", "exec", ns_a,
                 str(ROOT / ".venv/bin/python"), "-m", "appliance", "run", "--config",
                 str(config), "--state-dir", str(tmp_path / "state")],
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            wait_for(lambda: peer.received() > 100_000, 30, "media through the namespaces")
            start_bytes = peer.received()
            time.sleep(NETNS_RUN_S)
            received = peer.received() - start_bytes
        finally:
            daemon.terminate()
            try:
                daemon.wait(10)
            except subprocess.TimeoutExpired:
                daemon.kill()
            peer.stop()
        reports = peer.stats()
        assert reports, peer.log()
        last = reports[-1]
        print(f"\nlossy link: {received * 8 / NETNS_RUN_S / 1000:.0f} kbit/s received, "
              f"rtt {last.get('link', {}).get('rtt')} ms, recv {last.get('recv')}")
        # The synthetic picture is simple: x264 makes ~300 kbit/s of it at 720p.
        assert received * 8 / NETNS_RUN_S > 150_000, "the stream did not get through"
        assert last["recv"]["packetsLost"] > 0, "netem dropped nothing: not a lossy link"
        assert peer.receiver_drops() == 0, last
        assert codecs_of(peer.out) == {"video": "h264", "audio": "aac"}
        packets = ffprobe_packets(peer.out)
        assert media_span(packets, "video") >= NETNS_RUN_S
        assert dts_regressions(packets) == []
