"""A page's video frame goes to the decoder at its last packet: the buffer alone, and a page that sends one frame."""

from __future__ import annotations

import pytest

pytest.importorskip("aiortc")

from aiortc.rtp import RtpPacket  # noqa: E402

from streamdiff.web.frame_release import MarkerJitterBuffer  # noqa: E402


def packet(sequence: int, timestamp: int, marker: bool = False) -> RtpPacket:
    made = RtpPacket(sequence_number=sequence, timestamp=timestamp, marker=int(marker))
    made._data = sequence.to_bytes(2, "big")  # what the receiver's depayloader leaves on each packet
    return made


def data(*sequences: int) -> bytes:
    return b"".join(sequence.to_bytes(2, "big") for sequence in sequences)


def added(buffer: MarkerJitterBuffer, packets: list[RtpPacket]) -> list[tuple[int, bytes]]:
    """(timestamp, data) of every frame the buffer releases, in order."""
    return [(frame.timestamp, frame.data) for frame in (buffer.add(p)[1] for p in packets) if frame is not None]


def test_a_frame_is_released_at_its_marked_last_packet_and_only_once():
    buffer = MarkerJitterBuffer(capacity=128, is_video=True)
    assert buffer.add(packet(100, 9000))[1] is None and buffer.add(packet(101, 9000))[1] is None
    frame = buffer.add(packet(102, 9000, marker=True))[1]
    assert frame is not None and (frame.timestamp, frame.data) == (9000, data(100, 101, 102))
    # The next frame's packets: the first one must not release the frame above a second time.
    assert added(buffer, [packet(103, 12000), packet(104, 12000, marker=True)]) == [(12000, data(103, 104))]


def test_a_frame_with_a_missing_packet_is_released_when_the_packet_comes_late():
    buffer = MarkerJitterBuffer(capacity=128, is_video=True)
    assert added(buffer, [packet(200, 9000), packet(202, 9000, marker=True)]) == []  # 201 not in yet
    assert added(buffer, [packet(201, 9000)]) == [(9000, data(200, 201, 202))]  # reordered, or retransmitted


def test_a_frame_whose_last_packet_is_lost_goes_when_the_next_frame_begins_as_in_aiortc():
    buffer = MarkerJitterBuffer(capacity=128, is_video=True)
    assert added(buffer, [packet(300, 9000), packet(301, 9000)]) == []  # 302, the marked one, never comes
    assert added(buffer, [packet(302, 12000)]) == [(9000, data(300, 301))]
