"""`streamdiff midi`: list the MIDI inputs, show what a controller sends and what it would do (`--monitor`),
or write a map by moving each knob and pressing each pad when asked (`--learn FILE`)."""

from __future__ import annotations

import argparse
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streamdiff.app.gallery import gallery_prompts
from streamdiff.app.midi import input_names, open_input
from streamdiff.app.midi_map import DEFAULT_MAP, KNOB_RANGES, PRESSED, Knob, MidiMap, Press, Translator, load_map
from streamdiff.app.optional import require
from streamdiff.app.remote import describe
from streamdiff.errors import UserError

Say = Callable[[str], None]

# What --learn asks for, in order: knobs, then buttons (each may be skipped by waiting).
LEARN_KNOBS: tuple[str, ...] = (*KNOB_RANGES, "prompt_index")
LEARN_PRESSES: tuple[str, ...] = ("previous_prompt", "next_prompt", "new_seed", "toggle_mirror", "toggle_pause")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("midi", help="list MIDI inputs, watch what a controller sends, or learn a map",
                              description=__doc__)
    p.add_argument("--port", default="", help="the input: its name or part of it (default: the first)")
    action = p.add_mutually_exclusive_group()
    action.add_argument("--monitor", action="store_true",
                        help="print each message and what it does under the map, until Ctrl-C")
    action.add_argument("--learn", metavar="FILE", default=None,
                        help="ask for each control in turn and write the map to FILE (YAML, for --midi-map)")
    p.add_argument("--midi-map", metavar="FILE", default=None, help="the map --monitor shows (default: the built-in)")
    p.add_argument("--wait", type=float, default=10.0,
                   help="seconds --learn waits for each control before skipping it (default 10)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.learn is not None:
        target = Path(args.learn)
        if target.exists():
            raise UserError(f"{target} exists; --learn writes a new map (choose another name, or remove it)")
        if args.wait <= 0:
            raise UserError(f"--wait must be a positive number of seconds; got {args.wait:g}")
        port = open_input(args.port)
        print(f"learning from {port.name}: move or press what is asked for; wait {args.wait:g} s to skip one")
        try:
            learned = learn(port, args.wait, print)
        finally:
            port.close()
        if not learned.controls and not learned.notes:
            raise UserError(f"nothing was learned (every control was skipped); {target} was not written")
        write_map(learned, target)
        print(f"wrote {target}: use it with --midi-map {target}")
        return 0
    if args.monitor:
        midi_map = DEFAULT_MAP if args.midi_map is None else load_map(Path(args.midi_map))
        port = open_input(args.port)
        print(f"messages from {port.name} (Ctrl-C stops):")
        try:
            monitor(port, midi_map, print, threading.Event())
        finally:
            port.close()
        return 0
    names = input_names()
    print("\n".join(names) if names else "no MIDI inputs found: connect a controller (its driver must be loaded)")
    return 0


def monitor(port: Any, midi_map: MidiMap, say: Say, stop: threading.Event) -> None:
    """Say each message and what it does, until `stop` is set (Ctrl-C ends the wait in the command)."""
    translator = Translator(midi_map)

    prompts = len(gallery_prompts())  # a prompt knob is shown against the built-in gallery

    def show(message: Any) -> None:
        change = translator.change(message, prompts)
        effect = "not mapped" if change is None else describe(change) if change else "(a release)"
        say(f"{message} -> {effect}")

    port.callback = show
    try:
        stop.wait()
    finally:
        port.callback = None


def learn(port: Any, wait: float, say: Say) -> MidiMap:
    """Ask for each knob, then each button, in turn; the first message of a number not yet taken answers."""
    messages: queue.SimpleQueue[Any] = queue.SimpleQueue()
    port.callback = messages.put
    controls: dict[int, Knob | Press] = {}
    notes: dict[int, Press] = {}
    try:
        for name in LEARN_KNOBS:
            say(f"move the knob or fader for {name.replace('_', ' ')}...")
            number = _next(messages, wait, lambda m: m.type == "control_change" and m.control not in controls)
            if number is not None:
                low, high = KNOB_RANGES.get(name, (0.0, 1.0))
                controls[number.control] = Knob(name, low, high)
            say(_learned(number, name))
        for name in LEARN_PRESSES:
            say(f"press the pad or button for {name.replace('_', ' ')}...")
            answer = _next(messages, wait, lambda m: _is_press(m, controls, notes))
            if answer is not None:
                (notes if answer.type == "note_on" else controls)[_number(answer)] = Press(name)
            say(_learned(answer, name))
    finally:
        port.callback = None
    return MidiMap(controls, notes)


def _next(messages: queue.SimpleQueue[Any], wait: float, wanted: Callable[[Any], bool]) -> Any | None:
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = messages.get(timeout=left)
        except queue.Empty:
            return None
        if wanted(message):
            return message
    return None


def _is_press(message: Any, controls: dict[int, Any], notes: dict[int, Any]) -> bool:
    if message.type == "note_on":
        return message.velocity > 0 and message.note not in notes
    return message.type == "control_change" and message.value >= PRESSED and message.control not in controls


def _number(message: Any) -> int:
    return int(message.note if message.type == "note_on" else message.control)


def _learned(message: Any | None, name: str) -> str:
    if message is None:
        return f"  {name}: skipped"
    kind = "note" if message.type == "note_on" else "control change"
    return f"  {name}: {kind} {_number(message)}"


def write_map(midi_map: MidiMap, path: Path) -> None:
    """The map as YAML that --midi-map reads."""
    yaml = require("yaml", "writing a MIDI map")
    text = f"# streamdiff MIDI map: --midi-map {path.name}\n" + yaml.safe_dump(midi_map.to_data(), sort_keys=False)
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write {path} ({exc.strerror or exc})") from None
