"""What a MIDI controller's messages do: control changes (knobs, faders, some buttons), notes (pads, keys)
and program changes, each mapped to a control or a trigger of app/remote.py. The map comes from a YAML
file (`--midi-map`, or one written by `streamdiff midi --learn`) or is the default below."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from streamdiff.app.keys import CONTROL_MAX, EMA_MAX, FEEDBACK_MAX, STEPS_MAX, STRENGTH_MIN, STYLE_MAX, TRIGGERS
from streamdiff.app.optional import require
from streamdiff.app.remote import ONE_SCALE

# Controls a knob or fader sets from its position, 0-127: a range of values (control_scale_N, one ControlNet's
# scale, takes control_scale's), ...
KNOB_RANGES: dict[str, tuple[float, float]] = {
    "strength": (STRENGTH_MIN, 1.0), "ema": (0.0, EMA_MAX), "feedback": (0.0, FEEDBACK_MAX), "blend": (0.0, 1.0),
    "control_scale": (0.0, CONTROL_MAX), "ip_adapter_scale": (0.0, STYLE_MAX), "steps": (1.0, float(STEPS_MAX)),
}
WHOLE_KNOBS: frozenset[str] = frozenset({"steps"})  # ranged controls that take whole numbers only
# ... or the prompt list spread over the travel, the seed (the position itself), or a switch.
KNOB_CONTROLS: tuple[str, ...] = (*KNOB_RANGES, "prompt_index", "seed", "mirror", "paused")
PRESSED = 64  # MIDI's convention for switches sent as control changes: 64 and above is on
MAP_KEYS = ("channel", "controls", "notes", "programs")


@dataclass(frozen=True)
class Knob:
    """A control set from a knob's or fader's position (0-127)."""

    control: str
    low: float = 0.0
    high: float = 1.0

    def change(self, value: int, prompts: int) -> dict[str, Any]:
        if self.control == "prompt_index":
            return {"prompt_index": min(max(prompts, 1) - 1, _share(value, max(prompts, 1)))}
        if self.control == "seed":
            return {"seed": value}
        if self.control in ("mirror", "paused"):
            return {self.control: value >= PRESSED}
        if self.control in WHOLE_KNOBS:
            return {self.control: self._whole(value)}
        return {self.control: round(self.low + (self.high - self.low) * value / 127, 4)}

    def _whole(self, value: int) -> int:
        """The whole numbers from low to high, each over an equal share of the travel (as prompts spread)."""
        low, high = round(self.low), round(self.high)
        share = _share(value, abs(high - low) + 1)
        return low + share if high >= low else low - share


def knob_range(control: Any) -> tuple[float, float] | None:
    """The range a knob sets `control` in; None for a control that takes no range."""
    if not isinstance(control, str):
        return None
    return KNOB_RANGES["control_scale"] if ONE_SCALE.fullmatch(control) else KNOB_RANGES.get(control)


def _share(value: int, count: int) -> int:
    """Which of `count` equal shares of a knob's travel (0-127) its position falls in."""
    return value * count // 128


@dataclass(frozen=True)
class Press:
    """A button: one change per press, a trigger ("next_prompt"), a prompt of the list ("prompt 3") or a
    number of denoising steps ("steps 2")."""

    name: str

    def change(self) -> dict[str, Any]:
        if self.name.startswith("prompt "):
            return {"prompt_index": int(self.name.split()[1])}
        if self.name.startswith("steps "):
            return {"steps": int(self.name.split()[1])}
        return {self.name: True}


Target = Union[Knob, Press]


@dataclass(frozen=True)
class MidiMap:
    """Control-change numbers and notes (0-127) to what they do; program change N selects prompt N."""

    controls: Mapping[int, Target] = field(default_factory=dict)
    notes: Mapping[int, Press] = field(default_factory=dict)
    programs: bool = True
    channel: int | None = None  # 1-16 as controllers number them; None: any

    def names(self) -> set[str]:
        """The controls and triggers the map can change."""
        targets = [*self.controls.values(), *self.notes.values()]
        names = {name for target in targets for name in _names(target)}
        return names | ({"prompt_index"} if self.programs else set())

    def to_data(self) -> dict[str, Any]:
        """The map as YAML data that `parse_map` reads back."""
        return {"channel": self.channel or "any",
                "controls": {number: _target_data(target) for number, target in sorted(self.controls.items())},
                "notes": {number: press.name for number, press in sorted(self.notes.items())},
                "programs": self.programs}


def _names(target: Target) -> set[str]:
    return {target.control} if isinstance(target, Knob) else set(target.change())


def _target_data(target: Target) -> Any:
    if isinstance(target, Press):
        return target.name
    if (target.low, target.high) == (knob_range(target.control) or (0.0, 1.0)):
        return target.control
    return {"control": target.control, "min": target.low, "max": target.high}


