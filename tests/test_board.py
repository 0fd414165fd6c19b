"""Board detection from the device tree, the profiles, and the default ladders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.board import (
    GENERIC,
    OTHER_PI,
    PI4,
    PI5,
    PROFILES,
    ZERO2W,
    BoardError,
    BoardProfile,
    board_from_device_tree,
    default_ladder,
    macroblocks_per_s,
    read_board,
)

ROOT = Path(__file__).resolve().parents[1]

# (model, compatible) as the kernel exposes them on each board.
BOARDS = [
    ("Raspberry Pi 4 Model B Rev 1.4", "raspberrypi,4-model-b brcm,bcm2711", PI4),
    ("Raspberry Pi 400 Rev 1.0", "raspberrypi,400 brcm,bcm2711", PI4),
    ("Raspberry Pi Compute Module 4 Rev 1.0", "raspberrypi,4-compute-module brcm,bcm2711", PI4),
    ("Raspberry Pi 5 Model B Rev 1.0", "raspberrypi,5-model-b brcm,bcm2712", PI5),
    ("Raspberry Pi Compute Module 5 Rev 1.0", "raspberrypi,5-compute-module brcm,bcm2712", PI5),
    ("Raspberry Pi Zero 2 W Rev 1.0", "raspberrypi,model-zero-2-w brcm,bcm2837", ZERO2W),
    ("Raspberry Pi 3 Model B Plus Rev 1.3", "raspberrypi,3-model-b-plus brcm,bcm2837", OTHER_PI),
    ("Raspberry Pi Zero W Rev 1.1", "raspberrypi,model-zero-w brcm,bcm2835", OTHER_PI),
    ("Pine64 RockPro64 v2.1", "pine64,rockpro64-v2.1 rockchip,rk3399", GENERIC),
    ("", "", GENERIC),  # no device tree: a PC
]


@pytest.mark.parametrize(("model", "compatible", "board"), BOARDS)
def test_board_from_device_tree(model: str, compatible: str, board: BoardProfile) -> None:
    assert board_from_device_tree(model, compatible.split()) is board


def _tree(root: Path, model: str, compatible: str) -> Path:
    """A device tree directory as /proc/device-tree has it: NUL-terminated strings."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "model").write_bytes(model.encode() + b"\0")
    (root / "compatible").write_bytes(b"".join(c.encode() + b"\0" for c in compatible.split()))
    return root


def test_read_board_reads_the_nul_separated_properties(tmp_path: Path) -> None:
    for i, (model, compatible, board) in enumerate(BOARDS[:-1]):
        assert read_board(_tree(tmp_path / str(i), model, compatible)) is board, model
    # Model string alone (an older tree without compatible): still the right board.
    only_model = tmp_path / "model-only"
    only_model.mkdir()
    (only_model / "model").write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\0")
    assert read_board(only_model) is PI5
    assert read_board(tmp_path / "absent") is GENERIC


def test_override_wins_and_a_bad_one_says_what_is_allowed(tmp_path: Path) -> None:
    tree = _tree(tmp_path, *BOARDS[0][:2])
    assert read_board(tree, "zero2w") is ZERO2W
    with pytest.raises(BoardError, match=r"APPLIANCE_BOARD='pi3'.*pi4, pi5, zero2w, pi, generic"):
        read_board(tree, "pi3")


def _python(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "APPLIANCE_BOARD"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=ROOT, env={**clean, **env}, timeout=60).stdout.strip()


def test_nothing_is_read_at_import_and_detection_honours_the_override() -> None:
    imports = ("import appliance.board as b, appliance.config.schema, "
               "appliance.capture.pipeline, appliance.daemon; ")
    assert _python(imports + "print(b.detect_board.cache_info().misses)") == "0"
    assert _python(imports + "print(b.detect_board().key)", APPLIANCE_BOARD="pi5") == "pi5"
    # The defaults of a config follow the detected board.
    code = ("from appliance.config.schema import Config; v = Config().video; "
            "print(v.width, v.height, v.x264_preset, *[r.name for r in v.ladder])")
    assert _python(code, APPLIANCE_BOARD="pi4") == "1920 1080 superfast 1080p 720p 480p"
    assert _python(code, APPLIANCE_BOARD="generic") == "1280 720 veryfast 720p 480p 360p"


def test_profiles_defaults() -> None:
    assert [r.name for r in PI4.ladder] == [r.name for r in PI5.ladder] == [
        "1080p", "720p", "480p"]
    assert PI4.capture == PI5.capture == (1920, 1080)
    assert [r.name for r in GENERIC.ladder] == ["720p", "480p", "360p"]
    assert GENERIC.capture == (1280, 720) and not GENERIC.device
    assert [r.name for r in ZERO2W.ladder] == ["720p", "480p", "360p"]
    for board in PROFILES.values():
        w, h = board.capture
        rungs = board.ladder
        assert all(r.width <= w and r.height <= h for r in rungs), board.key
        assert all(r.width % 2 == 0 and r.height % 2 == 0 for r in rungs)
        assert all(abs(r.width / r.height - 16 / 9) < 0.01 for r in rungs)
        # Each rung is worth switching to: at least 1.5x the bitrate of the next one.
        pairs = zip(rungs, rungs[1:], strict=False)
        assert all(a.bitrate_kbps >= 1.5 * b.bitrate_kbps for a, b in pairs)


def test_hardware_budget_is_one_1080p30_on_videocore_and_none_on_pi5() -> None:
    assert macroblocks_per_s(1920, 1080, 30) == 244_800  # 120 x 68 macroblocks, 30 times
    for board in (PI4, ZERO2W, OTHER_PI):
        assert macroblocks_per_s(1920, 1080, 30) <= board.hw_mbps < macroblocks_per_s(
            1920, 1080, 31)
    assert PI5.hw_mbps == 0 and GENERIC.hw_mbps == 0


def test_software_budget_follows_the_preset() -> None:
    assert GENERIC.sw_mbps("medium") is None  # a development machine: no limit
    for board in (PI4, PI5, ZERO2W, OTHER_PI):
        speeds = [board.sw_mbps(p) or 0 for p in
                  ("medium", "fast", "faster", "veryfast", "superfast", "ultrafast")]
        assert speeds == sorted(speeds) and len(set(speeds)) == 6, board.key
    # The Pi 5's CPU is the fastest, the Zero 2 W's the slowest.
    veryfast = [b.sw_mbps("veryfast") or 0 for b in (PI5, PI4, ZERO2W)]
    assert veryfast == sorted(veryfast, reverse=True) and veryfast[-1] > 0


def test_default_ladder_follows_the_capture_size() -> None:
    assert default_ladder(PI4, 1920, 1080) == list(PI4.ladder)
    assert [r.name for r in default_ladder(PI4, 1280, 720)] == ["720p", "480p"]
    (only,) = default_ladder(GENERIC, 320, 240)  # smaller than any default rung
    assert (only.name, only.width, only.height) == ("240p", 320, 240)
    assert 100 <= only.bitrate_kbps < 800
