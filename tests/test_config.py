"""Config: schema errors name the key (and line), atomic save, check-config exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.config.load import ConfigError, dump, load, parse, save_atomic
from appliance.config.schema import Config

GOOD = """
[video]
source = "synthetic"
width = 1280
height = 720
fps = 30

[[video.ladder]]
name = "720p"
width = 1280
height = 720
bitrate_kbps = 3000

[audio]
enabled = true
source = "synthetic"

[packager]
segment_s = 2.0
part_s = 0.2

[web]
listen = "127.0.0.1:8080"

[fleet]
broker = "mqtts://fleet.example.com:8883"
device_id = "cam-01"

[[uplink]]
name = "primary"
url = "srt://host:9000"
enabled = true
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return info.value.errors


def test_spec_example_is_valid() -> None:
    cfg = parse(GOOD)
    assert cfg.video.ladder[0].name == "720p"
    assert cfg.uplink[0].url == "srt://host:9000"
    assert cfg.web.port == 8080


def test_defaults_are_valid_and_round_trip() -> None:
    cfg = Config()
    assert parse(dump(cfg)) == cfg


def test_unknown_key_is_named_with_its_line() -> None:
    text = GOOD.replace("fps = 30", "fps = 30\nframerate = 25")
    (err,) = errors_of(text)
    assert err.startswith("video.framerate: unknown key")
    line = text.splitlines().index("framerate = 25") + 1
    assert f"(line {line})" in err


def test_out_of_range_values_are_named() -> None:
    text = GOOD.replace("fps = 30", "fps = 500").replace("bitrate_kbps = 3000", "bitrate_kbps = 1")
    errs = errors_of(text)
    assert any(e.startswith("video.fps:") for e in errs)
    assert any(e.startswith("video.ladder[0].bitrate_kbps:") for e in errs)


def test_second_uplink_error_points_at_its_table() -> None:
    text = GOOD + '\n[[uplink]]\nname = "backup"\nurl = "http://nope"\n'
    (err,) = errors_of(text)
    assert err.startswith("uplink[1].url:") and "scheme" in err
    line = text.splitlines().index('url = "http://nope"') + 1
    assert f"(line {line})" in err


def test_cross_field_rules() -> None:
    errs = errors_of(GOOD.replace("segment_s = 2.0\npart_s = 0.2", "segment_s = 1.0\npart_s = 0.8"))
    assert any("part_s" in e for e in errs)
    errs = errors_of(
        GOOD.replace("width = 1280\nheight = 720\nbitrate", "width = 1920\nheight = 1080\nbitrate")
    )
    assert any("larger than the capture size" in e for e in errs)


def test_toml_syntax_error_names_line() -> None:
    (err,) = errors_of("[video\nfps = 3")
    assert "TOML syntax" in err and "line 1" in err


def test_save_atomic_replaces_whole_file_private(tmp_path: Path) -> None:
    path = tmp_path / "appliance.toml"
    save_atomic(path, GOOD)
    save_atomic(path, GOOD.replace("fps = 30", "fps = 25"))
    assert load(path).video.fps == 25
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["appliance.toml"], "no temp files left"


def test_save_atomic_failure_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "appliance.toml"
    save_atomic(path, GOOD)

    with pytest.raises(TypeError):
        save_atomic(path, 12345)  # type: ignore[arg-type]  # write() fails mid-save
    assert path.read_text() == GOOD
    assert [p.name for p in tmp_path.iterdir()] == ["appliance.toml"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args], capture_output=True, text=True, timeout=60
    )


def test_check_config_cli(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(GOOD)
    res = run_cli("check-config", str(good))
    assert res.returncode == 0, res.stderr

    bad = tmp_path / "bad.toml"
    bad.write_text(
        GOOD.replace("fps = 30", "fps = 0").replace(
            'listen = "127.0.0.1:8080"', 'listen = "nowhere"'
        )
    )
    res = run_cli("check-config", str(bad))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert any("video.fps:" in line for line in lines)
    assert any("web.listen:" in line for line in lines)

    res = run_cli("check-config", str(tmp_path / "missing.toml"))
    assert res.returncode == 2 and "cannot read" in res.stderr
