"""A ControlNet steering the stream (Zhang et al. 2023): its control picture and scale, in fixed device buffers.

Each processed frame becomes the control picture (its Canny edges, its estimated depth, or the frame
itself, e.g. a depth camera's feed; black until the first frame or set_control_image) and every slot of the
stream batch is steered by the newest one: with several steps the frames still in flight follow the newest
structure, which keeps the output on what the camera shows now. The picture and the scale live in tensors
updated in place, so a captured CUDA graph reads the new ones; the edges (edges.py) and depth (depth.py) are
computed on the engine's device in the same step, with no host round trip.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .config import StreamConfig
from .depth import depth_picture
from .edges import canny_edges


class Control:
    """The inputs of one ControlNet for one stream; `residuals` feeds a UNet call (TorchDenoiser asks for it)."""

    def __init__(self, controlnet: torch.nn.Module, config: StreamConfig, device: torch.device, dtype: torch.dtype,
                 estimator: torch.nn.Module | None = None):
        if config.control_preprocess == "depth" and estimator is None:
            raise ValueError("control_preprocess 'depth' needs a depth estimator (Components.depth_estimator; "
                             "from_model loads Depth Anything V2 Small)")
        self.controlnet = controlnet
        self.estimator = estimator  # a transformers depth-estimation model, for control_preprocess "depth"
        self.preprocess = config.control_preprocess
        self.thresholds = config.canny_thresholds
        shape = (config.frame_buffer_size, 3, config.height, config.width)
        self.image = torch.zeros(shape, device=device, dtype=dtype)  # (F, 3, H, W) in [0, 1]
        self.scale = torch.full((), config.control_scale, device=device, dtype=dtype)

    def update(self, pixels: Tensor) -> None:
        """Make the control picture from model pixels (F, 3, H, W) in [-1, 1]; in place, no host synchronisation."""
        picture = (pixels.to(self.image.dtype) + 1) / 2
        if self.preprocess == "canny":
            picture = canny_edges(picture, *self.thresholds)
        elif self.preprocess == "depth":
            assert self.estimator is not None
            picture = depth_picture(self.estimator, picture)
        self.image.copy_(picture.clamp(0, 1))

    def set_scale(self, scale: float) -> None:
        """How strongly the ControlNet steers from the next frame on (checked by StreamConfig), in place."""
        self.scale.fill_(scale)

    def buffers(self) -> tuple[Tensor, ...]:
        """The tensors a captured step reads (their addresses must stay)."""
        return (self.image, self.scale)

    def residuals(self, latents: Tensor, timesteps: Tensor, embeddings: Tensor) -> dict[str, Any]:
        """The ControlNet's additions to a UNet call on latents (B, 4, h, w), as UNet keyword arguments.

        B is a multiple of F (slots are step-major, guidance repeats them), so frame i % F steers sample i.
        """
        repeats = latents.shape[0] // self.image.shape[0]
        image = self.image.repeat(repeats, 1, 1, 1) if repeats > 1 else self.image
        down, mid = self.controlnet(latents, timesteps, encoder_hidden_states=embeddings, controlnet_cond=image,
                                    return_dict=False)
        scale = self.scale
        return {"down_block_additional_residuals": tuple(d * scale for d in down),
                "mid_block_additional_residual": mid * scale}
