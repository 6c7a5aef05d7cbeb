"""A stream's style picture: the IP-Adapter's live controls (ip_adapter.py), mixed into StreamPipeline.

The picture's image tokens ride in the prompt embeddings the stream holds (its `_cond`; the negative prompt's
`_uncond` holds those of no picture), so a new picture is written into them in place, as a prompt change is,
and a captured step reads it at its next replay. Until a picture is given the scale in use is 0: the stream
draws as it would without an adapter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from . import ip_adapter
from .ip_adapter import IPAdapter, StylePixels

if TYPE_CHECKING:
    from .stream import StreamPipeline


class StyleImage:
    """set_style_image and set_ip_adapter_scale for a stream whose UNet carries an IP-Adapter."""

    def _take_over_ip_adapter(self: StreamPipeline) -> None:
        """In __init__, after the modules are placed: the engine's processors in the UNet, no picture yet."""
        components = self.components
        self.ip_adapter = IPAdapter.take_over(components.unet)
        self._style_tokens: Tensor | None = None  # (1, N, D): the picture's
        self._no_style_tokens: Tensor | None = None  # (1, N, D): no picture's (the negative prompt's)
        if self.ip_adapter is None:
            return
        if components.image_encoder is None or components.feature_extractor is None:
            raise ValueError("expected the IP-Adapter's CLIP image encoder and feature extractor with its UNet "
                             "(diffusers' load_ip_adapter registers them on the pipeline)")
        self._no_style_tokens = self.ip_adapter.negative(components.image_encoder, self.dtype)

    @property
    def has_ip_adapter(self: StreamPipeline) -> bool:
        """Whether the UNet carries an IP-Adapter (from_model(..., ip_adapter=...))."""
        return self.ip_adapter is not None

    @property
    def ip_adapter_scale(self: StreamPipeline) -> float | None:
        """How strongly the style picture steers (config.ip_adapter_scale); None without an IP-Adapter."""
        return self.config.ip_adapter_scale if self.ip_adapter is not None else None

    @property
    def has_style_image(self: StreamPipeline) -> bool:
        return self._style_tokens is not None

    def style_pixels(self: StreamPipeline, picture: Any) -> StylePixels:
        """The host half of set_style_image, which takes the result: CLIP's preprocessing of a picture (resize,
        centre crop, normalise). It runs no model, so it may run on any thread: a live app prepares a picture
        beside the frames (a 12-megapixel photo takes tens of milliseconds) and hands the engine its pixels."""
        return self._require_ip_adapter().pixels(picture, self.components.feature_extractor)

    @torch.no_grad()
    def set_style_image(self: StreamPipeline, picture: Any) -> None:
        """Steer the stream by a picture from the next frame on (a path, PIL image, uint8 array (H, W, 3), float
        tensor in [0, 1], or the StylePixels of style_pixels); with prepare() not yet called, from its first
        frame."""
        adapter = self._require_ip_adapter()
        components = self.components
        tokens = adapter.encode(picture, components.image_encoder, components.feature_extractor, self.dtype)
        self._style_tokens = tokens
        if self._batch is not None:
            where = self._token_slice()
            self._cond[:, where] = tokens
            if self._transition is not None:
                self._transition.start[:, where] = tokens
                self._transition.end[:, where] = tokens
            self._recondition()
        self._apply_ip_adapter_scale()

    def set_ip_adapter_scale(self: StreamPipeline, scale: float) -> None:
        """How strongly the style picture steers from the next frame on (0: not at all, 1: as trained)."""
        self._require_ip_adapter()
        self.config = self.config.with_changes(ip_adapter_scale=scale)  # checks the value first
        self._apply_ip_adapter_scale()

    def _apply_ip_adapter_scale(self: StreamPipeline) -> None:
        """Hand the denoiser the scale in use (0 until a picture is given); it writes it before its next call or
        replay (TorchDenoiser.claim)."""
        if self.ip_adapter is None or not hasattr(self.denoiser, "ip_adapter_scale"):
            return
        self.denoiser.ip_adapter_scale = self.config.ip_adapter_scale if self._style_tokens is not None else 0.0

    def _with_style(self: StreamPipeline, embeddings: Tensor, negative: bool = False) -> Tensor:
        """A prompt's embeddings (1, T [+ 1], D) with the image tokens after the text: the picture's, or for the
        negative prompt (and before any picture) no picture's."""
        if self.ip_adapter is None:
            return embeddings
        tokens = self._no_style_tokens if negative or self._style_tokens is None else self._style_tokens
        assert tokens is not None
        return ip_adapter.join(embeddings, tokens, self.components.sdxl)

    def _token_slice(self: StreamPipeline) -> slice:
        assert self.ip_adapter is not None
        return ip_adapter.token_slice(self.ip_adapter.tokens, self.components.sdxl)

    def _require_ip_adapter(self: StreamPipeline) -> IPAdapter:
        if self.ip_adapter is None:
            raise ValueError("this stream has no IP-Adapter (from_model(..., ip_adapter=...) adds one)")
        return self.ip_adapter
