"""Prompt encoding with a cache, weighted blending (lerp or slerp) and smooth transitions."""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence, Union

import torch
from torch import Tensor

from . import added_conditions

logger = logging.getLogger(__name__)

WeightedPrompts = Sequence[tuple[str, float]]
PromptLike = Union[str, WeightedPrompts]


def normalized_weights(weights: Sequence[float], what: str = "prompt") -> list[float]:
    if not weights or any(w < 0 or not math.isfinite(w) for w in weights) or sum(weights) <= 0:
        raise ValueError(f"{what} weights must be finite, non-negative and not all zero; got {list(weights)}")
    total = float(sum(weights))
    return [w / total for w in weights]


def slerp(a: Tensor, b: Tensor, t: float) -> Tensor:
    """Spherical interpolation along the last dimension; exact endpoints, lerp for parallel vectors."""
    if t <= 0.0:
        return a.clone()
    if t >= 1.0:
        return b.clone()
    a32, b32 = a.float(), b.float()
    dot = (a32 * b32).sum(-1, keepdim=True) / (a32.norm(dim=-1, keepdim=True) * b32.norm(dim=-1, keepdim=True))
    theta = torch.arccos(dot.clamp(-1.0, 1.0))
    sin_theta = torch.sin(theta)
    parallel = sin_theta.abs() < 1e-6
    wa = torch.where(parallel, 1.0 - t, torch.sin((1.0 - t) * theta) / sin_theta.where(~parallel, 1.0))
    wb = torch.where(parallel, t, torch.sin(t * theta) / sin_theta.where(~parallel, 1.0))
    return (wa * a32 + wb * b32).to(a.dtype)


def blend(tensors: Sequence[Tensor], weights: Sequence[float], mode: str = "linear") -> Tensor:
    """Weighted blend of same-shaped tensors; slerp folds pairwise with cumulative weights."""
    w = normalized_weights(weights)
    if mode == "linear":
        out = tensors[0] * w[0]
        for tensor, weight in zip(tensors[1:], w[1:]):
            out = out + tensor * weight
        return out
    out, acc = tensors[0], w[0]
    for tensor, weight in zip(tensors[1:], w[1:]):
        acc += weight
        out = slerp(out, tensor, weight / acc if acc > 0 else 0.0)
    return out


class PromptEncoder:
    """CLIP text embeddings (1, 77, D) per prompt, cached; long prompts truncated with a warning.

    With SDXL's second tower (`tokenizer_2`, `text_encoder_2`): both towers' penultimate hidden states side by
    side, and the second one's pooled embedding as a 78th token (added_conditions.pack), as diffusers'
    StableDiffusionXLPipeline encodes a prompt.
    """

    def __init__(self, tokenizer, text_encoder, device: torch.device, dtype: torch.dtype, cache_size: int = 64, *,
                 tokenizer_2=None, text_encoder_2=None, zero_empty_negative: bool = False):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.tokenizer_2 = tokenizer_2
        self.text_encoder_2 = text_encoder_2
        self.zero_empty_negative = zero_empty_negative
        self.device = device
        self.dtype = dtype
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Tensor] = OrderedDict()

    def encode(self, prompt: str) -> Tensor:
        if not isinstance(prompt, str):
            raise ValueError(f"a prompt must be a string; got {type(prompt).__name__}")
        if prompt in self._cache:
            self._cache.move_to_end(prompt)
            return self._cache[prompt]
        embeds = self._encode_uncached(prompt).to(device=self.device, dtype=self.dtype)
        self._cache[prompt] = embeds
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return embeds

    def warm(self) -> None:
        """Run the text encoders once, storing nothing (e.g. to capture their CUDA graphs before a prompt change)."""
        self._encode_uncached("")

    def encode_negative(self, prompt: str) -> Tensor:
        """A negative prompt's embeddings: zeros for an empty one where the model says so, else `encode`."""
        if prompt == "" and self.zero_empty_negative:
            return torch.zeros_like(self.encode(prompt))
        return self.encode(prompt)

    @torch.no_grad()
    def _encode_uncached(self, prompt: str) -> Tensor:
        ids = _token_ids(self.tokenizer, prompt, warn=True).to(self.text_encoder.device)
        if self.text_encoder_2 is None:
            return self.text_encoder(ids, attention_mask=None)[0]
        ids_2 = _token_ids(self.tokenizer_2, prompt, warn=False).to(self.text_encoder_2.device)
        first = self.text_encoder(ids, output_hidden_states=True)
        second = self.text_encoder_2(ids_2, output_hidden_states=True)
        hidden = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
        return added_conditions.pack(hidden, second.text_embeds)

    def encode_weighted(self, prompt: PromptLike, mode: str = "linear") -> Tensor:
        """A string, or [(text, weight), ...] blended by normalised weights."""
        if isinstance(prompt, str):
            return self.encode(prompt)
        pairs = list(prompt)
        if not pairs or not all(isinstance(p, (tuple, list)) and len(p) == 2 for p in pairs):
            raise ValueError("a weighted prompt must be a list of (text, weight) pairs")
        return blend([self.encode(text) for text, _ in pairs], [float(w) for _, w in pairs], mode)


def _token_ids(tokenizer, prompt: str, *, warn: bool) -> Tensor:
    """(1, 77) token ids, padded; a longer prompt is truncated (with a warning when `warn`)."""
    limit = tokenizer.model_max_length
    full = tokenizer(prompt, truncation=False).input_ids
    if warn and len(full) > limit:
        logger.warning(
            "prompt is %d tokens long; CLIP reads at most %d, so it was truncated to: %r",
            len(full), limit, tokenizer.decode(full[1:limit - 1]),
        )
    return tokenizer(prompt, padding="max_length", max_length=limit, truncation=True, return_tensors="pt").input_ids


@dataclass
class Transition:
    """A smooth move between two embeddings over `frames` frames (smoothstep easing)."""

    start: Tensor
    end: Tensor
    frames: int
    mode: str = "linear"
    done: int = 0

    def advance(self) -> Tensor:
        self.done = min(self.done + 1, self.frames)
        x = self.done / self.frames
        eased = x * x * (3.0 - 2.0 * x)
        return blend([self.start, self.end], [1.0 - eased, eased], self.mode)

    @property
    def finished(self) -> bool:
        return self.done >= self.frames
