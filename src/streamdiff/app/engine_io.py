"""The inference thread's side of the engine: apply live controls (and a new style picture) between frames, run
one frame, and remember when the frame now leaving the stream batch was captured (for the latency readout).

A style picture reaches this thread ready: the style inbox's own thread has loaded it and made its CLIP pixels
(app/style.py), so all that is left here is the engine's image encoder, run between two frames."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamdiff.app.frames import Frame, from_engine, to_engine
from streamdiff.app.keys import Controls
from streamdiff.app.style import StyleInbox
from streamdiff.errors import first_line

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AiFrame:
    """One engine output: (H, W, 3) uint8 in `order`, and the capture time of the input it shows."""

    image: np.ndarray
    order: str
    source_index: int
    source_time: float


@dataclass
class StepTimings:
    """Seconds spent per part of the inference thread's work, summed over `frames`.

    On a GPU the engine call returns once its work is queued: the wait for the device falls into
    `postprocess`, where the picture is downloaded (no extra synchronisation just to split the time)."""

    frames: int = 0
    preprocess: float = 0.0
    engine: float = 0.0
    postprocess: float = 0.0
    controls: float = 0.0

    def mean_ms(self, part: str) -> float:
        return 1000.0 * getattr(self, part) / max(1, self.frames)


class EngineRunner:
    """Owns every call into the engine; used from the inference thread only, but for `styles.put`, which any
    thread may call, and the host half of a style picture (`engine.style_pixels`), which the style inbox's thread
    runs. close() stops that thread."""

    def __init__(self, engine: Any, prompts: Sequence[str], fit: str = "crop", transition_frames: int = 8,
                 clock=time.perf_counter, style_name: str | None = None) -> None:
        if not prompts:
            raise ValueError("at least one prompt is needed")
        self.engine, self.prompts, self.fit = engine, list(prompts), fit
        self.transition_frames = transition_frames
        self.applied: Controls | None = None
        self.timings = StepTimings()
        self._clock = clock
        config = engine.config
        self.width, self.height = config.width, config.height
        self.control_names: tuple[str, ...] = tuple(engine.control_names)  # one per ControlNet, as labels show them
        # Style pictures asked for, and the name of the one in use (`style_name`: the one the engine started with).
        self.styles = StyleInbox(self._style_pixels, style_name)
        # The output of call k shows input k - latency: keep that many (index, capture time) records to match them.
        self._in_flight: deque[tuple[int, float]] = deque(maxlen=config.latency_frames + 1)

    def apply(self, controls: Controls) -> None:
        """Hand changed controls to the engine: prompt (with a smooth transition), temporal, seed, strength, steps,
        each ControlNet's scale and the IP-Adapter's; then the newest style picture asked for, if one came."""
        start = self._clock()
        old = self.applied
        # The engine was prepared with the first prompt: only another one needs handing over.
        if controls.prompt_index != (0 if old is None else old.prompt_index):
            frames = 0 if old is None else self.transition_frames
            self.engine.update_prompt(self.prompt(controls), transition_frames=frames)
        if old is None or (controls.ema, controls.feedback) != (old.ema, old.feedback):
            self.engine.set_temporal(feedback=controls.feedback, ema=controls.ema)
        if old is not None and controls.seed != old.seed:
            self.engine.set_seed(controls.seed)
        if old is not None:
            self._set_schedule(controls, old)
        before = () if old is None else old.control_scales
        for index, scale in enumerate(controls.control_scales):
            if index >= len(before) or scale != before[index]:
                self.engine.set_control_scale(scale, index=index)
        style = controls.ip_adapter_scale
        if style is not None and (old is None or style != old.ip_adapter_scale):
            self.engine.set_ip_adapter_scale(style)
        self.applied = controls
        self._take_style()
        self.timings.controls += self._clock() - start

    def _take_style(self) -> None:
        """The newest style picture prepared since the last frame, encoded here (by the adapter's CLIP image
        encoder); one that cannot be used leaves the stream its picture, and its sender is told why."""
        prepared = self.styles.take()
        if prepared is None:
            return
        picture = prepared.picture
        try:
            self.engine.set_style_image(prepared.pixels)
        except (OSError, ValueError) as exc:
            picture.done(str(exc) or first_line(exc))
            return
        self.styles.current = picture.name
        picture.done(None)

    def _style_pixels(self, picture: Any) -> Any:
        """The host half of a style picture (CLIP's preprocessing), on the style inbox's thread: the engine's
        style_pixels runs no model, so it may run beside the frames."""
        return self.engine.style_pixels(picture)

    def close(self, timeout: float = 2.0) -> bool:
        """Stop the style inbox's thread; True when it ended within `timeout` seconds."""
        return self.styles.close(timeout)

    def _set_schedule(self, controls: Controls, old: Controls) -> None:
        """A new strength and number of steps, in the order that lets a pair that fits together through: a low
        strength leaves room for few steps, so fewer steps go first and more steps after the strength."""
        if controls.steps < old.steps:
            self._set_steps(controls.steps)
        if controls.strength != old.strength:
            self._set_strength(controls.strength)
        if controls.steps > old.steps:
            self._set_steps(controls.steps)

    def _set_strength(self, strength: float) -> None:
        schedule = self.engine.config.t_index_list
        try:
            self.engine.set_strength(strength)
        except ValueError as exc:  # too low for this many steps: the stream keeps its strength
            logger.warning("%s", exc)
        if self.engine.config.t_index_list != schedule:  # the frames in flight start again, as after new steps
            self._restart_record()

    def _set_steps(self, steps: int) -> None:
        try:
            self.engine.set_steps(steps)
        except ValueError as exc:  # too many for this strength: the stream keeps its number of steps
            logger.warning("%s", exc)

    def _restart_record(self) -> None:
        """The stream batch fills again from the next frame (new steps, or a new schedule for the frames in
        flight): so does the record of the frames in it, so the latency readout shows the new frames."""
        self._in_flight = deque(maxlen=self.engine.config.latency_frames + 1)

    def prompt(self, controls: Controls) -> str:
        return self.prompts[controls.prompt_index % len(self.prompts)]

    def step(self, frame: Frame, mirror: bool = False) -> AiFrame:
        """Stylize one captured frame; the result is the output leaving the stream batch now."""
        t0 = self._clock()
        pixels = to_engine(frame.image, frame.order, self.width, self.height, self.fit, self.engine.device, mirror)
        t1 = self._clock()
        output = self.engine.img2img(pixels, output_type="pt")
        t2 = self._clock()
        image = from_engine(output, frame.order)
        t3 = self._clock()
        return self._leaving(image, frame.order, frame.index, frame.time, (t0, t1, t2, t3))

    def generate(self, index: int, when: float) -> AiFrame:
        """One text-to-image frame of the stream (no input picture); `index` and `when` name the request."""
        t1 = self._clock()
        output = self.engine.txt2img(output_type="pt")
        t2 = self._clock()
        image = from_engine(output, "rgb")
        return self._leaving(image, "rgb", index, when, (t1, t1, t2, self._clock()))

    def _leaving(self, image: np.ndarray, order: str, index: int, when: float,
                 marks: tuple[float, float, float, float]) -> AiFrame:
        """The output with the request it shows (the one that entered the stream batch `latency` calls ago)."""
        if self._in_flight.maxlen != self.engine.config.latency_frames + 1:
            # The number of steps changed: set by apply(), or set while the engine compiled and applied in this call.
            self._restart_record()
        self._in_flight.append((index, when))
        shown_index, shown_time = self._in_flight[0]
        t0, t1, t2, t3 = marks
        timings = self.timings
        timings.frames += 1
        timings.preprocess += t1 - t0
        timings.engine += t2 - t1
        timings.postprocess += t3 - t2
        return AiFrame(image, order, shown_index, shown_time)
