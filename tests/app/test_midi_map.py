"""MIDI maps: reading and writing them, and what each kind of message becomes (mido's own messages)."""

from __future__ import annotations

import mido
import pytest

from streamdiff.app.keys import EMA_MAX, STEPS_MAX, STRENGTH_MIN, STYLE_MAX, Controls, handle_key
from streamdiff.app.midi_command import LEARN_KNOBS, write_map
from streamdiff.app.midi_map import DEFAULT_MAP, Knob, MidiMap, Press, Translator, load_map, parse_map
from streamdiff.app.osc import osc_change
from streamdiff.app.remote import CONTROL_TYPES, ControlError, PromptBook, apply_changes, describe


def cc(control: int, value: int, channel: int = 0) -> mido.Message:
    return mido.Message("control_change", control=control, value=value, channel=channel)


def note(number: int, velocity: int = 100, channel: int = 0) -> mido.Message:
    return mido.Message("note_on", note=number, velocity=velocity, channel=channel)


def test_a_knob_spans_its_control_from_0_to_127():
    translate = Translator(DEFAULT_MAP).change
    assert translate(cc(1, 0), 3) == {"strength": STRENGTH_MIN}
    assert translate(cc(1, 127), 3) == {"strength": 1.0}
    assert translate(cc(2, 127), 3) == {"ema": EMA_MAX}
    assert translate(cc(4, 64), 3) == {"blend": round(64 / 127, 4)}
    assert translate(cc(99, 64), 3) is None  # not mapped


def test_a_prompt_knob_spreads_the_list_over_its_travel_and_a_seed_knob_is_its_position():
    translate = Translator(parse_map({"controls": {10: "prompt_index", 11: "seed", 12: "mirror"}})).change
    assert [translate(cc(10, v), 4)["prompt_index"] for v in (0, 31, 32, 95, 96, 127)] == [0, 0, 1, 2, 3, 3]
    assert translate(cc(10, 127), 0) == {"prompt_index": 0}
    assert translate(cc(11, 42), 4) == {"seed": 42}
    assert [translate(cc(12, v), 4) for v in (0, 63, 64, 127)] == [{"mirror": v >= 64} for v in (0, 63, 64, 127)]


def test_a_steps_knob_gives_each_count_an_equal_share_of_its_travel_and_pads_set_a_count():
    translate = Translator(DEFAULT_MAP).change
    assert [translate(cc(5, v), 1)["steps"] for v in (0, 31, 32, 63, 64, 95, 96, 127)] == [1, 1, 2, 2, 3, 3, 4, 4]
    midi_map = parse_map({"controls": {7: {"control": "steps", "min": 3, "max": 1}}, "notes": {49: "steps 2"}})
    assert midi_map.controls[7] == Knob("steps", 3.0, 1.0)
    translate = Translator(midi_map).change
    assert [translate(cc(7, v), 1)["steps"] for v in (0, 42, 43, 85, 86, 127)] == [3, 3, 2, 2, 1, 1]
    assert translate(note(49), 1) == {"steps": 2} and translate(note(49, velocity=0), 1) == {}
    assert midi_map.names() == {"steps", "prompt_index"}
    book = PromptBook(["a"])
    assert apply_changes(Controls(), translate(note(49), 1), book).steps == 2
    assert describe({"steps": 2}) == "steps 2"


def test_pads_press_once_and_their_release_does_nothing():
    translate = Translator(DEFAULT_MAP).change
    assert translate(note(36), 8) == {"prompt_index": 0}
    assert translate(note(43), 8) == {"prompt_index": 7}
    assert translate(note(45), 8) == {"next_prompt": True}
    assert translate(note(45, velocity=0), 8) == {}  # a note-on of velocity 0 is a release
    assert translate(mido.Message("note_off", note=45), 8) == {}
    assert translate(note(60), 8) is None


def test_a_button_sent_as_a_control_change_presses_once_per_press():
    translate = Translator(parse_map({"controls": {20: "new_seed"}})).change
    sent = [127, 127, 0, 100, 0, 0, 127]  # pressed, held, let go, pressed, let go, let go, pressed
    assert [translate(cc(20, v), 1) for v in sent] == [{"new_seed": True}, {}, {}, {"new_seed": True}, {}, {},
                                                      {"new_seed": True}]
    assert translate(cc(20, 127, channel=1), 1) == {"new_seed": True}  # another channel's button is its own


def test_program_changes_select_prompts_and_a_channel_filters():
    translate = Translator(DEFAULT_MAP).change
    assert translate(mido.Message("program_change", program=5), 8) == {"prompt_index": 5}
    only_two = Translator(parse_map({"channel": 2, "controls": {1: "ema"}, "programs": False})).change
    assert only_two(cc(1, 0, channel=0), 1) is None
    assert only_two(cc(1, 0, channel=1), 1) == {"ema": 0.0}
    assert only_two(mido.Message("program_change", program=5, channel=1), 1) is None
    assert Translator(DEFAULT_MAP).change(mido.Message("clock"), 1) is None


