"""Signed playback URLs: playlists and the MPD carry the token on every URI, and /live
answers only with a valid one when `playback.require_token` is on."""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from urllib.parse import urljoin, urlsplit

import pytest

from appliance.package import dash, hls, hls_request
from appliance.web import playback
from tests.api_client import LIGHT, Client, admin, bearer, raw_get
from tests.daemon_proc import DaemonProc, running_daemon
from tests.hls_feeder import Feeder, timing_of

Q = "?token=123.abc-_DEF"
_URI_ATTR = re.compile(r'URI="([^"]*)"')


def uris(playlist: str) -> list[str]:
    """Every URI a playlist lists: URI attributes and the lines that are not tags."""
    out = []
    for line in playlist.splitlines():
        if line.startswith("#"):
            out += _URI_ATTR.findall(line)
        elif line.strip():
            out.append(line.strip())
    return out


# -- rendering -------------------------------------------------------------------------------


async def test_multivariant_and_media_playlists_carry_the_query(fed: Feeder) -> None:
    plain = hls.render_multivariant(fed.store) or ""
    signed = hls.render_multivariant(fed.store, Q) or ""
    assert signed.replace(Q, "") == plain  # nothing else changes
    listed = uris(signed)
    assert len(listed) == 3 and all(u.endswith(Q) for u in listed)

    timing = timing_of(fed.store)
    for name in ("720p", "audio"):
        track = fed.store.tracks[name]
        for skip in (None, "YES"):
            plain = hls.render_media_playlist(fed.store, track, timing, skip) or ""
            signed = hls.render_media_playlist(fed.store, track, timing, skip, Q) or ""
            assert signed.replace(Q, "") == plain
            listed = uris(signed)
            # the map, parts, segments, the preload hint and the rendition reports
            assert len(listed) > 10 and all(u.endswith(Q) for u in listed), signed
            assert any(u.startswith("../") for u in listed)
            assert any(u.startswith("init.mp4") for u in listed)


async def test_mpd_templates_carry_the_query(fed: Feeder) -> None:
    time_url = "http://h/live/time" + Q
    plain = dash.render_mpd(fed.store, "http://h/live/time", now_ns=10**18) or ""
    signed = dash.render_mpd(fed.store, time_url, now_ns=10**18, uri_query=Q) or ""
    assert signed.replace(Q, "") == plain
    root = ET.fromstring(signed)
    ns = {"d": "urn:mpeg:dash:schema:mpd:2011"}
    templates = root.findall(".//d:SegmentTemplate", ns)
    assert templates
    for t in templates:
        assert t.get("media", "").endswith(Q) and t.get("initialization", "").endswith(Q)
    utc = root.find("d:UTCTiming", ns)
    assert utc is not None and utc.get("value") == time_url


def test_directives_ignore_the_token() -> None:
    d = hls_request.parse_directives([("token", "1.x"), ("_HLS_msn", "7"), ("_HLS_part", "2"),
                                      ("_HLS_skip", "YES")])
    assert (d.msn, d.part, d.skip) == (7, 2, "YES")
    assert hls_request.parse_directives([("token", "_HLS_msn")]).msn is None


# -- the daemon ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    extra = LIGHT + "\n[playback]\nrequire_token = true\ntoken_ttl_s = 120\n"
    with running_daemon(tmp_path_factory.mktemp("playback"), extra=extra) as d:
        yield d


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def wait_200(url: str, timeout: float = 20) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        status, body = fetch(url)
        if status == 200:
            return body
        assert status in (403, 503) and time.monotonic() < deadline, (url, status, body)
        time.sleep(0.2)


def test_live_needs_a_valid_token(daemon: DaemonProc) -> None:
    status, body = raw_get(daemon.url, "/live/index.m3u8")
    assert status == 403
    for path in ("/live/180p/index.m3u8", "/live/manifest.mpd", "/live/time",
                 "/live/180p/init.mp4", "/live/index.m3u8?token=", "/live/index.m3u8?token=x",
                 "/live/index.m3u8?token=99999999999.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"):
        assert raw_get(daemon.url, path)[0] == 403, path
    # Signed with this device's key, but expired.
    key = json.loads((daemon.log_path.parent / "state" / "secrets.json").read_text()
                     ).get("playback_key")
    if key is None:  # not made yet: the first signed URL makes it
        bearer(daemon).get("/api/v1/playback-url")
        key = json.loads((daemon.log_path.parent / "state" / "secrets.json").read_text()
                         )["playback_key"]
    expired = playback.sign(base64.b64decode(key), int(time.time()) - 1)
    assert raw_get(daemon.url, f"/live/index.m3u8?token={expired}")[0] == 403
    fresh = playback.sign(base64.b64decode(key), int(time.time()) + 60)
    wait_200(f"{daemon.url}/live/index.m3u8?token={fresh}")
    # Preflights are answered without one (they carry no credentials anyway).
    req = urllib.request.Request(daemon.url + "/live/index.m3u8", method="OPTIONS")
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 204


def test_signed_url_plays_through_every_listed_uri(daemon: DaemonProc) -> None:
    got = bearer(daemon).get("/api/v1/playback-url").json()
    assert got["expires"] - time.time() == pytest.approx(120, abs=5)
    url = got["url"]
    assert urlsplit(url).query == f"token={got['token']}"
    token_q = f"?token={got['token']}"

    multivariant = wait_200(url).decode()
    listed = uris(multivariant)
    assert listed and all(u.endswith(token_q) for u in listed)
    media_url = urljoin(url, listed[-1])
    media = wait_200(media_url).decode()
    media_uris = uris(media)
    assert all(u.endswith(token_q) for u in media_uris), media
    for uri in media_uris:
        if uri.startswith(("init", "seg")):
            status, _ = fetch(urljoin(media_url, uri))
            assert status == 200, uri
    # A blocking reload: the token and the directives together.
    msn = int(re.findall(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", media)[0])
    status, body = fetch(media_url + f"&_HLS_msn={msn}&_HLS_part=0")
    assert status == 200 and b"#EXTM3U" in body
    assert fetch(media_url.split("?")[0] + f"?_HLS_msn={msn}")[0] == 403

    mpd = wait_200(got["mpd_url"]).decode()
    root = ET.fromstring(mpd)
    ns = {"d": "urn:mpeg:dash:schema:mpd:2011"}
    for t in root.findall(".//d:SegmentTemplate", ns):
        assert t.get("media", "").endswith(token_q)
    utc = root.find("d:UTCTiming", ns)
    assert utc is not None
    assert fetch(utc.get("value", ""))[0] == 200


def test_a_logged_in_page_plays_without_a_token(daemon: DaemonProc) -> None:
    page = admin(daemon)
    deadline = time.monotonic() + 20
    while (r := page.get("/live/index.m3u8")).status == 503 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert r.status == 200 and b"token=" not in r.body
    assert bearer(daemon).get("/live/index.m3u8").status == 200


def test_turning_tokens_off_applies_at_once(daemon: DaemonProc) -> None:
    api = bearer(daemon)
    cfg = api.get("/api/v1/config").json()
    cfg["playback"]["require_token"] = False
    r = api.call("PUT", "/api/v1/config", cfg)
    assert r.status == 200 and r.json()["restart_needed"] == [], r.body
    assert Client(daemon.url).get("/live/index.m3u8").status == 200
    assert api.get("/api/v1/playback-url").json()["token"] is None
    cfg["playback"]["require_token"] = True
    assert api.call("PUT", "/api/v1/config", cfg).status == 200
    assert Client(daemon.url).get("/live/index.m3u8").status == 403
