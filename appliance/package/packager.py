"""Runs one CMAF muxer per track on its own thread and publishes the parts to the store."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from appliance.config.schema import Packager as PackagerConfig
from appliance.media.bus import MediaBus, Subscription
from appliance.media.packet import TrackInfo
from appliance.package.cmaf import CmafMuxer, MuxedPart
from appliance.package.store import SegmentStore, TrackStore
from appliance.status import StatusHub

log = logging.getLogger(__name__)


class TrackPackager:
    def __init__(self, info: TrackInfo, cfg: PackagerConfig, bus: MediaBus, store: SegmentStore,
                 hub: StatusHub, loop: asyncio.AbstractEventLoop,
                 on_fatal: Callable[[BaseException], None], first_msn: int = 0):
        self.info = info
        self.store = store
        self.hub = hub
        self.loop = loop
        self.on_fatal = on_fatal
        self.muxer = CmafMuxer(info, cfg.part_s, cfg.segment_s)
        self.track = TrackStore(info, cfg.part_s, cfg.segment_s, cfg.window_s, first_msn)
        self.sub: Subscription = bus.subscribe({info.name}, maxlen=int(10 * cfg.segment_s * 60))
        self.parts = 0
        self._thread = threading.Thread(target=self._run, name=f"package-{info.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.sub.close()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        init_sent = False
        try:
            while True:
                pkt = self.sub.get()
                if pkt is None:
                    if self.sub.closed:
                        return
                    continue
                parts = self.muxer.feed(pkt)
                if not init_sent and self.muxer.init is not None:
                    # call_soon_threadsafe keeps order: the init lands before any part.
                    self.loop.call_soon_threadsafe(self._publish_init, self.muxer.init)
                    init_sent = True
                for part in parts:
                    self.loop.call_soon_threadsafe(self._publish_part, part)
        except Exception as exc:  # a muxer failure is a bug: end the daemon loudly
            log.exception("packager %s failed", self.info.name)
            self.loop.call_soon_threadsafe(self.on_fatal, exc)

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
                        bytes=self.track.bytes_total, dropped=self.sub.dropped,
                        live_edge_s=round(part.start + part.duration, 3))
