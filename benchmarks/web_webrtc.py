"""The web page's path over WebRTC: `streamdiff web`'s server, driven by an aiortc peer as a page would drive it.

The server is web_roundtrip.py's (uvicorn on a thread of this process, the app `streamdiff web` serves, the
model's random weights, the accelerated mode built in the foreground), with WebRTC on. The page is an aiortc
peer in this process: it sends a 512x512 picture (web_roundtrip.py's pattern, standing still, so that
the only change is the one timed) as a video track at a given frame rate and keeps the frames of the
server's track. Every `--period` seconds the picture turns dark or bright again; the
latency is the time from the first frame of a new phase being handed to the page's sender to the first
output frame that arrives nearer the new phase's typical output than the old one's (each phase's typical
output: the mean picture of the outputs in the second half of its phases, on a 64x64 grid; where the
phases' outputs lie no further apart than three times the spread within a phase, no latency is reported).
That covers the page's encode, the server's decode, waiting for the engine, the step, the server's encode and
the page's decode: what a person sees, less the camera and the screen. The page's receiver hands a frame to
its decoder when the next frame's first packet arrives (aiortc's rule), or with `--page-release marker` at the
frame's own marked last packet, as browsers do (web/frame_release.py, the server's rule). Random weights draw
nearly the same picture from a dark and a bright input (0.4-0.6 levels apart in a first run), so the stream runs
web_roundtrip.pass_through's weights, under which the output follows the input and every kernel still runs
on the same shapes, at strength 0.1 (less of the fixed noise over the picture; the step's work is the same)
and without latent feedback (it would carry the old phase into the new one over several frames). Both peers'
video codecs run in this process in software (a browser's may use hardware), sharing the interpreter with the
server.
Nothing here asserts.

    python3 benchmarks/web_webrtc.py --out DIR --cache DIR --models sdxs-512,sd-turbo --source-fps 30,60
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import json
import statistics
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from web_roundtrip import SIZE, build_stream, run_grid, run_served, served_parser

CLOCK = 90_000


def pattern(count: int) -> list[np.ndarray]:
    """web_roundtrip.py's moving pattern, as pictures rather than JPEGs."""
    ramp = np.linspace(0, 255, SIZE, dtype=np.float32)
    frames = []
    for i in range(count):
        image = np.stack([np.add.outer(ramp, ramp) / 2, np.roll(np.tile(ramp, (SIZE, 1)), 8 * i, axis=1),
                          np.full((SIZE, SIZE), 96.0)], axis=-1).astype(np.uint8)
        image[192:320, (16 * i) % (SIZE - 128):][:, :128] = 240
        frames.append(image)
    return frames


def source_track(fps: float, period: float) -> Any:
    from aiortc import VideoStreamTrack
    from av import VideoFrame

    class FlippingPattern(VideoStreamTrack):
        """The still pattern at `fps`, dark and bright by turns every `period` s; `flips` holds (time, bright)."""

        def __init__(self) -> None:
            super().__init__()
            self.bright = pattern(1)[0]
            self.dark = self.bright // 5
            self.sent, self.start, self.flips = 0, None, []

        async def recv(self) -> VideoFrame:
            if self.start is None:
                self.start = time.perf_counter()
            self.sent += 1
            await asyncio.sleep(max(0.0, self.start + self.sent / fps - time.perf_counter()))
            now = time.perf_counter()
            bright = int((now - self.start) / period) % 2 == 1
            if not self.flips or self.flips[-1][1] != bright:
                self.flips.append((now, bright))
            frame = VideoFrame.from_ndarray(self.bright if bright else self.dark, format="rgb24")
            frame.pts, frame.time_base = int((now - self.start) * CLOCK), fractions.Fraction(1, CLOCK)
            return frame

    return FlippingPattern()


