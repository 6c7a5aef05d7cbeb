"""The IP-Adapter's scale and the style picture as live controls, on the real tiny stream with a random-weight
adapter: what the runner hands the engine and on which thread, the camera runtime's keys and remote changes, and
the overlay's line."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest
from app_fakes import CountingSource, RecordingSink, run_while_performing
from PIL import Image
from polling import wait_until

from streamdiff.app.engine_io import EngineRunner
from streamdiff.app.frames import Frame
from streamdiff.app.keys import Controls, engine_controls
from streamdiff.app.overlay import OverlayInfo, status_lines
from streamdiff.app.remote import ControlError
from streamdiff.app.runtime import Runtime, RuntimeOptions
from streamdiff.app.style import StylePicture, split_style


def recorded(engine, monkeypatch, method: str) -> list[tuple[object, str]]:
    """The engine's calls of `method` (first argument, thread name), each still made."""
    calls: list[tuple[object, str]] = []
    original = getattr(engine, method)

    def record(value, *args, **kwargs):
        calls.append((value, threading.current_thread().name))
        return original(value, *args, **kwargs)

    monkeypatch.setattr(engine, method, record)
    return calls


def style_file(tmp_path, name: str = "sunset.png", colour=(230, 90, 20)):
    path = tmp_path / name
    Image.fromarray(np.full((48, 40, 3), colour, np.uint8)).save(path)
    return path


def test_the_runner_hands_the_engine_a_changed_scale_and_the_newest_picture_between_frames(styled_engine,
                                                                                         monkeypatch):
    scales = recorded(styled_engine, monkeypatch, "set_ip_adapter_scale")
    runner = EngineRunner(styled_engine, ["a watercolor"], transition_frames=0)
    controls = Controls(**engine_controls(styled_engine))
    assert controls.ip_adapter_scale == 0.6 and runner.styles.current is None
    runner.apply(controls)
    runner.apply(replace(controls, strength=0.7))
    assert [value for value, _ in scales] == [0.6]  # the start hands it over; an unchanged scale is not again
    runner.apply(replace(controls, ip_adapter_scale=1.3))
    assert [value for value, _ in scales] == [0.6, 1.3] and styled_engine.ip_adapter_scale == 1.3

    heard: list[str | None] = []
    blue, red = np.full((32, 32, 3), (20, 40, 220), np.uint8), np.full((32, 32, 3), (220, 30, 30), np.uint8)
    runner.styles.put(StylePicture("blue.png", lambda: blue, heard.append))
    runner.styles.put(StylePicture("red.png", lambda: red, heard.append))  # replaces blue before a frame took it
    assert not styled_engine.has_style_image  # nothing reaches the engine until the inference thread applies
    runner.apply(runner.applied)
    assert styled_engine.has_style_image and runner.styles.current == "red.png" and heard == [None]
    runner.apply(runner.applied)
    assert heard == [None]  # taken once

    def broken():
        raise ValueError("cannot read broken.png as a picture (truncated)")

    runner.styles.put(StylePicture("broken.png", broken, heard.append))
    runner.apply(runner.applied)
    assert heard == [None, "cannot read broken.png as a picture (truncated)"]
    assert runner.styles.current == "red.png" and styled_engine.has_style_image  # the stream keeps its picture
    image = np.full((64, 64, 3), 90, np.uint8)
    assert runner.step(Frame(image, "rgb", 0, 0.0)).image.shape == (64, 64, 3)


def test_the_camera_keys_and_remotes_steer_the_style_and_only_the_inference_thread_touches_the_engine(
        styled_engine, monkeypatch, tmp_path):
    scales = recorded(styled_engine, monkeypatch, "set_ip_adapter_scale")
    pictures = recorded(styled_engine, monkeypatch, "set_style_image")
    sink = RecordingSink(keys={3: "u", 4: "u"})
    options = RuntimeOptions(prompts=("a watercolor",), pane_height=64, display_fps=30)
    runtime = Runtime(styled_engine, CountingSource(period=0.01), [sink], options)
    assert runtime.controls.ip_adapter_scale == 0.6  # the engine's, not a default
    overlay = {}

    def perform():
        wait_until(lambda: styled_engine.ip_adapter_scale == pytest.approx(0.4), "u u to reach the engine", 10.0)
        overlay["before"] = status_lines(runtime.display._overlay_info(), runtime.controls)
        runtime.remote_change({"ip_adapter_scale": 1.5})  # what /streamdiff/ip_adapter_scale 1.5 hands over
        runtime.remote_change({"style_image": str(style_file(tmp_path))})  # /streamdiff/style_image PATH
        wait_until(lambda: styled_engine.has_style_image and styled_engine.ip_adapter_scale == 1.5,
                   "the picture and the scale to reach the engine", 10.0)
        with pytest.raises(ControlError, match="style picture not found: .*missing.png"):
            runtime.remote_change({"style_image": str(tmp_path / "missing.png")})
        with pytest.raises(ControlError, match=r"ip_adapter_scale must be in \[0, 5\]; got 7.0"):
            runtime.remote_change({"strength": 0.9, "ip_adapter_scale": 7.0})

    run_while_performing(runtime, perform)
    assert "Style 0.40 (no picture)" in overlay["before"]
    assert runtime.controls.ip_adapter_scale == 1.5 and runtime.controls.strength == pytest.approx(0.6)
    assert runtime.runner.styles.current == "sunset.png" and len(pictures) == 1  # the bad path changed nothing
    assert "Style 1.50 sunset.png" in status_lines(runtime.display._overlay_info(), runtime.controls)
    assert {thread for _, thread in scales + pictures} == {"streamdiff-inference"}


def test_a_style_control_on_a_stream_without_an_ip_adapter_is_refused_and_reads_no_file(tmp_path):
    plain = Controls()  # ip_adapter_scale None: the stream has no adapter
    with pytest.raises(ControlError, match=r"style_image: this stream has no IP-Adapter \(start it with "
                                           r"--ip-adapter or --style-image\)"):
        split_style({"style_image": str(tmp_path / "never-read.png")}, plain)
    styled = Controls(ip_adapter_scale=0.6)
    with pytest.raises(ControlError, match="style_image must be the path of a picture file; got 3.0"):
        split_style({"style_image": 3.0}, styled)
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(ControlError, match=r"cannot read .*notes.png as a picture"):
        split_style({"style_image": str(tmp_path / "notes.png")}, styled)
    picture, rest = split_style({"style_image": str(style_file(tmp_path, "dusk.jpg")), "strength": 0.5}, styled)
    assert rest == {"strength": 0.5} and picture.name == "dusk.jpg"
    assert np.asarray(picture.load()).shape == (48, 40, 3)  # read already: the inference thread only encodes it
    assert split_style({"strength": 0.5}, plain) == (None, {"strength": 0.5})


def test_the_overlay_shows_the_style_scale_and_picture_and_no_line_without_an_adapter():
    info = OverlayInfo("a watercolor", 1, 1, 10.0, 30.0, 30.0, None)
    assert status_lines(info, Controls(ip_adapter_scale=0.6))[3] == "Style 0.60 (no picture)"
    assert status_lines(replace(info, style_image="sunset.jpg"), Controls(ip_adapter_scale=1.25))[3] == \
        "Style 1.25 sunset.jpg"
    both = status_lines(replace(info, control_names=("canny",), style_image="a.png"),
                        Controls(control_scales=(0.8,), ip_adapter_scale=0.5))
    assert both[3:5] == ["ControlNet canny 0.80", "Style 0.50 a.png"]
    assert not any(line.startswith("Style") for line in status_lines(replace(info, style_image="a.png"), Controls()))
