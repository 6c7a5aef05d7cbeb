"""Eager PyTorch backend over diffusers modules (UNet2DConditionModel, AutoencoderTiny / AutoencoderKL)."""

from __future__ import annotations

import torch
from torch import Tensor


class TorchDenoiser:
    def __init__(self, unet: torch.nn.Module):
        self.unet = unet

    def __call__(self, latents: Tensor, timesteps: Tensor, embeddings: Tensor) -> Tensor:
        return self.unet(latents, timesteps, encoder_hidden_states=embeddings, return_dict=False)[0]


class TorchCodec:
    """Encodes to the posterior mean of a KL VAE (deterministic: sampling would add flicker)."""

    def __init__(self, vae: torch.nn.Module):
        self.vae = vae
        self.scaling_factor = float(vae.config.scaling_factor)

    def encode(self, pixels: Tensor) -> Tensor:
        out = self.vae.encode(pixels.to(self.vae.dtype))
        latents = out.latents if hasattr(out, "latents") else out.latent_dist.mode()
        return latents * self.scaling_factor

    def decode(self, latents: Tensor) -> Tensor:
        return self.vae.decode(latents / self.scaling_factor, return_dict=False)[0]