def test_a_ranged_knob_and_the_yaml_file_round_trip(tmp_path):
    midi_map = parse_map({"channel": 3, "controls": {7: {"control": "strength", "min": 0.4, "max": 0.8},
                                                      8: "feedback", 64: "toggle_pause"},
                          "notes": {60: "prompt 2", 61: "previous_prompt"}, "programs": False})
    assert midi_map.controls[7] == Knob("strength", 0.4, 0.8)
    assert midi_map.notes[60] == Press("prompt 2")
    assert Translator(midi_map).change(cc(7, 127, channel=2), 1) == {"strength": 0.8}
    path = tmp_path / "map.yaml"
    write_map(midi_map, path)
    assert load_map(path) == midi_map
    write_map(DEFAULT_MAP, path)
    assert load_map(path) == DEFAULT_MAP
    assert midi_map.names() == {"strength", "feedback", "toggle_pause", "prompt_index", "previous_prompt"}


def test_a_knob_sets_every_controlnets_scale_or_one_of_them(tmp_path):
    midi_map = parse_map({"controls": {6: "control_scale", 7: "control_scale_2",
                                       8: {"control": "control_scale_1", "min": 0.5, "max": 1.5}}})
    assert [midi_map.controls[n] for n in (6, 7, 8)] == [Knob("control_scale", 0.0, 2.0),
                                                        Knob("control_scale_2", 0.0, 2.0),
                                                        Knob("control_scale_1", 0.5, 1.5)]
    translate = Translator(midi_map).change
    assert (translate(cc(6, 127), 1), translate(cc(7, 0), 1)) == ({"control_scale": 2.0}, {"control_scale_2": 0.0})
    assert translate(cc(8, 127), 1) == {"control_scale_1": 1.5}
    assert midi_map.names() == {"control_scale", "control_scale_1", "control_scale_2", "prompt_index"}
    assert midi_map.to_data()["controls"][7] == "control_scale_2"  # its full range: the name alone
    path = tmp_path / "map.yaml"
    write_map(midi_map, path)
    assert load_map(path) == midi_map
    steered = apply_changes(Controls(control_scales=(0.8, 0.4)), translate(cc(7, 127), 1), PromptBook(["a"]))
    assert steered.control_scales == (0.8, 2.0)


def test_a_knob_sets_the_style_pictures_scale_from_0_to_2(tmp_path):
    midi_map = parse_map({"controls": {9: "ip_adapter_scale", 10: {"control": "ip_adapter_scale", "max": 1.0}}})
    assert midi_map.controls == {9: Knob("ip_adapter_scale", 0.0, STYLE_MAX), 10: Knob("ip_adapter_scale", 0.0, 1.0)}
    translate = Translator(midi_map).change
    assert [translate(cc(9, v), 1) for v in (0, 127)] == [{"ip_adapter_scale": 0.0}, {"ip_adapter_scale": 2.0}]
    assert translate(cc(10, 127), 1) == {"ip_adapter_scale": 1.0}
    assert midi_map.names() == {"ip_adapter_scale", "prompt_index"}
    assert midi_map.to_data()["controls"] == {9: "ip_adapter_scale",
                                              10: {"control": "ip_adapter_scale", "min": 0.0, "max": 1.0}}
    path = tmp_path / "map.yaml"
    write_map(midi_map, path)
    assert load_map(path) == midi_map
    styled = apply_changes(Controls(ip_adapter_scale=0.6), translate(cc(9, 127), 1), PromptBook(["a"]))
    assert styled.ip_adapter_scale == 2.0
    with pytest.raises(ControlError, match="ip_adapter_scale: this stream has no IP-Adapter"):
        apply_changes(Controls(), translate(cc(9, 64), 1), PromptBook(["a"]))
    with pytest.raises(ValueError, match=r"controls 1: ip_adapter_scale's min and max must lie in \[0.0, 2.0\]"):
        parse_map({"controls": {1: {"control": "ip_adapter_scale", "max": 3}}})
    assert "ip_adapter_scale" in LEARN_KNOBS  # streamdiff midi --learn asks for it