async def drive(base: str, fps: float, period: float, warmup: float, seconds: float, page_release: str
                ) -> dict[str, Any]:
    import websockets
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError

    from streamdiff.web.frame_release import release_frames_on_marker

    arrived: list[tuple[float, np.ndarray]] = []  # (time, output on a 64x64 grid) of each output frame
    async with websockets.connect(base.replace("http", "ws") + "ws", proxy=None) as ws:
        client = json.loads(await ws.recv())["client"]
        connection = RTCPeerConnection()
        source = source_track(fps, period)

        @connection.on("track")
        def on_track(track: Any) -> None:
            async def keep() -> None:
                with contextlib.suppress(MediaStreamError):
                    while True:
                        image = (await track.recv()).to_ndarray(format="rgb24")
                        arrived.append((time.perf_counter(), image[::8, ::8].astype(np.float32)))

            asyncio.ensure_future(keep())

        transceiver = connection.addTransceiver(source, direction="sendrecv")
        if page_release == "marker":  # as a browser completes a frame: at its marked last packet
            release_frames_on_marker(transceiver.receiver)
        await connection.setLocalDescription(await connection.createOffer())
        offer = json.dumps({"sdp": connection.localDescription.sdp, "type": "offer", "client": client}).encode()
        request = urllib.request.Request(base + "api/webrtc/offer", offer, {"Content-Type": "application/json"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        answer = await asyncio.to_thread(lambda: json.load(opener.open(request, timeout=30)))
        await connection.setRemoteDescription(RTCSessionDescription(**answer))
        await asyncio.sleep(warmup + seconds)
        await connection.close()
    measured_from = source.start + warmup
    return {"source_fps": fps, "page_release": page_release, "sent": source.sent, "arrived": len(arrived),
            "outputs_per_s": sum(t >= measured_from for t, _ in arrived) / seconds,
            **flip_latency(source.flips, arrived, measured_from)}


def flip_latency(flips: list[tuple[float, bool]], arrived: list[tuple[float, np.ndarray]],
                 measured_from: float) -> dict[str, Any]:
    """Time from each flip to the first output nearer the new phase's typical output than the old one's."""
    def settled(bright: bool) -> list[np.ndarray]:  # outputs of the second half of each phase of that kind
        values = []
        for (start, phase), (end, _) in zip(flips, [*flips[1:], (float("inf"), None)]):
            if phase == bright:
                values += [image for t, image in arrived if (start + end) / 2 <= t < end]
        return values

    dark_outputs, bright_outputs = settled(False), settled(True)
    if not dark_outputs or not bright_outputs:
        return {"typical_outputs_apart": None, "spread_within_phase": None, "flips": 0,
                "latency_ms_median": None, "latency_ms_max": None, "latencies_ms": None}
    dark, bright = np.mean(dark_outputs, axis=0), np.mean(bright_outputs, axis=0)

    def distance(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a - b).mean())

    delays = []
    for start, phase in flips:
        if start < measured_from:
            continue
        new, old = (bright, dark) if phase else (dark, bright)
        first = next((t for t, image in arrived if t >= start and distance(image, new) < distance(image, old)), None)
        if first is not None:
            delays.append(1000 * (first - start))
    # Meaningful only where the typical outputs lie well apart against the spread of each phase's outputs:
    # random weights draw nearly the same picture from a dark and a bright input, and then none is reported.
    spread = max(statistics.median(distance(i, dark) for i in dark_outputs),
                 statistics.median(distance(i, bright) for i in bright_outputs))
    apart = distance(dark, bright)
    valid = bool(delays) and apart > 3 * spread
    return {"typical_outputs_apart": apart, "spread_within_phase": spread, "flips": len(delays),
            "latency_ms_median": statistics.median(delays) if valid else None,
            "latency_ms_max": max(delays) if valid else None, "latencies_ms": delays if valid else None}


def measure(model: str, device: str, mode: str, cache: Path, fps: float, args: argparse.Namespace) -> dict[str, Any]:
    from streamdiff.web.transport import Transport, TransportMode

    stream = build_stream(model, device, mode, cache, strength=0.1, feedback=0.0, follows_input=True, size=args.size)
    stream.transport = Transport(TransportMode.WEBRTC, webrtc=True)
    result, served = run_served(stream, lambda url: drive(url.replace("ws://", "http://").removesuffix("ws"), fps,
                                                          args.period, args.warmup, args.seconds, args.page_release))
    return {"model": model, "mode": served.pop("mode") or mode, "size": args.size, **result, **served}


def main() -> None:
    parser = served_parser(__doc__.splitlines()[0])
    parser.add_argument("--source-fps", default="30,60")
    parser.add_argument("--period", type=float, default=1.0, help="seconds between the pattern's flips")
    parser.add_argument("--page-release", choices=("aiortc", "marker"), default="aiortc",
                        help="when the page's receiver hands a frame to its decoder: at the next frame's first "
                             "packet (aiortc's own rule), or at the frame's marked last packet (as browsers do)")
    args = parser.parse_args()
    import aiortc

    run_grid(args, lambda model, fps: measure(model, args.device, args.mode, args.cache, fps, args), "web-webrtc.json",
             aiortc=aiortc.__version__)


if __name__ == "__main__":
    main()
