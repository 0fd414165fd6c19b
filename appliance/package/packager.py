"""One CMAF muxer per track, fed in the capture thread (a bus tap); parts go to the store
on the event loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from appliance.config.schema import Packager as PackagerConfig
from appliance.media.bus import MediaBus
from appliance.media.packet import EncodedPacket, TrackInfo
from appliance.package.cmaf import CmafMuxer, MuxedPart
from appliance.package.store import SegmentStore, TrackStore
from appliance.status import StatusHub

log = logging.getLogger(__name__)


class TrackPackager:
    def __init__(self, info: TrackInfo, cfg: PackagerConfig, bus: MediaBus, store: SegmentStore,
                 hub: StatusHub, loop: asyncio.AbstractEventLoop,
                 on_fatal: Callable[[BaseException], None], first_msn: int = 0):
        """`on_fatal` is called from the capture thread: it must be thread-safe."""
        self.info = info
        self.bus = bus
        self.store = store
        self.hub = hub
        self.loop = loop
        self.on_fatal = on_fatal
        self.muxer = CmafMuxer(info, cfg.part_s, cfg.segment_s)
        self.track = TrackStore(info, cfg.part_s, cfg.segment_s, cfg.window_s, first_msn)
        self.parts = 0
        self._init_sent = False
        self._failed = False
        self._untap: Callable[[], None] | None = None

    def start(self) -> None:
        self._untap = self.bus.tap(self.info.name, self._feed)

    def stop(self) -> None:
        if self._untap is not None:
            self._untap()
            self._untap = None

    def _feed(self, pkt: EncodedPacket) -> None:
        """On the capture thread that published `pkt` (a bus tap)."""
        if self._failed:
            return
        try:
            parts = self.muxer.feed(pkt)
        except Exception as exc:  # a muxer failure is a bug: end the daemon loudly
            self._failed = True
            log.exception("packager %s failed", self.info.name)
            self.on_fatal(exc)
            return
        if not self._init_sent and self.muxer.init is not None:
            # call_soon_threadsafe keeps order: the init lands before any part.
            self.loop.call_soon_threadsafe(self._publish_init, self.muxer.init)
            self._init_sent = True
        for part in parts:
            self.loop.call_soon_threadsafe(self._publish_part, part)

    # -- on the event loop ----------------------------------------------------------

    def _publish_init(self, init: bytes) -> None:
        if self.track.init is None:
            self.track.set_init(init)
            self.store.add_track(self.track)

    def _publish_part(self, part: MuxedPart) -> None:
        self.track.add_part(part.data, part.start, part.duration, part.independent,
                            part.new_segment, part.wall_ns)
        self.parts += 1
        self.hub.update(f"package.{self.info.name}", parts=self.parts,
                        bytes=self.track.bytes_total,
                        live_edge_s=round(part.start + part.duration, 3))
