"""IP-Adapter (Ye et al. 2023): a picture steers the UNet through cross-attention layers of its own.

A CLIP image encoder embeds the picture, the adapter's projection turns the embedding into a few tokens in the
text embeddings' width, and every cross-attention layer adds `scale` times its attention over those tokens
(with keys and values of its own) to its attention over the text (the paper's decoupled cross-attention, eq. 5).

The engine carries a prompt as one tensor everywhere (cached, blended, batched for guidance, copied into the
buffers a captured step reads), so the image tokens ride in it after the text tokens (before SDXL's pooled
token): the negative prompt carries the tokens of no picture, as diffusers' pipelines make them, and a new
picture is a change of the embeddings like any prompt change. The scale is a tensor every layer reads, so a
captured step sees a new one in place.

diffusers loads an adapter (`load_ip_adapter`); `IPAdapter.take_over` then puts these layers in place of
diffusers' (which read the scale as a number, and skip the image attention at 0 with a host-side test that a
captured step cannot take) and takes the projection out of the UNet, to run it once per picture.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import images
from .backends.graphs import capturing

_KEY = "_streamdiff_ip_adapter"  # where a UNet keeps the IPAdapter that took it over


class ImagePromptAttention(nn.Module):
    """A cross-attention layer's processor: attention over the text tokens plus `scale` times attention over the
    last `tokens` tokens of the embeddings (the image tokens) with the adapter's own keys and values."""

    def __init__(self, to_k_ip: nn.Linear, to_v_ip: nn.Linear, tokens: int):
        super().__init__()
        self.to_k_ip = to_k_ip
        self.to_v_ip = to_v_ip
        self.tokens = tokens
        self.register_buffer("scale", torch.zeros(()), persistent=False)

    def __call__(self, attn: nn.Module, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None) -> Tensor:
        if encoder_hidden_states is None or attention_mask is not None or attn.spatial_norm is not None \
                or attn.group_norm is not None or hidden_states.dim() != 3:
            raise ValueError("expected a cross-attention layer of a Stable Diffusion UNet (embeddings given, no mask)")
        text, image = split(encoder_hidden_states, self.tokens)
        if attn.norm_cross:
            text = attn.norm_encoder_hidden_states(text)
        query = attn.to_q(hidden_states)
        if getattr(attn, "fused_projections", False):
            key, value = attn.to_kv(text).chunk(2, dim=-1)
        else:
            key, value = attn.to_k(text), attn.to_v(text)
        out = _attend(query, key, value, attn.heads)
        out = out + self.scale * _attend(query, self.to_k_ip(image), self.to_v_ip(image), attn.heads)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def _attend(query: Tensor, key: Tensor, value: Tensor, heads: int) -> Tensor:
    """Multi-head scaled dot-product attention of (B, L, C) queries over (B, T, C) keys and values."""
    batch, _, width = query.shape
    shape = (batch, -1, heads, width // heads)
    out = F.scaled_dot_product_attention(*(t.view(shape).transpose(1, 2) for t in (query, key, value)))
    return out.transpose(1, 2).reshape(batch, -1, width).to(query.dtype)


def split(embeddings: Tensor, tokens: int) -> tuple[Tensor, Tensor]:
    """Text tokens (B, T, D) and the last `tokens` image tokens (B, N, D) of the embeddings a UNet is given."""
    return embeddings[:, :-tokens], embeddings[:, -tokens:]


def text_only(embeddings: Tensor, tokens: int) -> Tensor:
    """The embeddings without their image tokens (what a ControlNet reads, as in diffusers' pipelines)."""
    return embeddings if tokens == 0 else embeddings[:, :-tokens]


@dataclass(frozen=True)
class StylePixels:
    """A style picture after CLIP's preprocessing (resize, centre crop, normalise): what the image encoder reads.
    `IPAdapter.pixels` makes it on the host, running no model, so on any thread."""

    values: Tensor  # float32 (1, 3, S, S) on the CPU


class IPAdapter:
    """An adapter that took over a UNet: its image encoder, its projection and its cross-attention processors.

    The processors' scale belongs to the UNet; a stream's denoiser `apply`s its own before each call or replay
    (TorchDenoiser.claim), which writes only where another stream on the same UNet left another.
    """

    def __init__(self, projection: nn.Module, processors: Sequence[ImagePromptAttention], tokens: int):
        self.projection = projection
        self.processors = tuple(processors)
        self.tokens = tokens
        self._scale = 0.0  # what the processors hold

    @staticmethod
    def of(unet: nn.Module) -> IPAdapter | None:
        """The adapter that took `unet` over, if one did."""
        return unet.__dict__.get(_KEY)

    @classmethod
    def take_over(cls, unet: nn.Module) -> IPAdapter | None:
        """The adapter diffusers loaded into `unet` (None: none), in the engine's processors; once per UNet."""
        adapter = unet.__dict__.get(_KEY)
        # diffusers marks a loaded adapter on the config's attribute (not its item), and the UNet reads that.
        if adapter is not None or getattr(unet.config, "encoder_hid_dim_type", None) != "ip_image_proj":
            return adapter
        layers = list(unet.encoder_hid_proj.image_projection_layers)
        if len(layers) != 1:
            raise ValueError(f"expected one IP-Adapter on the UNet; it has {len(layers)}")
        _check_projection(layers[0])
        processors = [cls._replace(module) for module in unet.modules() if _ip_processor(module) is not None]
        tokens = processors[0].tokens
        unet.encoder_hid_proj = None  # the engine projects each picture once, and the UNet reads embeddings only
        unet.config.encoder_hid_dim_type = None
        adapter = unet.__dict__[_KEY] = cls(layers[0], processors, tokens)
        return adapter

    @staticmethod
    def _replace(attention: nn.Module) -> ImagePromptAttention:
        old = _ip_processor(attention)
        if len(old.to_k_ip) != 1 or len(old.num_tokens) != 1:
            raise ValueError(f"expected one IP-Adapter per cross-attention layer; got {len(old.to_k_ip)}")
        new = ImagePromptAttention(old.to_k_ip[0], old.to_v_ip[0], int(old.num_tokens[0]))
        new.to(device=old.to_k_ip[0].weight.device, dtype=old.to_k_ip[0].weight.dtype)
        attention.set_processor(new)
        return new

    def apply(self, scale: float) -> None:
        """Make every layer weigh the image attention by `scale` (no work if it does). Not while a CUDA graph is
        captured: the write would become part of the graph, which is to read the scale instead."""
        if scale == self._scale or capturing():
            return
        for processor in self.processors:
            processor.scale.fill_(scale)
        self._scale = scale

    @torch.no_grad()
    def encode(self, picture: Any, image_encoder: nn.Module, feature_extractor: Any, dtype: torch.dtype) -> Tensor:
        """A picture's image tokens (1, N, D), as diffusers' pipelines make them: the projection of its CLIP image
        embedding, or for projections that read the encoder's hidden states (IP-Adapter Plus), of its
        penultimate ones."""
        pixels = self.pixels(picture, feature_extractor).values
        expected = _pixel_shape(image_encoder)
        if tuple(pixels.shape) != expected:
            raise ValueError(f"expected style pixels of shape {expected} for this image encoder; got "
                             f"{tuple(pixels.shape)} (made by another stream's preprocessing?)")
        pixels = pixels.to(device=image_encoder.device, dtype=image_encoder.dtype)
        return self._tokens(self._embedding(image_encoder, pixels), dtype)

    @staticmethod
    def pixels(picture: Any, feature_extractor: Any) -> StylePixels:
        """The host half of `encode`: CLIP's preprocessing of a picture (StylePixels pass through)."""
        if isinstance(picture, StylePixels):
            return picture
        return StylePixels(feature_extractor(images=_as_array(picture), return_tensors="pt").pixel_values)

    @torch.no_grad()
    def negative(self, image_encoder: nn.Module, dtype: torch.dtype) -> Tensor:
        """The image tokens of no picture (1, N, D), the negative prompt's, as diffusers' pipelines make them: of a
        zero embedding, or (IP-Adapter Plus) of the hidden states of zero pixels."""
        if _reads_embedding(self.projection):
            embedding = torch.zeros(1, image_encoder.config.projection_dim, device=image_encoder.device,
                                    dtype=image_encoder.dtype)
        else:
            embedding = self._embedding(image_encoder, _zero_pixels(image_encoder))
        return self._tokens(embedding, dtype)

    @torch.no_grad()
    def warm(self, image_encoder: nn.Module) -> None:
        """Run the image encoder once as `encode` does, on zero pixels (e.g. to capture its CUDA graph before the
        first live picture)."""
        self._embedding(image_encoder, _zero_pixels(image_encoder))

    def _embedding(self, image_encoder: nn.Module, pixels: Tensor) -> Tensor:
        if _reads_embedding(self.projection):
            return image_encoder(pixels).image_embeds  # (1, E)
        return image_encoder(pixels, output_hidden_states=True).hidden_states[-2]  # (1, P, W)

    def _tokens(self, embedding: Tensor, dtype: torch.dtype) -> Tensor:
        weight = next(self.projection.parameters())
        return self.projection(embedding.to(device=weight.device, dtype=weight.dtype)).to(dtype)


def join(text: Tensor, tokens: Tensor, pooled: bool) -> Tensor:
    """A prompt's embeddings (B, T [+ 1 pooled], D) with image tokens (1 or B, N, D) after the text tokens."""
    tokens = tokens.expand(text.shape[0], -1, -1).to(text.dtype)
    if not pooled:
        return torch.cat([text, tokens], dim=1)
    return torch.cat([text[:, :-1], tokens, text[:, -1:]], dim=1)


def token_slice(tokens: int, pooled: bool) -> slice:
    """Where `join` put the image tokens."""
    return slice(-(tokens + 1), -1) if pooled else slice(-tokens, None)


def _pixel_shape(image_encoder: nn.Module) -> tuple[int, int, int, int]:
    """The (1, 3, S, S) pixels a CLIP image encoder reads."""
    config = image_encoder.config
    return 1, config.num_channels, config.image_size, config.image_size


def _zero_pixels(image_encoder: nn.Module) -> Tensor:
    return torch.zeros(_pixel_shape(image_encoder), device=image_encoder.device, dtype=image_encoder.dtype)


def _ip_processor(module: nn.Module) -> Any:
    processor = getattr(module, "processor", None)
    return processor if type(processor).__name__ in ("IPAdapterAttnProcessor2_0", "IPAdapterAttnProcessor") else None


def _reads_embedding(projection: nn.Module) -> bool:
    from diffusers.models.embeddings import ImageProjection

    return isinstance(projection, ImageProjection)


def _check_projection(projection: nn.Module) -> None:
    from diffusers.models.embeddings import ImageProjection, IPAdapterPlusImageProjection

    if not isinstance(projection, (ImageProjection, IPAdapterPlusImageProjection)):
        raise ValueError("expected an IP-Adapter or IP-Adapter Plus (image embedding or hidden states projected to "
                         f"tokens); got a {type(projection).__name__} (FaceID and other kinds are not supported)")


def _as_array(picture: Any) -> Any:
    """A picture (path, PIL image, uint8 array (H, W, 3), float tensor in [0, 1]) as a uint8 (H, W, 3) array."""
    if isinstance(picture, (str, Path)):
        picture = images.read_picture(picture, "style picture")
    pixels = images.to_uint8_tensor(picture)
    if pixels.shape[0] != 1:
        raise ValueError(f"expected one style picture; got {pixels.shape[0]}")
    if pixels.dtype != torch.uint8:
        pixels = (pixels.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return pixels[0].permute(1, 2, 0).cpu().numpy()
