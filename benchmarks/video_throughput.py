"""`streamdiff video` end to end: decode, stylize and encode a clip, three ways.

- one frame at a time: the host decodes a frame, the device stylizes it, and the host waits for it before
  it encodes the picture;
- pipelined: the device works on frame k while the host decodes frame k+1 and encodes the output before k,
  all on one host thread;
- pipelined + codec threads (`streamdiff video`'s default): decoding runs ahead on a thread of its own and
  encoding behind on another, so the calling thread only feeds the device.
The clip is the moving synthetic scene, written as H.264; every run decodes it, stylizes every frame and
writes an H.264 file with `stylize_video` itself. --frame-buffer-size F puts F frames in each call, sharing
the fixed noise, as `streamdiff video` does.

    python3 benchmarks/video_throughput.py --out DIR [--model sd-turbo] [--sizes 512x512,1280x720]
        [--frames 300] [--repeats 2] [--device cuda] [--accel max] [--compile-cache DIR] [--frame-buffer-size 1]

Writes DIR/video-fbsF.json (frames/s per input size and mode, with the machine and versions) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

DISTINCT_FRAMES = 60  # the clip cycles through these (a 720p clip of 300 distinct frames would take 0.8 GB)


def write_clip(path: Path, frames: int, width: int, height: int, fps: int = 30) -> Path:
    import av

    from streamdiff.bench.clips import make_clip

    pictures = make_clip("moving", min(frames, DISTINCT_FRAMES), height, width)
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        for k in range(frames):
            frame = av.VideoFrame.from_ndarray(pictures[k % len(pictures)], format="rgb24")
            frame.pts = k
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
    return path


def build_engine(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    from streamdiff.backends.accelerate import accelerate
    from streamdiff.stream import StreamPipeline

    pipe = StreamPipeline.from_model(args.model, random_weights=args.model != "tiny", device=args.device,
                                     fit="crop", frame_buffer_size=args.frame_buffer_size, shared_noise=True)
    pipe.prepare(prompt="a watercolor painting of a lighthouse at dusk")
    start = time.perf_counter()
    stream, report = accelerate(pipe, args.accel, cache_dir=args.compile_cache, progress=print)
    return stream, {"accel": stream.mode, "build_s": round(time.perf_counter() - start, 1),
                    "frame_buffer_size": args.frame_buffer_size,
                    "render": f"{pipe.config.width}x{pipe.config.height}", "fused_codec": report.fused_codec}


MODES = {  # name: (pipelined, threads)
    "one frame at a time": (False, False),
    "pipelined": (True, False),
    "pipelined + codec threads": (True, True),
}


def measure(stream: Any, args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    from streamdiff.app.video import stylize_video

    rows = []
    for size in args.sizes.split(","):
        width, height = (int(v) for v in size.split("x"))
        clip = write_clip(out / f"clip-{size}.mp4", args.frames, width, height)
        warm = write_clip(out / f"warm-{size}.mp4", 8, width, height)
        for pipelined, threads in MODES.values():  # builds the captured step of each input kind and size
            stylize_video(stream, warm, out / "styled.mp4", pipelined=pipelined, threads=threads)
        seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
        for _ in range(args.repeats):
            for mode, (pipelined, threads) in MODES.items():
                summary = stylize_video(stream, clip, out / "styled.mp4", pipelined=pipelined, threads=threads)
                seconds[mode].append(summary.seconds)
        for mode, runs in seconds.items():
            best = min(runs)
            pipelined, threads = MODES[mode]
            rows.append({"input": size, "mode": mode, "pipelined": pipelined, "threads": threads,
                         "frames": args.frames, "seconds": runs, "fps": round(args.frames / best, 1),
                         "ms_per_frame": round(1000 * best / args.frames, 2)})
        (out / "styled.mp4").unlink(missing_ok=True)
        clip.unlink()
        warm.unlink()
    return rows


def main() -> None:
    import av

    from streamdiff.bench.report import environment

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="sd-turbo", help="registry name, random weights (tiny: its own)")
    parser.add_argument("--sizes", default="512x512,1280x720", help="input clip sizes, WxH,...")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--accel", default="max")
    parser.add_argument("--compile-cache", default=None)
    parser.add_argument("--frame-buffer-size", type=int, default=1, help="frames per engine call")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stream, engine = build_engine(args)
    rows = measure(stream, args, out)
    recorded = {**environment(stream.device), "av": av.__version__}
    result = {"model": args.model, "engine": engine, "environment": recorded, "rows": rows,
              "command": "python3 benchmarks/video_throughput.py " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k != "out")}
    (out / f"video-fbs{args.frame_buffer_size}.json").write_text(json.dumps(result, indent=1))
    print("| input | mode | frames/s | ms/frame |")
    for row in rows:
        print(f"| {row['input']} | {row['mode']} | {row['fps']} | {row['ms_per_frame']} |")


if __name__ == "__main__":
    main()
