"""The web page's latency in a real browser: what a person sees between the page's camera preview and its output.

`streamdiff web`'s server (web_roundtrip.py's: uvicorn on a thread of this process, the model's random weights
with web_roundtrip.pass_through's, under which the output follows the input, strength 0.1, no latent feedback)
serves the page to headless Chromium over WebRTC. The browser's fake camera plays a Y4M file: a still 512x512
picture, dark and bright by turns every `--period` seconds. A script put into the page watches the two video
elements (the camera preview and the output) with requestVideoFrameCallback and keeps, for every frame shown,
the time it is shown (`expectedDisplayTime`) and its mean level; for the output also when its last packet
arrived (`receiveTime`). Reported after a warm-up:
- the latency: from a phase change shown in the preview to the first output frame shown past the middle of
  the output's two levels, in the new phase's direction (median and max over the changes);
- the browser's own share of it: from an output frame's last packet to its showing (median);
- output frames shown a second.
That is everything but the camera and the screen: the browser's encode, the server's decode, the engine, the
server's encode, the network stack (loopback here), the browser's jitter buffer, decode and rendering. The
browser decodes and encodes in software (`--disable-gpu`). Nothing here asserts.

    PYTHONPATH=tests python3 benchmarks/web_browser_latency.py --out DIR --models tiny --device cpu --mode auto
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from web_roundtrip import SIZE, build_stream, run_grid, run_served, served_parser
from web_webrtc import pattern

# Kept for every frame each video element shows: [shown at (ms), mean level 0-255, last packet in at (ms) or null].
WATCH = """
window.latencyFrames = { camera: [], output: [] };
for (const [id, frames] of [["camera", latencyFrames.camera], ["output-video", latencyFrames.output]]) {
  const video = document.getElementById(id);
  const context = new OffscreenCanvas(16, 16).getContext("2d", { willReadFrequently: true });
  const onFrame = (now, meta) => {
    if (video.videoWidth) {
      context.drawImage(video, 0, 0, 16, 16);
      const data = context.getImageData(0, 0, 16, 16).data;
      let sum = 0;
      for (let i = 0; i < data.length; i += 4) sum += data[i] + data[i + 1] + data[i + 2];
      frames.push([meta.expectedDisplayTime, sum / (3 * 256), meta.receiveTime ?? null]);
    }
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
}
"""


def write_camera_file(path: Path, fps: int, period: float) -> None:
    """A Y4M clip of one dark and one bright phase of `period` s each (Chromium's fake camera loops it)."""
    from av import VideoFrame

    bright = pattern(1)[0]
    planes = {}
    for name, picture in (("dark", bright // 5), ("bright", bright)):
        planes[name] = VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p").to_ndarray()
    frames = round(fps * period)
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{SIZE} H{SIZE} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for name in ("dark", "bright"):
            for _ in range(frames):
                out.write(b"FRAME\n" + planes[name].tobytes())


def phase_changes(frames: list[list[float | None]]) -> list[tuple[float, bool]]:
    """(time, now bright) of each crossing of the middle of the series' two levels."""
    levels = np.array([level for _, level, _ in frames])
    middle = float(np.percentile(levels, 10) + np.percentile(levels, 90)) / 2
    changes, bright = [], None
    for shown, level, _ in frames:
        now_bright = level > middle
        if bright is not None and now_bright != bright:
            changes.append((shown, now_bright))
        bright = now_bright
    return changes


def latency(camera: list[list[float | None]], output: list[list[float | None]], measured_from: float
            ) -> dict[str, Any]:
    source_changes = phase_changes(camera)
    output_changes = phase_changes(output)
    delays = []
    for shown, bright in source_changes:
        if shown < measured_from:
            continue
        answer = next((t for t, b in output_changes if t >= shown and b == bright), None)
        if answer is not None:
            delays.append(answer - shown)
    received = [shown - arrived for shown, _, arrived in output if arrived is not None and shown >= measured_from]
    levels = [level for _, level, _ in output]
    return {"changes": len(delays), "latency_ms_median": statistics.median(delays) if delays else None,
            "latency_ms_max": max(delays) if delays else None,
            "browser_receive_to_shown_ms_median": statistics.median(received) if received else None,
            "output_levels_p10_p90": [float(np.percentile(levels, 10)), float(np.percentile(levels, 90))]
            if levels else None}


def drive_browser(base: str, camera_file: Path, warmup: float, seconds: float) -> dict[str, Any]:
    from browser import Browser

    with tempfile.TemporaryDirectory() as profile:
        browser = Browser(base, Path(profile), camera_file=camera_file)
        try:
            deadline = time.monotonic() + 60
            while not browser.evaluate("typeof rtc !== 'undefined' && rtc.live"):
                if time.monotonic() > deadline:
                    raise RuntimeError("the page's WebRTC connection did not come up within 60 s")
                time.sleep(0.2)  # another process's state: no event to wait on
            browser.run(WATCH)
            start = browser.evaluate("performance.now()")
            time.sleep(warmup + seconds)
            frames = browser.evaluate("latencyFrames")
        finally:
            browser.close()
    measured_from = start + 1000 * warmup
    shown = [f for f in frames["output"] if f[0] >= measured_from]
    return {"outputs_shown_per_s": len(shown) / seconds, "camera_frames": len(frames["camera"]),
            **latency(frames["camera"], frames["output"], measured_from)}


def measure(model: str, fps: float, args: Any) -> dict[str, Any]:
    from streamdiff.web.transport import Transport, TransportMode

    camera_file = args.out / f"camera-{int(fps)}fps.y4m"
    write_camera_file(camera_file, int(fps), args.period)
    stream = build_stream(model, args.device, args.mode, args.cache, strength=0.1, feedback=0.0, follows_input=True,
                          size=args.size)
    stream.transport = Transport(TransportMode.WEBRTC, webrtc=True)
    try:
        result, served = run_served(stream, lambda url: asyncio.to_thread(
            drive_browser, url.replace("ws://", "http://").removesuffix("ws"), camera_file, args.warmup,
            args.seconds))
    finally:
        camera_file.unlink()
    return {"model": model, "mode": served.pop("mode") or args.mode, "size": args.size, "source_fps": fps, **result,
            **served}


def main() -> None:
    from browser import chromium

    parser = served_parser(__doc__.splitlines()[0])
    parser.add_argument("--source-fps", default="30")
    parser.add_argument("--period", type=float, default=1.0, help="seconds between the camera's phase changes")
    args = parser.parse_args()
    if chromium() is None:
        raise SystemExit("web_browser_latency: no Chromium found (apt-get install chromium)")
    args.out.mkdir(parents=True, exist_ok=True)
    import aiortc

    run_grid(args, lambda model, fps: measure(model, fps, args), "web-browser-latency.json", aiortc=aiortc.__version__)


if __name__ == "__main__":
    main()
