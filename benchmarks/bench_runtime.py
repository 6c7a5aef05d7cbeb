"""What the camera app's runtime costs on top of the engine, and whether the display keeps its rate.

    python benchmarks/bench_runtime.py                       # tiny model on the CPU, about a minute
    python benchmarks/bench_runtime.py --seconds 20 --json out.json

1. Engine alone: `img2img` in a loop on a ready (1, 3, H, W) tensor at the render size.
2. The runtime: the animated test pattern (640x480 at 30 fps, as a webcam), the three threads, the
   null sink, display at 30 fps. Per stylized frame: the inference thread's own work (preprocess from
   the camera frame, postprocess to a picture, controls) and the engine call as timed inside the
   runtime (slower than alone where the capture and display threads share the cores). "Added per
   frame" = engine in the runtime + own work - engine alone. Engine alone and runtime runs alternate
   `--repeats` times and the medians are reported, so a slow drift of the machine's load (other
   processes) falls on both sides. Then the runtime with a source faster than the engine (120 fps),
   where the interval between outputs is the whole cost of a frame.
3. Display rate while inference is slower than the display: a larger render size, the display at 30
   and at 60 fps, and at 30 fps with a camera blend of 0.5 (the blend costs most on the display side).

Models use random weights of their real architectures (no download). Nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any


def engine(render: int, steps: int, device: str):
    from streamdiff.stream import StreamPipeline

    pipe = StreamPipeline.from_model("tiny", width=render, height=render, strength=0.6, steps=steps, seed=1,
                                     fit="crop", device=device)
    pipe.prepare("a watercolor painting")
    return pipe


def engine_alone(pipe: Any, seconds: float) -> dict[str, float]:
    """ms per img2img call on a ready tensor (what the engine costs without any app around it)."""
    import torch

    from streamdiff.devices import synchronize

    config = pipe.config
    pixels = torch.rand(1, 3, config.height, config.width, generator=torch.Generator().manual_seed(0))
    pixels = pixels.to(pipe.device)
    for _ in range(3):
        pipe.img2img(pixels, output_type="pt")
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        pipe.img2img(pixels, output_type="pt")
        synchronize(pipe.device)
        times.append(time.perf_counter() - start)
    return {"frames": len(times), "mean_ms": 1000 * statistics.fmean(times),
            "median_ms": 1000 * statistics.median(times)}


def in_runtime(pipe: Any, seconds: float, display_fps: float, source_fps: float,
               blend: float = 0.0) -> dict[str, float]:
    from streamdiff.app.keys import Controls
    from streamdiff.app.runtime import Runtime, RuntimeOptions
    from streamdiff.app.sinks import NullSink
    from streamdiff.app.sources import AnimatedPattern

    options = RuntimeOptions(prompts=("a watercolor painting",), display_fps=display_fps, pane_height=512)
    controls = Controls(blend=blend, seed=pipe.config.seed)
    runtime = Runtime(pipe, AnimatedPattern(640, 480, fps=source_fps), [NullSink()], options, controls)
    summary = runtime.run(duration=seconds)
    t = summary.timings
    return {
        "seconds": summary.seconds, "captured": summary.captured, "inferred": summary.inferred,
        "displayed": summary.displayed, "dropped": summary.dropped,
        "ai_fps": summary.rate(summary.inferred), "display_fps": summary.rate(summary.displayed),
        "camera_fps": summary.rate(summary.captured),
        "interval_ms": 1000 * summary.seconds / max(1, summary.inferred),
        "engine_ms": t.mean_ms("engine"), "preprocess_ms": t.mean_ms("preprocess"),
        "postprocess_ms": t.mean_ms("postprocess"), "controls_ms": t.mean_ms("controls"),
        "own_work_ms": t.mean_ms("preprocess") + t.mean_ms("postprocess") + t.mean_ms("controls"),
        "shutdown_ms": 1000 * summary.shutdown_seconds,
    }


def alternate(pipe: Any, seconds: float, repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Engine alone and in the runtime (30 fps source), alternated; medians of each measure."""
    alones, runs = [], []
    for _ in range(repeats):
        alones.append(engine_alone(pipe, seconds))
        run = in_runtime(pipe, seconds, 30.0, 30.0)
        run["added_per_frame_ms"] = run["engine_ms"] + run["own_work_ms"] - alones[-1]["mean_ms"]
        runs.append(run)
    alone = {key: statistics.median(a[key] for a in alones) for key in alones[0]}
    runtime = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    runtime["added_each_run_ms"] = [round(r["added_per_frame_ms"], 2) for r in runs]
    return alone, runtime


