"""Fleet broker load: N devices publishing telemetry at 1 Hz to a local mosquitto.

The devices are lightweight: one aiomqtt client each (MQTT 5, TLS with its own client
certificate, the shipped fleet/mosquitto/fleet.acl), all on one asyncio loop, publishing
the real `appliance.fleet.telemetry.telemetry()` document (3 rungs, 1 SRT uplink) with a
fresh `ts` each second; not the whole FleetAgent (the scale test runs 50 of those). A
subscriber in its own process (the operator's certificate, `fleet/v1/+/telemetry`)
measures device-to-subscriber latency as receipt time - the payload's `ts`. Broker CPU
comes from /proc/<pid>/stat (utime + stime) over the measured window.

    .venv/bin/python bench/fleet_scale.py [--devices 1000] [--seconds 60] [--plain]

Also prints the telemetry payload size and the bytes per device per month at the default
rates (0.2 Hz; 1 Hz while watched), with the MQTT/TLS/TCP overheads stated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiomqtt  # noqa: E402

from appliance.fleet.telemetry import telemetry  # noqa: E402
from tests.mqtt_broker import Broker, start_broker  # noqa: E402

FLEET = ROOT / "fleet"
MONTH_S = 30 * 86400
DEFAULT_HZ = 0.2  # fleet.telemetry_s = 5
WATCH_HZ = 1.0
# Per message on the wire besides the JSON payload (stated, not sniffed):
# MQTT 5 PUBLISH QoS 0: fixed header 1 + remaining length 2 + topic length 2 + properties
# length 1; TLS 1.3 AES-GCM record: 5 header + 1 content type + 16 tag; TCP/IPv4 with
# timestamps: 52 bytes each way (the segment and its ACK).
TLS_RECORD = 22
TCP_IP = 52


def snapshot() -> dict[str, Any]:
    """A live device: 3 rungs, 1 SRT uplink, realistic counter sizes."""
    return {"state": "live", "uptime_s": 86_400, "sections": {
        "media.video": {"state": "live", "fps": 30.0, "frames": 2_592_000, "dropped": 12},
        **{f"encode.{r}": {"encoder": "x264", "bitrate_kbps": k, "frames": 2_592_000,
                           "repeated_frames": 3, "dropped_frames": 1, "lateness_ms_avg": 2.1,
                           "lateness_ms_max": 18.4}
           for r, k in (("720p", 3000), ("480p", 1200), ("360p", 600))},
        "uplink.primary": {"enabled": True, "state": "live", "protocol": "srt",
                           "rung": "720p", "bytes_sent": 51_234_567_890,
                           "bitrate_kbps": 4812, "reconnects": 3, "dropped_packets": 0,
                           "uptime_s": 86_000, "srt_rtt_ms": 42.5,
                           "srt_lost_packets": 1234, "srt_retransmitted_packets": 2345,
                           "srt_dropped_packets": 12},
        "device": {"cpu_percent": 41.5},
        "thermal": {"temp_c": 55.5, "level": 0, "degraded": False,
                    "throttled": {"under_voltage": False, "freq_capped": False,
                                  "throttled": False, "soft_temp_limit": False}},
    }}


def payload(session: int, seq: int) -> bytes:
    doc = telemetry(snapshot(), session, seq)
    doc["watched"] = False
    return json.dumps(doc, separators=(",", ":")).encode()


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)


def tls_context(broker: Broker, cn: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=broker.ca_file)
    cert, key = broker.client_cert(cn)
    ctx.load_cert_chain(cert, key)
    return ctx


def subscriber(port: int, ca: str | None, cert: str | None, key: str | None,
               ready: Any, stop: Any, out: Any) -> None:
    async def run() -> None:
        ctx = None
        if ca is not None:
            ctx = ssl.create_default_context(cafile=ca)
            ctx.load_cert_chain(str(cert), str(key))
        latencies: list[float] = []
        count = 0
        async with aiomqtt.Client("127.0.0.1", port, identifier="fleet-operator",
                                  tls_context=ctx,
                                  protocol=aiomqtt.ProtocolVersion.V5) as c:
            await c.subscribe("fleet/v1/+/telemetry", qos=0)
            ready.set()

            async def read() -> None:
                nonlocal count
                async for m in c.messages:
                    now = time.time()
                    count += 1
                    ts = json.loads(bytes(m.payload))["ts"]
                    latencies.append(now - ts)

            task = asyncio.create_task(read())
            await asyncio.to_thread(stop.wait)
            task.cancel()
        out.put((count, latencies))

    asyncio.run(run())


async def devices(broker: Broker, n: int, seconds: float,
                  plain: bool) -> tuple[int, float, float]:
    """(messages sent, seconds to connect all, broker CPU share while publishing)."""
    contexts = [None if plain else tls_context(broker, f"dev-{i:05d}") for i in range(n)]
    clients = [aiomqtt.Client("127.0.0.1", broker.port, identifier=f"dev-{i:05d}",
                              username=None if not plain else f"dev-{i:05d}",
                              tls_context=contexts[i], protocol=aiomqtt.ProtocolVersion.V5,
                              keepalive=10, timeout=60)
               for i in range(n)]
    sent = 0
    t_connect = time.monotonic()
    sem = asyncio.Semaphore(50)

    async def connect(c: aiomqtt.Client) -> None:
        async with sem:
            await c.__aenter__()

    await asyncio.gather(*(connect(c) for c in clients))
    connect_s = time.monotonic() - t_connect
    t0 = time.monotonic()
    ticks0 = cpu_ticks(broker.proc.pid)

    async def run(i: int, c: aiomqtt.Client) -> None:
        nonlocal sent
        await asyncio.sleep(i / n)  # spread the devices over the second
        seq = 0
        while time.monotonic() - t0 < seconds:
            seq += 1
            await c.publish(f"fleet/v1/dev-{i:05d}/telemetry", payload(1, seq), qos=0)
            sent += 1
            await asyncio.sleep(1.0 - (time.monotonic() - t0 - i / n) % 1.0)

    await asyncio.gather(*(run(i, c) for i, c in enumerate(clients)))
    cpu = (cpu_ticks(broker.proc.pid) - ticks0) / os.sysconf("SC_CLK_TCK") / (
        time.monotonic() - t0)
    await asyncio.gather(*(c.__aexit__(None, None, None) for c in clients),
                         return_exceptions=True)
    return sent, connect_s, cpu


def budget() -> dict[str, float]:
    size = len(payload(12, 123_456))
    topic = len("fleet/v1/cam-00001/telemetry")
    mqtt = size + 1 + 2 + 2 + topic + 1
    wire = mqtt + TLS_RECORD + 2 * TCP_IP
    return {"payload_bytes": size, "mqtt_bytes": mqtt, "wire_bytes": wire,
            "month_mb_default": wire * DEFAULT_HZ * MONTH_S / 1e6,
            "month_mb_watched": wire * WATCH_HZ * MONTH_S / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--plain", action="store_true", help="no TLS (anonymous mosquitto)")
    args = ap.parse_args()
    b = budget()
    print(f"telemetry payload {b['payload_bytes']} B (3 rungs, 1 uplink); "
          f"{b['mqtt_bytes']} B as MQTT 5 PUBLISH; ~{b['wire_bytes']} B on the wire "
          f"(TLS record + TCP/IP both ways)")
    print(f"per device per month: {b['month_mb_default']:.0f} MB at 0.2 Hz (default), "
          f"{b['month_mb_watched']:.0f} MB at 1 Hz (watched)")
    with tempfile.TemporaryDirectory() as tmp:
        extra = "max_connections -1"
        if not args.plain:
            extra += f"\nacl_file {FLEET / 'mosquitto/fleet.acl'}"
        broker = start_broker(Path(tmp), tls=not args.plain, extra_conf=extra)
        try:
            op_cert = op_key = None
            if not args.plain:
                op_cert, op_key = broker.client_cert("fleet-operator")
            ctx = mp.get_context("spawn")
            ready, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
            sub = ctx.Process(target=subscriber, args=(
                broker.port, broker.ca_file, op_cert, op_key, ready, stop, out))
            sub.start()
            assert ready.wait(30), "subscriber did not start"
            sent, connect_s, cpu = asyncio.run(devices(broker, args.devices, args.seconds,
                                                       args.plain))
            time.sleep(1)
            stop.set()
            count, lat = out.get(timeout=30)
            sub.join(10)
        finally:
            broker.stop()
    lat.sort()
    print(f"{args.devices} devices ({'plain' if args.plain else 'TLS'}), connected in "
          f"{connect_s:.1f} s; {sent} sent, {count} received in {args.seconds:g} s")
    print(f"broker CPU while publishing: {100 * cpu:.1f} % of one core")
    if lat:
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
        print(f"device-to-subscriber latency: median {1000 * statistics.median(lat):.1f} ms,"
              f" p99 {1000 * p99:.1f} ms, max {1000 * lat[-1]:.1f} ms")


if __name__ == "__main__":
    main()
