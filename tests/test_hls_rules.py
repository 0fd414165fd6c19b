"""The LL-HLS rule checker (tests/hls_rules.py) flags broken playlists: a checker that
passes everything would prove nothing in the end-to-end tests."""

from __future__ import annotations

import re

from appliance.package import hls
from tests.hls_feeder import Feeder, media, segments_of, tag_values
from tests.hls_rules import check_media_playlist, check_multivariant


async def test_checker_flags_broken_playlists(fed: Feeder) -> None:
    good = media(fed.store, "720p")
    assert check_media_playlist(good) == []
    first_part = tag_values(good, "#EXT-X-PART")[0]
    cases = {
        "part over PART-TARGET": good.replace(first_part,
                                              first_part.replace("DURATION=0.2", "DURATION=0.25")),
        "hold back": good.replace("PART-HOLD-BACK=0.6", "PART-HOLD-BACK=0.5"),
        "no PDT": good.replace("#EXT-X-PROGRAM-DATE-TIME:", "#X:", 1),
        "target": good.replace("#EXT-X-TARGETDURATION:1", "#EXT-X-TARGETDURATION:0"),
        "skip boundary": good.replace("CAN-SKIP-UNTIL=6.0", "CAN-SKIP-UNTIL=5.0"),
        "no hint": "\n".join(x for x in good.splitlines() if "PRELOAD-HINT" not in x),
        "version": good.replace("#EXT-X-VERSION:9", "#EXT-X-VERSION:5"),
        "no map": good.replace('#EXT-X-MAP:URI="init.mp4"\n', ""),
        "extinf above target": good.replace("#EXTINF:1.0,", "#EXTINF:1.6,", 1),
    }
    for label, text in cases.items():
        assert check_media_playlist(text), label
    # parts on an old segment only (not a suffix)
    listed = segments_of(good)
    old = listed[0].uri
    parted = good.replace(f"#EXTINF:1.0,\n{old}", f'#EXT-X-PART:DURATION=0.2,URI="x.m4s"\n'
                          f"#EXTINF:1.0,\n{old}", 1)
    assert any("suffix" in e or "3 target" in e for e in check_media_playlist(parted))


async def test_checker_flags_broken_multivariant(fed: Feeder) -> None:
    good = hls.render_multivariant(fed.store) or ""
    assert check_multivariant(good) == []
    cases = {
        "no independent": good.replace("#EXT-X-INDEPENDENT-SEGMENTS\n", ""),
        "frame rate": good.replace("FRAME-RATE=30.000", "FRAME-RATE=30"),
        "audio codec": good.replace(",mp4a.40.2", "", 1),
        "undefined group": good.replace('GROUP-ID="audio"', 'GROUP-ID="aac"'),
        "default w/o autoselect": good.replace("AUTOSELECT=YES", "AUTOSELECT=NO"),
        "average above peak": re.sub(r"AVERAGE-BANDWIDTH=\d+", "AVERAGE-BANDWIDTH=999999999",
                                     good, count=1),
        "missing uri": good.replace("720p/index.m3u8\n", ""),
    }
    for label, text in cases.items():
        assert check_multivariant(text), label
