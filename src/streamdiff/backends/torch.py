"""Eager PyTorch backend over diffusers modules (UNet2DConditionModel, AutoencoderTiny / AutoencoderKL)."""

from __future__ import annotations

from contextlib import ExitStack

import torch
from torch import Tensor

from .. import added_conditions, ip_adapter
from .conditioning import ConditioningCache, LatentSize
from .protocols import ControlResiduals


class TorchDenoiser:
    """A diffusers UNet2DConditionModel; with cache_conditioning, what depends only on the timesteps and the
    text embeddings is computed once per `condition` instead of at every call. With `control`, its ControlNets'
    residuals join every call; their own such work, on the same timesteps and embeddings, is cached alike. An SDXL
    UNet's embeddings carry the pooled text embedding as their last token (added_conditions.py), and those of a UNet
    with an IP-Adapter its image tokens after the text (ip_adapter.py; a ControlNet reads the text alone).

    SDXL's time projections also depend on the latents' size, which calls tell: its conditioning is stored at the
    first call of each size, and again for every size seen when the conditioning changes (a captured step of each
    size reads its own stored values)."""

    def __init__(self, unet: torch.nn.Module, *, cache_conditioning: bool = True,
                 control: ControlResiduals | None = None):
        self.unet = unet
        self.control = control
        models = (unet,) if control is None else (unet, *control.controlnets)
        self.caches = tuple(ConditioningCache.of(m) for m in models) if cache_conditioning else ()
        self.pooled_width = added_conditions.pooled_width(unet)  # None: no added conditions
        self.ip_adapter = ip_adapter.IPAdapter.of(unet)
        self.image_tokens = 0 if self.ip_adapter is None else self.ip_adapter.tokens  # at the embeddings' end
        self.ip_adapter_scale = 0.0  # how strongly this stream's calls weigh the image tokens
        self._given: tuple[Tensor, Tensor] | None = None  # timesteps and embeddings (the pooled one packed in)
        self._sizes: list[LatentSize] = []  # of the calls so far, where the conditioning depends on it; current last

    def condition(self, timesteps: Tensor | None, embeddings: Tensor | None) -> None:
        """The timesteps (B,) and embeddings (B, 77, D) of the calls from now on; None: calls differ (no cache).

        Calls must then pass these same values: the stored projections stand in for theirs.
        """
        if not self.caches:
            return
        self._given = None if timesteps is None or embeddings is None else (timesteps, embeddings)
        self.restore()

    def restore(self) -> None:
        """Store this denoiser's conditioning (again: e.g. once the caches replay their refresh as a graph, so that
        the capture happens now rather than at the next prompt change)."""
        if self._storable():
            for cache in self.caches:
                self._refresh(cache, self._sizes)

    def _storable(self) -> bool:
        """Whether there is conditioning to store: given, and (SDXL) the latents' size told by a call."""
        return self._given is not None and (self.pooled_width is None or bool(self._sizes))

    def claim(self) -> bool:
        """Store this denoiser's conditioning again where another stream on the same UNet or ControlNet replaced
        it (before replaying captured calls), and its IP-Adapter scale; whether calls read stored conditioning."""
        if self.ip_adapter is not None:
            self.ip_adapter.apply(self.ip_adapter_scale)
        if not self.caches or not self._storable():
            return False
        for cache in self.caches:
            if cache.owner is not self:
                self._refresh(cache, self._sizes)
        return True

    def _refresh(self, cache: ConditioningCache, sizes: list[LatentSize]) -> None:
        """Store the conditioning in `cache`, for each of `sizes` where it depends on the size (the last one is
        then what eager calls read)."""
        assert self._given is not None
        timesteps, embeddings = self._given
        if self.pooled_width is None:
            hidden, pooled = embeddings, None
        else:
            hidden, pooled = added_conditions.unpack(embeddings, self.pooled_width)
        if cache.model is not self.unet:
            hidden = ip_adapter.text_only(hidden, self.image_tokens)
        if pooled is None:
            cache.refresh(timesteps, hidden, owner=self)
            return
        for size in sizes:
            cache.refresh(timesteps, hidden, owner=self, pooled=pooled, size=size)

    def _tell_size(self, latents: Tensor) -> None:
        """Where the conditioning depends on the latents' size: store it for a size other than the last call's (in
        the caches this denoiser stored last; claim() then stores every size again in the others)."""
        if self.pooled_width is None or not self.caches:
            return
        size = (int(latents.shape[-2]), int(latents.shape[-1]))
        if self._sizes and self._sizes[-1] == size:
            return
        if size in self._sizes:
            self._sizes.remove(size)
        self._sizes.append(size)
        if self._given is not None:
            for cache in self.caches:
                if cache.owner is self:
                    self._refresh(cache, [size])

    def __call__(self, latents: Tensor, timesteps: Tensor, embeddings: Tensor) -> Tensor:
        self._tell_size(latents)
        if not self.claim():
            return self._unet(latents, timesteps, embeddings)
        with ExitStack() as reading:  # the UNet and the ControlNet read their stored projections
            for cache in self.caches:
                reading.enter_context(cache.active())
            return self._unet(latents, timesteps, embeddings)

    def _unet(self, latents: Tensor, timesteps: Tensor, embeddings: Tensor) -> Tensor:
        # In the UNet's own layout: img2img hands over the codec's channels-last latents and txt2img the plain
        # noise, and a compiled UNet guards on strides, so a switch between them would compile it again.
        latents = latents.contiguous(memory_format=_memory_format(self.unet))
        hidden, added = added_conditions.model_inputs(latents, embeddings, self.pooled_width)
        extra = {} if self.control is None else \
            self.control.residuals(latents, timesteps, ip_adapter.text_only(hidden, self.image_tokens), added)
        return self.unet(latents, timesteps, encoder_hidden_states=hidden, return_dict=False, **added, **extra)[0]


def _memory_format(unet: torch.nn.Module) -> torch.memory_format:
    """channels_last where the UNet's first convolution holds its weight that way (accelerated on CUDA)."""
    weight = getattr(getattr(unet, "conv_in", None), "weight", None)
    if isinstance(weight, Tensor) and weight.dim() == 4 and not weight.is_contiguous() \
            and weight.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class TorchCodec:
    """Encodes to the posterior mean of a KL VAE (deterministic: sampling would add flicker).

    dtype: the stream's, when the VAE runs in another (SDXL's autoencoder in float32, as it overflows in half
    precision); latents and pictures are handed over in it.
    """

    def __init__(self, vae: torch.nn.Module, dtype: torch.dtype | None = None):
        self.vae = vae
        self.scaling_factor = float(vae.config.scaling_factor)
        self.dtype = dtype

    def encode(self, pixels: Tensor) -> Tensor:
        out = self.vae.encode(pixels.to(self.vae.dtype))
        latents = out.latents if hasattr(out, "latents") else out.latent_dist.mode()
        return self._handed_over(latents * self.scaling_factor)

    def decode(self, latents: Tensor) -> Tensor:
        scaled = (latents / self.scaling_factor).to(self.vae.dtype)
        return self._handed_over(self.vae.decode(scaled, return_dict=False)[0])

    def _handed_over(self, tensor: Tensor) -> Tensor:
        return tensor if self.dtype is None else tensor.to(self.dtype)
