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


def run_cli(*args: str, board: str | None = None) -> subprocess.CompletedProcess[str]:
    """`appliance ARGS` as on the board `board` (APPLIANCE_BOARD), default this machine."""
    env = {k: v for k, v in os.environ.items() if k != "APPLIANCE_BOARD"}
    if board:
        env["APPLIANCE_BOARD"] = board
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args], capture_output=True, text=True, timeout=60,
        env=env,
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


def test_cross_field_errors_name_their_own_key_and_line() -> None:
    text = GOOD.replace("width = 1280\nheight = 720\nbitrate",
                        "width = 1920\nheight = 1080\nbitrate")
    (err,) = errors_of(text)
    line = text.splitlines().index("[[video.ladder]]") + 1
    assert err == (f"video.ladder[0]: 720p (1920x1080) is larger than the capture size "
                   f"1280x720 (line {line})")
    text = GOOD.replace("segment_s = 2.0\npart_s = 0.2", "segment_s = 1.0\npart_s = 0.8")
    (err,) = errors_of(text)
    line = text.splitlines().index("part_s = 0.8") + 1
    assert err.startswith("packager.part_s: must be at most half")
    assert err.endswith(f"(line {line})")


TWO_1080P = GOOD.replace(
    "width = 1280\nheight = 720\nfps", "width = 1920\nheight = 1080\nfps"
).replace(
    """name = "720p"
width = 1280
height = 720
bitrate_kbps = 3000
""", """name = "1080p"
width = 1920
height = 1080
bitrate_kbps = 5000

[[video.ladder]]
name = "1080p-lo"
width = 1920
height = 1080
bitrate_kbps = 2500
""")


def test_check_config_refuses_a_ladder_the_board_cannot_encode(tmp_path: Path) -> None:
    path = tmp_path / "two-1080p.toml"
    path.write_text(TWO_1080P)
    line = TWO_1080P.splitlines().index("[[video.ladder]]") + 1

    res = run_cli("check-config", str(path), board="generic")  # a PC encodes anything
    assert res.returncode == 0, res.stderr
    assert "OK for a development machine" in res.stdout

    res = run_cli("check-config", str(path), board="pi4")
    assert res.returncode == 2
    (err,) = res.stderr.strip().splitlines()
    assert err.startswith(f"{path}: video.ladder: the ladder needs 489,600 macroblocks/s")
    assert "this Raspberry Pi 4 encodes 245,760 in hardware" in err
    assert "1080p-lo (1920x1080, 244,800) does not fit: drop 1080p-lo" in err
    assert err.endswith(f"(line {line})")

    # --board checks for a board other than this one; it wins over APPLIANCE_BOARD.
    res = run_cli("check-config", "--board", "pi5", str(path), board="generic")
    assert res.returncode == 2 and "this Raspberry Pi 5 encodes nothing in hardware" in res.stderr

    hw = tmp_path / "hw.toml"
    hw.write_text(GOOD.replace("fps = 30", 'fps = 30\nencoder = "hardware"'))
    res = run_cli("check-config", str(hw), board="pi5")
    assert res.returncode == 2
    line = GOOD.splitlines().index("fps = 30") + 2
    assert f'video.encoder: this Raspberry Pi 5 has no hardware H.264 encoder: use "auto" or ' \
           f'"x264" (line {line})' in res.stderr
    assert run_cli("check-config", str(hw), board="pi4").returncode == 0


def test_check_config_names_a_bad_board_override(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(GOOD)
    res = run_cli("check-config", str(good), board="pi3")
    assert res.returncode == 2 and "APPLIANCE_BOARD='pi3': not one of" in res.stderr
