"""Control changes that come from outside the keyboard (the web page, OSC, MIDI): each field checked, then
applied all together or not at all, so a bad message changes nothing. A change sets controls to values
(`strength`: 0.6) or presses triggers (`next_prompt`: True), which act on the controls of the moment.

`control_scale` sets every ControlNet's scale, `control_scale_N` the N-th ControlNet's (counted from 1, as the
ControlNets were named at the start); wherever `control_scale` is offered, `control_scale_N` is too. In one
change, `control_scale_N` applies after `control_scale`. `ip_adapter_scale` sets how strongly the style picture
steers; `style_image`, a picture file's path, is no value of Controls: app/style.py takes it apart and hands the
picture to the engine."""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from streamdiff.app.keys import STEPS_MAX, TRIGGERS, Controls
from streamdiff.config import CONTROL_SCALE_MAX, IP_ADAPTER_SCALE_MAX

MAX_PROMPT_CHARS = 1000
MAX_SEED = 2**63 - 1


class Trigger:
    """The type of a trigger: a press, which carries no value of its own."""


# Every control a remote may change, with the type it takes; each app offers its own share of them.
CONTROL_TYPES: dict[str, type] = {
    "prompt": str, "prompt_index": int, "strength": float, "steps": int, "ema": float, "feedback": float, "seed": int,
    "mirror": bool, "blend": float, "paused": bool, "ip_adapter_scale": float, "style_image": str,
    "control_scale": float, **{name: Trigger for name in TRIGGERS},
}
_EXPECTED = {bool: "true or false", str: "a string", int: "a whole number", float: "a finite number",
             Trigger: "true (a press)"}
ALL_SCALES = "control_scale"
ONE_SCALE = re.compile(r"control_scale_(0|[1-9][0-9]{0,2})")  # one ControlNet's scale, by its 1-based number


def control_type(name: str, allowed: Mapping[str, type]) -> type | None:
    """The type control `name` takes where `allowed` are offered (None: not offered); one ControlNet's scale,
    control_scale_N, is offered where every ControlNet's, control_scale, is."""
    if name in allowed:
        return allowed[name]
    return float if ALL_SCALES in allowed and ONE_SCALE.fullmatch(name) else None


def offered(allowed: Mapping[str, type]) -> str:
    """The names `allowed` offers, as an error message lists them."""
    return ", ".join(f"{name}, {ALL_SCALES}_N" if name == ALL_SCALES else name for name in allowed)


class ControlError(ValueError):
    """A change that cannot be applied; the text says what was expected."""


# Where a remote listener hands its changes; it may refuse one with a ValueError.
Submit = Callable[[dict[str, Any]], None]


class RefusalLog:
    """Logs a remote's refused change once until a different one comes: a fader sends tens of messages a
    second, each refused for the same reason."""

    def __init__(self, logger: logging.Logger, source: str) -> None:
        self._logger, self._source = logger, source
        self._last = ""

    def note(self, exc: ValueError) -> None:
        if str(exc) != self._last:
            self._last = str(exc)
            self._logger.warning("%s: %s", self._source, exc)


class PromptBook:
    """The prompts the stream knows, by index (Controls name prompts by index). A remote can add any text; the
    inference thread reads the list by the index it is handed, after the text was added."""

    def __init__(self, prompts: list[str]) -> None:
        self.prompts = prompts  # shared with the EngineRunner, which reads it on the inference thread
        self._lock = threading.Lock()

    def index_of(self, text: str) -> int:
        with self._lock:
            if text not in self.prompts:
                self.prompts.append(text)
            return self.prompts.index(text)


