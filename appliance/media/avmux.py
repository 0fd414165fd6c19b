"""The two steps every libavformat muxer of ours shares: a stream per track, packets in.

The CMAF packager, the uplinks (FLV, MPEG-TS) and the recorder all mux encoded
packets without re-encoding; they describe tracks and hand packets over the same way.
"""

from __future__ import annotations

import av
from av.container import OutputContainer
from av.stream import Stream

from appliance.media.packet import EncodedPacket, TrackInfo


def add_track_stream(container: OutputContainer, info: TrackInfo) -> Stream:
    """An output stream for `info`'s packets (H.264 Annex B or raw AAC)."""
    if info.kind == "video":
        stream: Stream = container.add_mux_stream(
            "h264", rate=info.fps, width=info.width, height=info.height
        )
    else:
        # The aac "encoder" here is never fed; opening it gives the muxer the
        # AudioSpecificConfig.
        audio = container.add_stream("aac", rate=info.sample_rate)
        audio.codec_context.layout = "stereo" if info.channels == 2 else "mono"
        audio.codec_context.bit_rate = info.bitrate
        stream = audio
    stream.time_base = info.time_base
    return stream


def mux_packet(container: OutputContainer, stream: Stream, pkt: EncodedPacket,
               offset: int = 0) -> None:
    """Mux `pkt` into `stream`, its timestamps moved back by `offset` (in its time base)."""
    av_pkt = av.Packet(pkt.data)
    av_pkt.pts, av_pkt.dts = pkt.pts - offset, pkt.dts - offset
    av_pkt.duration = pkt.duration
    av_pkt.time_base = pkt.time_base
    av_pkt.is_keyframe = pkt.keyframe
    av_pkt.stream = stream
    container.mux_one(av_pkt)
