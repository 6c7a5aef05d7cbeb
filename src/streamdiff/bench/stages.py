"""Per-stage time of one stream step: each stage timed alone, on exactly the inputs the step gives it.

One ordinary frame runs with hooks that record the UNet's, the encoder's and the decoder's inputs (their
shapes and memory layouts, so compiled code is reused, not rebuilt); each stage is then captured as a
graph of its own (graph modes) or called eagerly, and timed with device events. With a ControlNet,
`control` is the making of its control picture (Canny edges or estimated depth) from the preprocessed
frame; the ControlNet itself runs with the UNet, in `unet`. `other` in the reports is what the whole
step takes beyond the stages' sum: scheduler math and glue kernels, and in eager modes the Python
between launches.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from .. import added_conditions
from ..backends.graphs import CudaGraphCapture
from ..config import CfgType, StreamConfig
from ..images import to_uint8_hwc
from ..stream import StreamPipeline

# In step order; "control" only for a stream with a ControlNet.
STAGES: tuple[str, ...] = ("upload", "preprocess", "control", "encode", "unet", "decode", "postprocess", "download")


def unet_calls(config: StreamConfig) -> list[int]:
    """The UNet batch of each denoiser call one frame needs (one call with the stream batch)."""
    f, n = config.frame_buffer_size, config.denoising_steps
    full = config.uses_guidance and config.cfg_type is CfgType.FULL
    initialize = config.uses_guidance and config.cfg_type is CfgType.INITIALIZE
    per_step = f * (2 if full else 1)
    if config.use_denoising_batch:
        return [n * per_step + (f if initialize else 0)]
    return [per_step + (f if initialize else 0)] + [per_step] * (n - 1)


def _timer(device: torch.device, graphs: bool, repeats: int) -> Callable[[Callable[[], object]], float]:
    """A function timing `fn` `repeats` times; returns the median in milliseconds."""

    def run(fn: Callable[[], object]) -> float:
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


def _clone(value: Any) -> Any:
    return value.clone() if isinstance(value, Tensor) else value


def record_inputs(pipe: StreamPipeline, frame: np.ndarray,
                  modules: dict[str, torch.nn.Module]) -> dict[str, list[tuple[tuple, dict]]]:
    """The positional and keyword inputs of every call of each module while one ordinary frame runs."""
    calls: dict[str, list[tuple[tuple, dict]]] = {name: [] for name in modules}
    handles = []
    for name, module in modules.items():
        def hook(_module, args, kwargs, name=name):
            calls[name].append((tuple(_clone(a) for a in args), {k: _clone(v) for k, v in kwargs.items()}))

        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        pipe.img2img(frame, output_type="np")
    finally:
        for handle in handles:
            handle.remove()
    return calls


@torch.no_grad()
def stage_times(pipe: StreamPipeline, frame: np.ndarray, *, graphs: bool, repeats: int = 20) -> dict[str, float]:
    """Median milliseconds of each stage of one img2img step of `pipe` (prepared, warm, accelerated or not).

    frame: uint8 (H, W, 3), or (F, H, W, 3) with frame_buffer_size F.
    """
    cfg, device = pipe.config, pipe.device
    vae = pipe.components.vae
    modules = {"unet": pipe.components.unet, "encode": vae.encoder, "decode": vae.decoder}
    calls = record_inputs(pipe, frame, modules)
    timer = _timer(device, graphs and device.type == "cuda", repeats)
    pinned = device.type == "cuda"
    frames = torch.from_numpy(frame.reshape(-1, *frame.shape[-3:]).copy())
    frames = frames.pin_memory() if pinned else frames
    frames_dev = frames.to(device)
    f, h, w = frames.shape[0], cfg.height, cfg.width
    pictures = torch.rand((f, 3, h, w), device=device, dtype=pipe.dtype)
    out_dev = torch.empty((f, h, w, 3), dtype=torch.uint8, device=device)
    out_host = torch.empty((f, h, w, 3), dtype=torch.uint8, pin_memory=pinned)
    times = {
        "upload": timer(lambda: frames_dev.copy_(frames, non_blocking=True)),
        "preprocess": timer(lambda: pipe.device_pixels(frames_dev)),
    }
    control = pipe.control
    if control is not None:
        pixels = pipe.device_pixels(frames_dev)  # (F, 3, H, W) in [-1, 1]: what the step hands the control
        times["control"] = timer(lambda: control.update(pixels))
    for stage, module in modules.items():
        times[stage] = sum(timer(stage_call(pipe, stage, module, args, kwargs)) for args, kwargs in calls[stage])
    times["postprocess"] = timer(lambda: out_dev.copy_(to_uint8_hwc(pictures)))
    times["download"] = timer(lambda: out_host.copy_(out_dev, non_blocking=True))
    return {stage: times[stage] for stage in STAGES if stage in times}


def stage_call(pipe: StreamPipeline, stage: str, module: torch.nn.Module, args: tuple,
               kwargs: dict) -> Callable[[], Any]:
    """One recorded call of a stage's module, to time or profile alone."""
    if stage == "unet":  # through the denoiser, as the step calls it: it may read stored conditioning
        latents, timesteps, embeddings = denoiser_inputs(args, kwargs)
        return lambda: pipe.denoiser(latents, timesteps, embeddings)
    return lambda: module(*args, **kwargs)


def denoiser_inputs(args: tuple, kwargs: dict) -> tuple[Tensor, Tensor, Tensor]:
    """The denoiser's inputs of a recorded UNet call. An SDXL UNet is handed the embeddings the step packed taken
    apart (added_conditions.py): its hidden states (B, 77, D), and the pooled embedding among its added
    conditions, packed again here into (B, 78, D); the size numbers follow from the latents' shape."""
    hidden, added = kwargs["encoder_hidden_states"], kwargs.get("added_cond_kwargs")
    embeddings = hidden if added is None else added_conditions.pack(hidden, added["text_embeds"])
    return args[0], args[1], embeddings

