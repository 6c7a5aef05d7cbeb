"""OSC control: messages over real UDP to the listener, into the camera runtime and the web page's stream."""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time

import numpy as np
import pytest
from app_fakes import CountingSource, FakeEngine, RecordingSink, run_while_performing
from cli_checks import one_line_error
from polling import wait_until
from pythonosc.udp_client import SimpleUDPClient

from streamdiff.app.keys import Controls
from streamdiff.app.osc import OscListener, osc_change, parse_address
from streamdiff.app.remote import (
    CONTROL_TYPES,
    ControlError,
    PromptBook,
    apply_changes,
    describe,
)
from streamdiff.app.runtime import Runtime, RuntimeOptions
from streamdiff.cli import main
from streamdiff.errors import UserError


def test_addresses_with_or_without_the_prefix_and_what_controllers_send():
    assert osc_change("/streamdiff/strength", [0.6], CONTROL_TYPES) == {"strength": 0.6}
    assert osc_change("/strength", [1], CONTROL_TYPES) == {"strength": 1}
    assert osc_change("/streamdiff/seed", [42.0], CONTROL_TYPES) == {"seed": 42}  # TouchDesigner sends floats
    steps = osc_change("/streamdiff/steps", [2.0], CONTROL_TYPES)["steps"]
    assert steps == 2 and isinstance(steps, int)  # a whole number, as Controls takes it
    assert osc_change("/mirror", [1.0], CONTROL_TYPES) == {"mirror": True}
    assert osc_change("/streamdiff/paused", [0], CONTROL_TYPES) == {"paused": False}
    assert osc_change("/streamdiff/prompt", ["ink wash"], CONTROL_TYPES) == {"prompt": "ink wash"}
    assert osc_change("/streamdiff/control_scale", [1], CONTROL_TYPES) == {"control_scale": 1}  # every ControlNet
    assert osc_change("/streamdiff/control_scale_2", [0.4], CONTROL_TYPES) == {"control_scale_2": 0.4}  # the second
    assert osc_change("/control_scale_12", [0.4], CONTROL_TYPES) == {"control_scale_12": 0.4}  # the app counts them


@pytest.mark.parametrize("address, args, error", [
    ("/streamdiff/speed", [1.0], r"unknown OSC address /streamdiff/speed; expected /streamdiff/ \(or /\) followed by"),
    ("/streamdiff/strength", [], "/streamdiff/strength takes one argument; got 0"),
    ("/streamdiff/strength", [0.5, 0.6], "takes one argument; got 2"),
    ("/streamdiff/control_scale_two", [0.5], r"unknown OSC address /streamdiff/control_scale_two; expected .*"
                                             r"control_scale, control_scale_N, next_prompt"),
    ("/streamdiff/control_scale_02", [0.5], "unknown OSC address /streamdiff/control_scale_02"),
    ("/streamdiff/control_scale_1", [0.5, 0.6], "/streamdiff/control_scale_1 takes one argument; got 2"),
])
def test_bad_addresses_and_argument_counts_are_named(address, args, error):
    with pytest.raises(ControlError, match=error):
        osc_change(address, args, CONTROL_TYPES)


@pytest.mark.parametrize("change, error", [
    ({"seed": 4.5}, "seed must be a whole number; got 4.5"),
    ({"mirror": 2.0}, "mirror must be true or false; got 2.0"),
    ({"strength": 1.5}, r"strength must be in \(0, 1\]; got 1.5"),
    ({"prompt_index": 3}, r"prompt_index must be in \[0, 1\]; got 3"),
    ({"strength": "high"}, 'strength must be a finite number; got "high"'),
    ({"steps": 0}, r"steps must be in \[1, 4\]; got 0"),
    ({"steps": 5}, r"steps must be in \[1, 4\]; got 5"),
    ({"steps": 2.5}, "steps must be a whole number; got 2.5"),
    ({"steps": True}, "steps must be a whole number; got true"),
])
def test_a_bad_value_changes_nothing_and_says_what_was_expected(change, error):
    controls = Controls()
    with pytest.raises(ControlError, match=error):
        apply_changes(controls, {"ema": 0.5, **change}, PromptBook(["a", "b"]))


