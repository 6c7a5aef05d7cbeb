"""The diffusers modules a stream runs, gathered from a pipeline, and how each is put on the stream's device."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Components:
    """The diffusers parts the engine uses; any SD 1.x / 2.x or SDXL pipeline provides them (a ControlNet pipeline
    its ControlNets too)."""

    tokenizer: Any
    text_encoder: torch.nn.Module
    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler_config: dict
    controlnets: tuple[torch.nn.Module, ...] = ()  # diffusers ControlNetModels steering the UNet (control.py)
    depth_estimator: torch.nn.Module | None = None  # for control_preprocess "depth" (depth.py)
    # SDXL's second text tower (CLIPTextModelWithProjection: hidden states and the pooled embedding).
    tokenizer_2: Any = None
    text_encoder_2: torch.nn.Module | None = None
    # An empty negative prompt stands for zero embeddings (SDXL's force_zeros_for_empty_prompt) instead of
    # the encoding of "".
    zero_empty_negative: bool = False
    # An IP-Adapter's CLIP image encoder and its picture preprocessing (ip_adapter.py), where one is loaded.
    image_encoder: torch.nn.Module | None = None
    feature_extractor: Any = None

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
        config = getattr(pipe, "config", {})
        return cls(pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae, dict(pipe.scheduler.config),
                   tuple(controlnets), depth_estimator, getattr(pipe, "tokenizer_2", None),
                   getattr(pipe, "text_encoder_2", None), bool(config.get("force_zeros_for_empty_prompt", False)),
                   getattr(pipe, "image_encoder", None), getattr(pipe, "feature_extractor", None))

    @property
    def sdxl(self) -> bool:
        """Whether these are SDXL's parts (two text towers, a UNet with added conditions)."""
        return self.text_encoder_2 is not None

    def vae_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype the VAE runs in for a stream in `dtype`: float32 for an SDXL autoencoder that overflows in
        float16 (its configuration's force_upcast, as diffusers' SDXL pipelines read it; TAESD never does)."""
        upcast = self.sdxl and dtype == torch.float16 and bool(self.vae.config.get("force_upcast", False))
        return torch.float32 if upcast else dtype

    @property
    def modules(self) -> tuple[torch.nn.Module, ...]:
        """Every module the stream runs, to be put on its device."""
        parts = (self.text_encoder, self.text_encoder_2, self.unet, self.vae, *self.controlnets, self.depth_estimator,
                 self.image_encoder)
        return tuple(m for m in parts if m is not None)


def place_module(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Move a module, casting only when needed (diffusers warns on every dtype cast)."""
    module.eval().requires_grad_(False)
    current = next(module.parameters(), None)
    if current is not None and current.dtype != dtype:
        module.to(dtype=dtype)
    module.to(device=device)
