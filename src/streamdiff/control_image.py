"""A stream's ControlNet controls: its control pictures and scales (control.py), mixed into StreamPipeline.

ControlImage is a part of StreamPipeline kept in a module of its own, as StyleImage is for the IP-Adapter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from . import images
from .control import Control

if TYPE_CHECKING:
    from .stream import StreamPipeline


class ControlImage:
    """set_control_image and set_control_scale for a stream whose UNet is steered by ControlNets."""

    def set_control_scale(self: StreamPipeline, scale: float, index: int | None = None) -> None:
        """How strongly a ControlNet steers from the next frame on (0: not at all, 1: as trained): the one at
        `index` (0-based, in the order given), or every one (None)."""
        control = self._require_control()
        count = len(control.controlnets)
        if index is None:
            scales: float | tuple[float, ...] = scale
        else:
            changed = list(self.config.control_scales(count))
            changed[control.index(index)] = scale
            scales = tuple(changed)
        self.config = self.config.with_changes(control_scale=scales)  # checks the value first
        control.set_scale(scale, index)

    @property
    def control_names(self: StreamPipeline) -> tuple[str, ...]:
        """Each ControlNet's name, in order (its kind, or its folder's or hub repository's name); () without."""
        return () if self.control is None else self.control.names

    @property
    def control_scales(self: StreamPipeline) -> tuple[float, ...]:
        """Each ControlNet's scale, in order; () without ControlNet."""
        return () if self.control is None else self.config.control_scales(len(self.control.controlnets))

    @torch.no_grad()
    def set_control_image(self: StreamPipeline, image: Any, index: int | None = None) -> None:
        """Make the control picture from an image (its edges or depth, as preprocessed), for txt2img; img2img
        replaces it. index: only the ControlNet at this index (0-based) takes it, e.g. a sketch for the canny
        one and a depth map for the other (ControlNets of the same kind share one picture); None: every one."""
        control = self._require_control()
        if index is not None:
            control.index(index)  # checked before any work
        cfg = self.config
        pixels, _ = images.prepare_input(image, cfg.width, cfg.height, cfg.fit, self.device, self.dtype)
        if pixels.shape[0] not in (1, cfg.frame_buffer_size):
            raise ValueError(f"expected 1 or {cfg.frame_buffer_size} control picture(s); got {pixels.shape[0]}")
        control.update(pixels.expand(cfg.frame_buffer_size, -1, -1, -1), index)

    def _require_control(self: StreamPipeline) -> Control:
        if self.control is None:
            raise ValueError("this stream has no ControlNet (from_model(..., controlnet=...) adds one)")
        return self.control
