"""Device steps: one warm frame of a StreamPipeline as device work alone, for accelerated backends.

A device step computes what img2img (or txt2img) computes for a warm stream, on fixed buffers and with no
host synchronisation, so that backends/runner.py can capture it as a CUDA graph and replay it. The
bookkeeping a replay skips (frame counts, the similarity filter, prompt transitions) runs around it:
begin_device_frame before, end_device_frame after.

DeviceSteps is a part of StreamPipeline kept in a module of its own: it works on the pipeline's state
(its stream batch, prompts, codec and temporal state) and is not used alone.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from . import images

if TYPE_CHECKING:
    from .stream import StreamPipeline


class _NoCosine(enum.Enum):
    """begin_device_frame's default: no cosine was measured (None is a measurement: no previous input)."""

    TOKEN = 0


@dataclass
class DeviceCarry:
    """A warm stream's temporal state in fixed device buffers, so that one step can replay as a CUDA graph."""

    previous_x0: Tensor  # (F, 4, H/8, W/8)
    previous_output: Tensor  # (F, 3, H, W) in [0, 1], after the EMA
    last_latent: Tensor  # (F, 4, H/8, W/8), what flush() repeats
    weights: Tensor  # (2,) feedback and EMA shares, read on the device by the step
    weight_values: tuple[float, float] = (math.nan, math.nan)  # what `weights` holds, to skip needless copies


class DeviceSteps:
    """StreamPipeline's device-step methods (see the module's docstring)."""

    @property
    def warm(self: StreamPipeline) -> bool:
        """Whether device_step can run: the stream is filled and one ordinary call left its outputs."""
        batch = self._batch
        if batch is None or not batch.ready:
            return False
        return self._previous_x0 is not None and self._previous_output is not None

    def step_buffers(self: StreamPipeline) -> tuple[Tensor, ...]:
        """The persistent tensors a device step reads or updates in place (a captured graph holds their addresses)."""
        batch = self._require_prepared()
        control = self.control.buffers() if self.control is not None else ()
        return (batch.noise, batch.in_flight, batch.stock, self._cond, self._uncond, *control)

    def new_carry(self: StreamPipeline) -> DeviceCarry:
        cfg = self.config
        f, h, w = cfg.frame_buffer_size, cfg.height, cfg.width
        latent = (f, 4, h // 8, w // 8)
        shapes = (latent, (f, 3, h, w), latent, (2,))
        return DeviceCarry(*(torch.zeros(shape, device=self.device, dtype=self.dtype) for shape in shapes))

    def attach_carry(self: StreamPipeline, carry: DeviceCarry) -> None:
        """Keep the temporal state in carry's buffers from now on (copied in unless already there)."""
        for name, buffer in (("_previous_x0", carry.previous_x0), ("_previous_output", carry.previous_output),
                             ("_last_latent", carry.last_latent)):
            current = getattr(self, name)
            if current is not None and current is not buffer:
                buffer.copy_(current)
                setattr(self, name, buffer)
        values = (self.config.feedback, self.config.ema)
        if values != carry.weight_values:
            carry.weights.copy_(torch.tensor(values, dtype=carry.weights.dtype), non_blocking=True)
            carry.weight_values = values

    def device_pixels(self: StreamPipeline, frames: Tensor) -> Tensor:
        """uint8 (F, h, w, 3) or float (F, 3, h, w) in [0, 1] on the device -> (F, 3, H, W) in [-1, 1], as img2img."""
        cfg = self.config
        pixels = frames.permute(0, 3, 1, 2) if frames.dtype == torch.uint8 else frames
        return images.to_model_pixels(pixels, cfg.width, cfg.height, cfg.fit, self.dtype)

    def begin_device_frame(self: StreamPipeline, kind: images.ImageKind | None, *,
                           cosine: float | None | _NoCosine = _NoCosine.TOKEN) -> bool:
        """An accelerated call's bookkeeping before its device step: count the frame, remember the input kind
        (None: txt2img), ask the similarity filter when it is on, advance a prompt transition. False: the filter
        skips this frame and the previous output stands.

        The filter decides on cosine: the similarity the caller measured between this frame's pixels and
        `similarity_filter.previous` (None where that was None or of another size); no cosine, no decision.
        The caller keeps the filter's previous input: after True it must `remember` these pixels (a device
        frame needs a warm stream, so True always means the filter chose to process them).
        """
        self.stats.frames += 1
        if kind is not None:
            self._last_kind = kind
        if not isinstance(cosine, _NoCosine) and self._skip_measured(cosine):
            return False
        self._advance_prompt()
        self._require_prepared().claim_conditioning()
        return True

    def end_device_frame(self: StreamPipeline, carry: DeviceCarry, img2img: bool) -> None:
        """An accelerated call's bookkeeping after its device step wrote carry."""
        self._previous_x0, self._previous_output = carry.previous_x0, carry.previous_output
        if img2img:
            self._last_latent = carry.last_latent
        self.stats.processed += 1

    @torch.no_grad()
    def device_step(self: StreamPipeline, frames: Tensor | None, carry: DeviceCarry, uint8: bool = True) -> Tensor | None:
        """One warm img2img (txt2img for frames=None) step with no host synchronisation: capturable as a CUDA graph.

        frames: uint8 (F, h, w, 3) or float (F, 3, h, w) in [0, 1] on the device. The state lives in carry
        (attach_carry first); carry.previous_output holds the pictures. Returns them as uint8 (F, H, W, 3) if asked.
        """
        batch = self._require_prepared()
        if frames is None:
            x0 = batch.step(batch.noise[: self.config.frame_buffer_size], None, self._cond, self._uncond)
        else:
            pixels = self.device_pixels(frames)
            if self.control is not None:
                self.control.update(pixels)
            latent = self.codec.encode(pixels)  # (F, 4, h, w)
            carry.last_latent.copy_(latent)
            mixed = torch.lerp(latent, carry.previous_x0, carry.weights[0])
            x0 = batch.step(batch.first_slot(mixed), mixed, self._cond, self._uncond)
        carry.previous_x0.copy_(x0)
        pictures = torch.lerp(images.postprocess(self.codec.decode(x0)), carry.previous_output, carry.weights[1])
        carry.previous_output.copy_(pictures)
        if not uint8:
            return None
        return images.to_uint8_hwc(pictures)
