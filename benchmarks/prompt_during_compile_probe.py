"""A prompt change while the UNet compiles in the background (the camera app's start): how long it waits.

One stream (random weights, 512x512, `--accel max` compiled on its own thread, CUDA graphs of the uncompiled
kernels meanwhile; `compile` without graphs on a CPU) gets frames at a camera's pace (`--fps`). Once the first
frames are out it changes the prompt at once, then again with a transition over 8 frames, each as soon as the
change before has returned, and goes on until it has switched to the compiled step. Reported: what each change
waited (the call itself), the frames' own times and the longest gap between two frames while compiling, the
compilation's seconds, and the time inside the FX tracer's patch of torch.nn.Module.__call__ (the windows in
which a module must not run on another thread), summed over every thread. Nothing here asserts.

`--first-frame-delay S` waits S seconds before the first frame, as a camera app does while its camera opens (the
first frame of the restarted stream runs the modules eagerly). `--set-steps N` also sets N steps per frame a few
frames after the prompt changes, and reports what that call waited and at which frame the count changed.
`--similarity-filter T` runs the frames through the similarity filter (random frames: nothing is skipped, every
frame is measured), configured in the stream before `accelerate` as the camera and web apps do, or with
`--filter-at start` switched on just after the compile started, reporting what that call waited.
`--stall-sample S` samples the compiling thread's and the main thread's Python stacks every 10 ms while a frame's
call has taken more than S seconds, and writes the samples to `--stall-file`: where the compiler was while the
frame waited. A sampler that itself went unscheduled for long (`sampler_gap_ms`) saw the interpreter lock held
that long, in a call that does not release it; its sample is then where that call returned to. (faulthandler's
watchdog would read the stacks without the lock, but crashes on a running thread.)

    python3 benchmarks/prompt_during_compile_probe.py --model sd-turbo --cache DIR --label new --out FILE.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch.fx._symbolic_trace as fx_tracing

from streamdiff.backends.background import THREAD_NAME

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


class StallSampler:
    """Samples the compiling thread's stack while a frame's call has run longer than `after` seconds."""

    def __init__(self, after: float, began: float):
        self.after, self.began = after, began
        self.frame_started: float | None = None
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stall-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = time.perf_counter()
        while not self._stop.wait(0.01):
            now = time.perf_counter()
            started = self.frame_started
            if started is not None and now - started > self.after:
                stacks = sys._current_frames()
                worker = next((t for t in threading.enumerate() if t.name == THREAD_NAME), None)
                self.samples.append({"at_s": round(now - self.began, 3), "frame_ms": round(1000 * (now - started), 1),
                                     "sampler_gap_ms": round(1000 * (now - last), 1),
                                     "stack": _stack(stacks.get(worker.ident) if worker is not None else None),
                                     "main": _stack(stacks.get(threading.main_thread().ident))})
            last = now

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _stack(frame: Any) -> list[str]:
    """The innermost 20 calls of a thread's stack, as file:line function."""
    if frame is None:
        return []
    return [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in traceback.extract_stack(frame)[-20:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sd-turbo")
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--label", default="")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--first-frame-delay", type=float, default=0.0,
                        help="seconds between the stream being ready and its first frame (a camera opening)")
    parser.add_argument("--set-steps", type=int, default=None)
    parser.add_argument("--similarity-filter", type=float, default=None, metavar="THRESHOLD")
    parser.add_argument("--filter-at", choices=("build", "start"), default="build",
                        help="build: in the stream before it is accelerated (the apps); start: set just after the "
                             "compile started")
    parser.add_argument("--stall-sample", type=float, default=None)
    parser.add_argument("--stall-file", type=Path, default=Path("stalls.json"))
    args = parser.parse_args()
    watch_fx_windows()

    import torch

    from streamdiff import StreamPipeline
    from streamdiff.backends.accelerate import accelerate

    start = time.perf_counter()
    at_build = args.similarity_filter is not None and args.filter_at == "build"
    pipe = StreamPipeline.from_model(args.model, random_weights=True, device=args.device, seed=2, width=args.size,
                                     height=args.size, similarity_threshold=args.similarity_filter if at_build else None)
    pipe.prepare(prompt="a watercolor painting of a lighthouse at dusk")
    stream, report = accelerate(pipe, "max" if args.device == "cuda" else "compile", background=True, cache_dir=args.cache, progress=lambda _: None)
    ready = time.perf_counter() - start
    filter_waited = None
    if args.similarity_filter is not None and not at_build:
        t = time.perf_counter()
        stream.set_similarity_filter(args.similarity_filter)
        filter_waited = time.perf_counter() - t
    frames = list(np.random.default_rng(0).integers(0, 256, (4, args.size, args.size, 3), np.uint8))
    changes = [("ink wash", 0), ("a charcoal sketch", 8)]
    waited: list[float] = []
    times: list[tuple[float, float, bool]] = []  # (start, seconds, compiling)
    upgrade = stream.upgrade
    time.sleep(args.first_frame_delay)
    began = time.perf_counter()
    switched_at = steps_changed_at = steps_waited = None
    sampler = StallSampler(args.stall_sample, began) if args.stall_sample else None
    k = 0
    while time.perf_counter() - began < 300:
        tick = began + k / args.fps
        time.sleep(max(0.0, tick - time.perf_counter()))
        if k >= 3 and changes:
            prompt, transition = changes.pop(0)
            t = time.perf_counter()
            stream.update_prompt(prompt, transition_frames=transition)
            waited.append(time.perf_counter() - t)
        if k == 6 and args.set_steps is not None:
            t = time.perf_counter()
            stream.set_steps(args.set_steps)
            steps_waited = time.perf_counter() - t
        compiling = stream.upgrading
        t = time.perf_counter()
        if sampler is not None:
            sampler.frame_started = t
        stream.img2img(frames[k % len(frames)], output_type="np")
        if sampler is not None:
            sampler.frame_started = None
        times.append((t, time.perf_counter() - t, compiling))
        if steps_changed_at is None and k >= 6 and stream.config.denoising_steps == args.set_steps:
            steps_changed_at = k
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
        "first_frame_ms": 1000 * times[0][1],
        "frame_ms_median_while_compiling": 1000 * statistics.median(s for _, s in during) if during else None,
        "longest_gap_between_frames_while_compiling_ms": 1000 * max(gaps) if gaps else None,
        "frame_ms_median_compiled": 1000 * statistics.median(after) if after else None,
        "fx_windows": len(WINDOWS), "fx_windows_s": sum(WINDOWS), "fx_longest_window_s": max(WINDOWS, default=0.0),
        "threads": threading.active_count(),
        "similarity_filter": args.similarity_filter, "filter_at": args.filter_at if args.similarity_filter else None,
        "similarity_filter_waited_s": filter_waited, "skipped": stream.stats.skipped,
        "set_steps_waited_s": steps_waited, "steps_changed_at_frame": steps_changed_at, "switched_at_frame": switched_at,
        "gaps_over_100ms": [(round(a[0] + a[1] - began, 3), round(1000 * g, 1))
                            for a, g in zip(during, gaps) if g > 0.1],
    }
    if sampler is not None:
        sampler.stop()
        args.stall_file.write_text(json.dumps(sampler.samples, indent=1))
        result["stall_samples"] = len(sampler.samples)
    print(json.dumps(result), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as out:
        out.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
