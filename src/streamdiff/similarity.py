"""Stochastic Similarity Filter (StreamDiffusion, sec. 3.4): skip frames that barely changed.

Skip probability max(0, (cos - thr) / (1 - thr)) for the cosine similarity between the input and the
last processed input; at most `max_skip` frames in a row are skipped.

The tensor math (`flatten`, `cosine_similarity`) and the decision (`SimilarityFilter.decide`) are
separate so that an accelerated backend can compute the cosine in a captured device step, read back
one scalar and still take exactly the decisions of the eager `should_skip`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .devices import cpu_generator

EPS = 1e-6  # of the cosine similarity: identical inputs give the same value on every path


def skip_probability(cosine: float, threshold: float) -> float:
    if threshold >= 1.0:
        return 0.0
    return max(0.0, (cosine - threshold) / (1.0 - threshold))


def flatten(frame: Tensor) -> Tensor:
    """An input (any shape, any float dtype) as the flat float32 vector the filter compares."""
    return frame.detach().reshape(-1).float()


def cosine_similarity(previous: Tensor, current: Tensor) -> Tensor:
    """The cosine of two flat vectors as a 0-dim device tensor (no host sync, so it can be captured)."""
    return torch.nn.functional.cosine_similarity(previous, current, dim=0, eps=EPS)


@dataclass
class SimilarityFilter:
    threshold: float = 0.98
    max_skip: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        self._generator = cpu_generator(self.seed)
        self._previous: Tensor | None = None
        self.consecutive_skips = 0
        self.last_similarity = float("nan")

    def reset(self) -> None:
        self._previous = None
        self.consecutive_skips = 0

    @property
    def previous(self) -> Tensor | None:
        """The flat float32 last processed input; None before the first one (or after reset)."""
        return self._previous

    def remember(self, flat: Tensor) -> None:
        """Keep flat as the last processed input, without copying: the caller must not change it afterwards,
        except to write the next processed input into it (what a backend with a static buffer does)."""
        self._previous = flat

    def should_skip(self, frame: Tensor) -> bool:
        """Decide for one input (any shape); the decision needs one host read of the similarity."""
        flat = flatten(frame)
        cosine = None
        if self._previous is not None and self._previous.shape == flat.shape:
            cosine = float(cosine_similarity(self._previous, flat))
        skip = self.decide(cosine)
        if not skip:
            self.remember(flat.clone())  # flat may be a view of the caller's tensor
        return skip

    def decide(self, cosine: float | None) -> bool:
        """Whether to skip an input whose cosine with `previous` is given; None: there is no previous input
        of its shape, so it is processed. False obliges the caller to `remember` this input.

        Draws from the filter's generator only when there is a cosine, as should_skip always has: the same
        inputs give the same decisions whichever path computed the cosine.
        """
        if cosine is None:
            self.consecutive_skips = 0
            return False
        self.last_similarity = cosine
        draw = float(torch.rand((), generator=self._generator))
        if draw < skip_probability(cosine, self.threshold) and self.consecutive_skips < self.max_skip:
            self.consecutive_skips += 1
            return True
        self.consecutive_skips = 0
        return False
