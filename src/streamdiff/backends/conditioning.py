"""A UNet's and its ControlNet's per-stream constants, computed once per prompt or schedule change, not per frame.

A stream's timesteps and text embeddings change only with prepare() or a prompt change, yet every UNet
call recomputes from them the timestep embedding with each ResNet's projection of it (22 small products
in SD 2.1) and the keys and values of each cross-attention layer (16 products over 77 tokens). The cache
computes those projections when told the conditioning, and the UNet reads the stored results while the
cache is active: the same numbers, fewer kernels (and under torch.compile the unused embedding path is
dropped too). Outside `active()` the UNet computes everything as usual, so other callers of the same
modules (a diffusers pipeline on shared weights) are unaffected. A ControlNetModel is a copy of the UNet's
down and middle stages called with the same timesteps and embeddings, so the same cache covers it (10
projections and 7 cross-attention layers in SD 2.1's), with a cache of its own.

SDXL's UNet (and ControlNet) adds to the timestep embedding a projection of the pooled text embedding and of
the size numbers (added_conditions.py), so its time projections (17 ResNets, and the two embeddings' own
products) are stored from those too: the latents' size is part of what the stored values are kept per.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import added_conditions
from ..ip_adapter import ImagePromptAttention, split
from .call_graph import GraphedCall

_KEY = "_streamdiff_conditioning"  # where a UNet or ControlNet keeps its cache (ConditioningCache.of)

# Processors known to project the keys and values of cross-attention from encoder_hidden_states, unchanged (and
# the IP-Adapter's, which projects the text tokens so and the image tokens with projections of its own).
_PLAIN_PROCESSORS = ("AttnProcessor", "AttnProcessor2_0", "FusedAttnProcessor2_0")

LatentSize = tuple[int, int]  # the latents' height and width


class _Switch(threading.local):
    """Shared by a cache's stand-ins: whether calls of its model read the stored projections now, on this thread. Per
    thread because a compilation on a thread of its own (background.py) traces the model inside `active()` while
    the stream's frames enter and leave it on theirs; Dynamo's guards read the calling thread's value."""

    on = False

    def __reduce__(self) -> tuple[type[_Switch], tuple[()]]:
        return _Switch, ()  # a copy of the model (deepcopy, pickle) gets a switch of its own, off


class StoredProjection(nn.Module):
    """Stands in for a linear projection whose input is constant for a stream: while the cache is active it
    returns what `store` computed. It holds the projection's own parameters under their own names, so state
    dicts, weight loading and diffusers' projection fusing see the model unchanged."""

    def __init__(self, linear: nn.Linear, switch: _Switch):
        super().__init__()
        self.weight = linear.weight
        self.register_parameter("bias", linear.bias)
        self.switch = switch
        self.__dict__["original"] = linear  # not a submodule: it shares these parameters
        self.register_buffer("value", None, persistent=False)  # (B, C) or (B, 77, C): the current conditioning's
        # One value per conditioning shape, kept: a captured step reads the value of its stream's shape by address,
        # so a stream of another shape on the same model must store into another tensor, not replace this one.
        self.__dict__["values"] = {}

    def forward(self, x: Tensor) -> Tensor:
        if self.switch.on:
            return self.value
        return F.linear(x, self.weight, self.bias)

    def store(self, x: Tensor, shape: Hashable) -> None:
        """Compute the projection of x for conditioning of `shape`; in place where one was stored for it, so
        captured graphs read the new one."""
        out = F.linear(x, self.weight, self.bias)
        value = self.values.get(shape)
        if value is not None and value.shape == out.shape and value.dtype == out.dtype and value.device == out.device:
            value.copy_(out)
        else:
            value = self.values[shape] = out
        self.value = value

    def select(self, shape: Hashable) -> None:
        """Calls read the values stored for conditioning of `shape` (after a captured refresh wrote them)."""
        self.value = self.values[shape]


class _Installed(NamedTuple):
    """What a cache put its stand-ins into."""

    resnets: list[nn.Module]
    attentions: list[tuple[nn.Module, tuple[str, ...]]]  # cross-attention layers, with their projections' names
    stand_ins: list[StoredProjection]  # all of them, in the order made


