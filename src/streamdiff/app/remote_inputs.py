"""The remote inputs a command listens to, OSC and MIDI: opened together before the model loads (a busy
port or a missing controller fails at once), started once the app is up, closed together."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamdiff.app.midi import MidiListener, add_midi_options, open_midi
from streamdiff.app.midi_map import DEFAULT_MAP, MidiMap, load_map
from streamdiff.app.osc import OscListener, add_osc_option, open_listener
from streamdiff.app.remote import Submit


def add_remote_options(group: Any) -> None:
    add_osc_option(group)
    add_midi_options(group)


@dataclass
class RemoteInputs:
    osc: OscListener | None = None
    midi: MidiListener | None = None
    midi_map: MidiMap = DEFAULT_MAP  # --midi-map's, or the default

    @classmethod
    def open(cls, args: argparse.Namespace, allowed: Mapping[str, type], map_opens_input: bool = True
             ) -> RemoteInputs:
        """`map_opens_input`: --midi-map alone opens the first MIDI input (the camera app has no other use for
        a map; the web page's own controllers use it too)."""
        custom = None if args.midi_map is None else load_map(Path(args.midi_map))
        port = "" if args.midi is None and custom is not None and map_opens_input else args.midi
        inputs = cls(osc=open_listener(args.osc, allowed), midi_map=custom or DEFAULT_MAP)
        try:
            inputs.midi = open_midi(port, custom, allowed)
        except BaseException:
            inputs.close()
            raise
        return inputs

    def start(self, submit: Submit, prompt_count: Callable[[], int]) -> None:
        if self.osc is not None:
            self.osc.start(submit)
        if self.midi is not None:
            self.midi.start(submit, prompt_count)

    def close(self) -> None:
        for listener in (self.osc, self.midi):
            if listener is not None:
                listener.close()
        self.osc = self.midi = None

    def describe(self) -> str:
        """One line for the command's start, naming what it listens to ("" for nothing)."""
        parts = [f"OSC port {self.osc.port}"] if self.osc is not None else []
        parts += [f"MIDI input {self.midi.port.name}"] if self.midi is not None else []
        return f"streamdiff: live controls from {' and '.join(parts)}" if parts else ""
