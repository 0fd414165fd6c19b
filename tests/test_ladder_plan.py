"""The encode plan: which rung runs on which encoder, and which ladders a board refuses."""

from __future__ import annotations

import time

import pytest

from appliance.board import (
    GENERIC,
    OTHER_PI,
    PI4,
    PI5,
    PROFILES,
    ZERO2W,
    BoardProfile,
    RungPlan,
    plan_encoders,
)
from appliance.capture.pipeline import CapturePipeline
from appliance.config.load import ConfigError, parse
from appliance.config.schema import Config
from appliance.media.bus import MediaBus
from appliance.media.clock import MediaClock
from appliance.status import StatusHub


def rung(name: str, width: int, height: int, kbps: int) -> str:
    return (f'\n[[video.ladder]]\nname = "{name}"\nwidth = {width}\nheight = {height}\n'
            f"bitrate_kbps = {kbps}\n")


def video(*rungs: str, **keys: object) -> str:
    """A config of a [video] table with `keys` and the `rungs`."""
    lines = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in keys.items())
    return '[video]\nsource = "synthetic"\n' + lines + "".join(rungs)


def refusal(text: str, board: BoardProfile) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, board)
    (err,) = info.value.errors
    return err


def kinds(plan: list[RungPlan]) -> list[tuple[str, str]]:
    return [(p.name, p.encoder) for p in plan]


@pytest.mark.parametrize("board", PROFILES.values(), ids=PROFILES.keys())
def test_every_boards_default_fits_it(board: BoardProfile) -> None:
    cfg = parse("", board)
    plan = plan_encoders(cfg.video, board)
    assert [p.name for p in plan] == [r.name for r in board.ladder]
    hw = sum(p.mbps for p in plan if p.encoder == "hardware")
    sw = sum(p.mbps for p in plan if p.encoder == "x264")
    assert hw <= board.hw_mbps
    limit = board.sw_mbps(cfg.video.x264_preset)
    assert limit is None or sw <= limit


def test_pi4_default_top_rung_in_hardware_the_rest_in_x264() -> None:
    cfg = parse("", PI4)
    plan = plan_encoders(cfg.video, PI4)
    assert kinds(plan) == [("1080p", "hardware"), ("720p", "x264"), ("480p", "x264")]
    assert [p.mbps for p in plan] == [244_800, 108_000, 48_600]


def test_pi4_two_1080p_rungs_are_refused_saying_what_fits() -> None:
    text = video(rung("1080p", 1920, 1080, 5000), rung("1080p-lo", 1920, 1080, 2500))
    err = refusal(text, PI4)
    assert err.startswith("video.ladder: the ladder needs 489,600 macroblocks/s")
    assert "245,760 in hardware (used by 1080p)" in err
    assert "~176,000 in software (x264 superfast, an estimate)" in err
    assert "1080p-lo (1920x1080, 244,800) does not fit" in err
    assert "drop 1080p-lo" in err and "lower 1080p-lo to 1600x900 or less" in err
    assert 'set video.x264_preset = "ultrafast"' in err
    line = text.splitlines().index("[[video.ladder]]") + 1  # the ladder's first table
    assert err.endswith(f"(line {line})")
    # What the message offers does fit.
    parse(text.replace('"1080p-lo"\nwidth = 1920\nheight = 1080',
                       '"1080p-lo"\nwidth = 1600\nheight = 900'), PI4)
    parse(video(rung("1080p", 1920, 1080, 5000), rung("1080p-lo", 1920, 1080, 2500),
                x264_preset="ultrafast"), PI4)


def test_pi4_lower_rungs_take_a_second_hardware_session_when_the_budget_allows() -> None:
    cfg = parse(video(rung("720p", 1280, 720, 3000), rung("480p", 854, 480, 1200),
                      rung("360p", 640, 360, 800), width=1280, height=720), PI4)
    assert kinds(plan_encoders(cfg.video, PI4)) == [
        ("720p", "hardware"), ("480p", "hardware"), ("360p", "hardware")]  # 184,200
    # At 60 fps the hardware holds 720p only (216,000); the rest goes to x264.
    cfg = parse(video(rung("720p", 1280, 720, 3000), rung("480p", 854, 480, 1200),
                      width=1280, height=720, fps=60), PI4)
    assert kinds(plan_encoders(cfg.video, PI4)) == [("720p", "hardware"), ("480p", "x264")]