class ConditioningCache:
    """The stored time projections and cross-attention keys and values of one diffusers UNet2DConditionModel
    or ControlNetModel (`model`).

    One per model (`of`): its stand-ins hold one conditioning at a time, that of `owner`, the stream that
    stored it last; a stream sharing the model stores its own again before its calls (see TorchDenoiser).
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.owner: object | None = None
        self._switch = _Switch()
        # What _install covered, kept so that a refresh (every frame of a prompt transition) walks no modules.
        self._installed: _Installed | None = None
        self._graphed: GraphedCall | None = None  # the refresh replayed as a CUDA graph (use_graph)

    @classmethod
    def of(cls, model: nn.Module) -> ConditioningCache:
        """The cache of `model`, made at the first call."""
        cache = model.__dict__.get(_KEY)
        if cache is None:
            cache = model.__dict__[_KEY] = cls(model)
        return cache

    def use_graph(self, on: bool) -> None:
        """Store the projections by replaying a CUDA graph of the work (call_graph.py), or eagerly: on an H100 a
        refresh of SDXL-Turbo's 70 cross-attention layers took 12 ms of launches, eager."""
        if on and self._graphed is None:
            self._graphed = GraphedCall(self._store)
        elif not on:
            self._graphed = None

    @torch.no_grad()
    def refresh(self, timesteps: Tensor, embeddings: Tensor, owner: object, pooled: Tensor | None = None,
                size: LatentSize | None = None) -> None:
        """Store the projections for the model's calls with timesteps (B,) and embeddings (B, 77, D), and for a model
        with SDXL's added conditions the pooled text embedding (B, P) and the latents' size."""
        if self._adds_text_time() and (pooled is None or size is None):
            raise ValueError("expected the pooled text embedding and the latents' size for a model with SDXL's "
                             "added conditions")
        if self._graphed is None:
            self._store(timesteps, embeddings, pooled, size)
        else:
            self._graphed(timesteps, embeddings, pooled, size)
            if not self._graphed.captured_last:  # a replay wrote the values of this shape: calls are to read them
                shape = _shape_of(timesteps, embeddings, size)
                for projection in (self._installed or self._install()).stand_ins:
                    projection.select(shape)
        self.owner = owner

    def _store(self, timesteps: Tensor, embeddings: Tensor, pooled: Tensor | None = None,
               size: LatentSize | None = None) -> None:
        resnets, attentions, _ = self._installed or self._install()
        shape = _shape_of(timesteps, embeddings, size)
        if resnets:
            emb = self._time_embedding(timesteps, pooled, size)
            for resnet in resnets:
                resnet.time_emb_proj.store(emb if resnet.skip_time_act else resnet.nonlinearity(emb), shape)
        for attention, names in attentions:
            states = embeddings
            processor = attention.processor
            if isinstance(processor, ImagePromptAttention):  # text tokens, then the IP-Adapter's image tokens
                states, image = split(states, processor.tokens)
                processor.to_k_ip.store(image, shape)
                processor.to_v_ip.store(image, shape)
            if attention.norm_cross:
                states = attention.norm_encoder_hidden_states(states)
            for name in names:
                getattr(attention, name).store(states, shape)

    @staticmethod
    def reading(model: nn.Module) -> bool:
        """Whether calls of `model` read stored projections now: it has a cache, and they run inside `active()`."""
        cache = model.__dict__.get(_KEY)
        return cache is not None and cache._switch.on

    @contextmanager
    def active(self) -> Iterator[None]:
        """The model's calls inside read the stored projections."""
        self._switch.on = True
        try:
            yield
        finally:
            self._switch.on = False

    def remove(self) -> None:
        """Put the original projections back (before changing the model's modules, e.g. fusing them)."""
        for module in self.model.modules():
            for name, child in list(module.named_children()):
                if isinstance(child, StoredProjection):
                    setattr(module, name, child.original)
        self.owner = None
        self._installed = None
        if self._graphed is not None:  # its capture wrote into the stand-ins just dropped
            self._graphed.clear()

    # ----- internals ------------------------------------------------------------------------------

    def _install(self) -> _Installed:
        """Put stand-ins in front of every projection the cache covers: the ResNets and cross-attention layers
        (with their projections' names) that have them, and the stand-ins."""
        stand_ins: list[StoredProjection] = []

        def stand_in(module: nn.Module) -> StoredProjection:
            made = module if isinstance(module, StoredProjection) else StoredProjection(module, self._switch)
            stand_ins.append(made)
            return made

        resnets = list(self._resnets()) if self._caches_time() else []
        for resnet in resnets:
            resnet.time_emb_proj = stand_in(resnet.time_emb_proj)
        attentions = list(self._cross_attentions())
        for attention, names in attentions:
            for name in names:
                setattr(attention, name, stand_in(getattr(attention, name)))
            processor = attention.processor
            if isinstance(processor, ImagePromptAttention):
                processor.to_k_ip = stand_in(processor.to_k_ip)
                processor.to_v_ip = stand_in(processor.to_v_ip)
        self._installed = _Installed(resnets, attentions, stand_ins)
        return self._installed

    def _caches_time(self) -> bool:
        """Whether the embedding depends on what a refresh is told: the timesteps, and for SDXL's added conditions
        the pooled embedding and the size (not class labels or other added conditions)."""
        model = self.model
        return getattr(model, "class_embedding", None) is None and \
            model.config.get("addition_embed_type") in (None, "text_time")

    def _adds_text_time(self) -> bool:
        return self.model.config.get("addition_embed_type") == "text_time"

    def _time_embedding(self, timesteps: Tensor, pooled: Tensor | None, size: LatentSize | None) -> Tensor:
        """The embedding every ResNet projects, (B, 1280 for SD), as UNet2DConditionModel.forward and
        ControlNetModel.forward compute it (a ControlNet has the UNet's steps inline and no final activation)."""
        model = self.model
        # time_proj's sinusoids are float32 whatever the model's dtype; forward casts them to the sample's.
        projected = model.time_proj(timesteps).to(dtype=model.dtype)
        emb = model.time_embedding(projected, None)
        if pooled is not None and size is not None:  # SDXL's added conditions (refresh requires them there)
            # As forward's get_aug_embed does with the time_ids the engine passes (added_conditions.model_inputs).
            time_ids = added_conditions.size_numbers_for(pooled.shape[0], size, pooled)
            sized = model.add_time_proj(time_ids.flatten()).reshape(pooled.shape[0], -1)
            emb = emb + model.add_embedding(torch.cat([pooled, sized], dim=-1).to(emb.dtype))
        act = getattr(model, "time_embed_act", None)
        return act(emb) if act is not None else emb

    def _resnets(self) -> Iterator[nn.Module]:
        from diffusers.models.resnet import ResnetBlock2D

        for module in self.model.modules():
            if isinstance(module, ResnetBlock2D) and _coverable(module.time_emb_proj):
                yield module

    def _cross_attentions(self) -> Iterator[tuple[nn.Module, tuple[str, ...]]]:
        """Cross-attention layers with a plain processor, and the names of their key/value projections (none
        where the model projects the embeddings first: its layers then attend to other states)."""
        from diffusers.models.attention_processor import Attention

        if getattr(self.model, "encoder_hid_proj", None) is not None:
            return
        for module in self.model.modules():
            if not isinstance(module, Attention) or not module.is_cross_attention:
                continue
            processor = module.processor
            ours = isinstance(processor, ImagePromptAttention)
            if type(processor).__name__ not in _PLAIN_PROCESSORS and not ours:
                continue
            # The fused processor reads to_kv; ours reads it where the projections were fused.
            fused = type(processor).__name__ == "FusedAttnProcessor2_0" or (ours and module.fused_projections)
            names = ("to_kv",) if fused else ("to_k", "to_v")
            covered = [getattr(module, n, None) for n in names]
            if ours:
                covered += [processor.to_k_ip, processor.to_v_ip]
            if all(_coverable(m) for m in covered):
                yield module, names


def _shape_of(timesteps: Tensor, embeddings: Tensor, size: LatentSize | None) -> Hashable:
    """What the stored values follow: one set of values per such key (StoredProjection.values). The size, where
    given, is a value the time projections depend on, not a shape: streams of two sizes need values of their own."""
    return tuple(timesteps.shape), tuple(embeddings.shape), embeddings.dtype, embeddings.device, size


def _coverable(module: nn.Module | None) -> bool:
    """A stand-in already, or a plain nn.Linear one can stand in for (not a subclass such as a LoRA layer,
    whose forward differs)."""
    return isinstance(module, StoredProjection) or type(module) is nn.Linear
