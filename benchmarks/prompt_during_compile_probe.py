"""A prompt change while the UNet compiles in the background (the camera app's start): how long it waits.

One stream (random weights, 512x512, `--accel max` compiled on its own thread, CUDA graphs of the uncompiled
kernels meanwhile; `compile` without graphs on a CPU) gets frames at a camera's pace (`--fps`). Once the first frames are out it changes the
prompt at once, then again with a transition over 8 frames, each as soon as the change before has returned,
and goes on until it has switched to the compiled step. Reported: what each change waited (the call itself),
the frames' own times and the longest gap between two frames while compiling, the compilation's seconds,
and the time inside the FX tracer's patch of torch.nn.Module.__call__ (the windows in which a module must not
run on another thread), summed over every thread. Nothing here asserts.

    python3 benchmarks/prompt_during_compile_probe.py --model sd-turbo --cache DIR --label new --out FILE.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch.fx._symbolic_trace as fx_tracing

WINDOWS: list[float] = []  # seconds of each FX patch window, any thread


def watch_fx_windows() -> None:
    """Time every block of the FX tracer's patcher (wrapped before anything else wraps it)."""
    patcher = fx_tracing._new_patcher

    @contextlib.contextmanager
    def timed() -> Any:
        start = time.perf_counter()
        with patcher() as patching:
            yield patching
        WINDOWS.append(time.perf_counter() - start)

    fx_tracing._new_patcher = timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sd-turbo")
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--label", default="")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    watch_fx_windows()

    import torch

    from streamdiff import StreamPipeline
    from streamdiff.backends.accelerate import accelerate

    start = time.perf_counter()
    pipe = StreamPipeline.from_model(args.model, random_weights=True, device=args.device, seed=2, width=args.size,
                                     height=args.size)
    pipe.prepare(prompt="a watercolor painting of a lighthouse at dusk")
    stream, report = accelerate(pipe, "max" if args.device == "cuda" else "compile", background=True, cache_dir=args.cache, progress=lambda _: None)
    ready = time.perf_counter() - start
    frames = list(np.random.default_rng(0).integers(0, 256, (4, args.size, args.size, 3), np.uint8))
    changes = [("ink wash", 0), ("a charcoal sketch", 8)]
    waited: list[float] = []
    times: list[tuple[float, float, bool]] = []  # (start, seconds, compiling)
    upgrade = stream.upgrade
    began = time.perf_counter()
    switched_at = None
    k = 0
    while time.perf_counter() - began < 300:
        tick = began + k / args.fps
        time.sleep(max(0.0, tick - time.perf_counter()))
        if k >= 3 and changes:
            prompt, transition = changes.pop(0)
            t = time.perf_counter()
            stream.update_prompt(prompt, transition_frames=transition)
            waited.append(time.perf_counter() - t)
        compiling = stream.upgrading
        t = time.perf_counter()
        stream.img2img(frames[k % len(frames)], output_type="np")
        times.append((t, time.perf_counter() - t, compiling))
        if switched_at is None and not stream.upgrading:
            switched_at = k
        if switched_at is not None and k >= switched_at + args.fps:
            break
        k += 1
    if args.device == "cuda":
        torch.cuda.synchronize()
    during = [(t, s) for t, s, c in times if c]
    gaps = [b[0] + b[1] - a[0] - a[1] for a, b in zip(during, during[1:])]
    after = [s for t, s, c in times if not c][5:]
    result = {
        "label": args.label, "model": args.model, "device": torch.cuda.get_device_name() if args.device == "cuda" else args.device, "torch": torch.__version__,
        "mode_at_start": report.mode, "mode_at_end": stream.mode, "ready_s": ready,
        "compile_s": upgrade.seconds if upgrade is not None else None,
        "prompt_change_waits_s": waited, "frames_while_compiling": len(during),
        "frame_ms_median_while_compiling": 1000 * statistics.median(s for _, s in during) if during else None,
        "longest_gap_between_frames_while_compiling_ms": 1000 * max(gaps) if gaps else None,
        "frame_ms_median_compiled": 1000 * statistics.median(after) if after else None,
        "fx_windows": len(WINDOWS), "fx_windows_s": sum(WINDOWS), "fx_longest_window_s": max(WINDOWS, default=0.0),
        "threads": threading.active_count(),
    }
    print(json.dumps(result), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as out:
        out.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
