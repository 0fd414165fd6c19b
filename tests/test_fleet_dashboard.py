"""The whole fleet pipeline on loopback with the shipped configs: mosquitto -> the bridge
(Debian's prometheus-mqtt-exporter with fleet/mqtt2prometheus/mqtt-exporter.yaml) ->
Prometheus (fleet/prometheus/prometheus.yml + rules.yml); then every PromQL expression of
fleet/grafana/appliance-fleet.json must parse and return data."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.mqtt_broker import start_broker

ROOT = Path(__file__).resolve().parent.parent
FLEET = ROOT / "fleet"
PROMETHEUS = shutil.which("prometheus")
EXPORTER = shutil.which("prometheus-mqtt-exporter")
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None or EXPORTER is None or not Path(MOSQUITTO).exists(),
    reason="needs mosquitto, prometheus, prometheus-mqtt-exporter (scripts/setup.sh --test)")

# What Grafana would put in for its variables.
GRAFANA_VARS = {"$device": ".+", "$__rate_interval": "1m", "$__range": "5m",
                "$__interval": "15s"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 (loopback test URL)
        return json.loads(resp.read())


def dashboard_exprs() -> list[str]:
    dash = json.loads((FLEET / "grafana/appliance-fleet.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", []) if "expr" in t]
    assert len(exprs) >= 10
    return exprs


def _substitute(expr: str) -> str:
    for var, value in sorted(GRAFANA_VARS.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


class Procs:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _snapshot(n: int) -> dict[str, Any]:
    """A status hub snapshot of a live device with two uplinks, n seconds into sending."""
    return {"state": "live", "uptime_s": 100 + n, "sections": {
        "media.video": {"state": "live", "fps": 30.0},
        "encode.720p": {"bitrate_kbps": 3000}, "encode.480p": {"bitrate_kbps": 1000},
        "uplink.primary": {"state": "live", "protocol": "srt", "bytes_sent": 131_600 * n,
                           "reconnects": 1, "srt_rtt_ms": 42, "srt_lost_packets": 2 * n,
                           "srt_retransmitted_packets": 3 * n},
        "uplink.backup": {"state": "retrying", "bytes_sent": 0, "reconnects": 5},
        "device": {"cpu_percent": 40.0},
        "thermal": {"temp_c": 55.5, "level": 0, "degraded": False,
                    "throttled": {"under_voltage": False, "freq_capped": False,
                                  "throttled": False, "soft_temp_limit": False}},
    }}


async def _publish(port: int, stop: asyncio.Event) -> None:
    """cam-01 (the real telemetry builder) every 0.5 s; cam-02 offline, stale, throttled."""
    import aiomqtt

    from appliance.fleet.telemetry import telemetry

    cam02 = {"ts": time.time() - 900, "session": 7, "seq": 1, "state": "degraded",
             "rungs": {"720p": {"bitrate_kbps": 1000}},
             "uplinks": {"primary": {"state": "down", "bytes_sent": 10, "srt_rtt_ms": 300,
                                     "srt_lost_packets": 50}},
             "device": {"temp_c": 81.0, "cpu_percent": 90.0, "degraded": True,
                        "disk_free_bytes": 5e8,
                        "throttled": {"under_voltage": True, "throttled": True}}}
    async with aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5) as c:
        await c.publish("fleet/v1/cam-01/status",
                        json.dumps({"online": True, "session": 3, "state": "live"}), qos=1,
                        retain=True)
        await c.publish("fleet/v1/cam-02/status", json.dumps({"online": False, "session": 7}),
                        qos=1, retain=True)
        await c.publish("fleet/v1/cam-02/telemetry", json.dumps(cam02), qos=1, retain=True)
        n = 0
        while not stop.is_set():
            n += 1
            doc = telemetry(_snapshot(n), session=3, seq=n)
            doc["device"]["disk_free_bytes"] = 8e9
            await c.publish("fleet/v1/cam-01/telemetry", json.dumps(doc), qos=1, retain=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)


class Publisher:
    def __init__(self, port: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.stop_event = asyncio.Event()
        self.thread = threading.Thread(
            target=self.loop.run_until_complete, args=(_publish(port, self.stop_event),),
            daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def prometheus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    assert PROMETHEUS and EXPORTER
    tmp = tmp_path_factory.mktemp("fleet-prom")
    broker = start_broker(tmp, tls=False)
    procs = Procs()
    publisher = Publisher(broker.port)
    try:

        bridge = yaml.safe_load((FLEET / "mqtt2prometheus/mqtt-exporter.yaml").read_text())
        mqtt = bridge["mqtt"]
        for key in ("ca_cert", "client_cert", "client_key"):
            mqtt.pop(key)
        mqtt.update(server=f"tcp://127.0.0.1:{broker.port}", client_id="test-bridge")
        (tmp / "bridge.yaml").write_text(yaml.safe_dump(bridge))
        bridge_port = _free_port()
        procs.start([EXPORTER, "-config", str(tmp / "bridge.yaml"), "-listen-address",
                     "127.0.0.1", "-listen-port", str(bridge_port)], tmp / "bridge.log")

        prom = yaml.safe_load((FLEET / "prometheus/prometheus.yml").read_text())
        prom["global"].update(scrape_interval="1s", evaluation_interval="1s")
        prom["rule_files"] = [str(FLEET / "prometheus/rules.yml")]
        prom.pop("alerting")
        (job,) = prom["scrape_configs"]
        job["static_configs"] = [{"targets": [f"127.0.0.1:{bridge_port}"]}]
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(prom))
        port = _free_port()
        procs.start([PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}",
                     f"--storage.tsdb.path={tmp / 'tsdb'}",
                     f"--web.listen-address=127.0.0.1:{port}"], tmp / "prometheus.log")
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if len(_query(url, "appliance_device_online")) == 2 and \
                        len(_query(url, "appliance_uplink_up")) == 3 and \
                        _query(url, "appliance_srt_loss_ratio") and \
                        _query(url, "rate(appliance_uplink_sent_bytes_total[1m]) > 0"):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                logs = "\n".join(p.read_text(errors="replace")[-3000:]
                                 for p in (tmp / "bridge.log", tmp / "prometheus.log"))
                raise TimeoutError(f"no fleet data in Prometheus:\n{logs}")
            time.sleep(0.5)
        yield url
    finally:
        publisher.stop()
        procs.stop()
        broker.stop()


def _query(url: str, expr: str) -> list[dict[str, Any]]:
    doc = _get(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert doc["status"] == "success", doc
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


def test_bridge_maps_telemetry_to_the_documented_metrics(prometheus_url: str) -> None:
    def value(expr: str) -> dict[tuple[str, ...], float]:
        return {tuple(f"{k}={v}" for k, v in sorted(r["metric"].items())
                      if k not in ("__name__", "instance", "job")): float(r["value"][1])
                for r in _query(prometheus_url, expr)}

    assert value("appliance_device_online") == {("device=cam-01",): 1, ("device=cam-02",): 0}
    assert value("appliance_device_session") == {("device=cam-01",): 3, ("device=cam-02",): 7}
    assert value("appliance_device_live") == {("device=cam-01",): 1, ("device=cam-02",): 0}
    assert value("appliance_uplink_up") == {("device=cam-01", "uplink=primary"): 1,
                                            ("device=cam-01", "uplink=backup"): 0,
                                            ("device=cam-02", "uplink=primary"): 0}
    assert value("appliance_encoder_bitrate_bytes_per_second") == {
        ("device=cam-01", "rendition=720p"): 375_000,
        ("device=cam-01", "rendition=480p"): 125_000,
        ("device=cam-02", "rendition=720p"): 125_000}
    assert value("appliance_uplink_srt_rtt_seconds") == {
        ("device=cam-01", "uplink=primary"): 0.042, ("device=cam-02", "uplink=primary"): 0.3}
    assert value("appliance_uplink_reconnects_total")[("device=cam-01", "uplink=backup")] == 5
    assert value("appliance_temperature_celsius") == {("device=cam-01",): 55.5,
                                                      ("device=cam-02",): 81.0}
    assert value("appliance_cpu_usage_ratio") == {("device=cam-01",): 0.4,
                                                  ("device=cam-02",): 0.9}
    assert value("appliance_disk_free_bytes") == {("device=cam-01",): 8e9,
                                                  ("device=cam-02",): 5e8}
    assert value("max by (device) (appliance_throttled)") == {("device=cam-01",): 0,
                                                              ("device=cam-02",): 1}
    assert value("appliance_thermal_degraded") == {("device=cam-01",): 0,
                                                   ("device=cam-02",): 1}
    # 2 lost per 100 sent (131,600 B = 100 payloads of 1316 B) on cam-01's primary uplink
    loss = value("appliance_srt_loss_ratio")
    assert set(loss) == {("device=cam-01", "uplink=primary")}
    assert loss[("device=cam-01", "uplink=primary")] == pytest.approx(0.02, rel=0.01)
    age = value("time() - appliance_telemetry_timestamp_seconds")
    assert age[("device=cam-01",)] < 30 and age[("device=cam-02",)] > 800
    # the bridge's own labels are renamed/dropped by the scrape config
    assert all("sensor" not in r["metric"] and "topic" not in r["metric"]
               for r in _query(prometheus_url, '{__name__=~"appliance_.+"}'))


@pytest.mark.parametrize("expr", dashboard_exprs())
def test_dashboard_expression_returns_data(prometheus_url: str, expr: str) -> None:
    result = _query(prometheus_url, _substitute(expr))
    assert result, f"no data for {expr!r}"


def test_device_variable_query_lists_the_devices(prometheus_url: str) -> None:
    dash = json.loads((FLEET / "grafana/appliance-fleet.json").read_text())
    (var,) = [v for v in dash["templating"]["list"] if v["name"] == "device"]
    assert var["definition"] == "label_values(appliance_device_online, device)"
    doc = _get(f"{prometheus_url}/api/v1/label/device/values?"
               + urllib.parse.urlencode({"match[]": "appliance_device_online"}))
    assert doc["data"] == ["cam-01", "cam-02"]


def test_rules_load_in_prometheus(prometheus_url: str) -> None:
    doc = _get(f"{prometheus_url}/api/v1/rules")
    names = {r["name"] for g in doc["data"]["groups"] for r in g["rules"]}
    assert "ApplianceOffline" in names and "ApplianceDiskLow" in names
