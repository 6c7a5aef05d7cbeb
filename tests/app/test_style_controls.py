"""The IP-Adapter's scale and the style picture as live controls, on the real tiny stream with a random-weight
adapter: what the runner hands the engine and on which thread (a picture is loaded and preprocessed on the style
inbox's thread, encoded on the one that applies the controls), the newest picture winning, pictures that cannot
be used, the camera runtime's keys and remote changes, and the overlay's line."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest
import torch
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
from streamdiff.ip_adapter import StylePixels


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


def apply_until(runner: EngineRunner, condition, what: str, timeout: float = 10.0) -> None:
    """Apply the runner's controls, as the inference thread does before each frame, until `condition` holds."""
    def applied():
        runner.apply(runner.applied)
        return condition()

    wait_until(applied, what, timeout)


class Heard:
    """What the pictures' senders heard, as (name, problem), and on which thread."""

    def __init__(self) -> None:
        self.outcomes: list[tuple[str, str | None]] = []
        self.threads: list[int] = []

    def picture(self, name: str, load) -> StylePicture:
        def done(problem: str | None) -> None:
            self.outcomes.append((name, problem))
            self.threads.append(threading.get_ident())

        return StylePicture(name, load, done)


def colour(rgb) -> np.ndarray:
    return np.full((32, 32, 3), rgb, np.uint8)


@pytest.fixture
def runner(styled_engine):
    """A runner on the styled stream with its controls applied once, as at the start; closed after the test."""
    runner = EngineRunner(styled_engine, ["a watercolor"], transition_frames=0)
    runner.apply(Controls(**engine_controls(styled_engine)))
    yield runner
    assert runner.close(timeout=5.0)


def test_the_runner_hands_the_engine_a_changed_scale_between_frames(styled_engine, monkeypatch):
    scales = recorded(styled_engine, monkeypatch, "set_ip_adapter_scale")
    runner = EngineRunner(styled_engine, ["a watercolor"], transition_frames=0)
    controls = Controls(**engine_controls(styled_engine))
    assert controls.ip_adapter_scale == 0.6 and runner.styles.current is None
    runner.apply(controls)
    runner.apply(replace(controls, strength=0.7))
    assert [value for value, _ in scales] == [0.6]  # the start hands it over; an unchanged scale is not again
    runner.apply(replace(controls, ip_adapter_scale=1.3))
    assert [value for value, _ in scales] == [0.6, 1.3] and styled_engine.ip_adapter_scale == 1.3
    image = np.full((64, 64, 3), 90, np.uint8)
    assert runner.step(Frame(image, "rgb", 0, 0.0)).image.shape == (64, 64, 3)
    assert runner.close(timeout=0)  # no picture was asked for: no thread was started


def test_a_picture_is_loaded_and_preprocessed_beside_the_inference_thread_which_only_encodes_its_pixels(
        runner, styled_engine, monkeypatch):
    made: list[tuple[object, StylePixels, int]] = []  # style_pixels: (picture, pixels, thread)
    encoded: list[tuple[object, int]] = []
    loads: list[int] = []
    style_pixels, set_style_image = styled_engine.style_pixels, styled_engine.set_style_image

    def making(picture):
        pixels = style_pixels(picture)
        made.append((picture, pixels, threading.get_ident()))
        return pixels

    def encoding(picture):
        encoded.append((picture, threading.get_ident()))
        set_style_image(picture)

    monkeypatch.setattr(styled_engine, "style_pixels", making)
    monkeypatch.setattr(styled_engine, "set_style_image", encoding)
    blue, heard = colour((20, 40, 220)), Heard()

    def load():
        loads.append(threading.get_ident())
        return blue

    runner.styles.put(heard.picture("blue.png", load))
    assert runner.styles.current is None  # asked for, not in use: the overlay and the page still name none
    apply_until(runner, lambda: runner.styles.current == "blue.png", "the picture to reach the engine")
    inference = threading.get_ident()  # this thread applies the controls, as the inference thread does
    assert len(loads) == len(made) == len(encoded) == 1 and styled_engine.has_style_image
    (picture, pixels, preparer), (handed, encoder) = made[0], encoded[0]
    assert picture is blue and loads == [preparer] and preparer != inference
    assert isinstance(handed, StylePixels) and handed is pixels and encoder == inference
    assert heard.outcomes == [("blue.png", None)] and heard.threads == [inference]  # told once it is in use


