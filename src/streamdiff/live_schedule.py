"""Live changes of a running stream's schedule: its strength (where on the noise schedule it starts) and its
number of denoising steps (how much work each frame gets).

The strength changes in place: the stream keeps its shape, so captured device steps read the new schedule.
The number of steps changes the shape of the stream batch (n x F slots): the stream gets a new batch, its
in-flight frames start again from the next frame, and an accelerated stream captures its steps again. The
temporal state (latent feedback, EMA) carries over both changes on purpose, so the picture does not jump.

LiveSchedule is a part of StreamPipeline kept in a module of its own, as DeviceSteps is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from .config import StreamConfig, strength_to_t_index

if TYPE_CHECKING:
    from .stream import StreamPipeline


class LiveSchedule:
    """StreamPipeline's schedule controls (see the module's docstring)."""

    @property
    def strength(self: StreamPipeline) -> float:
        """How much of each frame the stream redraws, from the first schedule index: 1.0 starts from pure noise."""
        cfg = self.config
        assert cfg.t_index_list is not None
        return 1.0 - cfg.t_index_list[0] / cfg.num_inference_steps

    def set_strength(self: StreamPipeline, strength: float) -> None:
        """Redraw more (toward 1.0) or less of each frame from the next one on, with the same number of steps."""
        cfg = self.config
        self.set_t_index_list(strength_to_t_index(strength, cfg.denoising_steps, cfg.num_inference_steps))

    @torch.no_grad()
    def set_t_index_list(self: StreamPipeline, t_index_list: Sequence[int]) -> None:
        """Move the stream to other schedule indices, as many as it has steps, from the next frame on.

        The buffers stay (captured steps stay valid); frames in flight with several steps, and the residual
        noise of self/initialize guidance, start again from the next frame. Another number of steps is
        set_steps' change.
        """
        batch = self._require_prepared()
        cfg = self.config
        indices = tuple(int(i) for i in t_index_list)
        if len(indices) != cfg.denoising_steps:
            raise ValueError(f"set_t_index_list keeps the stream's {cfg.denoising_steps} step(s): expected "
                             f"{cfg.denoising_steps} schedule indices; got {list(indices)} (set_steps changes "
                             "the number of steps)")
        changed = cfg.with_changes(t_index_list=indices)  # checks the indices before anything changes
        if indices == cfg.t_index_list:
            return
        batch.set_coefficients(self._coefficients(changed))
        self.config = changed
        self._recondition()

    @torch.no_grad()
    def set_steps(self: StreamPipeline, steps: int) -> None:
        """Run `steps` denoising steps per frame from the next frame on, at the same strength.

        The indices are those `strength` and `steps` give (evenly spaced from the first index), except that
        going back to a number of steps the stream had at this strength restores the indices it had then
        (a model's default list, e.g. LCM's (32, 45), is not evenly spaced). The stream refills from its next
        frame; prompts, seed and the temporal state stay. A number that is not a whole number of at least
        1, or that does not fit the strength, raises ValueError and changes nothing.
        """
        cfg = self.config
        changed = self.schedule_for(steps)
        if changed is None:
            return
        batch = self._new_batch(changed)  # the new shape is built in full before the stream changes
        slots = changed.denoising_steps * changed.frame_buffer_size
        cond, uncond = self._expand(self._cond[:1], slots), self._expand(self._uncond[:1], slots)
        self._schedules[cfg.denoising_steps] = cfg.t_index_list
        self._batch, self._cond, self._uncond, self.config = batch, cond, uncond, changed
        self._recondition()

    def schedule_for(self: StreamPipeline, steps: int) -> StreamConfig | None:
        """The configuration set_steps(steps) would give the stream now, changing nothing; None for its own
        number of steps. ValueError as set_steps."""
        self._require_prepared()
        cfg = self.config
        if isinstance(steps, bool) or not isinstance(steps, int):
            raise ValueError(f"steps must be a whole number of at least 1; got {steps!r}")
        if steps == cfg.denoising_steps:
            return None
        assert cfg.t_index_list is not None
        earlier = self._schedules.get(steps)
        if earlier is not None and earlier[0] == cfg.t_index_list[0]:
            indices = earlier
        else:
            indices = strength_to_t_index(self.strength, steps, cfg.num_inference_steps)
        return cfg.with_changes(t_index_list=indices)
