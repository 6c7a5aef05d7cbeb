"""What a ControlNet costs a frame: the same model with and without one, per acceleration mode, beside
diffusers' own ControlNet img2img pipeline on the same weights.

Each case: a uint8 frame on the host in, a uint8 frame on the host out (img2img, one step unless --steps),
median / p10 / p90 over --calls frames after --warmup; a moving clip so the Canny edges change every frame.
The diffusers baseline runs StableDiffusionControlNetImg2ImgPipeline with TAESD, one step, as a user would
(PIL in and out), as `streamdiff bench --controlnet canny --compare diffusers` does.

    python3 benchmarks/controlnet_step.py --out DIR [--model sd-turbo] [--accel none,max] [--steps 1]
        [--controlnets canny,depth,canny+depth] [--skip-plain] [--depth-estimator small|base|large]

depth estimates each frame's depth with Depth Anything V2 Small's architecture (random weights) in the step;
canny+depth steers one stream with both ControlNets together.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

PROMPT = "a watercolor painting of a lighthouse at dusk"


def clip(size: int, count: int) -> list[Any]:
    """Frames of a bright square moving over a gradient: edges in every frame, somewhere else each time."""
    import numpy as np

    ramp = np.linspace(40, 200, size, dtype=np.float32)
    base = np.stack([np.add.outer(ramp, ramp) / 2] * 3, axis=-1)
    frames = []
    for k in range(count):
        frame = base.copy()
        x = (k * 7) % (size // 2)
        frame[size // 4 : size // 4 + size // 3, x : x + size // 3] = (230, 90, 40)
        frames.append(frame.astype(np.uint8))
    return frames


def timed(call: Any, frames: list[Any], warmup: int, calls: int) -> dict[str, float]:
    import torch

    for k in range(warmup):
        call(frames[k % len(frames)])
    times = []
    for k in range(calls):
        torch.cuda.synchronize()
        start = time.perf_counter()
        call(frames[k % len(frames)])
        torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - start))
    times.sort()
    return {"median_ms": statistics.median(times), "p10_ms": times[len(times) // 10],
            "p90_ms": times[(9 * len(times)) // 10], "fps": 1000 / statistics.median(times)}


def stream_case(model: str, controlnet: str | None, accel: str, steps: int, cache: Path | None,
                frames: list[Any], warmup: int, calls: int, depth_estimator: str = "small") -> dict[str, Any]:
    import torch

    from streamdiff.backends.accelerate import accelerate
    from streamdiff.stream import StreamPipeline

    kinds = controlnet.split("+") if controlnet else []
    estimator = depth_estimator if "depth" in kinds else None  # only a depth ControlNet takes one
    pipe = StreamPipeline.from_model(model, random_weights=True, device="cuda", dtype=torch.float16,
                                     controlnet=kinds or None, strength=1.0, steps=steps,
                                     depth_estimator=estimator or "small")
    pipe.prepare(prompt=PROMPT)
    start = time.perf_counter()
    stream, report = accelerate(pipe, accel, cache_dir=cache, progress=lambda _: None)
    for frame in frames[:3]:
        stream.img2img(frame)
    built = time.perf_counter() - start
    torch.cuda.reset_peak_memory_stats()
    result = timed(stream.img2img, frames, warmup, calls)
    peak = torch.cuda.max_memory_allocated() / 2**30
    del stream, pipe
    torch.cuda.empty_cache()
    return {"model": model, "controlnet": controlnet, "depth_estimator": estimator, "accel": report.mode,
            "steps": steps, **result, "start_s": built, "peak_gib": peak}


def diffusers_case(model: str, frames: list[Any], warmup: int, calls: int) -> dict[str, Any]:
    """diffusers' ControlNet img2img pipeline on random weights of the same architecture, TAESD, one step, as
    `streamdiff bench --controlnet canny --compare diffusers` times it (bench/baselines.py): the engine's own
    device Canny makes the control picture, so that the pipelines are what differs."""
    import torch

    from streamdiff.bench.baselines import diffusers_call
    from streamdiff.config import StreamConfig
    from streamdiff.models.architectures import build_random_pipeline
    from streamdiff.models.controlnets import random_controlnet
    from streamdiff.models.registry import get_spec
    from streamdiff.stream import Components

    base = build_random_pipeline(get_spec(model), taesd=True, dtype=torch.float16, device="cuda")
    components = Components.from_diffusers(base, random_controlnet(base.unet).to(torch.float16))
    config = StreamConfig(device="cuda", dtype=torch.float16, strength=1.0, steps=1, control_preprocess="canny")
    result = timed(diffusers_call(components, config, PROMPT, "img2img"), frames, warmup, calls)
    return {"model": model, "controlnet": "canny", "accel": "diffusers", "steps": 1, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="sd-turbo")
    parser.add_argument("--accel", default="none,max")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--controlnets", default="canny,depth",
                        help="kinds timed beside the stream without one; a+b: both steering one stream")
    parser.add_argument("--skip-plain", action="store_true", help="leave out the stream without a ControlNet")
    parser.add_argument("--depth-estimator", default="small", help="Depth Anything V2 size for the depth cases")
    parser.add_argument("--compile-cache", type=Path)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--no-diffusers", action="store_true")
    args = parser.parse_args()
    import torch

    from streamdiff.bench.report import environment

    frames = clip(512, 24)
    rows = []
    kinds = [*([] if args.skip_plain else [None]), *args.controlnets.split(",")]
    cases = [(accel, control) for accel in args.accel.split(",") for control in kinds]
    for accel, control in cases:
        rows.append(stream_case(args.model, control, accel, args.steps, args.compile_cache, frames,
                                args.warmup, args.calls, args.depth_estimator))
        print(json.dumps(rows[-1]), flush=True)
    if not args.no_diffusers:
        rows.append(diffusers_case(args.model, frames, args.warmup, min(args.calls, 30)))
        print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"environment": environment(torch.device("cuda")), "results": rows,
              "command": "python3 benchmarks/controlnet_step.py " + " ".join(
                  f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in vars(args).items()
                  if v not in (None, False) and k != "out")}
    name = "controlnet_step.json" if args.depth_estimator == "small" else f"controlnet_step_{args.depth_estimator}.json"
    (args.out / name).write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
