"""The engine's exact module rewrites on the CPU, part by part: what `--accel eager` takes off a frame there.

For one model's UNet and TAESD (random weights of the real architecture, float32, batch 1), times
- the UNet: as diffusers builds it, with its upsampling layers folded into transposed convolutions
  (upsample_fold.py), in channels-last layout, and both;
- TAESD's encoder and decoder together: as diffusers builds them, in channels-last layout, fused with
  PyTorch's kernels (codec_fusion.TORCH: ReLU and skip in place, the decoder's upsampling folded), and both;
in rounds that take the variants in turn, so a shared machine's load spreads over all of them. Each variant
also reports its largest difference from the plain module's output. One JSON line per variant, and the
whole as JSON with --out.

    python benchmarks/cpu_rewrites_probe.py --model sdxs-512 --rounds 5 --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderTiny, UNet2DConditionModel

from streamdiff.backends import codec_fusion, upsample_fold
from streamdiff.models.architectures import TAESD_CONFIG, unet_config
from streamdiff.models.registry import get_spec

Setup = Callable[[str], Callable[[], torch.Tensor]]


def unet_variants(model: str) -> tuple[tuple[str, ...], Setup]:
    spec = get_spec(model)
    unet = UNet2DConditionModel(**unet_config(model, spec.resolution)).eval()
    side = spec.resolution // 8
    latents = torch.randn(1, unet.config.in_channels, side, side)
    embeddings = torch.randn(1, 77, unet.config.cross_attention_dim)
    timestep = torch.tensor([999])

    def setup(name: str) -> Callable[[], torch.Tensor]:
        (upsample_fold.fold_upsamplers if "fold" in name else upsample_fold.unfold_upsamplers)(unet)
        layout = torch.channels_last if "channels_last" in name else torch.contiguous_format
        unet.to(memory_format=layout)
        x = latents.contiguous(memory_format=layout)
        return lambda: unet(x, timestep, encoder_hidden_states=embeddings).sample

    return ("plain", "fold", "channels_last", "fold+channels_last"), setup


def codec_variants(model: str) -> tuple[tuple[str, ...], Setup]:
    resolution = get_spec(model).resolution
    vae = AutoencoderTiny(**TAESD_CONFIG).eval()
    pictures = torch.rand(1, 3, resolution, resolution) * 2 - 1
    latents = torch.randn(1, 4, resolution // 8, resolution // 8)

    def setup(name: str) -> Callable[[], torch.Tensor]:
        codec_fusion.unfuse(vae)
        if "fused" in name:
            codec_fusion.fuse(vae, codec_fusion.TORCH)
        layout = torch.channels_last if "channels_last" in name else torch.contiguous_format
        vae.to(memory_format=layout)
        x, z = pictures.contiguous(memory_format=layout), latents.contiguous(memory_format=layout)
        return lambda: torch.cat([vae.encoder(x).flatten(), vae.decoder(z).flatten()])

    return ("plain", "channels_last", "fused", "fused+channels_last"), setup


def measure(names: tuple[str, ...], setup: Setup, rounds: int) -> dict[str, dict[str, Any]]:
    seconds: dict[str, list[float]] = {n: [] for n in names}
    difference: dict[str, float] = {}
    reference = None
    for r in range(rounds):
        for name in names:
            call = setup(name)
            out = call()  # also the warm-up after the module changed
            if reference is None:
                reference = out
            if r == 0:
                difference[name] = float((out - reference).abs().max() / reference.abs().max())
            start = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - start)
    return {n: {"median_s": sorted(s)[len(s) // 2], "runs_s": s, "max_rel_diff_vs_plain": difference[n]}
            for n, s in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sdxs-512")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--parts", default="unet,codec")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    report: dict[str, Any] = {"model": args.model, "torch": torch.__version__, "threads": torch.get_num_threads(),
                              "cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine()}
    with torch.inference_mode():
        for part in args.parts.split(","):
            names, setup = (unet_variants if part == "unet" else codec_variants)(args.model)
            report[part] = measure(names, setup, args.rounds)
            for name, row in report[part].items():
                print(json.dumps({"part": part, "variant": name, **row}), flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"rewrites-{args.model}.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
