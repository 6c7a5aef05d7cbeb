"""Where a start-up's seconds go: cold and warm builds of one stream, each in a fresh process.

A user waits for the model to load, then for `accelerate()` to build the stream (compile the UNet, or load
it from the on-disk cache, and capture the step as a CUDA graph). This runs that start-up the way the
commands do, in a new Python process per run, and splits it:
- `load`: the random-weight model built on the GPU and the prompt encoded (a real model reads its files here);
- `prepare`: accelerate()'s module rewrites (folding, codec fusion, channels-last, fused projections);
- `first_call`: the first frame, which compiles (or loads the compiled code) and runs it eagerly, and in
  it Dynamo's tracing and the compiler backend (AOTAutograd and Inductor, or their cache loads);
- `second_call`: the second frame, which captures the step as a CUDA graph;
then the interval of 50 frames once ready. Runs: `cold` (an empty compile cache), `warm` (the cache the
cold run left), `graphs` (no compilation: CUDA graphs over the eager kernels, the quickest start), and
`background-cold` / `background-warm` (accelerate(..., background=True), as the camera app starts: CUDA
graphs at once while a thread compiles; frames are timed one by one until 50 frames after the switch).
Background runs ask for frames back to back, or with `--fps N` at most N a second, as a camera delivers
them (the compile thread then has the interpreter and the GPU between frames).

    python benchmarks/startup_probe.py --out DIR --cache DIR --models sd-turbo,sdxs-512 --runs cold,warm,warm,graphs
    python benchmarks/startup_probe.py --out DIR --cache DIR --models sdxs-512 --runs background-cold,background-warm --fps 30
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def child(model: str, mode: str, cache: Path, device: str, fps: float = 0.0) -> dict[str, Any]:
    """One start-up in this process, split into its phases (seconds), and the ready stream's frame interval."""
    start = time.perf_counter()
    import numpy as np
    import torch
    from torch._dynamo.utils import compile_times, counters

    from streamdiff.backends.accelerate import accelerate
    from streamdiff.config import StreamConfig
    from streamdiff.models.loading import load_model
    from streamdiff.stream import Components, StreamPipeline

    imported = time.perf_counter()
    dtype = torch.float16 if device == "cuda" else torch.float32
    loaded = load_model(model, dtype=dtype, device=device, random_weights=True)
    config = StreamConfig(device=device, dtype=dtype, seed=2, t_index_list=loaded.spec.t_index_list,
                          width=loaded.spec.resolution, height=loaded.spec.resolution)
    pipe = StreamPipeline(Components.from_diffusers(loaded.pipe), config, lcm_boundary=loaded.spec.lcm_boundary)
    pipe.prepare(prompt="a watercolor painting of a lighthouse at dusk")
    if device == "cuda":
        torch.cuda.synchronize()
    ready_model = time.perf_counter()
    frame = np.random.default_rng(0).integers(0, 256, (1, config.height, config.width, 3), np.uint8)
    if mode == "background":
        return {"model": model, "import_s": imported - start, "load_s": ready_model - imported,
                **_background(pipe, cache, frame, "max" if device == "cuda" else "compile", fps)}
    stream, report = accelerate(pipe, mode, cache_dir=cache, build=False, progress=lambda _: None)
    prepared = time.perf_counter()
    stream.img2img(frame, output_type="np")
    first = time.perf_counter()
    stream.img2img(frame, output_type="np")
    second = time.perf_counter()
    intervals = []
    for _ in range(50):
        t = time.perf_counter()
        stream.img2img(frame, output_type="np")
        intervals.append(time.perf_counter() - t)
    dynamo = compile_times(repr="csv", aggregate=True)
    return {
        "model": model, "mode": report.mode, "import_s": imported - start, "load_s": ready_model - imported,
        "prepare_s": prepared - ready_model, "first_call_s": first - prepared, "second_call_s": second - first,
        "ready_s": second - ready_model, "frame_ms": 1000 * float(np.median(intervals)),
        "captured": stream.captured,
        "dynamo_s": dict(zip(dynamo[0], (float(v) for v in dynamo[1]))) if dynamo and dynamo[0] else {},
        "cache_hits": {f"{group}.{name}": n for group in ("inductor", "aot_autograd")
                       for name, n in counters[group].items() if "cache" in name},
    }


