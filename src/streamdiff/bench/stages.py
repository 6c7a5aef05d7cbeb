"""Per-stage time of one stream step: each stage timed alone, as the step runs it (graph or eager).

The stages of a step are captured one by one (in graph modes) or called eagerly, each on inputs of the
step's shapes, and timed with device events; `other` is what the whole step takes beyond their sum
(scheduler math, copies between stages, and in eager modes the Python between launches).
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..config import CfgType, StreamConfig
from ..stream import StreamPipeline
from ..backends.graphs import CudaGraphCapture

STAGES: tuple[str, ...] = ("upload", "preprocess", "encode", "unet", "decode", "postprocess", "download")


def unet_calls(config: StreamConfig) -> list[int]:
    """The UNet batch of each denoiser call one frame needs (one call with the stream batch)."""
    f, n = config.frame_buffer_size, config.denoising_steps
    full = config.uses_guidance and config.cfg_type is CfgType.FULL
    initialize = config.uses_guidance and config.cfg_type is CfgType.INITIALIZE
    per_step = f * (2 if full else 1)
    if config.use_denoising_batch:
        return [n * per_step + (f if initialize else 0)]
    return [per_step + (f if initialize else 0)] + [per_step] * (n - 1)


def _timer(device: torch.device, graphs: bool) -> Callable[[Callable[[], object], int], float]:
    """A function timing `fn` `repeats` times; returns the median in milliseconds."""

    def run(fn: Callable[[], object], repeats: int) -> float:
        call = fn
        if graphs:
            graph, _ = CudaGraphCapture(warmup=2)(fn, ())
            call = graph.replay
        samples = []
        for _ in range(repeats):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                call()
                end.record()
                end.synchronize()
                samples.append(start.elapsed_time(end))
            else:
                begin = time.perf_counter()
                call()
                samples.append((time.perf_counter() - begin) * 1000.0)
        return float(np.median(samples))

    return run


@torch.no_grad()
def stage_times(pipe: StreamPipeline, *, graphs: bool, repeats: int = 20) -> dict[str, float]:
    """Median milliseconds of each stage of one img2img step of `pipe` (prepared, accelerated or not)."""
    cfg, device, dtype = pipe.config, pipe.device, pipe.dtype
    f, h, w = cfg.frame_buffer_size, cfg.height, cfg.width
    timer = _timer(device, graphs and device.type == "cuda")
    frames = torch.randint(0, 256, (f, h, w, 3), dtype=torch.uint8, pin_memory=device.type == "cuda")
    frames_dev = frames.to(device)
    pixels = pipe.device_pixels(frames_dev)
    latents = pipe.codec.encode(pixels)
    pictures = (pipe.codec.decode(latents) / 2 + 0.5).clamp(0, 1)
    out_dev = torch.empty((f, h, w, 3), dtype=torch.uint8, device=device)
    out_host = torch.empty_like(out_dev, device="cpu", pin_memory=device.type == "cuda")
    embeds = pipe.prompts.encode("")
    times = {
        "upload": timer(lambda: frames_dev.copy_(frames, non_blocking=True), repeats),
        "preprocess": timer(lambda: pipe.device_pixels(frames_dev), repeats),
        "encode": timer(lambda: pipe.codec.encode(pixels), repeats),
        "unet": sum(timer(_unet_call(pipe, b, embeds, dtype), repeats) for b in unet_calls(cfg)),
        "decode": timer(lambda: pipe.codec.decode(latents), repeats),
        "postprocess": timer(lambda: out_dev.copy_(_to_uint8(pictures)), repeats),
        "download": timer(lambda: out_host.copy_(out_dev, non_blocking=True), repeats),
    }
    return times


def _unet_call(pipe: StreamPipeline, batch: int, embeds: Tensor, dtype: torch.dtype) -> Callable[[], Tensor]:
    cfg = pipe.config
    latents = torch.randn((batch, 4, cfg.height // 8, cfg.width // 8), device=pipe.device, dtype=dtype)
    timesteps = torch.full((batch,), 999, device=pipe.device, dtype=torch.long)
    text = embeds.expand(batch, -1, -1).contiguous()
    return lambda: pipe.denoiser(latents, timesteps, text)


def _to_uint8(pictures: Tensor) -> Tensor:
    return (pictures.float() * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
