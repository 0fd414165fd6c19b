"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest

from appliance.package.store import SegmentStore
from tests.hls_feeder import VIDEO_360, VIDEO_720, Feeder


@pytest.fixture
async def fed() -> Feeder:
    """A store with two video rungs and audio, fed with 20 s of parts."""
    feeder = Feeder(SegmentStore(), videos=(VIDEO_720, VIDEO_360))
    feeder.advance_to(20.1)
    return feeder
