"""Live controls of the camera app and the keys that change them.

The display thread owns the keyboard: a key makes a new frozen Controls value, which it puts in a
latest-value slot; the inference thread applies the engine's share of it between two frames, so the
engine is only ever touched from one thread.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from streamdiff.config import CONTROL_SCALE_MAX, IP_ADAPTER_SCALE_MAX

LAYOUTS: tuple[str, ...] = ("side", "output")
BLEND_STEP = 0.1
EMA_STEP = 0.05
FEEDBACK_STEP = 0.05
EMA_MAX = 0.95
FEEDBACK_MAX = 0.9
STRENGTH_STEP = 0.05
STRENGTH_MIN = 0.1  # leaves room for up to five steps of a 50-step schedule
CONTROL_STEP = 0.1
CONTROL_MAX = 2.0  # ControlNet scales past 2 burn the edges into the picture
STYLE_STEP = 0.1
STYLE_MAX = 2.0  # the keys' range: twice the IP-Adapter scale it was trained at (a remote may go up to 5)
# The number keys' range (each step is one more slot of every UNet batch); a stream started with more keeps them.
STEPS_MAX = 4


@dataclass(frozen=True)
class Controls:
    """What the performer can change while the app runs."""

    prompt_index: int = 0
    blend: float = 0.0  # camera share of the output picture
    ema: float = 0.0
    feedback: float = 0.0
    seed: int = 2
    strength: float = 1.0  # how much of each camera frame the engine redraws (its first schedule index)
    control_scales: tuple[float, ...] = ()  # how strongly each ControlNet steers, in order; (): the stream has none
    ip_adapter_scale: float | None = None  # how strongly the style picture steers; None: the stream has no IP-Adapter
    steps: int = 1  # denoising steps per frame: 1 is fastest, more give more detail at a lower frame rate
    paused: bool = False
    mirror: bool = False
    overlay: bool = True
    help: bool = False
    layout: str = "side"  # "side": camera | output panes; "output": the output alone (projection)

    def __post_init__(self) -> None:
        if not 0.0 <= self.blend <= 1.0:
            raise ValueError(f"blend must be in [0, 1]; got {self.blend}")
        if not 0.0 <= self.ema < 1.0 or not 0.0 <= self.feedback < 1.0:
            raise ValueError(f"ema and feedback must be in [0, 1); got {self.ema} and {self.feedback}")
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1]; got {self.strength}")
        if not isinstance(self.control_scales, tuple) or not all(
                0.0 <= scale <= CONTROL_SCALE_MAX for scale in self.control_scales):
            raise ValueError(f"control_scales must be a tuple of numbers in [0, {CONTROL_SCALE_MAX:g}]; "
                             f"got {self.control_scales!r}")
        style = self.ip_adapter_scale
        if style is not None and (isinstance(style, bool) or not isinstance(style, (int, float))
                                  or not 0.0 <= style <= IP_ADAPTER_SCALE_MAX):
            raise ValueError(f"ip_adapter_scale must be None or a number in [0, {IP_ADAPTER_SCALE_MAX:g}]; "
                             f"got {style!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be a whole number of at least 1; got {self.steps!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}; got {self.layout!r}")


def engine_controls(engine: Any) -> dict[str, Any]:
    """The Controls values a running engine sets at the start: its strength, number of steps, ControlNet scales
    (none for a stream without a ControlNet) and IP-Adapter scale (None for a stream without one)."""
    style = engine.ip_adapter_scale
    return {"strength": engine.strength, "steps": engine.config.denoising_steps,
            "control_scales": tuple(float(scale) for scale in engine.control_scales),
            "ip_adapter_scale": None if style is None else float(style)}


@dataclass(frozen=True)
class Binding:
    keys: tuple[str, ...]
    command: str  # "quit", "save" or "set" (a pure change of Controls)
    help: str
    change: Callable[[Controls, int], Controls] | None = None


def _step(value: float, delta: float, high: float, low: float = 0.0) -> float:
    # A value already below `low` (a stream started at a lower strength) never moves the wrong way.
    return round(min(high, max(min(low, value), value + delta)), 4)


def _new_seed(controls: Controls, prompts: int) -> Controls:
    # A seeded draw keeps a session reproducible: the same presses give the same seeds.
    return replace(controls, seed=random.Random(controls.seed).randrange(2**31))


def _prompt(delta: int) -> Callable[[Controls, int], Controls]:
    return lambda c, n: replace(c, prompt_index=(c.prompt_index + delta) % max(1, n))


def _flag(name: str) -> Callable[[Controls, int], Controls]:
    return lambda c, n: replace(c, **{name: not getattr(c, name)})


def _nudge(name: str, delta: float, high: float, low: float = 0.0) -> Callable[[Controls, int], Controls]:
    return lambda c, n: replace(c, **{name: _step(getattr(c, name), delta, high, low)})


def _control(delta: float) -> Callable[[Controls, int], Controls]:
    """A nudge of every ControlNet's scale, each clamped on its own; nothing for a stream without one."""

    def change(c: Controls, n: int) -> Controls:
        scales = tuple(_step(scale, delta, max(CONTROL_MAX, scale)) for scale in c.control_scales)
        return replace(c, control_scales=scales)

    return change


