"""Key bindings, the prompt gallery and prompt files, slots and rate meters: the pure parts of the app."""

from __future__ import annotations

import threading

import pytest

from streamdiff.app.gallery import GALLERY, load_prompts, resolve_prompts
from streamdiff.app.keys import BINDINGS, Controls, handle_key, help_lines
from streamdiff.app.slots import LatestSlot, RateMeter


def press(keys: str, controls: Controls | None = None, prompts: int = 3) -> Controls:
    controls = controls or Controls()
    for key in keys:
        controls, _ = handle_key(key, controls, prompts)
    return controls


def test_prompt_keys_wrap_around_the_list():
    assert press("n").prompt_index == 1
    assert press("nnn").prompt_index == 0
    assert press("p").prompt_index == 2


def test_blend_ema_and_feedback_keys_step_and_stay_in_range():
    assert press("+++").blend == pytest.approx(0.3)
    assert press("=").blend == pytest.approx(0.1)
    assert press("+" * 15).blend == 1.0
    assert press("-").blend == 0.0
    assert press("e" * 30).ema == 0.95 and press("d").ema == 0.0
    assert press("f" * 30).feedback == 0.9 and press("ffv").feedback == pytest.approx(0.05)


def test_strength_keys_step_within_their_range():
    assert press("[").strength == pytest.approx(0.95) and press("]").strength == 1.0
    assert press("[[[]").strength == pytest.approx(0.9)
    assert press("[" * 30).strength == 0.1
    assert press("]", Controls(strength=0.5)).strength == pytest.approx(0.55)
    assert press("[", Controls(strength=0.04)).strength == 0.04  # below the keys' range: never raised by "less"
    assert press("]", Controls(strength=0.04)).strength == pytest.approx(0.09)


def test_controlnet_keys_step_every_scale_and_do_nothing_without_a_controlnet():
    two = Controls(control_scales=(1.0, 0.5))
    assert press("c", two).control_scales == pytest.approx((1.1, 0.6))
    assert press("xxx", two).control_scales == pytest.approx((0.7, 0.2))
    assert press("c" * 30, two).control_scales == (2.0, 2.0)
    assert press("x" * 30, two).control_scales == (0.0, 0.0)
    assert press("x" * 6, two).control_scales == pytest.approx((0.4, 0.0))  # each clamped on its own
    assert press("c", Controls(control_scales=(3.0, 1.0))).control_scales == pytest.approx((3.0, 1.1))  # above 2
    assert press("c", Controls(control_scales=(0.8,))).control_scales == pytest.approx((0.9,))  # one, as before
    assert press("cx") == Controls()  # no ControlNet: the keys change nothing
    with pytest.raises(ValueError, match=r"control_scales must be a tuple of numbers in \[0, 5\]; got \(0.5, 6\)"):
        Controls(control_scales=(0.5, 6))
    with pytest.raises(ValueError, match=r"control_scales must be a tuple"):
        Controls(control_scales=[0.5])


def test_style_keys_step_the_ip_adapter_scale_and_do_nothing_without_an_adapter():
    styled = Controls(ip_adapter_scale=0.6)
    assert press("i", styled).ip_adapter_scale == pytest.approx(0.7)
    assert press("uuu", styled).ip_adapter_scale == pytest.approx(0.3)
    assert press("i" * 30, styled).ip_adapter_scale == 2.0 and press("u" * 30, styled).ip_adapter_scale == 0.0
    assert press("i", Controls(ip_adapter_scale=3.0)).ip_adapter_scale == 3.0  # set above the keys' range: kept
    assert press("u", Controls(ip_adapter_scale=3.0)).ip_adapter_scale == pytest.approx(2.9)
    assert press("iu") == Controls()  # no IP-Adapter: the keys change nothing
    assert any(line.startswith("i / u: more / less steering by the style picture") for line in help_lines())
    for bad in (6.0, -0.1, True, "0.5"):
        with pytest.raises(ValueError, match=r"ip_adapter_scale must be None or a number in \[0, 5\]; got"):
            Controls(ip_adapter_scale=bad)


def test_number_keys_set_the_denoising_steps_directly():
    assert [press(key).steps for key in "1234"] == [1, 2, 3, 4]
    assert press("41").steps == 1 and press("3", Controls(steps=2, strength=0.5)) == Controls(steps=3, strength=0.5)
    assert press("5").steps == Controls().steps  # past the keys' range: nothing
    assert press("2", Controls(steps=6)).steps == 2  # a stream started with more steps keeps a valid value
    assert any(line.startswith("1-4: denoising steps per frame") for line in help_lines())
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match=r"steps must be a whole number of at least 1; got"):
            Controls(steps=bad)


