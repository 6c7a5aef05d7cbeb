"""ControlNets steering the stream (Zhang et al. 2023): their control pictures and scales, in fixed device buffers.

Each processed frame becomes the control picture of every ControlNet (its Canny edges, its estimated depth,
or the frame itself, e.g. a depth camera's feed; black until the first frame or set_control_image) and every
slot of the stream batch is steered by the newest one: with several steps the frames still in flight follow
the newest structure, which keeps the output on what the camera shows now. Several ControlNets (edges and
depth, say) each add their scaled residuals to the UNet's, as diffusers' MultiControlNetModel sums them; two
that read the same kind of picture share it, made once per frame. The pictures and the scales live in tensors
updated in place, so a captured CUDA graph reads the new ones; the edges (edges.py) and depth (depth.py) are
computed on the engine's device in the same step, with no host round trip.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from functools import reduce
from typing import Any

import torch
from torch import Tensor

from .config import ControlPreprocess, StreamConfig
from .depth import depth_picture
from .edges import canny_edges


class Control:
    """The inputs of a stream's ControlNets; `residuals` feeds a UNet call (TorchDenoiser asks for it)."""

    def __init__(self, controlnets: Sequence[torch.nn.Module], config: StreamConfig, device: torch.device,
                 dtype: torch.dtype, estimator: torch.nn.Module | None = None, names: Sequence[str] = ()):
        if not controlnets:
            raise ValueError("expected at least one ControlNet")
        self.controlnets = tuple(controlnets)
        count = len(self.controlnets)
        self.preprocesses: tuple[ControlPreprocess, ...] = config.control_preprocesses(count)
        if "depth" in self.preprocesses and estimator is None:
            raise ValueError("control_preprocess 'depth' needs a depth estimator (Components.depth_estimator; "
                             "from_model loads Depth Anything V2 Small)")
        if names and len(names) != count:
            raise ValueError(f"expected {count} ControlNet name(s); got {len(names)}")
        self.names = tuple(names) or tuple(f"controlnet {i + 1}" for i in range(count))
        self.estimator = estimator  # a transformers depth-estimation model, for control_preprocess "depth"
        self.thresholds = config.canny_thresholds
        shape = (config.frame_buffer_size, 3, config.height, config.width)
        # One picture per kind of picture (F, 3, H, W) in [0, 1], in the order the ControlNets first ask for it.
        self.images = {kind: torch.zeros(shape, device=device, dtype=dtype) for kind in dict.fromkeys(self.preprocesses)}
        self.scales = torch.tensor(config.control_scales(count), device=device, dtype=dtype)  # (count,)

    def update(self, pixels: Tensor, index: int | None = None) -> None:
        """Make the control pictures from model pixels (F, 3, H, W) in [-1, 1]: every one, or only the picture the
        ControlNet at `index` reads (which ControlNets of its kind share); in place, no host synchronisation."""
        frame = (pixels.to(self.scales.dtype) + 1) / 2
        kinds = list(self.images) if index is None else [self.preprocesses[self.index(index)]]
        for kind in kinds:
            picture = frame
            if kind == "canny":
                picture = canny_edges(frame, *self.thresholds)
            elif kind == "depth":
                assert self.estimator is not None
                picture = depth_picture(self.estimator, frame)
            self.images[kind].copy_(picture.clamp(0, 1))

    def set_scale(self, scale: float, index: int | None = None) -> None:
        """How strongly one ControlNet (by index; None: every one) steers from the next frame on, in place (the
        value is checked by StreamConfig, the index here)."""
        if index is None:
            self.scales.fill_(scale)
            return
        self.scales[self.index(index)].fill_(scale)

    def index(self, index: int) -> int:
        """A ControlNet's index, checked: a ValueError names the ones there are."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.controlnets):
            raise ValueError(f"expected a ControlNet index in [0, {len(self.controlnets) - 1}] "
                             f"({', '.join(self.names)}); got {index!r}")
        return index

    def buffers(self) -> tuple[Tensor, ...]:
        """The tensors a captured step reads (their addresses must stay)."""
        return (*self.images.values(), self.scales)

    def residuals(self, latents: Tensor, timesteps: Tensor, embeddings: Tensor,
                  added: dict[str, Any] | None = None, *, pictures: Sequence[Tensor] | None = None,
                  scales: Tensor | None = None) -> dict[str, Any]:
        """The ControlNets' summed additions to a UNet call on latents (B, 4, h, w), hidden states (B, 77, D) and
        SDXL's added conditions (`added`: the UNet's added_cond_kwargs argument), as UNet keyword arguments.

        B is a multiple of F (slots are step-major, guidance repeats them), so frame i % F steers sample i.
        `pictures` (one per kind, in the order of `images`) and `scales` stand in for the stream's own, where a
        converted graph takes them as inputs.
        """
        pictures = dict(zip(self.images, pictures)) if pictures is not None else self.images
        scales = self.scales if scales is None else scales
        each = [self._scaled_residuals(i, latents, timesteps, embeddings, added or {}, pictures, scales)
                for i in range(len(self.controlnets))]
        # Summed in ControlNet order, as MultiControlNetModel does; one ControlNet adds nothing.
        down = tuple(reduce(operator.add, stage) for stage in zip(*(d for d, _ in each)))
        mid = reduce(operator.add, (m for _, m in each))
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}

    def _scaled_residuals(self, i: int, latents: Tensor, timesteps: Tensor, embeddings: Tensor,
                          added: dict[str, Any], pictures: dict[ControlPreprocess, Tensor],
                          scales: Tensor) -> tuple[list[Tensor], Tensor]:
        """ControlNet i's down-stage and middle-stage residuals, times its scale."""
        picture = pictures[self.preprocesses[i]]
        repeats = latents.shape[0] // picture.shape[0]
        image = picture.repeat(repeats, 1, 1, 1) if repeats > 1 else picture
        down, mid = self.controlnets[i](latents, timesteps, encoder_hidden_states=embeddings, controlnet_cond=image,
                                        return_dict=False, **added)
        scale = scales[i]
        return [d * scale for d in down], mid * scale
