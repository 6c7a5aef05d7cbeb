"""WebRTC: a page's video track in, the stylized track out, on the real server app and the tiny engine.

The page is an aiortc peer in the test's own event loop; the server's peer runs on the test client's loop,
and the two meet over the loopback interface as a browser and the server would.
"""

from __future__ import annotations

import asyncio
import gc
import json
import statistics
import time

import numpy as np
import pytest

pytest.importorskip("aiortc")
av = pytest.importorskip("av")

from aiortc import RTCPeerConnection, RTCSessionDescription, VideoStreamTrack  # noqa: E402
from polling import wait_until  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402
from test_server import frame, next_output  # noqa: E402

from streamdiff.app.frames import Frame  # noqa: E402
from streamdiff.stream import StreamPipeline  # noqa: E402
from streamdiff.web import protocol  # noqa: E402
from streamdiff.web.server import create_app  # noqa: E402
from streamdiff.web.transport import Transport, TransportMode  # noqa: E402
from streamdiff.web.webrtc import Peers  # noqa: E402

pytestmark = pytest.mark.timeout(120)
WEBRTC = Transport(TransportMode.WEBRTC, webrtc=True)


class MovingBars(VideoStreamTrack):
    """A camera as a page would send it: 320x240 frames of a bar that moves, at 30 a second."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    async def recv(self):
        pts, time_base = await self.next_timestamp()
        self.sent += 1
        image = np.full((240, 320, 3), 40, np.uint8)
        image[:, (self.sent * 8) % 320:][:, :40] = (220, 120, 30)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


@pytest.fixture(autouse=True)
def _collect_connections():
    """aiortc's closed connections leave objects with finalizers; collected later, at an arbitrary moment,
    they can run inside CPython 3.11's AST builder (as when pytest rewrites a module it imports at the end
    of the run) and break it with "AST constructor recursion depth mismatch". Collect them here instead."""
    yield
    gc.collect()


@pytest.fixture
def app(stream):
    stream.transport = WEBRTC
    peers = Peers(stream, WEBRTC)
    with TestClient(create_app(stream, peers)) as client:
        yield client, peers


async def over_webrtc(client: TestClient, path: str, offer: dict, source, until, outputs: list[np.ndarray]) -> None:
    """Offer to `path` (with `offer`'s fields): send `source` and receive (None: receive only), keep every frame
    the server's track sends until `until()`, run in a thread, returns."""
    connection = RTCPeerConnection()

    @connection.on("track")
    def on_track(track) -> None:
        async def keep() -> None:
            while True:
                outputs.append((await track.recv()).to_ndarray(format="rgb24"))

        asyncio.ensure_future(keep())

    if source is None:
        connection.addTransceiver("video", direction="recvonly")
    else:
        connection.addTransceiver(source, direction="sendrecv")
    await connection.setLocalDescription(await connection.createOffer())
    offer = {**offer, "sdp": connection.localDescription.sdp, "type": "offer"}
    response = await asyncio.to_thread(client.post, path, json=offer)
    assert response.status_code == 200, response.text
    await connection.setRemoteDescription(RTCSessionDescription(**response.json()))
    try:
        await asyncio.to_thread(until)
    finally:
        await connection.close()


def test_a_pages_video_track_comes_back_stylized_on_the_servers_track(app, stream):
    client, peers = app
    outputs: list[np.ndarray] = []
    with client.websocket_connect("/ws") as ws:
        state = ws.receive_json()
        assert state["transport"] == {"webrtc": True, "prefer": "webrtc", "ice_servers": []}
        asyncio.run(over_webrtc(client, "/api/webrtc/offer", {"client": state["client"]}, MovingBars(),
                                lambda: time.sleep(6.0), outputs))
        assert peers.count() == 1
    assert peers.count() == 0  # closed with the page's WebSocket
    assert len(outputs) >= 10, f"{len(outputs)} frames came back in 6 s"
    assert all(image.shape == (64, 64, 3) for image in outputs)
    assert stream.counts.stylized >= len(outputs) and stream.counts.received >= stream.counts.stylized
    # Stylized: neither the flat background nor the bars' two colours, and it changes as the bar moves.
    assert outputs[-1].std() > 1 and np.abs(outputs[-1].astype(int) - outputs[-5].astype(int)).mean() > 0.5


class OneFrame(MovingBars):
    """A page whose camera gives one frame and then none."""

    async def recv(self):
        if self.sent:
            await asyncio.Future()  # never done: no second frame follows
        return await super().recv()


def test_a_pages_frame_reaches_the_stream_without_waiting_for_the_next_frame(app, stream):
    client, _ = app
    with client.websocket_connect("/ws") as ws:
        state = ws.receive_json()
        asyncio.run(over_webrtc(client, "/api/webrtc/offer", {"client": state["client"]}, OneFrame(),
                                lambda: wait_until(lambda: stream.counts.received >= 1, "the page's one frame", 15),
                                []))
    assert stream.counts.received == 1


def test_a_video_frame_is_answered_with_the_engines_own_output_and_viewers_get_a_jpeg(
        stream, tiny_pipe_factory, start_web_stream):
    picture = np.random.default_rng(3).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    engine = StreamPipeline.from_diffusers(tiny_pipe_factory(), width=64, height=64, strength=0.6, steps=2, seed=1,
                                           fit="crop", device="cpu")
    engine.prepare("a watercolor")
    reference = start_web_stream(engine)
    reference.close()  # the same engine, driven directly: the output the track must carry
    reference.runner.apply(reference.controls)
    expected = [reference.runner.step(Frame(picture, "rgb", i, 0.0), False).image for i in (1, 2, 3)]

    answered: list[np.ndarray] = []
    viewed: list[bytes] = []
    on_socket: list[object] = []
    page = stream.connect(on_socket.append)
    stream.watch(viewed.append)
    for _ in expected:
        before = len(answered)
        stream.submit_video(page, av.VideoFrame.from_ndarray(picture, format="rgb24"), answered.append)
        wait_until(lambda: len(answered) > before, "the inference thread to answer")
    assert all(np.array_equal(got, want) for got, want in zip(answered, expected, strict=True))
    assert len(viewed) == 3 and protocol.HEADER_OUT.unpack_from(viewed[-1])[0] == 3
    assert on_socket == []  # the page's outputs went to its track, not its WebSocket


def test_offers_that_cannot_be_answered_say_why(app):
    client, peers = app
    with client.websocket_connect("/ws") as ws:
        number = ws.receive_json()["client"]
        bad = client.post("/api/webrtc/offer", content=b"not json", headers={"Content-Type": "application/json"})
        assert (bad.status_code, bad.json()["error"]) == (400, "expected a JSON offer")
        missing = client.post("/api/webrtc/offer", json={"type": "offer", "sdp": "v=0"})
        assert missing.status_code == 400 and '"client": <the page\'s client number' in missing.json()["error"]
        other = client.post("/api/webrtc/offer", json={"type": "offer", "sdp": "v=0", "client": number + 1})
        assert other.status_code == 409 and "does not drive the stream" in other.json()["error"]
        audio = client.post("/api/webrtc/offer", json={"type": "offer", "sdp": "no video here", "client": number})
        assert audio.status_code == 400 and audio.json()["error"].startswith("the offer has no video track")
        broken = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n"
        garbage = client.post("/api/webrtc/offer", json={"type": "offer", "sdp": broken, "client": number})
        assert garbage.status_code == 400, garbage.text
        assert garbage.json()["error"] == ("cannot use the offer's session description (ValueError: ICE username "
                                           "fragment or password is missing)")
        viewer = client.post("/api/webrtc/view", json={"type": "answer"})
        assert viewer.status_code == 400 and viewer.json()["error"].startswith('expected {"type": "offer"')
        silent = client.post("/api/webrtc/view", json={"type": "offer", "sdp": "no video here"})
        assert silent.status_code == 400 and "the offer has no video" in silent.json()["error"]
        assert peers.count() == 0


def test_a_viewer_over_webrtc_gets_what_the_driving_page_gets(app, stream):
    client, peers = app
    outputs: list[np.ndarray] = []
    pages: list[np.ndarray] = []

    def drive() -> None:  # a WebSocket page sends pictures once the viewer's track is up
        deadline = time.monotonic() + 30
        while not peers.count() or stream.state()["viewers"] != 1:
            assert time.monotonic() < deadline, "the viewer did not connect"
            time.sleep(0.05)  # the viewer connects on another loop: nothing to wait on here
        with client.websocket_connect("/ws") as ws:
            ws.receive_json()
            for sequence in range(1, 16):
                ws.send_bytes(frame(sequence))
                pages.append(next_output(ws)[2])
            while len(outputs) < 5 and time.monotonic() < deadline:
                time.sleep(0.05)

    asyncio.run(over_webrtc(client, "/api/webrtc/view", {}, None, drive, outputs))
    assert len(pages) == 15 and len(outputs) >= 5, f"{len(outputs)} frames reached the viewer"
    assert all(image.shape == (64, 64, 3) for image in outputs)
    # The viewer's frames are the page's pictures, through two lossy codecs (the page's JPEG, the track's VP8).
    nearest = [min(np.abs(image.astype(int) - page.astype(int)).mean() for page in pages) for image in outputs]
    assert statistics.median(nearest) < 12, nearest
    wait_until(lambda: stream.state()["viewers"] == 0 and peers.count() == 0, "the viewer's connection to close")


def test_a_server_without_webrtc_says_so_to_an_offer(stream):
    with TestClient(create_app(stream)) as client:
        with client.websocket_connect("/ws") as ws:
            state = ws.receive_json()
            assert state["transport"]["webrtc"] is False
            response = client.post("/api/webrtc/offer", data=json.dumps({"type": "offer"}))
    assert response.status_code == 404 and "WebRTC is off on this server" in response.json()["error"]
