"""Fleet broker load: N devices publishing telemetry at 1 Hz to a local mosquitto.

    .venv/bin/python bench/fleet_scale.py [--devices 1000] [--seconds 60] [--plain]
        [--budget-seconds 120]
    .venv/bin/python bench/fleet_scale.py --keepalive 10   # only the broker's keepalive

First, the LTE data budget: one real FleetAgent at its defaults (telemetry every 5 s,
keepalive 10 s; TLS) runs alone against the broker while the kernel counts its connection
(TCP_INFO: bytes and segments both ways, + 52 B of IPv4/TCP headers per segment): what a
connection costs to set up, the steady rate, and an incident (the uplink goes down and
comes back: 4 events and 2 status documents, QoS 1), then bytes per device per month.

Then the load: lightweight devices, one aiomqtt client each (MQTT 5, TLS with its own
client certificate, the shipped fleet/mosquitto/fleet.acl), all on one asyncio loop,
publishing the real `appliance.fleet.telemetry.telemetry()` document (3 rungs, 1 SRT
uplink) with a fresh `ts` each second; not the whole FleetAgent (the scale test runs 50 of
those). A subscriber in its own process (the operator's certificate,
`fleet/v1/+/telemetry`) measures latency as receipt time - the payload's `ts`; one more
device, the probe, publishes from a process of its own and is also read by a second
subscriber of its topic alone, which leaves out the shared loop's and the busy
subscriber's delays. Broker CPU comes from /proc/<pid>/stat (utime + stime) over the
measured window.

`--keepalive K` measures how long the broker takes to drop a silent client (what a frozen
device gets): 12 raw MQTT clients connect with keepalive K, 0.53 s apart (so at different
phases of the broker's clock), then send nothing; printed is CONNECT to the broker's close.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import socket
import ssl
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiomqtt  # noqa: E402

from appliance.config.schema import Fleet  # noqa: E402
from appliance.fleet.agent import POLL_S, FleetAgent  # noqa: E402
from appliance.fleet.telemetry import telemetry  # noqa: E402
from appliance.status import StatusHub  # noqa: E402
from tests.mqtt_broker import Broker, start_broker  # noqa: E402
from tests.test_fleet_scale import StubBackend  # noqa: E402

FLEET = ROOT / "fleet"
DAY_S = 86400
MONTH_S = 30 * DAY_S
TCP_IP = 52  # IPv4 20 + TCP 20 + the timestamps option 12, per segment
# Assumed for the monthly figure (each one's cost is printed on its own):
RECONNECTS_PER_DAY = 1
INCIDENTS_PER_DAY = 10
INCIDENTS_MEASURED = 10
PROBE_ID = "dev-probe"
PROBE_TOPIC = f"fleet/v1/{PROBE_ID}/telemetry"


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


def client_context(ca: str | None, cert: str | None,
                   key: str | None) -> ssl.SSLContext | None:
    """TLS with a client certificate, or None for the plain broker."""
    if ca is None:
        return None
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def tls_context(broker: Broker, cn: str) -> ssl.SSLContext | None:
    return client_context(broker.ca_file, *broker.client_cert(cn))


def subscriber(port: int, ca: str | None, cert: str | None, key: str | None,
               identity: str, topic: str, ready: Any, stop: Any, out: Any) -> None:
    """Latencies (receipt - `ts`) on `topic`: the simulated devices' and the probe's apart."""
    async def run() -> None:
        latencies: list[float] = []
        probe_latencies: list[float] = []
        async with aiomqtt.Client("127.0.0.1", port, identifier=identity,
                                  tls_context=client_context(ca, cert, key),
                                  protocol=aiomqtt.ProtocolVersion.V5) as c:
            await c.subscribe(topic, qos=0)
            ready.set()

            async def read() -> None:
                async for m in c.messages:
                    now = time.time()
                    ts = json.loads(bytes(m.payload))["ts"]
                    (probe_latencies if m.topic.matches(PROBE_TOPIC)
                     else latencies).append(now - ts)

            task = asyncio.create_task(read())
            await asyncio.to_thread(stop.wait)
            task.cancel()
        out.put((latencies, probe_latencies))

    asyncio.run(run())


def probe(port: int, ca: str | None, cert: str | None, key: str | None, go: Any,
          stop: Any) -> None:
    """One more device at 1 Hz in a process of its own: the latency a real device (with a
    CPU of its own) sees through the loaded broker, without the shared loop's lag."""
    async def run() -> None:
        async with aiomqtt.Client("127.0.0.1", port, identifier=PROBE_ID,
                                  username=None if ca else PROBE_ID,
                                  tls_context=client_context(ca, cert, key),
                                  protocol=aiomqtt.ProtocolVersion.V5, keepalive=10) as c:
            await asyncio.to_thread(go.wait)
            seq = 0
            while not stop.is_set():
                seq += 1
                await c.publish(PROBE_TOPIC, payload(1, seq), qos=0)
                await asyncio.to_thread(stop.wait, 1.0)

    asyncio.run(run())


