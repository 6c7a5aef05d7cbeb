"""What the page's pictures cost on the network: a JPEG per frame (the WebSocket) against WebRTC's video track.

The same 512x512 stream, a slow pan over the bundled landscape photograph at 30 frames a second (a camera
looking at a scene, not the meaningless pictures of random weights), goes
- through Pillow's JPEG encoder at the page's and the server's quality (85): the WebSocket's bytes per frame;
- through aiortc's video sender to an aiortc receiver over the loopback interface, as `streamdiff web`
  sends its output to a page: bytes on the wire per frame (RTP payloads with their headers, from the
  sender's statistics), the bit rate congestion control settled on, and the frames that arrived.
Picture quality is the PSNR of what arrives against the frame that was sent (for the track, the best match
among the frames sent around it: the receiver does not learn which frame it got). Nothing here asserts.

    python3 benchmarks/web_transport_bytes.py --seconds 20 --out benchmarks/results/cpu/web-transport-bytes.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import platform
import statistics
from pathlib import Path

import aiortc
import av
import numpy as np
from aiortc import RTCPeerConnection, VideoStreamTrack
from aiortc.mediastreams import MediaStreamError
from PIL import Image

import streamdiff

SIDE = 512
FPS = 30


def pan(count: int) -> list[np.ndarray]:
    """`count` 512x512 crops of the landscape (scaled to 640x640), moving a pixel right and down a frame and
    back again."""
    scene = Image.open(Path(streamdiff.__file__).parent / "assets" / "sample.png").convert("RGB")
    scene = np.asarray(scene.resize((640, 640), Image.Resampling.LANCZOS))
    room = 640 - SIDE
    offsets = [i % (2 * room) for i in range(count)]
    offsets = [o if o < room else 2 * room - o for o in offsets]
    return [np.ascontiguousarray(scene[o:o + SIDE, o:o + SIDE]) for o in offsets]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def jpeg_row(frames: list[np.ndarray], quality: int) -> dict[str, float]:
    sizes, scores = [], []
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
        sizes.append(len(buffer.getvalue()))
        scores.append(psnr(frame, np.asarray(Image.open(buffer))))
    return {"bytes_per_frame": statistics.mean(sizes), "kbit_per_s": statistics.mean(sizes) * 8 * FPS / 1000,
            "psnr_db": statistics.median(scores)}


class Frames(VideoStreamTrack):
    def __init__(self, frames: list[np.ndarray]) -> None:
        super().__init__()
        self.frames, self.sent = frames, 0

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame.from_ndarray(self.frames[self.sent % len(self.frames)], format="rgb24")
        self.sent += 1
        frame.pts, frame.time_base = pts, time_base
        return frame


def negotiated_codec(answer: str) -> str:
    """The answer's first video payload type, by name: the codec the sender uses."""
    first = next(line for line in answer.splitlines() if line.startswith("m=video")).split()[3]
    return next(line.split()[1] for line in answer.splitlines() if line.startswith(f"a=rtpmap:{first} "))


async def webrtc_row(frames: list[np.ndarray], seconds: float) -> dict[str, float]:
    sender, receiver = RTCPeerConnection(), RTCPeerConnection()
    track = Frames(frames)
    arrived: list[np.ndarray] = []
    sent_at_arrival: list[int] = []

    @receiver.on("track")
    def on_track(remote) -> None:
        async def keep() -> None:
            with contextlib.suppress(MediaStreamError):  # the connection closed
                while True:
                    arrived.append((await remote.recv()).to_ndarray(format="rgb24"))
                    sent_at_arrival.append(track.sent)

        asyncio.ensure_future(keep())

    sender.addTrack(track)
    await sender.setLocalDescription(await sender.createOffer())
    await receiver.setRemoteDescription(sender.localDescription)
    await receiver.setLocalDescription(await receiver.createAnswer())
    await sender.setRemoteDescription(receiver.localDescription)
    await asyncio.sleep(seconds)
    stats = await sender.getSenders()[0].getStats()
    outbound = next(s for s in stats.values() if s.type == "outbound-rtp")
    codec = negotiated_codec(receiver.localDescription.sdp)
    await sender.close()
    await receiver.close()
    half = len(arrived) // 2  # the second half: after congestion control has raised the bit rate
    scores = [max(psnr(image, frames[(j - k) % len(frames)]) for k in range(1, 6))
              for image, j in zip(arrived[half::5], sent_at_arrival[half::5], strict=True)]
    return {"codec": codec, "frames_sent": track.sent, "frames_arrived": len(arrived),
            "bytes_per_frame": outbound.bytesSent / track.sent, "kbit_per_s": outbound.bytesSent * 8 / seconds / 1000,
            "psnr_db": statistics.median(scores)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--quality", type=int, default=85)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    frames = pan(int(args.seconds * FPS))
    result = {"side": SIDE, "fps": FPS, "seconds": args.seconds, "aiortc": aiortc.__version__, "av": av.__version__,
              "machine": platform.platform(), "jpeg": jpeg_row(frames, args.quality),
              "webrtc": asyncio.run(webrtc_row(frames, args.seconds))}
    print(json.dumps(result, indent=2))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