def machine() -> dict[str, Any]:
    import cv2
    import numpy
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "opencv": cv2.__version__, "numpy": numpy.__version__,
            "platform": platform.platform()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measurement")
    parser.add_argument("--repeats", type=int, default=5, help="alternations of engine alone and runtime")
    parser.add_argument("--render-size", type=int, default=64, help="render size of the overhead scenario")
    parser.add_argument("--slow-render-size", type=int, default=256, help="render size of the display scenario")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fast-source-fps", type=float, default=120.0, help="a source faster than the engine")
    parser.add_argument("--cpu-threads", type=int, default=None,
                        help="torch threads, as `streamdiff camera --cpu-threads` (default: all cores but one)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.device == "cpu":
        from streamdiff.app.camera import set_cpu_threads

        set_cpu_threads(args.cpu_threads)

    results: dict[str, Any] = {"machine": machine(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    pipe = engine(args.render_size, args.steps, args.device)
    alone, runtime = alternate(pipe, args.seconds, args.repeats)
    saturated = in_runtime(pipe, args.seconds, 30.0, args.fast_source_fps)
    saturated["added_per_frame_ms"] = saturated["interval_ms"] - alone["mean_ms"]
    results["overhead"] = {"render_size": args.render_size, "engine_alone": alone, "runtime": runtime,
                           "saturated": saturated}

    slow = engine(args.slow_render_size, args.steps, args.device)
    slow_alone = engine_alone(slow, args.seconds)
    results["display"] = {
        "render_size": args.slow_render_size, "engine_alone": slow_alone,
        "display_30": in_runtime(slow, args.seconds, 30.0, 30.0),
        "display_60": in_runtime(slow, args.seconds, 60.0, 30.0),
        "display_30_blend": in_runtime(slow, args.seconds, 30.0, 30.0, blend=0.5),
    }
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


def report(results: dict[str, Any]) -> None:
    m = results["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}, torch {m['torch']} "
          f"({m['torch_threads']} threads), OpenCV {m['opencv']}, NumPy {m['numpy']}")
    o = results["overhead"]
    alone, rt, sat = o["engine_alone"], o["runtime"], o["saturated"]
    print(f"\noverhead, tiny model {o['render_size']}x{o['render_size']}, test pattern 640x480, null sink, "
          "display 30 fps (medians):")
    print(f"  engine alone               {alone['mean_ms']:7.2f} ms/frame (median {alone['median_ms']:.2f})")
    print(f"  source 30 fps: engine      {rt['engine_ms']:7.2f} ms/frame inside the runtime")
    print(f"  runtime's own work         {rt['own_work_ms']:7.2f} ms/frame (preprocess {rt['preprocess_ms']:.2f}, "
          f"postprocess {rt['postprocess_ms']:.2f}, controls {rt['controls_ms']:.3f})")
    print(f"  added per frame            {rt['added_per_frame_ms']:+7.2f} ms, median of runs "
          f"{rt['added_each_run_ms']} (AI {rt['ai_fps']:.1f}, camera {rt['camera_fps']:.1f}, display "
          f"{rt['display_fps']:.1f} fps; shutdown {rt['shutdown_ms']:.0f} ms)")
    print(f"  source {sat['camera_fps']:.0f} fps: interval    {sat['interval_ms']:7.2f} ms/frame -> added "
          f"{sat['added_per_frame_ms']:+.2f} ms (engine {sat['engine_ms']:.2f}, own work {sat['own_work_ms']:.2f}; "
          f"display {sat['display_fps']:.1f} fps)")
    d = results["display"]
    print(f"\ndisplay while inference is slower, {d['render_size']}x{d['render_size']} "
          f"(engine alone {d['engine_alone']['mean_ms']:.1f} ms/frame), panes 512 px:")
    for key, label in (("display_30", "target 30"), ("display_60", "target 60"),
                       ("display_30_blend", "30, blend .5")):
        r = d[key]
        print(f"  display {label:13s}: display {r['display_fps']:5.1f} fps, AI {r['ai_fps']:5.1f} fps, "
              f"camera {r['camera_fps']:5.1f} fps")


if __name__ == "__main__":
    sys.exit(main())
