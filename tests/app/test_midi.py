"""MIDI control over real MIDI ports: a virtual controller on a private JACK server sends, the listener opens
its input by name, and the changes reach the camera runtime and the web page's stream."""

from __future__ import annotations

import logging
import threading
import time

import mido
import pytest
from app_fakes import CountingSource, FakeEngine, RecordingSink, run_while_performing
from cli_checks import one_line_error
from midi_ports import connect
from polling import wait_until

from streamdiff.app.keys import Controls
from streamdiff.app.midi import choose_input, open_input, open_midi
from streamdiff.app.midi_command import learn, monitor
from streamdiff.app.midi_map import DEFAULT_MAP, Knob, MidiMap, Press
from streamdiff.app.remote import CONTROL_TYPES, PromptBook
from streamdiff.app.runtime import Runtime, RuntimeOptions
from streamdiff.cli import main
from streamdiff.errors import UserError


def test_inputs_are_chosen_by_their_name_or_part_of_it():
    names = ["nanoKONTROL2 SLIDER/KNOB", "MPD218 Port A", "MPD218 Port B"]
    assert choose_input("", names) == names[0]
    assert choose_input("nanokontrol", names) == names[0]
    assert choose_input("MPD218 Port B", names) == names[2]
    with pytest.raises(UserError, match=r"2 MIDI inputs match 'mpd218'; inputs: nanoKONTROL2 SLIDER/KNOB, MPD218"):
        choose_input("mpd218", names)
    with pytest.raises(UserError, match=r"no MIDI input match 'launchpad'"):
        choose_input("launchpad", names)
    with pytest.raises(UserError, match=r"no MIDI inputs found: connect a controller"):
        choose_input("", [])


def test_the_camera_runtime_takes_a_controllers_knobs_and_pads(controller):
    engine = FakeEngine()
    options = RuntimeOptions(prompts=("first style", "second style", "third style"), pane_height=64,
                             display_fps=60.0, transition_frames=5)
    runtime = Runtime(engine, CountingSource(), [RecordingSink()], options)
    listener = open_midi(controller.name, None, CONTROL_TYPES)
    connect(controller, listener.port)
    listener.start(runtime.remote_change, lambda: len(runtime.display.prompt_book.prompts))

    def perform():
        wait_until(lambda: engine.inputs, "the engine to take a frame", 5.0)
        controller.send(mido.Message("control_change", control=1, value=127))  # strength: all the way
        controller.send(mido.Message("control_change", control=4, value=0))  # blend: none
        controller.send(mido.Message("control_change", control=5, value=64))  # steps: the third quarter, 3
        controller.send(mido.Message("note_on", note=45, velocity=90))  # next prompt
        controller.send(mido.Message("note_off", note=45))
        controller.send(mido.Message("note_on", note=47, velocity=90))  # mirror
        wait_until(lambda: runtime.controls.mirror, "the mirror pad to act", 5.0)
        controller.send(mido.Message("control_change", control=1, value=0))
        controller.send(mido.Message("note_on", note=38, velocity=90))  # the third prompt by its pad
        wait_until(lambda: runtime.controls.prompt_index == 2, "the third prompt", 5.0)
        time.sleep(0.2)

    try:
        run_while_performing(runtime, perform)
    finally:
        listener.close()
    assert runtime.controls.strength == pytest.approx(0.1)
    assert [args for method, _, args in engine.calls if method == "set_strength"][-1] == (pytest.approx(0.1),)
    assert runtime.controls.steps == 3 and [args for method, _, args in engine.calls if method == "set_steps"] == [(3,)]
    prompts = [args[0] for method, _, args in engine.calls if method == "update_prompt"]
    assert prompts == ["second style", "third style"]
    assert engine.engine_threads() == {"streamdiff-inference"}


def test_the_web_stream_follows_a_controller_and_skips_the_pages_own_controls(controller, tiny_engine, caplog):
    from streamdiff.app.engine_io import EngineRunner
    from streamdiff.web.bridge import WebStream
    from streamdiff.web.protocol import REMOTE_CONTROL_TYPES

    runner = EngineRunner(tiny_engine, ["a watercolor", "ink wash"], transition_frames=0)
    stream = WebStream(runner, Controls(seed=1, strength=tiny_engine.strength), PromptBook(runner.prompts))
    delivered: list = []
    stream.connect(delivered.append)
    listener = open_midi(controller.name, None, REMOTE_CONTROL_TYPES)
    connect(controller, listener.port)
    listener.start(stream.remote_change, lambda: len(stream.prompts.prompts))
    try:
        with caplog.at_level(logging.WARNING):
            controller.send(mido.Message("control_change", control=4, value=90))  # blend is the page's
            controller.send(mido.Message("note_on", note=48, velocity=90))  # and so is pausing
            controller.send(mido.Message("program_change", program=1))
            controller.send(mido.Message("note_on", note=46, velocity=90))  # new seed
            wait_until(lambda: stream.controls.seed != 1, "the new seed", 5.0)
            controller.send(mido.Message("program_change", program=9))  # no ninth prompt: refused, logged
            wait_until(lambda: caplog.records, "the refusal to be logged", 5.0)
    finally:
        listener.close()
    assert stream.controls.prompt_index == 1 and delivered[-1]["prompt"] == "ink wash"
    assert delivered[-1]["controls"]["seed"] == stream.controls.seed
    assert [r.getMessage() for r in caplog.records] == ["MIDI: prompt_index must be in [0, 1]; got 9"]


