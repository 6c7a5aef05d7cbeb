"""Pure tensor math of the consistency schedule: timesteps, boundary scalings, x0 and re-noising.

Shapes: n = len(t_index_list), F = frame_buffer_size, slots B = n * F ordered step-major
(F frames at step 0, then F at step 1, ...), latents (B, 4, H/8, W/8).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor


def lcm_timesteps(scheduler_config: Mapping[str, Any], num_inference_steps: int) -> tuple[Tensor, Tensor]:
    """The LCM schedule of `num_inference_steps` timesteps (as diffusers' LCMScheduler sets it) and alphas_cumprod."""
    from diffusers import LCMScheduler

    scheduler = LCMScheduler.from_config(dict(scheduler_config))
    original = scheduler.config.original_inference_steps
    if num_inference_steps > original:
        raise ValueError(
            f"num_inference_steps must be at most {original} (the LCM schedule's original steps); "
            f"got {num_inference_steps}"
        )
    scheduler.set_timesteps(num_inference_steps, device="cpu")
    return scheduler.timesteps.to(torch.long), scheduler.alphas_cumprod


def boundary_scalings(
    timesteps: Tensor, sigma_data: float = 0.5, timestep_scaling: float = 10.0
) -> tuple[Tensor, Tensor]:
    """LCM boundary condition (Luo et al. 2023, eq. 9): c_skip(t), c_out(t) with c_skip(0)=1, c_out(0)=0."""
    scaled = timesteps.to(torch.float32) * timestep_scaling
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def predict_x0(x_t: Tensor, eps: Tensor, coeffs: SlotCoefficients) -> Tensor:
    """Consistency step: f = c_skip x_t + c_out (x_t - sqrt(1-a) eps) / sqrt(a)."""
    f_theta = (x_t - coeffs.beta_sqrt * eps) / coeffs.alpha_sqrt
    return coeffs.c_out * f_theta + coeffs.c_skip * x_t


def add_noise(x0: Tensor, noise: Tensor, alpha_sqrt: Tensor, beta_sqrt: Tensor) -> Tensor:
    """Forward diffusion q(x_t | x0) = sqrt(a) x0 + sqrt(1-a) noise, with the given noise."""
    return alpha_sqrt * x0 + beta_sqrt * noise


@dataclass(frozen=True)
class SlotCoefficients:
    """Per-slot scalars, each (B, 1, 1, 1), for the slots of one denoiser call."""

    timesteps: Tensor  # (B,) long
    alpha_sqrt: Tensor
    beta_sqrt: Tensor
    c_skip: Tensor
    c_out: Tensor

    def group(self, step: int, frames: int) -> SlotCoefficients:
        """The F slots of one denoising step."""
        sl = slice(step * frames, (step + 1) * frames)
        return SlotCoefficients(*(getattr(self, n)[sl] for n in _FIELDS))

    def copy_(self, other: SlotCoefficients) -> None:
        """Take other's values in place (same slots): what a captured step reads changes with them."""
        for name in _FIELDS:
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine.shape != theirs.shape:
                raise ValueError(f"{name}: expected shape {tuple(mine.shape)}; got {tuple(theirs.shape)}")
            mine.copy_(theirs)

    def to(self, device: torch.device, dtype: torch.dtype) -> SlotCoefficients:
        values = [self.timesteps.to(device)]
        values += [getattr(self, n).to(device=device, dtype=dtype) for n in _FIELDS[1:]]
        return SlotCoefficients(*values)


_FIELDS = ("timesteps", "alpha_sqrt", "beta_sqrt", "c_skip", "c_out")


def build_coefficients(
    scheduler_config: Mapping[str, Any],
    num_inference_steps: int,
    t_index_list: tuple[int, ...],
    frame_buffer_size: int,
    lcm_boundary: bool = True,
) -> SlotCoefficients:
    """Coefficients for every slot: step i's values repeated for its F frames."""
    timesteps, alphas_cumprod = lcm_timesteps(scheduler_config, num_inference_steps)
    sub = timesteps[list(t_index_list)]  # (n,)
    if lcm_boundary:
        scaling = float(dict(scheduler_config).get("timestep_scaling", 10.0))
        c_skip, c_out = boundary_scalings(sub, timestep_scaling=scaling)
    else:
        # Turbo models (adversarial distillation) predict x0 directly from eps: no boundary blend.
        c_skip, c_out = torch.zeros(len(sub)), torch.ones(len(sub))
    alpha = alphas_cumprod[sub].to(torch.float32)
    per_step = [sub, alpha.sqrt(), (1 - alpha).sqrt(), c_skip.to(torch.float32), c_out.to(torch.float32)]
    repeated = [v.repeat_interleave(frame_buffer_size) for v in per_step]
    return SlotCoefficients(repeated[0], *(v.view(-1, 1, 1, 1) for v in repeated[1:]))
