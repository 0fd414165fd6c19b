"""The API against the real daemon: config, uplinks, stream, logs, recordings, events."""

from __future__ import annotations

import json
import time
import tomllib
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.web.masking import MASK
from tests.api_client import LIGHT, Client, admin, bearer
from tests.daemon_proc import DaemonProc, free_port, running_daemon
from tests.uplink_peer_nginx import nginx_rtmp


def wait_for(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    with running_daemon(tmp_path_factory.mktemp("api"), extra=LIGHT) as d:
        yield d


@pytest.fixture(scope="module")
def api(daemon: DaemonProc) -> Client:
    return bearer(daemon)


def saved(d: DaemonProc) -> dict[str, Any]:
    return tomllib.loads((d.log_path.parent / "appliance.toml").read_text())


def mpd_timeline(api: Client) -> tuple[str, str, int] | None:
    """(availabilityStartTime, Period id, video startNumber) of the served MPD."""
    r = api.get("/live/manifest.mpd")
    if r.status != 200:
        return None
    ns = {"d": "urn:mpeg:dash:schema:mpd:2011"}
    mpd = ET.fromstring(r.body)
    period = mpd.find("d:Period", ns)
    template = mpd.find(".//d:AdaptationSet[@contentType='video']//d:SegmentTemplate", ns)
    assert period is not None and template is not None, r.body
    return (mpd.get("availabilityStartTime", ""), period.get("id", ""),
            int(template.get("startNumber", "0")))


def sections(api: Client) -> dict[str, Any]:
    return dict(api.get("/api/v1/status").json()["sections"])


# -- status and events ------------------------------------------------------------------------


def test_status_has_the_hub_and_the_leds(api: Client) -> None:
    wait_for(lambda: api.get("/api/v1/status").json()["state"] == "live_local", 15, "live")
    status = api.get("/api/v1/status").json()
    assert status["leds"] == {"green": "on", "red": "off"}  # live, no uplink
    assert status["sections"]["media.video"]["state"] == "live"
    assert status["uptime_s"] > 0


def test_events_push_the_status_every_second(daemon: DaemonProc, api: Client) -> None:
    req = urllib.request.Request(daemon.url + "/api/v1/events",
                                 headers={"Authorization": f"Bearer {api.bearer}"})
    events: list[dict[str, Any]] = []
    started = time.monotonic()
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        buf = b""
        while len(events) < 3:
            buf += r.read1(65536)
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                lines = block.decode().splitlines()
                assert lines[0] == "event: status"
                events.append(json.loads(lines[1].removeprefix("data: ")))
    elapsed = time.monotonic() - started
    assert 1.5 < elapsed < 4.0  # ~1 per second, the first at once
    assert all("leds" in e and "sections" in e for e in events)
    assert events[2]["uptime_s"] > events[0]["uptime_s"]


# -- config -----------------------------------------------------------------------------------


def test_config_schema_is_for_forms(api: Client) -> None:
    schema = api.get("/api/v1/config/schema").json()
    defs = schema["$defs"]
    assert defs["Uplink"]["properties"]["key"]["secret"] is True
    assert defs["Uplink"]["properties"]["latency_ms"]["maximum"] == 8000
    assert defs["Video"]["properties"]["fps"]["title"] == "Frames per second"
    assert defs["Playback"]["properties"]["require_token"]["default"] is False
    assert "tls_cert" in defs["Web"]["properties"]


def test_validate_names_the_keys(api: Client) -> None:
    good = api.get("/api/v1/config").json()
    assert api.call("POST", "/api/v1/config/validate", good).json() == {"ok": True, "errors": []}
    bad = {**good, "video": {**good["video"], "fps": 999, "bogus": 1}}
    r = api.call("POST", "/api/v1/config/validate", bad)
    assert r.status == 200
    body = r.json()
    assert not body["ok"]
    keys = {e["key"] for e in body["errors"]}
    assert keys == {"video.fps", "video.bogus"}, body
    assert api.call("POST", "/api/v1/config/validate", raw=b"{nope").status == 400


def test_bad_config_is_refused_and_nothing_changes(daemon: DaemonProc, api: Client) -> None:
    before = (daemon.log_path.parent / "appliance.toml").read_text()
    cfg = api.get("/api/v1/config").json()
    cfg["packager"]["part_s"] = 5.0
    cfg["uplink"] = [{"name": "x", "url": "http://nope"}]
    r = api.call("PUT", "/api/v1/config", cfg)
    assert r.status == 400
    keys = {e["key"] for e in r.json()["errors"]}
    assert {"packager.part_s", "uplink[0].url"} <= keys, r.json()
    assert b"Traceback" not in r.body
    body: Any
    for body in ([], "text", {"video": "x"}):
        assert api.call("PUT", "/api/v1/config", body).status == 400
    assert api.call("PUT", "/api/v1/config", raw=b"\xff\xfe").status == 400
    assert (daemon.log_path.parent / "appliance.toml").read_text() == before
    assert daemon.proc.poll() is None
    assert api.get("/api/v1/status").status == 200


def test_put_config_applies_uplinks_and_keeps_masked_secrets(daemon: DaemonProc,
                                                             api: Client) -> None:
    cfg = api.get("/api/v1/config").json()
    cfg["uplink"] = [{"name": "cfg-up", "url": f"rtmp://127.0.0.1:{free_port()}/live",
                      "key": "key-from-put-1234"}]
    r = api.call("PUT", "/api/v1/config", cfg)
    assert r.status == 200 and r.json() == {"ok": True, "restart_needed": []}, r.body
    wait_for(lambda: "uplink.cfg-up" in sections(api), 5, "uplink in status")
    assert saved(daemon)["uplink"][0]["key"] == "key-from-put-1234"

    # Sent back as read (masked), the stored key stays; another setting changes.
    cfg = api.get("/api/v1/config").json()
    assert cfg["uplink"][0]["key"] == MASK
    cfg["uplink"][0]["enabled"] = False
    cfg["video"]["fps"] = 10  # not hot: waits for a restart of the media
    r = api.call("PUT", "/api/v1/config", cfg)
    assert r.json()["restart_needed"] == ["video"]
    assert saved(daemon)["uplink"][0] == {**saved(daemon)["uplink"][0],
                                          "key": "key-from-put-1234", "enabled": False}
    wait_for(lambda: sections(api).get("uplink.cfg-up", {}).get("state") == "disabled", 5,
             "disabled")
    assert sections(api)["daemon"]["restart_needed"] == ["video"]

    # A stream restart puts the video change into effect.
    before = mpd_timeline(api)
    assert before is not None
    assert api.call("POST", "/api/v1/stream/restart").status == 200
    assert sections(api)["daemon"]["restart_needed"] == []
    wait_for(lambda: sections(api).get("encode.180p", {}).get("frames", 0) > 0, 15, "restarted")
    wait_for(lambda: api.get("/live/index.m3u8").status == 200, 15, "playlist back")
    # The same timeline goes on: a new Period with higher numbers, and the same
    # availabilityStartTime, which must not change between MPD updates.
    after = wait_for(lambda: (t := mpd_timeline(api)) and t[1] != before[1] and t, 15,
                     "a new Period")
    assert after[0] == before[0] and after[2] > before[2], (before, after)

    cfg = api.get("/api/v1/config").json()
    cfg["uplink"] = []
    assert api.call("PUT", "/api/v1/config", cfg).status == 200
    wait_for(lambda: "uplink.cfg-up" not in sections(api), 5, "uplink gone")


# -- uplinks -----------------------------------------------------------------------------------


def test_uplink_crud(daemon: DaemonProc, api: Client) -> None:
    port = free_port()
    new = {"name": "crud", "url": f"rtmp://127.0.0.1:{port}/live", "key": "crud-key-5678"}
    r = api.call("POST", "/api/v1/uplinks", new)
    assert r.status == 201 and r.json()["ok"], r.body
    assert api.call("POST", "/api/v1/uplinks", new).status == 409
    wait_for(lambda: "uplink.crud" in sections(api), 5, "uplink in status")

    listed = api.get("/api/v1/uplinks").json()["uplinks"]
    assert [u["name"] for u in listed] == ["crud"] and listed[0]["key"] == MASK
    one = api.get("/api/v1/uplinks/crud").json()
    assert one["key"] == MASK and one["url"] == new["url"]
    assert api.get("/api/v1/uplinks/nope").status == 404

    one["latency_ms"] = 300
    one["url"] = f"rtmp://127.0.0.1:{port}/other"
    r = api.call("PUT", "/api/v1/uplinks/crud", one)
    assert r.status == 200, r.body
    stored = saved(daemon)["uplink"][0]
    assert stored["key"] == "crud-key-5678" and stored["url"].endswith("/other")

    # Errors name the uplink's own keys.
    r = api.call("PUT", "/api/v1/uplinks/crud", {**one, "url": "srt://h", "key": None})
    assert r.status == 400
    assert {e["key"] for e in r.json()["errors"]} == {"url"}, r.json()
    r = api.call("POST", "/api/v1/uplinks", {"name": "nokey", "url": "rtmp://h/app"})
    assert r.status == 400 and r.json()["errors"][0]["key"] == "key", r.json()
    r = api.call("POST", "/api/v1/uplinks", {"name": "masked", "url": "rtmp://h/app",
                                             "key": MASK})
    assert r.status == 400  # a mask is no key

    assert api.call("DELETE", "/api/v1/uplinks/crud").status == 200
    assert api.call("DELETE", "/api/v1/uplinks/crud").status == 404
    assert saved(daemon).get("uplink", []) == []
    wait_for(lambda: "uplink.crud" not in sections(api), 5, "uplink gone")


def test_uplink_connection_test(tmp_path: Path, daemon: DaemonProc, api: Client) -> None:
    with nginx_rtmp(tmp_path, keys={"right-key-0001"}) as origin:
        for name, key in (("t-good", "right-key-0001"), ("t-bad", "wrong-key-0002")):
            r = api.call("POST", "/api/v1/uplinks", {
                "name": name, "url": origin.url, "key": key, "enabled": False})
            assert r.status == 201, r.body
        good = api.call("POST", "/api/v1/uplinks/t-good/test").json()
        assert good["ok"], good
        bad = api.call("POST", "/api/v1/uplinks/t-bad/test").json()
        assert not bad["ok"] and "refused" in bad["message"], bad
        assert "wrong-key-0002" not in json.dumps(bad)
        assert origin.key_check is not None
        assert [p.name for p in origin.key_check.publishes()] == ["right-key-0001",
                                                                  "wrong-key-0002"]
    started = time.monotonic()
    closed = api.call("POST", "/api/v1/uplinks/t-good/test").json()  # origin gone
    assert not closed["ok"] and "connect" in closed["message"], closed
    assert time.monotonic() - started < 10
    assert api.call("POST", "/api/v1/uplinks/none/test").status == 404
    for name in ("t-good", "t-bad"):
        assert api.call("DELETE", f"/api/v1/uplinks/{name}").status == 200


# -- logs, tokens, playback URL -----------------------------------------------------------------


def test_logs(api: Client) -> None:
    records = api.get("/api/v1/logs?lines=3").json()["records"]
    assert len(records) == 3
    assert {"time", "level", "logger", "message"} == set(records[0])
    assert records[0]["time"] <= records[-1]["time"]
    everything = api.get("/api/v1/logs?lines=1000").json()["records"]
    assert any("serving on http://" in r["message"] for r in everything)
    for bad in ("0", "1001", "x", "-1", "1e3"):
        r = api.get(f"/api/v1/logs?lines={bad}")
        assert r.status == 400 and r.json()["errors"][0]["key"] == "lines"


def test_tokens_are_shown_once(daemon: DaemonProc) -> None:
    c = admin(daemon)
    made = c.call("POST", "/api/v1/tokens", {"name": "once"}).json()
    assert made["token"].startswith("apl_") and len(made["token"]) > 40
    listed = c.get("/api/v1/tokens")
    assert made["id"] in listed.body.decode() and made["token"] not in listed.body.decode()
    assert c.call("POST", "/api/v1/tokens", {"name": "../x"}).status == 400
    assert c.call("DELETE", f"/api/v1/tokens/{made['id']}").status == 200
    assert c.call("DELETE", f"/api/v1/tokens/{made['id']}").status == 404


def test_playback_url_when_open(daemon: DaemonProc, api: Client) -> None:
    body = api.get("/api/v1/playback-url").json()
    assert body == {"url": f"{daemon.url}/live/index.m3u8",
                    "mpd_url": f"{daemon.url}/live/manifest.mpd",
                    "token": None, "expires": None}


def test_unknown_api_path_and_method_are_json(api: Client) -> None:
    r = api.get("/api/v1/nothing-here")
    assert r.status == 404 and r.json()["error"]
    r = api.call("PATCH", "/api/v1/config", {})
    assert r.status == 405 and "PUT" in r.headers["Allow"] and r.json()["error"]


# -- recordings ---------------------------------------------------------------------------------


def test_recordings(tmp_path: Path) -> None:
    extra = LIGHT + "\n[recording]\nenabled = true\nfile_s = 10\n"
    with running_daemon(tmp_path, extra=extra) as d:
        api = bearer(d)
        directory = tmp_path / "state" / "recordings"
        active = wait_for(lambda: [r for r in api.get("/api/v1/recordings").json()[
            "recordings"] if r["active"] and r["size"] > 0], 20, "a recording")[0]
        assert api.call("DELETE", f"/api/v1/recordings/{active['name']}").status == 409

        old = directory / "rec-20000101T000000Z.mp4"
        old.write_bytes(b"\0\0\0\x18ftypiso6" + b"\0" * 100)
        listed = api.get("/api/v1/recordings").json()["recordings"]
        assert [r["name"] for r in listed][0] == old.name
        assert listed[0] == {"name": old.name, "size": 112, "started": 946684800.0,
                             "active": False}
        got = api.get(f"/api/v1/recordings/{old.name}")
        assert got.status == 200 and got.body == old.read_bytes()
        assert got.headers["Content-Type"] == "video/mp4"
        assert "attachment" in got.headers["Content-Disposition"]
        live = api.get(f"/api/v1/recordings/{active['name']}")
        assert live.status == 200 and live.body[4:8] == b"ftyp"

        assert api.call("DELETE", f"/api/v1/recordings/{old.name}").status == 200
        assert not old.exists()
        assert api.call("DELETE", f"/api/v1/recordings/{old.name}").status == 404
        assert api.get("/api/v1/recordings/appliance.toml").status == 404


# -- safe mode -------------------------------------------------------------------------------------


def test_safe_mode_is_fixed_through_the_api(tmp_path: Path) -> None:
    with running_daemon(tmp_path, extra=LIGHT + "\n[audio]\nbitrate_kbps = 5\n") as d:
        api = bearer(d)
        status = api.get("/api/v1/status").json()
        assert status["state"] == "safe_mode"
        assert status["leds"] == {"green": "off", "red": "blink-1hz"}
        assert api.call("POST", "/api/v1/stream/restart").status == 409
        cfg = api.get("/api/v1/config").json()
        assert api.call("PUT", "/api/v1/config", cfg).status == 200
        wait_for(lambda: api.get("/api/v1/status").json()["state"] == "live_local", 20, "live")
        assert saved(d)["audio"].get("bitrate_kbps", 128) == 128


def test_too_large_a_body_is_refused_as_json(api: Client) -> None:
    r = api.call("PUT", "/api/v1/config", raw=b"{" + b" " * (2 << 20) + b"}")
    assert r.status == 413 and r.json()["error"]


def _open_events(d: DaemonProc, headers: dict[str, str]) -> Any:
    req = urllib.request.Request(d.url + "/api/v1/events", headers=headers)
    r = urllib.request.urlopen(req, timeout=10)
    assert r.read1(65536).startswith(b"event: status")
    return r


def _ends_within(r: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not r.read1(65536):
            return True
    return False


def test_event_stream_ends_at_logout(daemon: DaemonProc) -> None:
    c = admin(daemon)
    cookie = c.cookie("appliance_session")
    assert cookie is not None
    with _open_events(daemon, {"Cookie": f"appliance_session={cookie.value}"}) as r:
        assert c.call("POST", "/api/v1/logout").status == 200
        assert _ends_within(r, 5)


def test_an_open_event_stream_does_not_hold_up_shutdown(tmp_path: Path) -> None:
    with running_daemon(tmp_path, extra=LIGHT) as d:
        api = bearer(d)
        with _open_events(d, {"Authorization": f"Bearer {api.bearer}"}) as r:
            started = time.monotonic()
            assert d.stop(timeout=15) == 0
            assert time.monotonic() - started < 3.5
            assert _ends_within(r, 1)
