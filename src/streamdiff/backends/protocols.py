"""What the engine needs from a backend: a noise predictor and a latent codec."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn


@runtime_checkable
class Denoiser(Protocol):
    def __call__(self, latents: Tensor, timesteps: Tensor, embeddings: Tensor) -> Tensor:
        """Noise prediction (B, 4, h, w) for latents (B, 4, h, w), timesteps (B,), text (B, 77, D); an SDXL model's
        text (B, 78, D) carries the pooled embedding as its last token (added_conditions.py)."""
        ...


@runtime_checkable
class LatentCodec(Protocol):
    def encode(self, pixels: Tensor) -> Tensor:
        """Pictures (B, 3, H, W) in [-1, 1] to scaled latents (B, 4, H/8, W/8)."""
        ...

    def decode(self, latents: Tensor) -> Tensor:
        """Scaled latents (B, 4, H/8, W/8) to pictures (B, 3, H, W) in [-1, 1]."""
        ...


class ControlResiduals(Protocol):
    controlnets: tuple[nn.Module, ...]  # the ControlNetModels `residuals` calls; TorchDenoiser caches their conditioning

    def residuals(self, latents: Tensor, timesteps: Tensor, embeddings: Tensor,
                  added: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ControlNets' additions to the UNet call on these inputs (hidden states (B, 77, D) and SDXL's added
        conditions as keyword arguments), as the UNet's keyword arguments."""
        ...
