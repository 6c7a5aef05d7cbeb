"""The captured steps of one accelerated stream, kept by what each is specialised for.

A stream keeps a few input shapes; the one used longest ago leaves first. Steps replay into the pipeline's
own buffers, so once the stream has new buffers (prepared again, or another number of steps) every step is
stale and all are dropped.
A shape that ran out of GPU memory while capturing is remembered, so it stays on the ordinary path.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .graphs import FrameBuffers, Replayable
from .similarity_check import SimilarityCheck


@dataclass(frozen=True)
class StepKey:
    """What one captured step is specialised for."""

    task: str  # "img2img" or "txt2img"
    shape: tuple[int, ...]  # input frames: (F, h, w, 3) uint8 or (F, 3, h, w) float; () for txt2img
    dtype: torch.dtype | None
    uint8: bool  # whether the step also writes uint8 pictures for the host

    def describe(self) -> str:
        if self.task == "txt2img":
            return "txt2img"
        size = f"{self.shape[2]}x{self.shape[1]}" if self.dtype == torch.uint8 else f"{self.shape[3]}x{self.shape[2]}"
        return f"img2img of {self.shape[0]} x {size} {'uint8' if self.dtype == torch.uint8 else 'float'} frames"


@dataclass
class Step:
    """A captured step with the buffers it reads and writes."""

    buffers: FrameBuffers
    record: Replayable
    out: Tensor | None
    check: SimilarityCheck | None = None  # img2img with the similarity filter on: captured with the step or later


_UNCAPTURED = "uncaptured"  # the mark of a shape that ran out of memory while capturing


class StepCache:
    """Up to `max_shapes` captured steps, the one used longest ago dropped first."""

    def __init__(self, max_shapes: int, progress: Callable[[str], None]) -> None:
        self.max_shapes = max_shapes
        self._progress = progress
        self._steps: OrderedDict[StepKey, Step | str] = OrderedDict()
        self._signature: tuple[int, ...] = ()

    def lookup(self, key: StepKey, signature: tuple[int, ...]) -> Step | None:
        """The step for key, if captured over the buffers `signature` names (their addresses); else None."""
        if signature != self._signature:
            if self._steps:
                self._progress("the stream has new buffers (prepared again, or another step count): steps captured again")
            self.clear()
            self._signature = signature
        step = self._steps.get(key)
        if isinstance(step, Step):
            self._steps.move_to_end(key)
            return step
        return None

    def __contains__(self, key: StepKey) -> bool:
        """Whether key was captured, or was marked to stay uncaptured."""
        return key in self._steps

    def make_room(self) -> None:
        """Drop the steps used longest ago until one more fits (before capturing it, to free its memory)."""
        while len(self._steps) >= self.max_shapes:
            self._steps.popitem(last=False)

    def add(self, key: StepKey, step: Step) -> None:
        self._steps[key] = step

    def keep_uncaptured(self, key: StepKey) -> None:
        """After running out of memory while capturing key: drop every step, and run key uncaptured."""
        self.clear()
        self._steps[key] = _UNCAPTURED

    def clear(self) -> None:
        self._steps.clear()

    def described(self) -> list[str]:
        """The steps ready to replay, described."""
        return [key.describe() for key, step in self._steps.items() if isinstance(step, Step)]