def test_new_seed_is_reproducible_and_different():
    once, again = press("r"), press("r")
    assert once.seed == again.seed != Controls().seed
    assert press("rr").seed not in (Controls().seed, once.seed)


def test_toggles_and_commands():
    assert press(" ").paused and not press("  ").paused
    assert press("m").mirror and not press("o").overlay and press("h").help
    assert press("l").layout == "output" and press("ll").layout == "side"
    for key, command in (("q", "quit"), ("\x1b", "quit"), ("close", "quit"), ("s", "save")):
        controls, result = handle_key(key, Controls(), 3)
        assert result == command and controls == Controls()
    assert handle_key("z", Controls(), 3) == (Controls(), None)


def test_help_names_every_key_the_issue_asks_for():
    text = "\n".join(help_lines())
    for key in ("q", "s", "n / p", "+ / -", "e / d", "f / v", "] / [", "r:", "space", "h:"):
        assert key in text
    assert all(b.keys for b in BINDINGS)


def test_controls_refuse_out_of_range_values():
    with pytest.raises(ValueError, match="blend"):
        Controls(blend=1.5)
    with pytest.raises(ValueError, match="ema and feedback"):
        Controls(ema=1.0)
    with pytest.raises(ValueError, match="strength"):
        Controls(strength=0.0)


def test_gallery_has_at_least_ten_distinct_styles():
    assert len(GALLERY) >= 10
    assert len({text for _, text in GALLERY}) == len(GALLERY)
    assert resolve_prompts(None, "gallery")[0] == GALLERY[0][1]
    assert resolve_prompts("my style", "gallery")[:2] == ["my style", GALLERY[0][1]]
    assert resolve_prompts("only", None) == ["only"]


def test_prompt_files_text_and_yaml(tmp_path):
    text = tmp_path / "p.txt"
    text.write_text("# my styles\nink wash\n\n  neon noir  \n")
    assert load_prompts(text) == ["ink wash", "neon noir"]
    listed = tmp_path / "p.yaml"
    listed.write_text("- ink wash\n- prompt: neon noir\n  name: noir\n")
    assert load_prompts(listed) == ["ink wash", "neon noir"]
    mapping = tmp_path / "m.yml"
    mapping.write_text("prompts:\n  ink: ink wash\n  noir: neon noir\n")
    assert load_prompts(mapping) == ["ink wash", "neon noir"]


def test_bad_prompt_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="prompt file not found"):
        load_prompts(tmp_path / "missing.txt")
    broken = tmp_path / "b.yaml"
    broken.write_text("- [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_prompts(broken)
    empty = tmp_path / "e.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(ValueError, match="no prompts"):
        load_prompts(empty)
    numbers = tmp_path / "n.yaml"
    numbers.write_text("- 3\n")
    with pytest.raises(ValueError, match="non-empty string"):
        load_prompts(numbers)


def test_slot_keeps_only_the_newest_value_and_wakes_waiters():
    slot: LatestSlot[int] = LatestSlot()
    assert slot.peek() == (0, None)
    for value in range(5):
        slot.put(value)
    assert slot.peek() == (5, 4)
    assert slot.wait_newer(5, timeout=0.01) == (5, 4)
    got: list[tuple[int, int | None]] = []
    reader = threading.Thread(target=lambda: got.append(slot.wait_newer(5, timeout=5)))
    reader.start()
    slot.put(9)
    reader.join(timeout=2)
    assert got == [(6, 9)]


def test_a_worker_takes_each_newer_value_with_how_many_it_skipped_until_stopped():
    slot: LatestSlot[int] = LatestSlot()
    stop = threading.Event()
    taken = slot.newer(stop, poll=0.01)
    for value in range(3):
        slot.put(value)
    assert next(taken) == (3, 2, 2)  # the newest, two replaced before the worker looked
    slot.put(7)
    assert next(taken) == (4, 0, 7)
    stop.set()
    assert list(taken) == []


def test_rate_meter_measures_and_decays():
    now = [0.0]
    meter = RateMeter(window=10, clock=lambda: now[0])
    assert meter.rate() == 0.0
    for _ in range(10):
        meter.tick()
        now[0] += 0.05
    assert meter.rate() == pytest.approx(20.0)
    now[0] += 5.0
    assert meter.rate() == 0.0 and meter.count == 10