def test_control_scale_sets_every_controlnet_and_control_scale_n_the_nth():
    book, two = PromptBook(["a"]), Controls(control_scales=(0.8, 0.4))
    assert apply_changes(two, {"control_scale": 0.3}, book).control_scales == (0.3, 0.3)
    assert apply_changes(two, {"control_scale_2": 1.5}, book).control_scales == (0.8, 1.5)
    assert apply_changes(two, {"control_scale_1": 0, "control_scale_2": 5}, book).control_scales == (0.0, 5.0)
    for change in ({"control_scale": 0.3, "control_scale_1": 1.0}, {"control_scale_1": 1.0, "control_scale": 0.3}):
        assert apply_changes(two, change, book).control_scales == (1.0, 0.3)  # the one after all, in any order
    assert apply_changes(Controls(control_scales=(0.8,)), {"control_scale_1": 0.5}, book).control_scales == (0.5,)
    assert describe({"control_scale_2": 0.5}) == "control_scale_2 0.50"
    with pytest.raises(ControlError, match="unknown OSC address /control_scale_1; expected .* one of strength$"):
        osc_change("/control_scale_1", [0.5], {"strength": float})  # offered only where control_scale is


@pytest.mark.parametrize("scales, change, error", [
    ((0.8, 0.4), {"control_scale_3": 1.0}, r"control_scale_3: this stream has 2 ControlNets; expected "
                                           r"control_scale_1, control_scale_2 \(one, counted from 1\) or "
                                           r"control_scale \(all\)"),
    ((0.8, 0.4), {"control_scale_0": 1.0}, "control_scale_0: this stream has 2 ControlNets; expected control_scale_1"),
    ((0.8,), {"control_scale_2": 1.0}, r"control_scale_2: this stream has 1 ControlNet; expected control_scale_1 "
                                       r"\(one, counted from 1\) or control_scale \(all\)"),
    ((0.8, 0.4), {"control_scale_2": 6}, r"control_scale_2 must be in \[0, 5\]; got 6.0"),
    ((0.8, 0.4), {"control_scale": -0.5}, r"control_scale must be in \[0, 5\]; got -0.5"),
    ((0.8, 0.4), {"control_scale_1": "high"}, 'control_scale_1 must be a finite number; got "high"'),
    ((0.8, 0.4), {"control_scale_1": 0.5, "control_scale_9": 0.5}, "control_scale_9: this stream has 2 ControlNets"),
    ((), {"control_scale": 0.5}, r"control_scale steers a ControlNet, and this stream has none \(start it with "
                                 r"--controlnet\)"),
    ((), {"control_scale_1": 0.5}, "control_scale_1 steers a ControlNet, and this stream has none"),
    ((0.8, 0.4), {"control_scale_x": 0.5}, r"unknown control control_scale_x; expected some of .*control_scale, "
                                           "control_scale_N"),
])
def test_a_control_scale_for_a_controlnet_the_stream_lacks_is_refused_and_changes_nothing(scales, change, error):
    controls = Controls(control_scales=scales)
    with pytest.raises(ControlError, match=error):
        apply_changes(controls, {"strength": 0.5, **change}, PromptBook(["a"]))
    assert controls == Controls(control_scales=scales)


def test_a_stream_started_with_more_steps_than_the_keys_offer_may_keep_them():
    book = PromptBook(["a"])
    assert apply_changes(Controls(steps=6), {"steps": 6}, book).steps == 6
    assert apply_changes(Controls(steps=6), {"steps": 1}, book).steps == 1
    with pytest.raises(ControlError, match=r"steps must be in \[1, 6\]; got 7"):
        apply_changes(Controls(steps=6), {"steps": 7}, book)


def test_the_address_option_is_host_and_port():
    assert parse_address("9000") == ("127.0.0.1", 9000)
    assert parse_address("0.0.0.0:57120") == ("0.0.0.0", 57120)
    for bad in ("", "nine", "70000", "host:"):
        with pytest.raises(ValueError, match=r"--osc expects \[HOST:\]PORT"):
            parse_address(bad)