def test_a_newer_picture_wins_over_an_older_one_still_being_prepared(runner, styled_engine, monkeypatch):
    encoded = recorded(styled_engine, monkeypatch, "set_style_image")
    heard, loaded = Heard(), []
    preparing, release_old, preparing_new, release_new = (threading.Event() for _ in range(4))

    def held(name: str, started: threading.Event, release: threading.Event, picture: np.ndarray):
        def load():
            loaded.append(name)
            started.set()
            assert release.wait(10.0)
            return picture
        return load

    runner.styles.put(heard.picture("big photo.jpg", held("big photo.jpg", preparing, release_old,
                                                          np.full((600, 800, 3), 200, np.uint8))))
    assert preparing.wait(10.0)
    def green():
        loaded.append("green.png")
        return colour((0, 200, 0))

    runner.styles.put(heard.picture("green.png", green))
    runner.styles.put(heard.picture("red.png", held("red.png", preparing_new, release_new, colour((220, 30, 30)))))
    release_old.set()
    assert preparing_new.wait(10.0)  # done with the big photo: it was dropped, or it waits for the engine
    runner.apply(runner.applied)
    assert runner.styles.current is None and not encoded  # the big photo never reaches the engine
    release_new.set()
    apply_until(runner, lambda: runner.styles.current == "red.png", "the newest picture to reach the engine")
    assert loaded == ["big photo.jpg", "red.png"]  # green was replaced before the preparer got to it
    assert heard.outcomes == [("red.png", None)] and len(encoded) == 1


def test_a_picture_that_cannot_be_used_is_reported_and_the_stream_keeps_its_picture(runner, styled_engine,
                                                                                    monkeypatch):
    heard = Heard()
    runner.styles.put(heard.picture("red.png", lambda: colour((220, 30, 30))))
    apply_until(runner, lambda: runner.styles.current == "red.png", "the first picture to reach the engine")
    tokens = styled_engine._style_tokens.clone()

    def broken():
        raise ValueError("cannot read broken.png as a picture (truncated)")

    refused = [
        ("broken.png", broken, "cannot read broken.png as a picture (truncated)"),  # cannot be loaded
        ("pair.png", lambda: np.zeros((2, 8, 8, 3), np.uint8), "expected one style picture; got 2"),  # preprocessing
    ]
    for name, load, problem in refused:
        runner.styles.put(heard.picture(name, load))
        apply_until(runner, lambda: len(heard.outcomes) > 1, f"{name} to be refused")
        assert heard.outcomes.pop() == (name, problem) and heard.threads.pop() != threading.get_ident()
        assert runner.styles.current == "red.png" and torch.equal(styled_engine._style_tokens, tokens)

    # Pixels the image encoder cannot read (made for another encoder): refused on the thread that encodes them.
    monkeypatch.setattr(styled_engine, "style_pixels", lambda picture: StylePixels(torch.zeros(1, 3, 8, 8)))
    runner.styles.put(heard.picture("small.png", lambda: colour((0, 0, 0))))
    apply_until(runner, lambda: len(heard.outcomes) > 1, "small.png to be refused")
    assert heard.outcomes.pop()[1].startswith("expected style pixels of shape (1, 3, 32, 32) for this image encoder")
    assert heard.threads.pop() == threading.get_ident()
    assert runner.styles.current == "red.png" and torch.equal(styled_engine._style_tokens, tokens)


def test_a_preparer_failing_otherwise_fails_the_thread_that_applies_the_controls(runner, styled_engine,
                                                                                 monkeypatch):
    def failing(picture):
        raise MemoryError("cannot allocate 48000000 bytes")

    monkeypatch.setattr(styled_engine, "style_pixels", failing)  # not a bad picture: a fault of the machine
    runner.styles.put(StylePicture("red.png", lambda: colour((220, 30, 30))))
    with pytest.raises(RuntimeError, match="the style picture thread failed: MemoryError: cannot allocate"):
        apply_until(runner, lambda: False, "the failure to come through")
    assert runner.styles.current is None


def test_the_camera_keys_and_remotes_steer_the_style_and_only_the_inference_thread_touches_the_engine(
        styled_engine, monkeypatch, tmp_path):
    scales = recorded(styled_engine, monkeypatch, "set_ip_adapter_scale")
    pictures = recorded(styled_engine, monkeypatch, "set_style_image")
    made = recorded(styled_engine, monkeypatch, "style_pixels")
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
    assert [thread for _, thread in made] == ["streamdiff-style"] and isinstance(pictures[0][0], StylePixels)
    assert runtime.runner.close(timeout=0)  # the runtime's shutdown stopped the style picture's thread


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
    assert np.asarray(picture.load()).shape == (48, 40, 3)  # read already: the style thread only preprocesses it
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