def _background(pipe: Any, cache: Path, frame: Any, mode: str, fps: float = 0.0, after: int = 50,
                limit_s: float = 400.0) -> dict[str, Any]:
    """Start as the camera app does, then time every frame: those served while the compile thread works,
    the frame that switches to the compiled step, and `after` frames past it. fps > 0: frames are asked for
    at most that often, as from a camera."""
    import numpy as np
    from torch._dynamo.utils import counters

    from streamdiff.backends import background
    from streamdiff.backends.accelerate import accelerate

    start = time.perf_counter()
    stream, report = accelerate(pipe, mode, cache_dir=cache, background=True, progress=lambda _: None)
    ready = time.perf_counter()
    upgrade = stream.upgrade
    before: list[float] = []
    switch_s = switched_at = None
    due = ready
    while stream.upgrading and time.perf_counter() - ready < limit_s:
        if fps > 0:
            time.sleep(max(0.0, due - time.perf_counter()))
            due = max(due + 1.0 / fps, time.perf_counter())
        t = time.perf_counter()
        stream.img2img(frame, output_type="np")
        took = time.perf_counter() - t
        if stream.upgrading:
            before.append(took)
        else:
            switch_s, switched_at = took, time.perf_counter() - ready
    after_ms = []
    for _ in range(after):
        t = time.perf_counter()
        stream.img2img(frame, output_type="np")
        after_ms.append(1000 * (time.perf_counter() - t))
    return {
        "mode": f"{report.mode} -> {stream.mode}", "fps": fps or None, "switch_interval_s": background.SWITCH_INTERVAL,
        "ready_s": ready - start, "compile_thread_s": upgrade.seconds,
        "switched_after_s": switched_at, "switch_frame_s": switch_s, "frames_while_compiling": len(before),
        "ms_while_compiling": 1000 * float(np.median(before)) if before else None,
        "frame_ms": float(np.median(after_ms)), "captured": stream.captured,
        # One graph per compiled module when the stream reused the thread's traces; more: it compiled again.
        "dynamo_graphs": counters["stats"]["unique_graphs"], "compiled_modules": len(upgrade.parts),
        "error": repr(upgrade.error) if upgrade.error else None,
    }


def _child_run(model: str, mode: str, cache: Path, device: str, fps: float, switch: float | None) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", model, mode, "--cache", str(cache), "--device", device,
               "--fps", str(fps), *([] if switch is None else ["--switch-interval", str(switch)])]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # a failed run is a row
    wall = time.perf_counter() - started
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"model": model, "mode": mode, "rc": done.returncode, "stderr_tail": done.stderr[-1500:]}
    return {**json.loads(lines[-1]), "process_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--cache", type=Path, required=True, help="compile cache folder (emptied by a cold run)")
    parser.add_argument("--models", default="sd-turbo")
    parser.add_argument("--runs", default="cold,warm,warm,graphs")
    parser.add_argument("--device", default="cuda", help="cuda; cpu to check the script (graphs runs then fail)")
    parser.add_argument("--fps", type=float, default=0.0, help="background runs: frames a second (0: back to back)")
    parser.add_argument("--switch-interval", type=float, default=None,
                        help="background runs: the interpreter switch interval the compile thread sets (seconds)")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.switch_interval is not None:
        from streamdiff.backends import background

        background.SWITCH_INTERVAL = args.switch_interval
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.cache, args.device, args.fps)), flush=True)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in args.models.split(","):
        cache = args.cache / model
        for run in args.runs.split(","):
            if run in ("cold", "background-cold"):
                subprocess.run(["rm", "-rf", str(cache)], check=True)
            mode = ("graphs" if run == "graphs" else "background" if run.startswith("background")
                    else "max" if args.device == "cuda" else "compile")
            row = {"run": run, **_child_run(model, mode, cache, args.device, args.fps, args.switch_interval)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    env = {"cpu_count": os.cpu_count()}
    (args.out / "startup.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
