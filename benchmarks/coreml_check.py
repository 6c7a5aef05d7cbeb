"""On a Mac: the Core ML backend against PyTorch on the same weights. Converts (or finds) the parts, runs the
same frames through a float32 CPU stream (the reference), an MPS stream (what a Mac user runs without Core ML)
and the Core ML stream, and prints per-frame times and how far Core ML's pictures are from the reference.
Elsewhere it stops with the reason. Nothing here asserts.

    python benchmarks/coreml_check.py --model sdxs-512 [--random-weights] --frames 60 --out coreml.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np

PROMPT = "a watercolor painting of a lighthouse at dusk"


def _frames(count: int, size: int) -> list[np.ndarray]:
    """A moving gradient with noise: every frame differs, as a camera's do."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    frames = []
    for i in range(count):
        base = (ramp[None, :, None] + 4 * i + ramp[:, None, None] / 2) % 256
        frames.append(np.clip(base + rng.normal(0, 8, (size, size, 3)), 0, 255).astype(np.uint8))
    return frames


def _run(stream, frames: list[np.ndarray]) -> tuple[list[float], list[np.ndarray]]:
    times, outputs = [], []
    for frame in frames:
        start = time.perf_counter()
        outputs.append(stream.img2img(frame, output_type="np"))
        times.append((time.perf_counter() - start) * 1000)
    return times, outputs


def _stream(args: argparse.Namespace, device: str, accel: str):
    from streamdiff.backends.accelerate import accelerate
    from streamdiff.stream import StreamPipeline

    dtype = "float32" if device == "cpu" else "float16"
    pipe = StreamPipeline.from_model(args.model, random_weights=args.random_weights, device=device, dtype=dtype,
                                     seed=2, width=args.size, height=args.size)
    pipe.prepare(prompt=PROMPT)
    start = time.perf_counter()
    stream, _ = accelerate(pipe, accel, coreml_dir=args.coreml_dir, progress=print)
    return stream, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sdxs-512")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--coreml-dir", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    import torch

    from streamdiff.backends.coreml import coreml_unsupported

    reason = coreml_unsupported()
    if reason:
        raise SystemExit(f"coreml_check: {reason}")
    frames = _frames(args.frames, args.size)
    report: dict = {"model": args.model, "random_weights": args.random_weights, "size": args.size,
                    "machine": platform.platform(), "processor": platform.processor(), "torch": torch.__version__}
    runs = [("reference", "cpu", "none"), ("coreml", "cpu", "coreml")]
    if torch.backends.mps.is_available():
        runs.insert(1, ("mps", "mps", "none"))
    outputs = {}
    for name, device, accel in runs:
        stream, start_seconds = _stream(args, device, accel)
        _run(stream, frames[:3])  # first frames: conversions, Core ML's own compile, allocator warm-up
        stream.reset()
        times, outputs[name] = _run(stream, frames)
        report[name] = {"device": device, "accel": accel, "start_s": round(start_seconds, 1),
                        "median_ms": round(statistics.median(times), 2),
                        "p90_ms": round(sorted(times)[int(0.9 * len(times))], 2)}
        print(name, report[name], flush=True)
    reference = np.stack(outputs.pop("reference")).astype(int)
    for name, pictures in outputs.items():
        diff = np.abs(np.stack(pictures).astype(int) - reference)
        report[name].update(max_level_diff=int(diff.max()), mean_level_diff=round(float(diff.mean()), 3))
        print(name, "vs reference: max", int(diff.max()), "mean", round(float(diff.mean()), 3), "levels")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