class Translator:
    """Turns messages into changes with a map. A button sent as a control change presses once, when it
    crosses to 64 and above, so a held button or a knob mapped to a trigger does not repeat it."""

    def __init__(self, midi_map: MidiMap) -> None:
        self.map = midi_map
        self._high: set[tuple[int, int]] = set()  # (channel, control) of switches now on

    def change(self, message: Any, prompts: int) -> dict[str, Any] | None:
        """The change a mido message makes: {} when it makes none (a release), None when it is not mapped."""
        wanted = self.map.channel
        if getattr(message, "channel", None) is None or (wanted is not None and message.channel != wanted - 1):
            return None
        if message.type == "control_change":
            return self._control(message.channel, message.control, message.value, prompts)
        if message.type in ("note_on", "note_off"):
            press = self.map.notes.get(message.note)
            if press is None:
                return None
            return press.change() if message.type == "note_on" and message.velocity > 0 else {}
        if message.type == "program_change" and self.map.programs:
            return {"prompt_index": message.program}
        return None

    def _control(self, channel: int, number: int, value: int, prompts: int) -> dict[str, Any] | None:
        target = self.map.controls.get(number)
        if isinstance(target, Knob):
            return target.change(value, prompts)
        if target is None:
            return None
        was_on, key = (channel, number) in self._high, (channel, number)
        if value >= PRESSED:
            self._high.add(key)
            return {} if was_on else target.change()
        self._high.discard(key)
        return {}


def load_map(path: Path) -> MidiMap:
    """A MIDI map file; ValueError names the file and what in it was expected."""
    yaml = require("yaml", "reading a MIDI map")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"MIDI map not found: {path}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a YAML file ({' '.join(str(exc).split())})") from None
    try:
        return parse_map(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def parse_map(data: Any) -> MidiMap:
    """A map from YAML data: {channel, controls: {number: target}, notes: {number: press}, programs}."""
    if not isinstance(data, dict) or not set(data) <= set(MAP_KEYS):
        got = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"expected a mapping of some of {', '.join(MAP_KEYS)}; got {got}")
    controls = {_number(n, "controls"): _target(t, f"controls {n}") for n, t in _section(data, "controls").items()}
    notes = {_number(n, "notes"): _press(t, f"notes {n}") for n, t in _section(data, "notes").items()}
    programs = data.get("programs", True)
    if not isinstance(programs, bool):
        raise ValueError(f"programs must be true or false (program N selects prompt N); got {programs!r}")
    return MidiMap(controls, notes, programs, _channel(data.get("channel", "any")))


def _section(data: dict[str, Any], name: str) -> dict[Any, Any]:
    section = data.get(name) or {}
    if not isinstance(section, dict):
        raise ValueError(f"{name} must map numbers to what they do; got {section!r}")
    return section


def _number(value: Any, section: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 127:
        raise ValueError(f"{section}: MIDI numbers are whole numbers in [0, 127]; got {value!r}")
    return value


def _channel(value: Any) -> int | None:
    if value == "any":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 16:
        raise ValueError(f"channel must be 1-16 or any; got {value!r}")
    return value


def _target(value: Any, where: str) -> Target:
    if isinstance(value, dict):
        return _ranged(value, where)
    if isinstance(value, str) and (value in KNOB_CONTROLS or ONE_SCALE.fullmatch(value)):
        low, high = knob_range(value) or (0.0, 1.0)
        return Knob(value, low, high)
    try:
        return _press(value, where)
    except ValueError:
        raise ValueError(f"{where}: expected a control ({', '.join(KNOB_CONTROLS)}, control_scale_N), a trigger "
                         f"({', '.join(TRIGGERS)}), 'prompt N', 'steps N' or {{control, min, max}}; got {value!r}"
                         ) from None


def _ranged(value: dict[str, Any], where: str) -> Knob:
    control, low, high = value.get("control"), value.get("min"), value.get("max")
    limits = knob_range(control)
    if set(value) - {"control", "min", "max"} or limits is None:
        raise ValueError(f"{where}: expected {{control, min, max}} with a control of {', '.join(KNOB_RANGES)}, "
                         f"control_scale_N; got {value!r}")
    floor, ceiling = limits
    low, high = floor if low is None else low, ceiling if high is None else high
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
    if not numbers or not floor <= min(low, high) <= max(low, high) <= ceiling:
        raise ValueError(f"{where}: {control}'s min and max must lie in [{floor}, {ceiling}]; got {low!r} and {high!r}")
    if control in WHOLE_KNOBS and not all(float(v).is_integer() for v in (low, high)):
        raise ValueError(f"{where}: {control}'s min and max must be whole numbers; got {low!r} and {high!r}")
    return Knob(control, float(low), float(high))


def _press(value: Any, where: str) -> Press:
    if isinstance(value, str) and value in TRIGGERS:
        return Press(value)
    words = value.split() if isinstance(value, str) else []
    if len(words) == 2 and words[0] == "prompt" and words[1].isdigit():
        return Press(f"prompt {int(words[1])}")
    if len(words) == 2 and words[0] == "steps" and words[1].isdigit() and int(words[1]) >= 1:
        return Press(f"steps {int(words[1])}")
    raise ValueError(f"{where}: expected a trigger ({', '.join(TRIGGERS)}), 'prompt N' or 'steps N'; got {value!r}")


# Knobs 1-5 are the modulation wheel and the first knobs of many controllers in their generic mode; pads
# start at note 36 (C1) on most pad controllers. `streamdiff midi --learn` writes a map for any other layout.
DEFAULT_MAP = parse_map({
    "controls": {1: "strength", 2: "ema", 3: "feedback", 4: "blend", 5: "steps"},
    "notes": {**{36 + i: f"prompt {i}" for i in range(8)}, 44: "previous_prompt", 45: "next_prompt",
              46: "new_seed", 47: "toggle_mirror", 48: "toggle_pause"},
})