def _style(delta: float) -> Callable[[Controls, int], Controls]:
    """A nudge of the IP-Adapter's scale; nothing for a stream without one."""

    def change(c: Controls, n: int) -> Controls:
        if c.ip_adapter_scale is None:
            return c
        return replace(c, ip_adapter_scale=_step(c.ip_adapter_scale, delta, max(STYLE_MAX, c.ip_adapter_scale)))

    return change


def _steps(count: int) -> Callable[[Controls, int], Controls]:
    return lambda c, n: replace(c, steps=count)


def _next_layout(controls: Controls, prompts: int) -> Controls:
    index = (LAYOUTS.index(controls.layout) + 1) % len(LAYOUTS)
    return replace(controls, layout=LAYOUTS[index])


BINDINGS: tuple[Binding, ...] = (
    Binding(("q", "\x1b", "close"), "quit", "q / Esc: quit"),
    Binding(("s",), "save", "s: save the frame as PNG"),
    Binding(("n",), "set", "n / p: next / previous prompt", _prompt(1)),
    Binding(("p",), "set", "", _prompt(-1)),
    Binding(("+", "="), "set", "+ / -: more / less camera", _nudge("blend", BLEND_STEP, 1.0)),
    Binding(("-", "_"), "set", "", _nudge("blend", -BLEND_STEP, 1.0)),
    Binding(("e",), "set", "e / d: more / less EMA smoothing", _nudge("ema", EMA_STEP, EMA_MAX)),
    Binding(("d",), "set", "", _nudge("ema", -EMA_STEP, EMA_MAX)),
    Binding(("f",), "set", "f / v: more / less latent feedback", _nudge("feedback", FEEDBACK_STEP, FEEDBACK_MAX)),
    Binding(("v",), "set", "", _nudge("feedback", -FEEDBACK_STEP, FEEDBACK_MAX)),
    Binding(("]",), "set", "] / [: more / less strength (redraw)",
            _nudge("strength", STRENGTH_STEP, 1.0, STRENGTH_MIN)),
    Binding(("[",), "set", "", _nudge("strength", -STRENGTH_STEP, 1.0, STRENGTH_MIN)),
    Binding(("c",), "set", "c / x: more / less steering by every ControlNet", _control(CONTROL_STEP)),
    Binding(("x",), "set", "", _control(-CONTROL_STEP)),
    Binding(("i",), "set", "i / u: more / less steering by the style picture (IP-Adapter)", _style(STYLE_STEP)),
    Binding(("u",), "set", "", _style(-STYLE_STEP)),
    Binding(("1",), "set", "1-4: denoising steps per frame (1 fastest, more detail)", _steps(1)),
    *(Binding((str(count),), "set", "", _steps(count)) for count in range(2, STEPS_MAX + 1)),
    Binding(("r",), "set", "r: new seed", _new_seed),
    Binding((" ",), "set", "space: pause / resume", _flag("paused")),
    Binding(("m",), "set", "m: mirror", _flag("mirror")),
    Binding(("l",), "set", "l: camera | output, or output only", _next_layout),
    Binding(("o",), "set", "o: show / hide this overlay", _flag("overlay")),
    Binding(("h", "?"), "set", "h: help", _flag("help")),
)
_BY_KEY: dict[str, Binding] = {key: b for b in BINDINGS for key in b.keys}

# What a remote's button (an OSC trigger, a MIDI pad) may do, by name: the keys' relative changes, applied
# where the keys are, so that two quick presses move two prompts on.
TRIGGERS: dict[str, Callable[[Controls, int], Controls]] = {
    "next_prompt": _prompt(1), "previous_prompt": _prompt(-1), "new_seed": _new_seed,
    "toggle_mirror": _flag("mirror"), "toggle_pause": _flag("paused"),
}


def handle_key(key: str, controls: Controls, prompt_count: int) -> tuple[Controls, str | None]:
    """The controls after `key`, and the command ("quit", "save") the display loop must carry out."""
    binding = _BY_KEY.get(key)
    if binding is None:
        return controls, None
    if binding.change is None:
        return controls, binding.command
    return binding.change(controls, prompt_count), None


def help_lines() -> list[str]:
    return [b.help for b in BINDINGS if b.help]
