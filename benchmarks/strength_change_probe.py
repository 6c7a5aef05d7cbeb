"""What a live strength change costs a running accelerated stream (the camera app's `]` / `[` keys).

For each step count: build the stream (`--accel`, default max), run warm frames, then alternate the
strength between two values every `--every` frames. Reports the median frame before any change, the time
of the set_strength call itself, the frame right after it (with several steps, or self / initialize
guidance, that frame refills the stream the ordinary way) and the median of the other frames after the
changes; and that no step was captured again.

    python3 benchmarks/strength_change_probe.py --out DIR [--model sd-turbo] [--steps 1,2] [--compile-cache DIR]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from pathlib import Path
from typing import Any

from probe_rows import collect, save


def probe(model: str, steps: int, accel: str, cache: Path | None, device: str, changes: int,
          every: int) -> dict[str, Any]:
    import numpy as np
    import torch

    from streamdiff.backends.accelerate import accelerate
    from streamdiff.stream import StreamPipeline

    pipe = StreamPipeline.from_model(model, random_weights=model != "tiny", device=device, strength=0.8,
                                     steps=steps)
    pipe.prepare(prompt="a watercolor painting of a lighthouse at dusk")
    stream, _ = accelerate(pipe, accel, cache_dir=cache, progress=lambda _: None)
    cfg = stream.config
    frame = np.random.default_rng(0).integers(0, 256, (cfg.height, cfg.width, 3), np.uint8)

    def timed(call: Any) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        call()
        return 1000 * (time.perf_counter() - start)

    for _ in range(10):
        stream.img2img(frame)
    captured = list(stream.captured)
    steady = [timed(lambda: stream.img2img(frame)) for _ in range(50)]
    calls, first, later = [], [], []
    for k in range(changes):
        strength = 0.5 if k % 2 == 0 else 0.8
        calls.append(timed(functools.partial(stream.set_strength, strength)))
        first.append(timed(lambda: stream.img2img(frame)))
        later += [timed(lambda: stream.img2img(frame)) for _ in range(every - 1)]
    return {
        "model": model, "steps": steps, "mode": stream.mode, "t_index_list": list(stream.config.t_index_list),
        "frame_ms": statistics.median(steady), "set_strength_ms": statistics.median(calls),
        "first_frame_after_ms": statistics.median(first), "later_frames_ms": statistics.median(later),
        "changes": changes, "captured_again": stream.captured != captured,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="sd-turbo")
    parser.add_argument("--steps", default="1,2")
    parser.add_argument("--accel", default="max")
    parser.add_argument("--compile-cache", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--every", type=int, default=5, help="frames between two changes")
    args = parser.parse_args()
    rows = collect(probe(args.model, steps, args.accel, args.compile_cache, args.device, args.changes, args.every)
                   for steps in (int(s) for s in args.steps.split(",")))
    save(args.out, "strength-change.json", rows, args.device)


if __name__ == "__main__":
    main()
