"""The diffusers modules a stream runs, gathered from a pipeline, and how each is put on the stream's device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Components:
    """The diffusers parts the engine uses; any SD 1.x / 2.x pipeline provides them (a ControlNet pipeline its
    ControlNet too)."""

    tokenizer: Any
    text_encoder: torch.nn.Module
    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler_config: dict
    controlnet: torch.nn.Module | None = None  # a diffusers ControlNetModel steering the UNet (control.py)
    depth_estimator: torch.nn.Module | None = None  # for control_preprocess "depth" (depth.py)

    @classmethod
    def from_diffusers(cls, pipe: Any, controlnet: torch.nn.Module | None = None,
                       depth_estimator: torch.nn.Module | None = None) -> Components:
        missing = [n for n in ("tokenizer", "text_encoder", "unet", "vae", "scheduler") if getattr(pipe, n, None) is None]
        if missing:
            raise ValueError(f"expected a diffusers Stable Diffusion pipeline; it lacks {', '.join(missing)}")
        controlnet = controlnet if controlnet is not None else getattr(pipe, "controlnet", None)
        if controlnet is not None and not hasattr(controlnet, "controlnet_cond_embedding"):
            raise ValueError(f"expected one diffusers ControlNetModel; got {type(controlnet).__name__}")
        return cls(pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae, dict(pipe.scheduler.config), controlnet,
                   depth_estimator)


def place_module(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Move a module, casting only when needed (diffusers warns on every dtype cast)."""
    module.eval().requires_grad_(False)
    current = next(module.parameters(), None)
    if current is not None and current.dtype != dtype:
        module.to(dtype=dtype)
    module.to(device=device)