def test_the_listener_hands_on_changes_and_logs_a_repeated_refusal_once(caplog):
    got: queue.SimpleQueue = queue.SimpleQueue()

    def submit(change):
        if change.get("strength", 0.5) > 1:
            raise ControlError("strength must be in (0, 1]")
        got.put((change, threading.current_thread().name))

    listener = OscListener(CONTROL_TYPES, 0).start(submit)
    try:
        sender = SimpleUDPClient("127.0.0.1", listener.port)
        with caplog.at_level(logging.WARNING, logger="streamdiff.app.osc"):
            for value in (2.0, 2.0, 2.0):
                sender.send_message("/streamdiff/strength", value)
            sender.send_message("/nonsense", 1)
            sender.send_message("/streamdiff/strength", 0.25)
            assert got.get(timeout=5) == ({"strength": 0.25}, "streamdiff-osc")
        refusals = [r.getMessage() for r in caplog.records]
        assert refusals == ["OSC: strength must be in (0, 1]", "OSC: unknown OSC address /nonsense; expected "
                            "/streamdiff/ (or /) followed by one of prompt, prompt_index, strength, steps, ema, "
                            "feedback, seed, mirror, blend, paused, ip_adapter_scale, style_image, control_scale, "
                            "control_scale_N, next_prompt, "
                            "previous_prompt, new_seed, toggle_mirror, toggle_pause"]
    finally:
        listener.close()
    assert "streamdiff-osc" not in {t.name for t in threading.enumerate()}


def test_a_busy_port_is_a_user_error():
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    try:
        with pytest.raises(UserError, match=r"cannot listen for OSC on 127.0.0.1:\d+ .*pick another"):
            OscListener(CONTROL_TYPES, taken.getsockname()[1])
    finally:
        taken.close()


def test_the_camera_runtime_applies_osc_changes_on_its_inference_thread():
    engine = FakeEngine()
    options = RuntimeOptions(prompts=("first style", "second style"), pane_height=64, display_fps=60.0,
                             transition_frames=5)
    runtime = Runtime(engine, CountingSource(), [RecordingSink()], options)
    listener = OscListener(CONTROL_TYPES, 0).start(runtime.remote_change)
    sender = SimpleUDPClient("127.0.0.1", listener.port)

    def perform():
        wait_until(lambda: engine.inputs, "the engine to take a frame", 5.0)
        sender.send_message("/streamdiff/strength", 0.5)
        sender.send_message("/streamdiff/prompt", "neon noir")
        sender.send_message("/blend", 0.25)
        sender.send_message("/streamdiff/strength", 7.0)  # refused: nothing changes
        sender.send_message("/streamdiff/steps", 3)
        sender.send_message("/streamdiff/steps", 9)  # refused: nothing changes
        wait_until(lambda: runtime.controls.blend == 0.25 and any(c[0] == "update_prompt" for c in engine.calls),
                   "the blend and the prompt to change", 5.0)
        sender.send_message("/streamdiff/prompt_index", 0.0)
        wait_until(lambda: runtime.controls.prompt_index == 0, "the first prompt", 5.0)
        time.sleep(0.2)

    try:
        run_while_performing(runtime, perform)
    finally:
        listener.close()
    assert runtime.controls.strength == 0.5
    assert runtime.runner.prompts == ["first style", "second style", "neon noir"]
    assert [args for method, _, args in engine.calls if method == "set_strength"] == [(0.5,)]
    assert runtime.controls.steps == 3 and [args for method, _, args in engine.calls if method == "set_steps"] == [(3,)]
    prompts = [args for method, _, args in engine.calls if method == "update_prompt"]
    assert prompts == [("neon noir", 5), ("first style", 5)]
    assert engine.engine_threads() == {"streamdiff-inference"}


def test_the_web_stream_applies_osc_changes_and_tells_the_driving_page(tiny_engine):
    from streamdiff.app.engine_io import EngineRunner
    from streamdiff.web.bridge import WebStream

    runner = EngineRunner(tiny_engine, ["a watercolor", "ink wash"], transition_frames=0)
    stream = WebStream(runner, Controls(seed=1, strength=tiny_engine.strength), PromptBook(runner.prompts))
    delivered: list = []
    stream.connect(delivered.append)
    stream.remote_change({"strength": 0.5, "prompt_index": 1, "steps": 3})
    assert (stream.controls.strength, stream.controls.prompt_index, stream.controls.steps) == (0.5, 1, 3)
    assert stream.applied.peek()[1] == stream.controls
    assert delivered[-1]["type"] == "state" and delivered[-1]["prompt"] == "ink wash"
    assert delivered[-1]["controls"]["strength"] == 0.5 and delivered[-1]["controls"]["steps"] == 3
    with pytest.raises(ControlError, match="unknown control blend"):  # the page's own, not the stream's
        stream.remote_change({"blend": 0.5})
    assert stream.controls.strength == 0.5 and len(delivered) == 1