def apply_changes(controls: Controls, changes: Mapping[str, Any], prompts: PromptBook,
                  allowed: Mapping[str, type] = CONTROL_TYPES) -> Controls:
    """The controls after `changes` (name -> value); ControlError, and nothing changed, unless all are valid."""
    kinds = {name: control_type(name, allowed) for name in changes}
    unknown = sorted(name for name, kind in kinds.items() if kind is None)
    if unknown:
        raise ControlError(f"unknown control {', '.join(unknown)}; expected some of {offered(allowed)}")
    checked = {name: check(name, changes[name], kinds[name]) for name in changes}
    presses = [name for name in changes if kinds[name] is Trigger]  # in the order they came
    for name in presses:
        del checked[name]
    prompt = checked.pop("prompt", None)
    scales = {name: checked.pop(name) for name in changes if name == ALL_SCALES or ONE_SCALE.fullmatch(name)}
    if scales:
        checked["control_scales"] = _scaled(controls.control_scales, scales)
    _check_style_scale(checked.get("ip_adapter_scale"), controls)
    index = checked.get("prompt_index")
    if index is not None and not 0 <= index < len(prompts.prompts):
        raise ControlError(f"prompt_index must be in [0, {len(prompts.prompts) - 1}]; got {index}")
    _check_steps(checked.get("steps"), controls)
    try:
        changed = replace(controls, **checked)
    except ValueError as exc:
        raise ControlError(str(exc)) from None
    if prompt is not None:
        changed = replace(changed, prompt_index=prompts.index_of(prompt))
    for name in presses:
        changed = TRIGGERS[name](changed, len(prompts.prompts))
    return changed


def _scaled(scales: tuple[float, ...], changes: dict[str, float]) -> tuple[float, ...]:
    """The ControlNets' scales after `changes`: control_scale sets all of them, then control_scale_N the N-th."""
    new = [changes.get(ALL_SCALES, scale) for scale in scales]
    for name, value in changes.items():
        if not scales:
            raise ControlError(f"{name} steers a ControlNet, and this stream has none (start it with --controlnet)")
        if not 0.0 <= value <= CONTROL_SCALE_MAX:
            raise ControlError(f"{name} must be in [0, {CONTROL_SCALE_MAX:g}]; got {value}")
        if name != ALL_SCALES:
            new[_scale_index(name, len(scales))] = value
    return tuple(new)


def _scale_index(name: str, count: int) -> int:
    """Where control_scale_N's ControlNet is in the stream's list; ControlError where it has no N-th."""
    number = int(name.rpartition("_")[2])
    if not 1 <= number <= count:
        names = ", ".join(f"{ALL_SCALES}_{n}" for n in range(1, count + 1))
        raise ControlError(f"{name}: this stream has {count} ControlNet{'s' if count > 1 else ''}; expected {names} "
                           f"(one, counted from 1) or {ALL_SCALES} (all)")
    return number - 1


def no_ip_adapter(name: str) -> ControlError:
    """The refusal of a style control (`name`) on a stream without an IP-Adapter."""
    return ControlError(f"{name}: this stream has no IP-Adapter (start it with --ip-adapter or --style-image)")


def _check_style_scale(scale: float | None, controls: Controls) -> None:
    if scale is None:
        return
    if controls.ip_adapter_scale is None:
        raise no_ip_adapter("ip_adapter_scale")
    if not 0.0 <= scale <= IP_ADAPTER_SCALE_MAX:
        raise ControlError(f"ip_adapter_scale must be in [0, {IP_ADAPTER_SCALE_MAX:g}]; got {scale}")


def _check_steps(steps: int | None, controls: Controls) -> None:
    # A stream started with more steps than a remote offers may keep them.
    high = max(STEPS_MAX, controls.steps)
    if steps is not None and not 1 <= steps <= high:
        raise ControlError(f"steps must be in [1, {high}]; got {steps}")


def describe(change: Mapping[str, Any]) -> str:
    """A change as the overlay shows it: "strength 0.60, next prompt"."""
    return ", ".join(name.replace("_", " ") if value is True and CONTROL_TYPES.get(name) is Trigger
                     else f"{name} {value:.2f}" if isinstance(value, float) else f"{name} {value}"
                     for name, value in change.items())


def check(name: str, value: Any, kind: type) -> Any:
    """`value` as a `kind` control, checked: JSON and OSC types both arrive here."""
    # bool is an int in Python: check the kinds explicitly.
    if kind is bool and isinstance(value, bool):
        return value
    if kind is Trigger and value is True:
        return True
    if kind is str and isinstance(value, str):
        if len(value) > MAX_PROMPT_CHARS:
            raise ControlError(f"prompt may be at most {MAX_PROMPT_CHARS} characters; got {len(value)}")
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        if name == "seed" and not 0 <= value <= MAX_SEED:
            raise ControlError(f"seed must be in [0, 2**63 - 1]; got {value}")
        return value
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise ControlError(f"{name} must be {_EXPECTED[kind]}; got {json.dumps(value, default=repr)}")
