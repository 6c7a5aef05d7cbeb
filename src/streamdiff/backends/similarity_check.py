"""The similarity filter's measurement as a captured device step, one per step shape.

Asking the filter eagerly costs a dozen small kernel launches, a host read and a clone of the frame per
frame (about 0.9 ms on an H100). Captured, a filtered frame costs one replay and one scalar read. The check
computes the model pixels from the step's static input buffer with the step's own preprocessing
(`StreamPipeline.device_pixels`), keeps them flat in float32 and writes their cosine with the previous
processed pixels into a scalar. The decision stays on the host, in the pipeline's SimilarityFilter (its
generator, max_skip cap and statistics), so it is the eager path's.

Two flat buffers take turns as `previous` and `current`, with one capture for each direction: remembering a
processed frame swaps their roles instead of copying a frame's pixels on the device in front of its step.

The `previous` buffer is lent to the filter as its previous input (`SimilarityFilter.remember`): frames that
take the eager path (the first of a new input size) and frames that take the check then compare against the
same last processed input. Whenever the filter holds anything else (an input the eager path remembered;
nothing after a reset, for a new filter or before the first frame) the check copies it in, or reports that
there is none, before measuring.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..similarity import SimilarityFilter, cosine_similarity
from .graphs import Capture, Replayable

if TYPE_CHECKING:
    from ..stream import StreamPipeline


@dataclass
class SimilarityCheck:
    """Static buffers and the captured measurements for the input buffer of one step shape."""

    flats: tuple[Tensor, Tensor]  # float32 (N,) each: flats[side] holds the previous pixels, the other this frame's
    cosine: Tensor  # float32 (): cosine(previous, current), rewritten by each replay
    records: tuple[Replayable, Replayable]  # records[side] measures against flats[side]
    captured: bool = True  # False: made while captures were held, its records run the kernels at each replay
    side: int = 0

    @classmethod
    def capture(cls, pipe: StreamPipeline, frames: Tensor, capture: Capture, captured: bool = True) -> SimilarityCheck:
        """Capture the measurements over frames, the step's static input buffer (uint8 (F, h, w, 3) or float
        (F, 3, h, w)), with the capture the step used (a CUDA graph, or a direct call), or one that captures
        nothing (captured=False)."""
        cfg = pipe.config
        shape = (frames.shape[0], 3, cfg.height, cfg.width)  # what device_pixels gives
        flats = (torch.zeros(shape, dtype=torch.float32, device=frames.device).reshape(-1),
                 torch.zeros(shape, dtype=torch.float32, device=frames.device).reshape(-1))
        cosine = torch.zeros((), dtype=torch.float32, device=frames.device)

        def measure_against(previous: Tensor, current: Tensor) -> Callable[[], None]:
            def measure() -> None:
                # one copy flattens and converts to float32, with the values of the eager filter's reshape().float()
                current.view(shape).copy_(pipe.device_pixels(frames))
                cosine.copy_(cosine_similarity(previous, current))

            return measure

        records = (capture(measure_against(flats[0], flats[1]), ())[0],  # they write only their own buffers:
                   capture(measure_against(flats[1], flats[0]), ())[0])  # no stream state to preserve
        return cls(flats, cosine, records, captured)

    @property
    def previous(self) -> Tensor:
        return self.flats[self.side]

    def measure(self, flt: SimilarityFilter) -> float | None:
        """Run the check on the loaded input: its cosine with flt's previous input, for flt.decide; None where
        flt has no previous input of this size (the frame is then processed)."""
        known = flt.previous
        if known is not None and known.shape == self.previous.shape and known is not self.previous:
            self.previous.copy_(known)
            flt.remember(self.previous)
            known = self.previous
        self.records[self.side].replay()  # also when nothing is known: a processed frame remembers its pixels
        if known is None or known is not self.previous:
            return None
        return self.cosine.item()  # the one wait of the check: for the upload and these few kernels

    def remember(self, flt: SimilarityFilter) -> None:
        """The measured input was processed: its buffer becomes flt's previous input; the other one is free."""
        self.side = 1 - self.side
        flt.remember(self.previous)