async def devices(broker: Broker, n: int, seconds: float, plain: bool,
                  go: Any) -> tuple[int, float, float]:
    """(messages sent, seconds to connect all, broker CPU share while publishing); `go` is
    set once all are connected."""
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
    go.set()
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


def wire_bytes(port: int) -> int:
    """Bytes on the wire, both ways, so far, of this process's one TCP connection to
    127.0.0.1:`port`: payload (TLS records) from the kernel's TCP_INFO, plus headers."""
    for name in os.listdir("/proc/self/fd"):
        try:
            fd = os.dup(int(name))
        except OSError:
            continue
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)
            continue
        with sock:
            try:
                if sock.type != socket.SOCK_STREAM or sock.getpeername()[1] != port:
                    continue
            except (OSError, IndexError, TypeError):
                continue
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        # struct tcp_info (linux/tcp.h): bytes_received at 128, segs_out/segs_in at 136,
        # bytes_sent at 200
        received, = struct.unpack_from("Q", info, 128)
        segs_out, segs_in = struct.unpack_from("II", info, 136)
        sent, = struct.unpack_from("Q", info, 200)
        return sent + received + TCP_IP * (segs_out + segs_in)
    raise RuntimeError(f"no connection to port {port}")


async def budget(broker: Broker, seconds: float, state_dir: Path) -> dict[str, float]:
    """One real agent at its default rates: bytes for connecting, per second, per incident."""
    cert, key = broker.client_cert("cam-00001")
    fleet = Fleet.model_validate(dict(broker=broker.url, device_id="cam-00001",
                                      ca_file=broker.ca_file, cert_file=cert, key_file=key))
    hub = StatusHub()
    for section, fields in snapshot()["sections"].items():
        hub.update(section, **fields)
    agent = FleetAgent(fleet, hub, StubBackend(state_dir), state_dir)
    agent.start()
    try:
        for _ in range(200):  # 10 s
            if agent.connected:
                break
            await asyncio.sleep(0.05)
        else:
            raise TimeoutError("the agent did not connect")
        await asyncio.sleep(1)  # status, subscriptions, reported config, first telemetry
        connect = wire_bytes(broker.port)
        t0 = time.monotonic()
        await asyncio.sleep(seconds)
        steady = (wire_bytes(broker.port) - connect) / (time.monotonic() - t0)
        # several incidents, so that the telemetry that falls among them averages out
        t1, before = time.monotonic(), wire_bytes(broker.port)
        for _ in range(INCIDENTS_MEASURED):
            for state in ("connecting", "live"):
                hub.update("uplink.primary", state=state)
                await asyncio.sleep(3 * POLL_S)
        incident = (wire_bytes(broker.port) - before
                    - steady * (time.monotonic() - t1)) / INCIDENTS_MEASURED
    finally:
        await agent.stop()
    days = MONTH_S / DAY_S
    month = (steady * MONTH_S + connect * RECONNECTS_PER_DAY * days
             + incident * INCIDENTS_PER_DAY * days)
    return {"connect_bytes": connect, "steady_bytes_per_s": steady,
            "incident_bytes": incident, "month_mb": month / 1e6,
            "month_mb_watched": (month + 4 * steady * MONTH_S) / 1e6}