def test_pi4_encoder_choice_and_preset_change_the_plan() -> None:
    cfg = parse(video(rung("720p", 1280, 720, 3000), width=1280, height=720,
                      encoder="x264"), PI4)
    assert kinds(plan_encoders(cfg.video, PI4)) == [("720p", "x264")]
    # The device ladder all in x264 is beyond a Pi 4: "auto" would fit.
    err = refusal(video(encoder="x264"), PI4)
    assert err.startswith("video.ladder:") and "nothing in hardware" in err
    assert 'set video.encoder = "auto"' in err
    # At veryfast the two x264 rungs no longer fit beside the hardware one.
    err = refusal(video(x264_preset="veryfast"), PI4)
    assert "480p (854x480, 48,600) does not fit" in err
    assert "used by 720p" in err and 'set video.x264_preset = "superfast"' in err
    # "hardware" insists on the top rung in hardware: 4K is more than the block can do.
    err = refusal(video(rung("2160p", 3840, 2160, 12000), width=3840, height=2160,
                        encoder="hardware"), PI4)
    assert "2160p (3840x2160, 972,000) does not fit" in err
    assert "lower 2160p to 1920x1080 or less" in err


def test_pi5_encodes_everything_in_software() -> None:
    cfg = parse("", PI5)
    assert kinds(plan_encoders(cfg.video, PI5)) == [
        ("1080p", "x264"), ("720p", "x264"), ("480p", "x264")]
    err = refusal(video(encoder="hardware"), PI5)
    assert err.startswith('video.encoder: this Raspberry Pi 5 has no hardware H.264 encoder')
    err = refusal(video(fps=60), PI5)  # 802,800 at 60 fps, beyond even ultrafast
    assert err.startswith("video.ladder: the ladder needs 802,800 macroblocks/s")
    assert "nothing in hardware + ~480,000 in software" in err
    assert "x264_preset" not in err  # not even ultrafast (750,000) would do
    assert err.endswith("does not fit: drop 1080p; or set video.fps = 30 (line 1)")
    parse(video(fps=30), PI5)


def test_zero2w_default_fits_in_hardware_and_the_device_ladder_does_not() -> None:
    cfg = parse("", ZERO2W)
    assert (cfg.video.width, cfg.video.height) == (1280, 720)
    assert kinds(plan_encoders(cfg.video, ZERO2W)) == [
        ("720p", "hardware"), ("480p", "hardware"), ("360p", "hardware")]
    device = video(*(rung(r.name, r.width, r.height, r.bitrate_kbps) for r in PI4.ladder),
                   width=1920, height=1080)
    parse(device, PI4)
    err = refusal(device, ZERO2W)
    assert "Raspberry Pi Zero 2 W" in err and "720p (1280x720, 108,000) does not fit" in err
    assert kinds(plan_encoders(parse("", OTHER_PI).video, OTHER_PI))[0] == ("720p", "hardware")


def test_generic_has_no_limit_and_no_hardware() -> None:
    six = [rung(f"r{i}", 1920, 1080, 5000) for i in range(6)]
    cfg = parse(video(*six, width=1920, height=1080, fps=60), GENERIC)
    plan = plan_encoders(cfg.video, GENERIC)
    assert {p.encoder for p in plan} == {"x264"} and sum(p.mbps for p in plan) == 2_937_600
    assert refusal(video(encoder="hardware"), GENERIC).startswith("video.encoder:")


def test_the_pipeline_follows_the_plan() -> None:
    """Same config, same board: the pipeline's encoders are the plan's. On a Pi 4 profile
    the hardware encoder is wanted and missing here, which the video status says."""
    text = video(rung("720p", 1280, 720, 3000), rung("360p", 640, 360, 800),
                 width=1280, height=720) + "[audio]\nenabled = false\n"
    for board, expected in ((GENERIC, ["x264", "x264"]), (PI4, ["hardware", "hardware"])):
        cfg = parse(text, board)
        hub, failed = StatusHub(), list[BaseException]()
        pipeline = CapturePipeline(cfg, MediaClock(), MediaBus(), hub, lambda info: None,
                                   failed.append, board=board)
        assert pipeline.plan == plan_encoders(cfg.video, board)
        assert [p.encoder for p in pipeline.plan] == expected
        pipeline.start()
        try:
            deadline = time.monotonic() + 10
            while "encode.360p" not in hub.snapshot()["sections"] and board is GENERIC:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            while "media.video" not in hub.snapshot()["sections"] and board is PI4:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            pipeline.stop()
        sections = hub.snapshot()["sections"]
        assert not failed
        if board is GENERIC:
            assert [sections[f"encode.{n}"]["encoder"] for n in ("720p", "360p")] == expected
        else:
            assert sections["media.video"]["state"] == "no_source"
            assert "hardware H.264 encoder is missing" in sections["media.video"]["error"]


def test_validation_context_picks_the_board() -> None:
    text = video(rung("1080p", 1920, 1080, 5000), rung("1080p-lo", 1920, 1080, 2500),
                 width=1920, height=1080)
    Config.model_validate({"video": {"source": "synthetic"}}, context={"board": PI5})
    cfg = parse(text, GENERIC)  # a development machine takes it
    assert len(cfg.video.ladder) == 2
    with pytest.raises(ValueError, match="video.ladder"):
        Config.model_validate(cfg.model_dump(), context={"board": PI4})
