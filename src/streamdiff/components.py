"""The diffusers modules a stream runs, gathered from a pipeline, and how each is put on the stream's device."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Components:
    """The diffusers parts the engine uses; any SD 1.x / 2.x pipeline provides them (a ControlNet pipeline its
    ControlNets too)."""

    tokenizer: Any
    text_encoder: torch.nn.Module
    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler_config: dict
    controlnets: tuple[torch.nn.Module, ...] = ()  # diffusers ControlNetModels steering the UNet (control.py)
    depth_estimator: torch.nn.Module | None = None  # for control_preprocess "depth" (depth.py)

    @classmethod
    def from_diffusers(cls, pipe: Any, controlnets: torch.nn.Module | Sequence[torch.nn.Module] = (),
                       depth_estimator: torch.nn.Module | None = None) -> Components:
        """The parts of `pipe`; its ControlNets (one, or a MultiControlNetModel's) unless `controlnets` (one or
        several) are given."""
        if isinstance(controlnets, torch.nn.Module):
            controlnets = (controlnets,)
        missing = [n for n in ("tokenizer", "text_encoder", "unet", "vae", "scheduler") if getattr(pipe, n, None) is None]
        if missing:
            raise ValueError(f"expected a diffusers Stable Diffusion pipeline; it lacks {', '.join(missing)}")
        if not controlnets:
            own = getattr(pipe, "controlnet", None)
            controlnets = () if own is None else tuple(getattr(own, "nets", None) or (own,))
        for controlnet in controlnets:
            if not hasattr(controlnet, "controlnet_cond_embedding"):
                raise ValueError(f"expected diffusers ControlNetModel(s); got {type(controlnet).__name__}")
        return cls(pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae, dict(pipe.scheduler.config),
                   tuple(controlnets), depth_estimator)


def place_module(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Move a module, casting only when needed (diffusers warns on every dtype cast)."""
    module.eval().requires_grad_(False)
    current = next(module.parameters(), None)
    if current is not None and current.dtype != dtype:
        module.to(dtype=dtype)
    module.to(device=device)
