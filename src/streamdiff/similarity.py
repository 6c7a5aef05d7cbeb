"""Stochastic Similarity Filter (StreamDiffusion, sec. 3.4): skip frames that barely changed.

Skip probability max(0, (cos - thr) / (1 - thr)) for the cosine similarity between the input and the
last processed input; at most `max_skip` frames in a row are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .devices import cpu_generator


def skip_probability(cosine: float, threshold: float) -> float:
    if threshold >= 1.0:
        return 0.0
    return max(0.0, (cosine - threshold) / (1.0 - threshold))


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

    def should_skip(self, frame: Tensor) -> bool:
        """Decide for one input (any shape); the decision needs one host read of the similarity."""
        flat = frame.detach().reshape(-1).float()
        if self._previous is None or self._previous.shape != flat.shape:
            self._remember(flat)
            return False
        cosine = float(torch.nn.functional.cosine_similarity(self._previous, flat, dim=0, eps=1e-6))
        self.last_similarity = cosine
        draw = float(torch.rand((), generator=self._generator))
        if draw < skip_probability(cosine, self.threshold) and self.consecutive_skips < self.max_skip:
            self.consecutive_skips += 1
            return True
        self._remember(flat)
        return False

    def _remember(self, flat: Tensor) -> None:
        self._previous = flat.clone()
        self.consecutive_skips = 0