@pytest.mark.parametrize("data, error", [
    ({"controls": {1: "control_scale_two"}}, r"controls 1: expected a control \(.*, control_scale_N\), a trigger"),
    ({"controls": {1: {"control": "control_scale_2", "max": 6}}},
     r"controls 1: control_scale_2's min and max must lie in \[0.0, 2.0\]"),
    ({"controls": {1: {"control": "control_scale_x"}}}, r"controls 1: expected \{control, min, max\} with a control "
                                                        r"of .*control_scale, ip_adapter_scale, steps, "
                                                        r"control_scale_N; got"),
    ([1, 2], r"expected a mapping of some of channel, controls, notes, programs; got list"),
    ({"knobs": {}}, r"expected a mapping of some of .*; got \['knobs'\]"),
    ({"controls": {128: "ema"}}, r"controls: MIDI numbers are whole numbers in \[0, 127\]; got 128"),
    ({"controls": {1: "strenght"}}, r"controls 1: expected a control \(strength, ema, .*got 'strenght'"),
    ({"controls": {1: {"control": "ema", "max": 0.99}}}, r"controls 1: ema's min and max must lie in \[0.0, 0.95\]"),
    ({"controls": {1: {"control": "seed"}}}, r"controls 1: expected \{control, min, max\} with a control of"),
    ({"notes": {36: "strength"}}, r"notes 36: expected a trigger \(next_prompt, .*\), 'prompt N' or 'steps N'; got "
                                  "'strength'"),
    ({"notes": {36: "prompt -1"}}, r"notes 36: expected a trigger"),
    ({"notes": {36: "steps 0"}}, r"notes 36: expected a trigger .* or 'steps N'; got 'steps 0'"),
    ({"controls": {1: {"control": "steps", "max": 5}}}, r"controls 1: steps's min and max must lie in \[1.0, 4.0\]"),
    ({"controls": {1: {"control": "steps", "min": 1.5}}}, r"controls 1: steps's min and max must be whole numbers"),
    ({"notes": [36]}, r"notes must map numbers to what they do; got \[36\]"),
    ({"channel": 17}, r"channel must be 1-16 or any; got 17"),
    ({"programs": "yes"}, r"programs must be true or false"),
])
def test_a_bad_map_names_what_was_expected(data, error):
    with pytest.raises(ValueError, match=error):
        parse_map(data)


def test_a_bad_map_file_names_the_file(tmp_path):
    path = tmp_path / "map.yaml"
    path.write_text("controls: {1: [unclosed\n")
    with pytest.raises(ValueError, match=r"map.yaml is not a YAML file"):
        load_map(path)
    path.write_text("channel: 0\n")
    with pytest.raises(ValueError, match=r"map.yaml: channel must be 1-16 or any; got 0"):
        load_map(path)
    with pytest.raises(FileNotFoundError, match="MIDI map not found"):
        load_map(tmp_path / "missing.yaml")


def test_triggers_act_on_the_controls_of_the_moment_like_the_keys():
    book = PromptBook(["a", "b", "c"])
    controls = Controls(prompt_index=2, seed=7)
    after = apply_changes(controls, {"next_prompt": True}, book)
    assert after.prompt_index == 0  # wraps like the n key
    assert apply_changes(after, {"previous_prompt": True}, book).prompt_index == 2
    assert apply_changes(controls, {"new_seed": True}, book).seed == handle_key("r", controls, 3)[0].seed
    both = apply_changes(controls, {"toggle_mirror": True, "toggle_pause": True, "strength": 0.5}, book)
    assert (both.mirror, both.paused, both.strength) == (True, True, 0.5)
    with pytest.raises(ControlError, match=r"next_prompt must be true \(a press\); got false"):
        apply_changes(controls, {"next_prompt": False}, book)
    assert describe({"next_prompt": True, "strength": 0.5, "seed": 3}) == "next prompt, strength 0.50, seed 3"


def test_osc_buttons_press_triggers_and_their_release_does_nothing():
    assert osc_change("/streamdiff/next_prompt", [], CONTROL_TYPES) == {"next_prompt": True}
    assert osc_change("/new_seed", [1.0], CONTROL_TYPES) == {"new_seed": True}
    assert osc_change("/new_seed", [0.0], CONTROL_TYPES) == {}
    with pytest.raises(ControlError, match=r"/new_seed takes no argument or one number \(nonzero: pressed\)"):
        osc_change("/new_seed", ["now"], CONTROL_TYPES)


def test_the_default_map_is_what_the_options_help_says():
    assert DEFAULT_MAP == MidiMap(
        {1: Knob("strength", STRENGTH_MIN, 1.0), 2: Knob("ema", 0.0, EMA_MAX), 3: Knob("feedback", 0.0, 0.9),
         4: Knob("blend", 0.0, 1.0), 5: Knob("steps", 1.0, STEPS_MAX)},
        {**{36 + i: Press(f"prompt {i}") for i in range(8)}, 44: Press("previous_prompt"),
         45: Press("next_prompt"), 46: Press("new_seed"), 47: Press("toggle_mirror"), 48: Press("toggle_pause")})
