"""The host's share of `streamdiff video`, stage by stage, with no engine: what bounds a clip's frames/s
when the device is fast enough.

Each stage runs alone on one thread over the moving synthetic clip (as `video_throughput.py` writes it):
- decode: PyAV decoding with FFmpeg's own threads, nothing converted;
- decode + RGB: as `streamdiff video` reads a clip (each frame converted to RGB and stacked F per call);
- encode: F-frame stacks of render-size RGB pictures through `VideoFileSink` (RGB -> YUV, H.264, mux);
- decode + YUV / encode from YUV: the same with the frames' YUV 4:2:0 planes instead of RGB (what the host
  would do if the device converted the colours);
- both together: decode + RGB of the clip on one thread while another encodes as many frames, as
  `streamdiff video`'s codec threads do (they share the cores and the interpreter lock).

    python3 benchmarks/video_host_stages.py --out DIR [--sizes 512x512,1280x720] [--frames 300]
        [--frame-buffer-size 16] [--render 512]

Writes DIR/video-host-stages.json and prints a table (ms per frame and frames/s for each stage).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np


def decode(clip: Path, convert: str | None, group: int) -> float:
    from streamdiff.app.sources import VideoFile
    from streamdiff.app.video import _calls, _pts_step

    source = VideoFile(clip)
    try:
        start = time.perf_counter()
        if convert == "rgb24":
            frames = sum(len(call.pts) for call in _calls(source, group, _pts_step(source)))
        else:
            frames = 0
            planes = []
            while (frame := source.read_frame()) is not None:
                frames += 1
                if convert is not None:
                    planes.append(frame.to_ndarray(format=convert))
                    if len(planes) == group:
                        np.stack(planes)
                        planes = []
        return (time.perf_counter() - start) / frames
    finally:
        source.close()


def output_pictures(render: int, yuv: bool) -> list[np.ndarray]:
    """30 render-size pictures of the moving scene, as RGB or as YUV 4:2:0 planes."""
    import av

    from streamdiff.bench.clips import make_clip

    pictures = make_clip("moving", 30, render, render)
    if yuv:
        return [av.VideoFrame.from_ndarray(p, format="rgb24").reformat(format="yuv420p").to_ndarray()
                for p in pictures]
    return list(pictures)


def encode(out: Path, frames: int, pictures: list[np.ndarray], group: int, yuv: bool = False) -> float:
    import av

    from streamdiff.app.sinks import VideoFileSink

    width = pictures[0].shape[1]
    sink = VideoFileSink(out / "encoded.mp4", width, width, 30.0)
    try:
        start = time.perf_counter()
        for k in range(0, frames, group):
            stack = np.stack([pictures[(k + j) % len(pictures)] for j in range(group)])
            for j, picture in enumerate(stack):
                if yuv:
                    frame = av.VideoFrame.from_ndarray(picture, format="yuv420p")
                    frame.pts = k + j
                    sink.container.mux(sink.stream.encode(frame))
                else:
                    sink.write(picture, pts=k + j)
    finally:
        sink.close()
    seconds = time.perf_counter() - start
    (out / "encoded.mp4").unlink()
    return seconds / frames


def together(clip: Path, out: Path, frames: int, pictures: list[np.ndarray], group: int) -> float:
    """Per frame, decode + RGB of the clip on one thread and encoding as many frames on another."""
    import threading

    threads = [threading.Thread(target=decode, args=(clip, "rgb24", group)),
               threading.Thread(target=encode, args=(out, frames, pictures, group))]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return (time.perf_counter() - start) / frames


def _row(where: str, stage: str, seconds_per_frame: float) -> dict[str, object]:
    return {"input": where, "stage": stage, "ms_per_frame": round(1000 * seconds_per_frame, 3),
            "fps": round(1 / seconds_per_frame, 1)}


def main() -> None:
    # video_throughput is this script's neighbour: the script's folder is on the path when it runs.
    import av
    from video_throughput import write_clip

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--sizes", default="512x512,1280x720")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--frame-buffer-size", type=int, default=16)
    parser.add_argument("--render", type=int, default=512)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    rgb, yuv = output_pictures(args.render, False), output_pictures(args.render, True)
    for size in args.sizes.split(","):
        width, height = (int(v) for v in size.split("x"))
        clip = write_clip(out / f"clip-{size}.mp4", args.frames, width, height)
        for stage, convert in (("decode", None), ("decode + RGB", "rgb24"), ("decode + YUV", "yuv420p")):
            rows.append(_row(size, stage, min(decode(clip, convert, args.frame_buffer_size) for _ in range(2))))
        best = min(together(clip, out, args.frames, rgb, args.frame_buffer_size) for _ in range(2))
        rows.append(_row(size, "decode + RGB and encode, two threads", best))
        clip.unlink()
    for stage, pictures, planes in (("encode", rgb, False), ("encode from YUV", yuv, True)):
        best = min(encode(out, args.frames, pictures, args.frame_buffer_size, planes) for _ in range(2))
        rows.append(_row(f"{args.render}x{args.render} output", stage, best))
    result = {"rows": rows, "frame_buffer_size": args.frame_buffer_size, "cpu_threads": os.cpu_count(),
              "platform": platform.platform(), "python": platform.python_version(), "av": av.__version__,
              "ffmpeg": av.library_versions.get("libavcodec"),
              "command": "python3 benchmarks/video_host_stages.py " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out")}
    (out / "video-host-stages.json").write_text(json.dumps(result, indent=1))
    print("| input | stage | ms/frame | frames/s |")
    for row in rows:
        print(f"| {row['input']} | {row['stage']} | {row['ms_per_frame']} | {row['fps']} |")


if __name__ == "__main__":
    main()
