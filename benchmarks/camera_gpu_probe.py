"""The camera app's frame path on a GPU: what a stylized frame costs there beyond the engine's step.

For each model (random weights of the real architecture, `--accel max` built in the foreground, camera
defaults: latent feedback 0.3, fit crop), on camera frames of each size (uint8, BGR as OpenCV gives them):
1. `engine`: img2img of a uint8 RGB numpy frame already at the render size, numpy out (the `bench` case);
2. `app`: the inference thread's `EngineRunner.step` on a camera frame, split into its parts;
   `uint8`: the same frame as uint8 through the captured step (colours swapped on the host);
3. `runtime` (optional): the camera app's three threads on the animated test pattern at `--source-fps`
   (a camera), display at 60 fps, null sink: frames stylized a second, and the latency from a frame's
   capture to its stylized picture being ready.
Medians over `--calls` calls. Nothing here asserts.

    python3 benchmarks/camera_gpu_probe.py --out DIR --cache DIR --models sdxs-512,sd-turbo
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

PROMPT = "a watercolor painting of a lighthouse at dusk"


def build(model: str, cache: Path, device: str) -> Any:
    from streamdiff.backends.accelerate import accelerate
    from streamdiff.stream import StreamPipeline

    pipe = StreamPipeline.from_model(model, random_weights=True, device=device, seed=2, fit="crop", feedback=0.3)
    pipe.prepare(prompt=PROMPT)
    mode = "max" if device == "cuda" else "none"
    stream, _ = accelerate(pipe, mode, cache_dir=cache, build=True, progress=lambda _: None)
    return stream


def timed(call: Any, calls: int, warmup: int = 10) -> float:
    """Median ms of `call()`."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def camera_frame(width: int, height: int) -> Any:
    import numpy as np

    return np.random.default_rng(1).integers(0, 256, (height, width, 3), np.uint8)


def app_step(stream: Any, width: int, height: int, calls: int) -> dict[str, float]:
    """The inference thread's step on a (height, width) BGR camera frame, and its parts (ms per frame)."""
    from streamdiff.app.engine_io import EngineRunner, StepTimings
    from streamdiff.app.frames import Frame
    from streamdiff.app.keys import Controls

    runner = EngineRunner(stream, [PROMPT], fit="crop")
    runner.apply(Controls(feedback=0.3, seed=stream.config.seed, strength=stream.strength))
    frame = Frame(camera_frame(width, height), "bgr", 0, time.perf_counter())
    for _ in range(10):
        runner.step(frame)
    runner.timings = StepTimings()
    step_ms = timed(lambda: runner.step(frame), calls, warmup=0)
    t = runner.timings
    return {"step_ms": step_ms, "preprocess_ms": t.mean_ms("preprocess"), "engine_ms": t.mean_ms("engine"),
            "postprocess_ms": t.mean_ms("postprocess")}


def uint8_step(stream: Any, width: int, height: int, calls: int) -> dict[str, float]:
    """A candidate path for the same frame: colours swapped to RGB on the host (OpenCV), the uint8 frame
    handed to the captured step as it is (cropped and resized inside it), uint8 RGB numpy back."""
    import cv2

    frame = camera_frame(width, height)
    swap_ms = timed(lambda: cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), calls)
    step_ms = timed(lambda: stream.img2img(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), output_type="np"), calls)
    return {"step_ms": step_ms, "swap_ms": swap_ms}


def in_runtime(stream: Any, source_fps: float, seconds: float) -> dict[str, float]:
    """The three threads on the test pattern (640x480) at source_fps; latency from capture to picture ready."""
    from streamdiff.app.keys import Controls
    from streamdiff.app.runtime import Runtime, RuntimeOptions
    from streamdiff.app.sinks import NullSink
    from streamdiff.app.sources import AnimatedPattern

    options = RuntimeOptions(prompts=(PROMPT,), display_fps=60.0, pane_height=512)
    controls = Controls(feedback=0.3, seed=stream.config.seed, strength=stream.strength)
    runtime = Runtime(stream, AnimatedPattern(640, 480, fps=source_fps), [NullSink()], options, controls)
    latencies: list[float] = []
    step = runtime.runner.step

    def measured_step(frame: Any, mirror: bool = False) -> Any:
        out = step(frame, mirror)
        latencies.append(time.perf_counter() - out.source_time)
        return out

    runtime.runner.step = measured_step  # type: ignore[method-assign]
    summary = runtime.run(duration=seconds)
    t = summary.timings
    return {
        "source_fps": source_fps, "camera_fps": summary.rate(summary.captured),
        "ai_fps": summary.rate(summary.inferred), "display_fps": summary.rate(summary.displayed),
        "dropped": summary.dropped, "latency_ms": 1000 * statistics.median(latencies[10:] or latencies),
        "engine_ms": t.mean_ms("engine"), "preprocess_ms": t.mean_ms("preprocess"),
        "postprocess_ms": t.mean_ms("postprocess"),
    }


def probe(model: str, cache: Path, device: str, sizes: list[tuple[int, int]], calls: int,
          source_fps: list[float], seconds: float) -> dict[str, Any]:
    stream = build(model, cache, device)
    size = stream.config.width
    rgb = camera_frame(size, size)
    row: dict[str, Any] = {"model": model, "render": size, "captured": stream.captured,
                           "engine_ms": timed(lambda: stream.img2img(rgb, output_type="np"), calls)}
    row["app"] = {f"{w}x{h}": app_step(stream, w, h, calls) for w, h in sizes}
    row["uint8"] = {f"{w}x{h}": uint8_step(stream, w, h, calls) for w, h in sizes}
    row["runtime"] = [in_runtime(stream, fps, seconds) for fps in source_fps]
    row["captured_after"] = stream.captured
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True, help="compile cache folder")
    parser.add_argument("--models", default="sdxs-512,sd-turbo")
    parser.add_argument("--sizes", default="640x480,1280x720", help="camera frame sizes, WxH,...")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--source-fps", default="60,240", help="runtime runs: the pattern's frame rates (none: skip)")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each runtime run")
    parser.add_argument("--device", default="cuda", help="cuda; cpu (uncompiled) to check the script")
    args = parser.parse_args()
    import torch

    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    rates = [] if args.source_fps == "none" else [float(v) for v in args.source_fps.split(",")]
    rows = []
    for model in args.models.split(","):
        row = probe(model, args.cache, args.device, sizes, args.calls, rates, args.seconds)
        print(json.dumps(row), flush=True)
        rows.append(row)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    env = {"device": name, "torch": torch.__version__}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "camera-gpu.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
