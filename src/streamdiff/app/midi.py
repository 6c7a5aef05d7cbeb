"""Live controls from a MIDI controller (knobs, faders, pads: what VJs play): `--midi [PORT]` opens an input
through mido and python-rtmidi, and each message the map (app/midi_map.py) knows becomes a change, handed to
the app like an OSC message. Messages arrive on the MIDI library's own thread, through the port's callback."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from streamdiff.app.midi_map import DEFAULT_MAP, MidiMap, Translator
from streamdiff.app.optional import require
from streamdiff.app.remote import RefusalLog, Submit, control_type
from streamdiff.errors import UserError

logger = logging.getLogger(__name__)


def add_midi_options(group: Any) -> None:
    group.add_argument("--midi", nargs="?", const="", default=None, metavar="PORT",
                       help="take live controls from a MIDI input: its name, or part of it (default: the first "
                            "input); `streamdiff midi` lists them")
    group.add_argument("--midi-map", default=None, metavar="FILE",
                       help="what the controller's knobs and pads do (YAML; `streamdiff midi --learn FILE` writes "
                            "one; camera: alone, it opens the first input; web: it maps the page's controllers too). "
                            "Default: knobs 1-5 strength, ema, feedback, blend, steps; pads 36-43 prompts 1-8")


def open_midi(port: str | None, midi_map: MidiMap | None, allowed: Mapping[str, type]) -> MidiListener | None:
    """--midi's listener with `midi_map` (None: the default map), its input opened now (before the model
    loads, so that a missing one fails at once), or None when no input was asked for."""
    if port is None:
        return None
    if midi_map is not None:
        ignored = sorted(name for name in midi_map.names() if control_type(name, allowed) is None)
        if ignored:
            logger.warning("MIDI map: this command's input has no %s; those entries do nothing", ", ".join(ignored))
    return MidiListener(open_input(port), midi_map or DEFAULT_MAP, allowed)


def input_names() -> list[str]:
    """The MIDI inputs of this machine; UserError, in one line, where there is no MIDI system."""
    mido = require("mido", "MIDI control")
    require("rtmidi", "MIDI control")
    try:
        with _quiet_native_errors():
            return list(dict.fromkeys(mido.get_input_names()))
    except Exception as exc:  # noqa: BLE001  rtmidi raises its own SystemError where ALSA or CoreMIDI is missing
        hint = "; MIDI through ALSA needs its sequencer, /dev/snd/seq" if "ALSA" in str(exc) else ""
        raise UserError(f"cannot list MIDI inputs: no MIDI system answered ({' '.join(str(exc).split())}){hint}"
                        ) from None


@contextlib.contextmanager
def _quiet_native_errors() -> Iterator[None]:
    """ALSA's library prints its failures on the process's stderr before rtmidi raises; the error raised
    says the same, and the command promises one line."""
    sys.stderr.flush()
    saved, quiet = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(quiet)


def choose_input(wanted: str, names: list[str]) -> str:
    """The input named `wanted` exactly, else the one whose name contains it (any case); "" takes the first."""
    if not names:
        raise UserError("no MIDI inputs found: connect a controller (its driver must be loaded), then check "
                        "`streamdiff midi`")
    if not wanted:
        return names[0]
    if wanted in names:
        return wanted
    matches = [name for name in names if wanted.lower() in name.lower()]
    if len(matches) != 1:
        which = "no MIDI input" if not matches else f"{len(matches)} MIDI inputs"
        raise UserError(f"{which} match {wanted!r}; inputs: {', '.join(names)}")
    return matches[0]


def open_input(wanted: str) -> Any:
    """A mido input port, chosen by `choose_input`."""
    mido = require("mido", "MIDI control")
    name = choose_input(wanted, input_names())
    try:
        with _quiet_native_errors():
            return mido.open_input(name)
    except Exception as exc:  # noqa: BLE001  the backend's own errors: busy or vanished devices
        raise UserError(f"cannot open MIDI input {name!r} ({' '.join(str(exc).split())})") from None


class MidiListener:
    """Once started, each mapped message's change goes to `submit`, which may refuse it with a ValueError.
    A refusal is logged once until a different one comes: a fader sends tens of messages a second."""

    def __init__(self, port: Any, midi_map: MidiMap, allowed: Mapping[str, type]) -> None:
        self.port = port
        self._allowed = allowed
        self._translator = Translator(midi_map)
        self._submit: Submit | None = None
        self._prompt_count: Callable[[], int] = lambda: 1
        self._refusals = RefusalLog(logger, "MIDI")

    def start(self, submit: Submit, prompt_count: Callable[[], int]) -> MidiListener:
        """`prompt_count` says how many prompts the list has now (a prompt knob spreads them over its travel)."""
        self._submit, self._prompt_count = submit, prompt_count
        self.port.callback = self._handle
        logger.info("listening for MIDI on %s", self.port.name)
        return self

    def close(self) -> None:
        self.port.callback = None
        self.port.close()

    def _handle(self, message: Any) -> None:
        change = self._translator.change(message, self._prompt_count())
        change = {name: value for name, value in (change or {}).items() if control_type(name, self._allowed) is not None}
        if not change:
            return
        try:
            assert self._submit is not None  # the callback is set only by start()
            self._submit(change)
        except ValueError as exc:
            self._refusals.note(exc)
