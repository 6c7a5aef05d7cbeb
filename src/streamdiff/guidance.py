"""Residual classifier-free guidance (StreamDiffusion, Kodaira et al. 2023, sec. 3.3).

One small class per mode, chosen once in prepare(); the hot path never tests the mode by name.
Slots are step-major (see schedule.py); F = frame_buffer_size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .config import CfgType, StreamConfig
from .schedule import SlotCoefficients, predict_x0


@dataclass
class Guidance:
    """No guidance: the conditional prediction is used as it is (one denoiser sample per slot)."""

    scale: float = 1.0
    delta: float = 1.0
    frames: int = 1
    tracks_residual = False  # whether the virtual negative noise ("stock noise") must be kept up to date

    def batch(self, x: Tensor, t: Tensor, cond: Tensor, uncond: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The denoiser's input batch for slots x (B, 4, h, w), timesteps t (B,), embeddings (B, 77, D)."""
        return (self.samples(x), *self.conditioning(t, cond, uncond))

    def samples(self, x: Tensor) -> Tensor:
        """The denoiser's latents for slots x (B, 4, h, w)."""
        return x

    def conditioning(self, t: Tensor, cond: Tensor, uncond: Tensor) -> tuple[Tensor, Tensor]:
        """The denoiser's timesteps and embeddings, matching samples(): constant while the prompts are."""
        return t, cond

    def combine(self, out: Tensor, stock: Tensor) -> Tensor:
        """Guided noise prediction (B, 4, h, w) from the denoiser output; may write stock in place."""
        return out

    def later_steps(self) -> Guidance:
        """The guidance for steps after the first, when steps run one by one (no stream batch)."""
        return self

    def _guide(self, eps_uncond: Tensor, eps_cond: Tensor) -> Tensor:
        return eps_uncond + self.scale * (eps_cond - eps_uncond)


@dataclass
class FullGuidance(Guidance):
    """Classic CFG: negative and positive prompt for every slot in one batch (2B samples)."""

    def samples(self, x):
        return torch.cat([x, x])

    def conditioning(self, t, cond, uncond):
        return torch.cat([t, t]), torch.cat([uncond, cond])

    def combine(self, out, stock):
        eps_uncond, eps_cond = out.chunk(2)
        return self._guide(eps_uncond, eps_cond)


@dataclass
class SelfGuidance(Guidance):
    """Self-negative R-CFG: the negative noise is the virtual residual noise, no extra sample."""

    tracks_residual = True

    def combine(self, out, stock):
        return self._guide(stock * self.delta, out)


@dataclass
class InitializeGuidance(Guidance):
    """Onetime-negative R-CFG: one negative sample per new frame seeds the residual noise."""

    tracks_residual = True

    def samples(self, x):
        return torch.cat([x[: self.frames], x])

    def conditioning(self, t, cond, uncond):
        f = self.frames
        return torch.cat([t[:f], t]), torch.cat([uncond[:f], cond])

    def combine(self, out, stock):
        f = self.frames
        stock[:f] = out[:f]
        return self._guide(stock * self.delta, out[f:])

    def later_steps(self) -> Guidance:
        return SelfGuidance(scale=self.scale, delta=self.delta, frames=self.frames)


def make_guidance(config: StreamConfig) -> Guidance:
    """The guidance object for a config; below or at scale 1 every mode is plain prediction."""
    kinds = {CfgType.FULL: FullGuidance, CfgType.SELF: SelfGuidance, CfgType.INITIALIZE: InitializeGuidance}
    if not config.uses_guidance:
        return Guidance(frames=config.frame_buffer_size)
    kind = kinds[config.cfg_type]
    return kind(scale=config.guidance_scale, delta=config.delta, frames=config.frame_buffer_size)


def next_residual(
    eps: Tensor, stock: Tensor, coeffs: SlotCoefficients, next_noise: Tensor, alpha_next: Tensor, beta_next: Tensor
) -> Tensor:
    """Residual noise each slot hands to the slot after it (the paper's virtual residual noise).

    The consistency step applied to the scaled residual, rescaled to the next step's noise level
    (alpha_next, beta_next: 1 after the last step), plus the fixed noise of the next slot.
    """
    delta_x = predict_x0(coeffs.beta_sqrt * stock, eps, coeffs)
    return next_noise + delta_x * alpha_next / beta_next
