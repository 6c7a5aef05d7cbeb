"""What a live change of the number of steps costs a running accelerated stream (set_steps: the `1`-`4` keys).

Each run builds one stream in a fresh process (random weights of the model's architecture), runs it warm,
then switches its step count through `--counts` (default 2,1,2,3,1), asking for frames back to back. For
each switch it reports the set_steps call, the first frame after it, the worst frame, how long until the
stream runs its final mode again (a replayed, compiled step), the frames served meanwhile and their median,
and the median of `--after` frames once there. Runs:
- `graphs`: CUDA graphs over eager kernels; a new count is captured at its first frames.
- `background-cold` / `background-warm`: `--accel max` as the camera and web apps start it (compiling in the
  background): a count not compiled yet runs uncompiled graphs at once while a thread compiles it; with an
  empty compile cache, then with the cache the cold run left.
- `sync-cold` / `sync-warm`: `--accel max` compiling on the frame thread (the video and bench commands):
  a new count's first frame compiles it.

    python3 benchmarks/step_switch_probe.py --out DIR --cache DIR [--model sd-turbo] [--runs graphs,background-cold]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RUNS = ("graphs", "background-cold", "background-warm", "sync-cold", "sync-warm")


def child(model: str, run: str, cache: Path, counts: list[int], after: int, limit_s: float) -> dict[str, Any]:
    import numpy as np
    import torch

    from streamdiff.backends.accelerate import accelerate
    from streamdiff.stream import StreamPipeline

    pipe = StreamPipeline.from_model(model, random_weights=True, device="cuda", steps=1, strength=1.0)
    pipe.prepare(prompt="a watercolor painting of a lighthouse at dusk")
    mode = "graphs" if run == "graphs" else "max"
    start = time.perf_counter()
    stream, report = accelerate(pipe, mode, cache_dir=cache, background=run.startswith("background"),
                                progress=lambda _: None)
    built_s = time.perf_counter() - start
    cfg = stream.config
    frame = np.random.default_rng(0).integers(0, 256, (cfg.height, cfg.width, 3), np.uint8)

    def frame_s() -> float:
        torch.cuda.synchronize()
        t = time.perf_counter()
        stream.img2img(frame, output_type="np")
        torch.cuda.synchronize()
        return time.perf_counter() - t

    first = _settle(stream, frame_s, mode, after, limit_s)  # the start, up to its compiled steps
    switches = []
    for count in counts:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        stream.set_steps(count)
        call_s = time.perf_counter() - t0
        switches.append({"steps": count, "set_steps_ms": 1000 * call_s, **_settle(stream, frame_s, mode, after,
                                                                                     limit_s, t0)})
        print(json.dumps(switches[-1]), file=sys.stderr, flush=True)
    return {"model": model, "run": run, "start_mode": report.mode, "build_s": built_s, "start": first,
            "switches": switches, "final_mode": stream.mode}


def _settle(stream: Any, frame_s: Any, mode: str, after: int, limit_s: float, t0: float | None = None) -> dict:
    """Frames until the stream runs `mode` with nothing compiling, then `after` more. Ready: the end of the
    last frame slower than 1.5x the median of the last `after` (an eager fill, a capture, a compile)."""
    t0 = time.perf_counter() if t0 is None else t0
    times: list[float] = []
    ends: list[float] = []

    def one() -> None:
        times.append(frame_s())
        ends.append(time.perf_counter() - t0)

    while (stream.upgrading or stream.mode != mode) and time.perf_counter() - t0 < limit_s:
        one()
    for _ in range(after):
        one()
    steady = statistics.median(times[-after:])
    slow = [i for i, t in enumerate(times) if t > 1.5 * steady]
    last = slow[-1] if slow else -1
    before = times[: last + 1]
    return {
        "first_frame_ms": 1000 * times[0], "worst_frame_ms": 1000 * max(times),
        "ready_after_s": ends[last] if slow else 0.0, "slow_frames": len(slow), "frames_before_ready": last + 1,
        "median_before_ready_ms": 1000 * statistics.median(before) if before else None,
        "steady_ms": 1000 * steady, "mode": stream.mode, "captured": stream.captured,
    }


def _child_run(model: str, run: str, cache: Path, counts: str, after: int, limit_s: float) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", model, run, "--cache", str(cache), "--counts", counts,
               "--after", str(after), "--limit", str(limit_s)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # a failed run is a row
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"model": model, "run": run, "rc": done.returncode, "stderr_tail": done.stderr[-1500:]}
    return {**json.loads(lines[-1]), "process_s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--cache", type=Path, required=True, help="compile cache folder (emptied by a cold run)")
    parser.add_argument("--model", default="sd-turbo")
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--counts", default="2,1,2,3,1")
    parser.add_argument("--after", type=int, default=30, help="frames timed once the stream is ready again")
    parser.add_argument("--limit", type=float, default=240.0, help="seconds to wait for a switch at most")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "RUN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.cache, counts, args.after, args.limit)), flush=True)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for run in args.runs.split(","):
        if run not in RUNS:
            parser.error(f"--runs takes {', '.join(RUNS)}; got {run!r}")
        cache = args.cache / run.split("-")[0]
        if run.endswith("-cold"):
            subprocess.run(["rm", "-rf", str(cache)], check=True)
        rows.append(_child_run(args.model, run, cache, args.counts, args.after, args.limit))
        print(json.dumps(rows[-1]), flush=True)
    (args.out / "step_switch.json").write_text(json.dumps({"rows": rows}, indent=1))


if __name__ == "__main__":
    main()