def test_the_style_addresses_take_a_scale_and_a_picture_files_path():
    assert osc_change("/streamdiff/ip_adapter_scale", [0.8], CONTROL_TYPES) == {"ip_adapter_scale": 0.8}
    assert osc_change("/ip_adapter_scale", [1], CONTROL_TYPES) == {"ip_adapter_scale": 1}
    assert osc_change("/streamdiff/style_image", ["/pictures/dusk.png"], CONTROL_TYPES) == \
        {"style_image": "/pictures/dusk.png"}
    with pytest.raises(ControlError, match="/streamdiff/style_image takes one argument; got 0"):
        osc_change("/streamdiff/style_image", [], CONTROL_TYPES)
    styled, book = Controls(ip_adapter_scale=0.6), PromptBook(["a"])
    assert apply_changes(styled, {"ip_adapter_scale": 5}, book).ip_adapter_scale == 5.0
    assert describe({"ip_adapter_scale": 0.8}) == "ip_adapter_scale 0.80"


@pytest.mark.parametrize("scale, change, error", [
    (None, {"ip_adapter_scale": 0.5}, r"ip_adapter_scale: this stream has no IP-Adapter \(start it with --ip-adapter "
                                      r"or --style-image\)"),
    (0.6, {"ip_adapter_scale": 5.5}, r"ip_adapter_scale must be in \[0, 5\]; got 5.5"),
    (0.6, {"ip_adapter_scale": -1}, r"ip_adapter_scale must be in \[0, 5\]; got -1.0"),
    (0.6, {"ip_adapter_scale": "strong"}, 'ip_adapter_scale must be a finite number; got "strong"'),
])
def test_a_bad_style_scale_is_refused_and_changes_nothing(scale, change, error):
    controls = Controls(ip_adapter_scale=scale)
    with pytest.raises(ControlError, match=error):
        apply_changes(controls, {"strength": 0.5, **change}, PromptBook(["a"]))
    assert controls == Controls(ip_adapter_scale=scale)


def test_osc_steers_the_camera_runtimes_style_and_a_bad_path_is_one_logged_line(styled_engine, tmp_path, caplog):
    from PIL import Image

    picture = tmp_path / "dusk.png"
    Image.fromarray(np.full((40, 40, 3), (200, 60, 120), np.uint8)).save(picture)
    options = RuntimeOptions(prompts=("a watercolor",), pane_height=64, display_fps=30.0)
    runtime = Runtime(styled_engine, CountingSource(period=0.01), [RecordingSink()], options)
    listener = OscListener(CONTROL_TYPES, 0).start(runtime.remote_change)
    sender = SimpleUDPClient("127.0.0.1", listener.port)
    missing = tmp_path / "missing.png"

    def perform():
        sender.send_message("/streamdiff/style_image", str(missing))  # refused and logged: nothing changes
        sender.send_message("/streamdiff/ip_adapter_scale", 1.2)
        wait_until(lambda: styled_engine.ip_adapter_scale == pytest.approx(1.2), "the scale to reach the engine", 10.0)
        assert not styled_engine.has_style_image
        sender.send_message("/streamdiff/style_image", str(picture))
        wait_until(lambda: runtime.runner.styles.current == "dusk.png", "the picture to reach the engine", 10.0)

    try:
        with caplog.at_level(logging.WARNING, logger="streamdiff.app.osc"):
            run_while_performing(runtime, perform)
    finally:
        listener.close()
    assert styled_engine.has_style_image and runtime.controls.ip_adapter_scale == pytest.approx(1.2)  # float32 in OSC
    assert [r.getMessage() for r in caplog.records if r.name == "streamdiff.app.osc"] == [
        f"OSC: style picture not found: {missing}"]


def test_the_camera_command_checks_its_osc_port_before_the_model_loads(capsys):
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    try:
        base = ["camera", "--model", "no-such-model", "--camera", "pattern", "--output", "none", "--osc"]
        assert main([*base, str(taken.getsockname()[1])]) == 2
        assert "cannot listen for OSC" in one_line_error(capsys)
        assert main([*base, "ninety"]) == 2
        assert "--osc expects [HOST:]PORT" in one_line_error(capsys)
    finally:
        taken.close()
