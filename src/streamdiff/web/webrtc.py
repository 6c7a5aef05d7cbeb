"""WebRTC for the driving page: its source goes up as a video track, the stylized stream comes back as one.

The page's WebSocket still carries controls and reports; only the pictures move. A video codec sends each
frame as its difference from the last, at a bit rate that follows the network (congestion control), where
the WebSocket sends a whole JPEG per frame each way: the transport for a page on another machine.

    page --track--> receive() --> WebStream.submit_video() --> inference thread --> StylizedTrack --> page

aiortc decodes the page's track on a thread of its own (each frame released at its last packet, not when the
next frame begins: frame_release.py) and encodes ours in an executor; the inference thread converts each
frame to RGB, so the event loop only moves frames along.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from streamdiff.app.optional import import_av
from streamdiff.errors import first_line
from streamdiff.web.bridge import WebStream
from streamdiff.web.clients import Client
from streamdiff.web.frame_release import release_frames_on_marker
from streamdiff.web.transport import Transport

logger = logging.getLogger(__name__)

CLOCK_RATE = 90_000  # RTP's video clock, ticks a second


class OfferError(ValueError):
    """An offer the server cannot answer; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class StylizedTrack(MediaStreamTrack):
    """The engine's outputs as a video track: the newest one each time the encoder asks; none is repeated."""

    kind = "video"

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._loop = loop
        self._newest: asyncio.Queue[np.ndarray] = asyncio.Queue(maxsize=1)
        self._start = time.monotonic()
        self._pts = -1

    def offer(self, image: np.ndarray) -> None:
        """An (H, W, 3) uint8 RGB output, from the inference thread."""
        with contextlib.suppress(RuntimeError):  # the loop has closed: the page is gone
            self._loop.call_soon_threadsafe(self._replace, image)

    def _replace(self, image: np.ndarray) -> None:
        if self._newest.full():  # the encoder has not taken the last one: it is skipped, not queued
            self._newest.get_nowait()
        self._newest.put_nowait(image)

    async def recv(self) -> Any:
        if self.readyState != "live":
            raise MediaStreamError
        image = await self._newest.get()
        frame = import_av().VideoFrame.from_ndarray(image, format="rgb24")
        # Presentation times from the wall clock: the page shows each output as it arrives, at the engine's rate.
        self._pts = max(self._pts + 1, int((time.monotonic() - self._start) * CLOCK_RATE))
        frame.pts, frame.time_base = self._pts, fractions.Fraction(1, CLOCK_RATE)
        return frame


class Peers:
    """The WebRTC connections: one per page's WebSocket client (closed with that client), and one per viewer
    that watches over WebRTC (until its connection closes or fails)."""

    def __init__(self, stream: WebStream, transport: Transport) -> None:
        self.stream = stream
        self.configuration = RTCConfiguration(iceServers=[
            RTCIceServer(urls=s.url, username=s.username, credential=s.credential) for s in transport.ice_servers])
        self._connections: dict[int, RTCPeerConnection] = {}

    async def answer(self, message: Any) -> dict[str, str]:
        """The server's answer to a page's offer: {"sdp": ..., "type": "answer"}."""
        sdp, client = _check_offer(message)
        current = self.stream.current(client)
        if current is None:
            raise OfferError("this page does not drive the stream (another page took over, or it reconnected); "
                             "reload it", status=409)
        await self.close_client(client)
        connection = RTCPeerConnection(self.configuration)
        _wire(connection, current, self.stream, StylizedTrack(asyncio.get_running_loop()))

        def check() -> None:  # the page's track arrived with the offer (and _wire answered it with ours)
            if not any(t.receiver.track is not None and t.receiver.track.kind == "video"
                       for t in connection.getTransceivers()):
                raise OfferError("the offer has no video track: expected the page's camera, screen or file as one")

        answer = await _answer(connection, sdp, check)
        self._connections[client] = connection
        return answer

    async def answer_viewer(self, message: Any) -> dict[str, str]:
        """The server's answer to a viewer's offer (it receives the output only): {"sdp": ..., "type": "answer"}."""
        if not isinstance(message, dict) or message.get("type") != "offer" or not isinstance(message.get("sdp"), str):
            raise OfferError('expected {"type": "offer", "sdp": <session description>}')
        connection = RTCPeerConnection(self.configuration)
        output = StylizedTrack(asyncio.get_running_loop())

        def add_output() -> None:
            if not any(t.kind == "video" for t in connection.getTransceivers()):
                raise OfferError("the offer has no video: expected a viewer's offer to receive one")
            connection.addTrack(output)

        answer = await _answer(connection, message["sdp"], add_output)
        viewer = self.stream.watch_video(output.offer)
        self._connections[viewer.id] = connection

        @connection.on("connectionstatechange")
        async def on_state() -> None:
            if connection.connectionState in ("failed", "closed"):
                self.stream.unwatch(viewer)
                await self.close_client(viewer.id)

        return answer

    async def close_client(self, client: int) -> None:
        connection = self._connections.pop(client, None)
        if connection is not None:
            await connection.close()

    async def close(self) -> None:
        for client in list(self._connections):
            await self.close_client(client)

    def count(self) -> int:
        return len(self._connections)


async def _answer(connection: RTCPeerConnection, sdp: str, prepare: Callable[[], None]) -> dict[str, str]:
    """Take the offer, let `prepare` check it (OfferError) and add what goes back, and answer; a connection
    that cannot answer is closed."""
    try:
        await connection.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        prepare()
        await connection.setLocalDescription(await connection.createAnswer())
    except OfferError:
        await connection.close()
        raise
    except (ValueError, AssertionError, AttributeError, KeyError) as exc:  # aiortc's parser asserts, too
        await connection.close()
        raise OfferError(f"cannot use the offer's session description ({first_line(exc)})") from None
    return {"sdp": connection.localDescription.sdp, "type": connection.localDescription.type}


def _check_offer(message: Any) -> tuple[str, int]:
    if (not isinstance(message, dict) or message.get("type") != "offer" or not isinstance(message.get("sdp"), str)
            or not isinstance(message.get("client"), int) or isinstance(message.get("client"), bool)):
        raise OfferError('expected {"type": "offer", "sdp": <session description>, "client": <the page\'s client '
                         'number from its WebSocket state>}')
    return message["sdp"], message["client"]


def _wire(connection: RTCPeerConnection, client: Client, stream: WebStream, output: StylizedTrack) -> None:
    """The page's video track feeds the stream; the stylized track goes back on the same transceiver."""

    @connection.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        if track.kind != "video" or any(sender.track is output for sender in connection.getSenders()):
            return  # audio, or a second video track: the page sends one source
        for transceiver in connection.getTransceivers():
            if transceiver.receiver.track is track:  # before the first packet: the track comes with the offer
                release_frames_on_marker(transceiver.receiver)
        connection.addTrack(output)
        task = asyncio.ensure_future(_receive(track, client, stream, output))
        connection.on("connectionstatechange", lambda: _on_state(connection, task))


def _on_state(connection: RTCPeerConnection, task: asyncio.Future[None]) -> None:
    if connection.connectionState in ("failed", "closed"):
        task.cancel()
        logger.info("a page's WebRTC connection %s", connection.connectionState)


async def _receive(track: MediaStreamTrack, client: Client, stream: WebStream, output: StylizedTrack) -> None:
    """Every decoded frame of the page's track goes to the stream (which keeps only the newest)."""
    with contextlib.suppress(MediaStreamError):
        while True:
            frame = await track.recv()
            stream.submit_video(client, frame, output.offer)
