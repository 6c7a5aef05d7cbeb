"""A page's video frame released to the decoder as soon as its last packet arrives, not one frame later.

aiortc's receiver holds each video frame in its jitter buffer until a packet of the next frame arrives (it
knows a frame is complete only by seeing a newer timestamp), so every frame of the page's camera reached the
engine one source frame late: 33 ms at 30 frames a second. The sender marks a frame's last packet (RTP's
marker bit, set by browsers and aiortc alike); this buffer releases a frame as soon as all its packets, up to
the marked one, are in (at the last packet, or at a late one that fills a gap), and otherwise keeps aiortc's
own rule.
"""

from __future__ import annotations

import logging
from typing import Any

from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket

logger = logging.getLogger(__name__)

# aiortc keeps a receiver's jitter buffer private; this is its name in aiortc 1.16 (where a version names it
# otherwise, release_frames_on_marker changes nothing).
_PRIVATE_NAME = "_RTCRtpReceiver__jitter_buffer"


class MarkerJitterBuffer(JitterBuffer):
    """aiortc's video jitter buffer, which also releases a frame at its marked last packet."""

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        pli_flag, frame = super().add(packet)
        return pli_flag, frame if frame is not None else self._marked_frame_in_front()

    def _marked_frame_in_front(self) -> JitterFrame | None:
        """The buffer's first frame, taken out, where its packets are all in, up to the marked last one; else
        None (a packet is missing, or the last one has not come)."""
        packets: list[RtpPacket] = []
        for count in range(self.capacity):
            packet = self._packets[(self._origin + count) % self._capacity]
            if packet is None or (packets and packet.timestamp != packets[0].timestamp):
                return None
            packets.append(packet)
            if packet.marker:
                self.remove(count + 1)
                return JitterFrame(data=b"".join(p._data for p in packets), timestamp=packet.timestamp)
        return None


def release_frames_on_marker(receiver: Any) -> None:
    """Give a video receiver a MarkerJitterBuffer before any packet arrives; where this aiortc keeps its buffer
    otherwise, the receiver is left as it is (one frame later)."""
    current = getattr(receiver, _PRIVATE_NAME, None)
    if type(current) is not JitterBuffer or not current._is_video:
        logger.debug("aiortc's video jitter buffer not found: frames are released one frame later")
        return
    setattr(receiver, _PRIVATE_NAME, MarkerJitterBuffer(capacity=current.capacity, is_video=True))