def test_a_controllers_knob_moves_one_controlnets_scale_and_one_the_stream_lacks_is_refused(controller,
                                                                                          steered_engine, caplog):
    from streamdiff.app.engine_io import EngineRunner
    from streamdiff.app.keys import engine_controls
    from streamdiff.app.midi_map import parse_map
    from streamdiff.web.bridge import WebStream
    from streamdiff.web.protocol import REMOTE_CONTROL_TYPES

    runner = EngineRunner(steered_engine, ["a watercolor"], transition_frames=0)
    stream = WebStream(runner, Controls(seed=1, **engine_controls(steered_engine)), PromptBook(runner.prompts))
    midi_map = parse_map({"controls": {7: "control_scale_2", 8: "control_scale_3"}})
    with caplog.at_level(logging.WARNING):
        listener = open_midi(controller.name, midi_map, REMOTE_CONTROL_TYPES)  # the stream takes both names
        connect(controller, listener.port)
        listener.start(stream.remote_change, lambda: 1)
        try:
            controller.send(mido.Message("control_change", control=8, value=127))  # no third ControlNet
            controller.send(mido.Message("control_change", control=7, value=127))  # the second: all the way, 2
            wait_until(lambda: stream.controls.control_scales == (0.8, 2.0), "the second ControlNet's knob", 5.0)
        finally:
            listener.close()
    assert [r.getMessage() for r in caplog.records] == [
        "MIDI: control_scale_3: this stream has 2 ControlNets; expected control_scale_1, control_scale_2 (one, "
        "counted from 1) or control_scale (all)"]


def test_learning_a_map_from_a_controller(controller):
    port = open_input("streamdiff-test")
    connect(controller, port)
    answers = {
        "strength": mido.Message("control_change", control=21, value=3),
        "ema": mido.Message("control_change", control=21, value=9),  # taken already: waits for another
        "feedback": mido.Message("control_change", control=22, value=64),
        "prompt index": mido.Message("control_change", control=23, value=1),
        "next prompt": mido.Message("note_on", note=40, velocity=100),
        "new seed": mido.Message("control_change", control=30, value=127),  # a button sent as a control change
    }
    said: list[str] = []

    def say(line: str) -> None:
        said.append(line)
        for name, message in answers.items():
            if line.endswith(f" for {name}..."):
                controller.send(message)

    try:
        learned = learn(port, 0.5, say)
    finally:
        port.close()
    assert learned == MidiMap({21: Knob("strength", 0.1, 1.0), 22: Knob("feedback", 0.0, 0.9),
                               23: Knob("prompt_index", 0.0, 1.0), 30: Press("new_seed")},
                              {40: Press("next_prompt")})
    assert "  ema: skipped" in said and "  next_prompt: note 40" in said and "  new_seed: control change 30" in said


def test_the_monitor_says_what_each_message_does(controller):
    port = open_input(controller.name)
    connect(controller, port)
    stop = threading.Event()
    said: list[str] = []
    watcher = threading.Thread(target=monitor, args=(port, DEFAULT_MAP, said.append, stop))
    watcher.start()
    try:
        wait_until(lambda: port.callback is not None, "the monitor to listen", 5.0)
        controller.send(mido.Message("control_change", control=1, value=127))
        controller.send(mido.Message("note_on", note=45, velocity=90))
        controller.send(mido.Message("note_on", note=45, velocity=0))
        controller.send(mido.Message("control_change", control=77, value=5))
        wait_until(lambda: len(_not_clock(said)) == 4, "four lines", 5.0)
    finally:
        stop.set()
        watcher.join(5)
        port.close()
    said = _not_clock(said)  # a late probe of connect() may come through too
    assert [line.split(" -> ")[1] for line in said] == ["strength 1.00", "next prompt", "(a release)", "not mapped"]
    assert said[3].startswith("control_change channel=0 control=77 value=5")


def _not_clock(lines: list[str]) -> list[str]:
    return [line for line in lines if not line.startswith("clock")]


def test_the_midi_command_lists_inputs_and_learns_into_a_new_file_only(controller, tmp_path, capsys):
    assert main(["midi"]) == 0
    assert any(line.endswith(controller.name) for line in capsys.readouterr().out.splitlines())
    existing = tmp_path / "map.yaml"
    existing.write_text("kept: as it was\n")
    assert main(["midi", "--learn", str(existing)]) == 2
    assert f"{existing} exists; --learn writes a new map" in one_line_error(capsys)
    assert existing.read_text() == "kept: as it was\n"
    target = tmp_path / "new.yaml"
    assert main(["midi", "--learn", str(target), "--port", "streamdiff-test", "--wait", "0.05"]) == 2
    assert "nothing was learned (every control was skipped)" in one_line_error(capsys)
    assert not target.exists()


def test_the_camera_and_web_commands_open_their_midi_input_before_the_model_loads(controller, tmp_path, capsys):
    base = ["--model", "no-such-model", "--midi"]
    assert main(["camera", "--camera", "pattern", "--output", "none", *base, "no-such-controller"]) == 2
    assert "no MIDI input match 'no-such-controller'; inputs: " in one_line_error(capsys)
    bad_map = tmp_path / "map.yaml"
    bad_map.write_text("controls: {1: loudness}\n")
    assert main(["web", "--model", "no-such-model", "--midi-map", str(bad_map)]) == 2
    assert "map.yaml: controls 1: expected a control" in one_line_error(capsys)


def test_no_midi_system_is_one_line(jack_server, monkeypatch, capsys):
    monkeypatch.setenv("JACK_DEFAULT_SERVER", "streamdiff-no-such-server")
    assert main(["midi"]) == 2
    assert "cannot list MIDI inputs: no MIDI system answered" in one_line_error(capsys)
