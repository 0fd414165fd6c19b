"""`[[uplink]]` and `[recording]` settings: bad input is a config error naming its key,
and a secret never shows in the error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from appliance.config.load import ConfigError, parse
from appliance.config.schema import Uplink

BASE = '[video]\nsource = "synthetic"\n'
SECRET = "s3cret-value-0123456789"


def errors_of(toml: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(BASE + toml)
    return info.value.errors


def uplink(url: str, **keys: object) -> str:
    lines = ['[[uplink]]', 'name = "origin"', f'url = "{url}"']
    for k, v in keys.items():
        lines.append(f"{k} = {v!r}".replace("'", '"') if isinstance(v, str)
                     else f"{k} = {str(v).lower() if isinstance(v, bool) else v}")
    return "\n".join(lines) + "\n"


BAD = [
    # malformed URLs
    ("no colon", uplink("srt//host:9000"), "uplink[0].url", "scheme must be"),
    ("empty", uplink(""), "uplink[0].url", "scheme must be"),
    ("no host", uplink("srt://:9000"), "uplink[0].url", "no host"),
    ("port out of range", uplink("srt://host:99999"), "uplink[0].url", "invalid port"),
    ("port not a number", uplink("srt://host:port"), "uplink[0].url", "invalid port"),
    ("bad IPv6", uplink("srt://[::1:9000"), "uplink[0].url", "IPv6"),
    ("SRT without port", uplink("srt://host"), "uplink[0].url", "needs a port"),
    ("RTMP without app", uplink("rtmp://host", key="k"), "uplink[0].url", "application"),
    ("RTMPS without app", uplink("rtmps://host:443/", key="k"), "uplink[0].url",
     "application"),
    # unknown schemes
    ("http", uplink("http://host/live", key="k"), "uplink[0].url", "scheme must be"),
    ("udp", uplink("udp://host:9000"), "uplink[0].url", "scheme must be"),
    ("rtmpt", uplink("rtmpt://host/live", key="k"), "uplink[0].url", "scheme must be"),
    # missing and misplaced keys
    ("RTMP without key", uplink("rtmp://host/live"), "uplink[0].key", "stream key"),
    ("RTMPS without key", uplink("rtmps://host/live"), "uplink[0].key", "stream key"),
    ("empty key", uplink("rtmp://host/live", key=""), "uplink[0].key", "at least 1"),
    ("second one without key", uplink("srt://host:9000") + uplink(
        "rtmp://host/live").replace('"origin"', '"other"'), "uplink[1].key", "stream key"),
    ("key on SRT", uplink("srt://host:9000", key="k"), "uplink[0].key", "only for RTMP"),
    ("passphrase on RTMP", uplink("rtmp://host/live", key="k", passphrase=SECRET),
     "uplink[0].passphrase", "only for SRT"),
    ("streamid on RTMP", uplink("rtmp://host/live", key="k", streamid="x"),
     "uplink[0].streamid", "only for SRT"),
    ("ca_file on plain RTMP", uplink("rtmp://host/live", key="k", ca_file="/ca.pem"),
     "uplink[0].ca_file", "rtmps"),
    ("ca_file on SRT", uplink("srt://host:9000", ca_file="/ca.pem"), "uplink[0].ca_file",
     "only for RTMPS"),
    ("unknown key", uplink("rtmp://host/live", stream_key="k"), "uplink[0].stream_key",
     "unknown key"),
    ("no url", '[[uplink]]\nname = "origin"\n', "uplink[0].url", "required"),
    # secrets where they do not belong, or not fit for SRT
    ("passphrase in URL", uplink(f"srt://host:9000?passphrase={SECRET}"), "uplink[0].url",
     "not in the URL"),
    ("options in URL", uplink("srt://host:9000?mode=listener&latency=200"), "uplink[0].url",
     "not in the URL"),
    ("path on SRT", uplink("srt://host:9000/live"), "uplink[0].url", "not in the URL"),
    ("credentials in RTMP URL", uplink(f"rtmp://user:{SECRET}@host/live", key="k"),
     "uplink[0].url", "no credentials"),
    ("passphrase too short", uplink("srt://host:9000", passphrase="short-9ch"),
     "uplink[0].passphrase", "at least 10"),
    ("passphrase too long", uplink("srt://host:9000", passphrase="p" * 80),
     "uplink[0].passphrase", "at most 79"),
    # other SRT options
    ("mode", uplink("srt://host:9000", mode="rendezvous"), "uplink[0].mode", "caller"),
    ("latency too low", uplink("srt://host:9000", latency_ms=5), "uplink[0].latency_ms",
     "greater than or equal to 20"),
    ("latency too high", uplink("srt://host:9000", latency_ms=9000), "uplink[0].latency_ms",
     "less than or equal to 8000"),
    # the destination as a whole
    ("bad name", uplink("srt://host:9000").replace('"origin"', '"no spaces"'),
     "uplink[0].name", "pattern"),
    ("unknown rung", uplink("srt://host:9000", rung="4k"), "uplink[0].rung", "no rung"),
    ("same name twice", uplink("srt://host:9000") + uplink("srt://host:9001"), "uplink",
     "unique"),
    # [recording]
    ("cap too small", "[recording]\nenabled = true\nmax_mb = 1\n", "recording.max_mb",
     "greater than or equal to 64"),
    ("files too short", "[recording]\nfile_s = 2\n", "recording.file_s",
     "greater than or equal to 10"),
    ("recording unknown key", "[recording]\nformat = \"mkv\"\n", "recording.format",
     "unknown key"),
]


@pytest.mark.parametrize(("toml", "key", "message"), [c[1:] for c in BAD],
                         ids=[c[0] for c in BAD])
def test_bad_uplink_settings_are_errors_naming_the_key(toml: str, key: str,
                                                       message: str) -> None:
    errors = errors_of(toml)
    assert any(e.startswith(f"{key}: ") and message in e for e in errors), errors
    assert not any(SECRET in e for e in errors), "a secret in the error"


def test_good_destinations_are_accepted() -> None:
    cfg = parse(BASE + uplink("srt://cam.example.net:9000", passphrase=SECRET,
                              streamid="#!::r=live/cam1,m=publish", latency_ms=1500,
                              mode="listener")
                + uplink("rtmps://live.example.com/app", key=SECRET, ca_file="/etc/ca.pem",
                         rung="720p").replace('"origin"', '"cloud"')
                + uplink("rtmp://10.0.0.2:1935/live/sub", key="k",
                         enabled=False).replace('"origin"', '"lan"')
                + '[[video.ladder]]\nname = "720p"\nwidth = 1280\nheight = 720\n'
                  'bitrate_kbps = 3000\n'
                + "[recording]\nenabled = true\nmax_mb = 64\nfile_s = 10\n")
    srt, rtmps, rtmp = cfg.uplink
    assert (srt.mode, srt.latency_ms, srt.passphrase) == ("listener", 1500, SECRET)
    assert (rtmps.key, rtmps.ca_file, rtmps.rung) == (SECRET, "/etc/ca.pem", "720p")
    assert rtmp.enabled is False
    assert cfg.recording.enabled and cfg.recording.max_mb == 64
    # Defaults: caller mode, 120 ms.
    default = Uplink.model_validate({"name": "d", "url": "srt://h:1"})
    assert (default.mode, default.latency_ms, default.enabled) == ("caller", 120, True)


def test_check_config_exits_2_naming_the_key_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(BASE + uplink("srt://host:9000", passphrase=SECRET)
                   + uplink(f"srt://host:9001?passphrase={SECRET}").replace('"origin"',
                                                                             '"second"'))
    res = subprocess.run([sys.executable, "-m", "appliance", "check-config", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res
    assert "uplink[1].url:" in res.stderr and "(line 9)" in res.stderr, res.stderr
    assert SECRET not in res.stderr + res.stdout