async def silent_clients(port: int, keepalive: int, n: int = 12) -> list[float]:
    """Seconds from CONNECT (the client's last packet) to the broker closing on it."""
    async def one(i: int) -> float:
        await asyncio.sleep(0.53 * i)
        client_id = f"silent-{i}".encode()
        body = (b"\x00\x04MQTT\x04\x02" + struct.pack("!H", keepalive)  # 3.1.1, clean
                + struct.pack("!H", len(client_id)) + client_id)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(bytes([0x10, len(body)]) + body)
        await writer.drain()
        t0 = time.monotonic()
        await reader.readexactly(4)  # CONNACK
        while await reader.read(1024):
            pass
        writer.close()
        return time.monotonic() - t0

    return sorted(await asyncio.gather(*(one(i) for i in range(n))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--plain", action="store_true", help="no TLS (anonymous mosquitto)")
    ap.add_argument("--budget-seconds", type=float, default=120.0,
                    help="steady-state window of the data budget (0: skip it)")
    ap.add_argument("--keepalive", type=int, help="only time the broker's keepalive")
    args = ap.parse_args()
    if args.keepalive:
        with tempfile.TemporaryDirectory() as tmp:
            broker = start_broker(Path(tmp), tls=False)
            try:
                closed = asyncio.run(silent_clients(broker.port, args.keepalive))
            finally:
                broker.stop()
        print(f"keepalive {args.keepalive} s: silent clients dropped after "
              f"{', '.join(f'{c:.1f}' for c in closed)} s (1.5 x keepalive + 1 s = "
              f"{1.5 * args.keepalive + 1:g} s)")
        return
    print(f"telemetry payload {len(payload(12, 123_456))} B of JSON (3 rungs, 1 uplink)")
    with tempfile.TemporaryDirectory() as tmp:
        extra = "max_connections -1"
        if not args.plain:
            extra += f"\nacl_file {FLEET / 'mosquitto/fleet.acl'}"
        broker = start_broker(Path(tmp), tls=not args.plain, extra_conf=extra)
        try:
            if args.budget_seconds > 0 and not args.plain:
                (Path(tmp) / "agent").mkdir()
                b = asyncio.run(budget(broker, args.budget_seconds, Path(tmp) / "agent"))
                print(f"one agent on the wire (TLS, TCP/IPv4 headers): connecting "
                      f"{b['connect_bytes'] / 1e3:.1f} kB; steady "
                      f"{b['steady_bytes_per_s']:.0f} B/s at 0.2 Hz; an incident "
                      f"{b['incident_bytes'] / 1e3:.1f} kB")
                print(f"per device per month ({RECONNECTS_PER_DAY} reconnect and "
                      f"{INCIDENTS_PER_DAY} incidents a day): {b['month_mb']:.0f} MB at "
                      f"0.2 Hz (default), {b['month_mb_watched']:.0f} MB if watched (1 Hz)"
                      f" all month")
            def pki(cn: str) -> tuple[str | None, str | None]:
                return (None, None) if args.plain else broker.client_cert(cn)

            ctx = mp.get_context("spawn")
            go, stop = ctx.Event(), ctx.Event()
            # the fleet's subscriber (as the bridge or an operator's view), and one that
            # takes the probe's topic alone: the broker's share without a busy subscriber's
            subs = []
            for identity, topic in (("fleet-operator", "fleet/v1/+/telemetry"),
                                    ("fleet-bridge", PROBE_TOPIC)):
                ready, out = ctx.Event(), ctx.Queue()
                proc = ctx.Process(target=subscriber, args=(
                    broker.port, broker.ca_file, *pki(identity), identity, topic, ready,
                    stop, out))
                proc.start()
                assert ready.wait(30), f"subscriber {identity} did not start"
                subs.append((proc, out))
            prober = ctx.Process(target=probe, args=(
                broker.port, broker.ca_file, *pki(PROBE_ID), go, stop))
            prober.start()
            sent, connect_s, cpu = asyncio.run(devices(broker, args.devices, args.seconds,
                                                       args.plain, go))
            time.sleep(1)
            stop.set()
            (lat, probe_lat), (_, probe_alone) = (out.get(timeout=30) for _, out in subs)
            for proc, _ in subs:
                proc.join(10)
            prober.join(10)
        finally:
            broker.stop()
    print(f"{args.devices} devices ({'plain' if args.plain else 'TLS'}), connected in "
          f"{connect_s:.1f} s; {sent} sent, {len(lat)} received in {args.seconds:g} s")
    print(f"broker CPU while publishing: {100 * cpu:.1f} % of one core")
    for name, values in (("the simulated devices (one shared loop)", lat),
                         ("the probe device (own process)", probe_lat),
                         ("the probe device, to a subscriber of its topic alone",
                          probe_alone)):
        if values:
            values.sort()
            p99 = values[min(len(values) - 1, int(0.99 * len(values)))]
            print(f"latency to the subscriber, {name}: {len(values)} messages, median "
                  f"{1000 * statistics.median(values):.1f} ms, p99 {1000 * p99:.1f} ms, "
                  f"max {1000 * values[-1]:.1f} ms")


if __name__ == "__main__":
    main()
