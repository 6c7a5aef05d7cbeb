"""Whether Dynamo's own trace cache (`caching_precompile`) can take the tracing off a warm start.

A warm start still spends seconds in Dynamo tracing the UNet's Python again (tenth round). PyTorch has an
experimental switch, `torch._dynamo.config.caching_precompile` (environment TORCH_CACHING_PRECOMPILE=1),
that saves each compiled frame with its guards into the compile cache (`torch.compiler.save_cache_artifacts`
writes it) and loads it at the next start instead of tracing. Unlike a bare `aot_compile` (twelfth round) it
keeps guards. This starts the engine's compiled stream (`accelerate(..., "compile")`) in fresh processes,
with the switch off and on, each twice on its own empty cache: a cold and a warm start. Each child reports
its first frame's seconds, Dynamo's own phase times, its trace-cache counters, the error a failed load
logged, and its largest difference from the uncompiled stream on the same frame.

    python benchmarks/precompile_cache_probe.py --model tiny --device cuda --work DIR --out DIR
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


class _Errors(logging.Handler):
    """Keeps the first line of each error PyTorch logs (a failed trace-cache load is logged, not raised)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage().splitlines()[0][:300])


def child(model: str, device: str, cache: Path, save: bool) -> dict[str, Any]:
    import numpy as np
    import torch
    from torch._dynamo.utils import compile_times, counters

    from streamdiff.backends.accelerate import accelerate
    from streamdiff.stream import StreamPipeline

    errors = _Errors()
    logging.getLogger("torch").addHandler(errors)
    pipe = StreamPipeline.from_model(model, random_weights=True, device=device, seed=2)
    pipe.prepare(prompt="a lighthouse at dusk")
    size = (pipe.config.height, pipe.config.width, 3)
    frame = np.random.default_rng(0).integers(0, 256, size, np.uint8)
    reference = pipe.img2img(frame, output_type="np")
    pipe.reset()
    stream, _ = accelerate(pipe, "compile", cache_dir=cache, build=False, progress=lambda _: None)
    start = time.perf_counter()
    out = stream.img2img(frame, output_type="np")
    first = time.perf_counter() - start
    if save:
        torch.compiler.save_cache_artifacts()
    names, values = compile_times(repr="csv", aggregate=True) or ([], [])
    phases = {n: float(v) for n, v in zip(names, values)
              if n in ("bytecode_tracing", "OutputGraph.call_user_compiler", "_compile.compile_inner")}
    return {"first_frame_s": first, "dynamo_s": phases, "trace_cache": dict(counters["dynamo_cache"]),
            "errors": errors.lines[:3], "max_diff_vs_uncompiled": int(np.abs(out.astype(int) - reference).max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--work", type=Path, required=True, help="compile caches (emptied)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", choices=["off", "on"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.model, args.device, args.work, args.child == "on")), flush=True)
        return
    subprocess.run(["rm", "-rf", str(args.work)], check=True)
    rows = []
    for switch in ("off", "on"):
        cache = args.work / switch
        for start in ("cold", "warm"):
            env = {**os.environ, "TORCH_CACHING_PRECOMPILE": "1" if switch == "on" else "0"}
            command = [sys.executable, __file__, "--model", args.model, "--device", args.device,
                       "--work", str(cache), "--child", switch]
            done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            row = {"caching_precompile": switch, "start": start,
                   **(json.loads(lines[-1]) if lines else {"rc": done.returncode, "stderr": done.stderr[-1500:]})}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"precompile-cache-{args.model}.json").write_text(json.dumps({"rows": rows}, indent=1))


if __name__ == "__main__":
    main()
