"""Where the tiny SDXL's accelerated frames part from the eager engine's: the same frames and changes as
tests/backends/test_cuda.py's SDXL replay test, through the eager engine with stored conditioning, the rewritten
modules without capture ("eager" mode) and the graph modes, each against the plain eager engine. Prints, per
frame, the largest difference in levels and how many values are more than 1 and more than 3 levels off.

    python benchmarks/sdxl_replay_gap_probe.py --dtype float16
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch

from streamdiff import StreamPipeline
from streamdiff.backends.accelerate import accelerate
from streamdiff.backends.torch import TorchDenoiser
from streamdiff.models.tiny import build_tiny_sdxl_pipeline

SETTINGS = {"t_index_list": (10, 30), "cfg_type": "self", "guidance_scale": 1.4}


def _stream(tiny, dtype: str, cache_conditioning: bool) -> StreamPipeline:
    pipe = StreamPipeline.from_diffusers(copy.deepcopy(tiny), device="cuda", dtype=dtype, seed=3, width=64,
                                         height=64, fit="crop", **SETTINGS)
    pipe.denoiser = TorchDenoiser(pipe.components.unet, cache_conditioning=cache_conditioning)
    pipe.prepare("a red fox", negative_prompt="blurry")
    return pipe


def _change(stream, k: int) -> None:
    if k == 3:
        stream.update_prompt("a cat")
    elif k == 6:
        stream.set_strength(0.3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32", "bfloat16"])
    parser.add_argument("--seed", type=int, default=6)
    args = parser.parse_args()
    tiny = build_tiny_sdxl_pipeline(seed=0)
    eager = _stream(tiny, args.dtype, cache_conditioning=False)
    variants = {"stored-conditioning": _stream(tiny, args.dtype, cache_conditioning=True)}
    for mode in ("eager", "graphs"):
        variants[mode], _ = accelerate(_stream(tiny, args.dtype, cache_conditioning=True), mode)
    rng = np.random.default_rng(args.seed)
    frames = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(9)]
    for k, frame in enumerate(frames):
        for stream in (eager, *variants.values()):
            _change(stream, k)
        reference = eager.img2img(frame).astype(int)
        row = []
        for name, stream in variants.items():
            difference = np.abs(stream.img2img(frame).astype(int) - reference)
            row.append(f"{name} max {difference.max()} >1 {(difference > 1).sum()} >3 {(difference > 3).sum()}")
        print(f"frame {k}: " + " | ".join(row), flush=True)


if __name__ == "__main__":
    torch.backends.cuda.matmul.allow_tf32 = False
    main()
