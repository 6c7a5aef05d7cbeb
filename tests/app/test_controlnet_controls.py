"""Each ControlNet's scale as a live control, on the real tiny stream steered by two ControlNets: what the runner
hands the engine, the camera runtime's keys and remote changes, and the overlay's labels."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from app_fakes import CountingSource, RecordingSink, run_while_performing
from polling import wait_until

from streamdiff.app.engine_io import EngineRunner
from streamdiff.app.frames import Frame
from streamdiff.app.keys import Controls, engine_controls
from streamdiff.app.overlay import OverlayInfo, status_lines
from streamdiff.app.remote import ControlError
from streamdiff.app.runtime import Runtime, RuntimeOptions


def recorded_scales(engine, monkeypatch) -> list[tuple[float, int | None]]:
    """The engine's set_control_scale calls (scale, index), each still made."""
    calls: list[tuple[float, int | None]] = []
    original = engine.set_control_scale

    def record(scale, index=None):
        calls.append((scale, index))
        original(scale, index=index)

    monkeypatch.setattr(engine, "set_control_scale", record)
    return calls


def test_the_runner_hands_the_engine_only_the_scales_that_changed(steered_engine, monkeypatch):
    calls = recorded_scales(steered_engine, monkeypatch)
    runner = EngineRunner(steered_engine, ["a watercolor"], transition_frames=0)
    controls = Controls(**engine_controls(steered_engine))
    assert controls.control_scales == (0.8, 0.4) and runner.control_names == ("canny", "depth")
    runner.apply(controls)
    assert calls == [(0.8, 0), (0.4, 1)]  # the start hands over every one
    runner.apply(replace(controls, control_scales=(0.8, 1.2)))
    assert calls[2:] == [(1.2, 1)] and steered_engine.control_scales == (0.8, 1.2)
    runner.apply(replace(controls, control_scales=(0.8, 1.2), strength=0.7))
    assert calls[3:] == []
    runner.apply(replace(controls, control_scales=(0.3, 0.3)))
    assert calls[3:] == [(0.3, 0), (0.3, 1)] and steered_engine.control_scales == (0.3, 0.3)
    image = np.full((64, 64, 3), 90, np.uint8)
    assert runner.step(Frame(image, "rgb", 0, 0.0)).image.shape == (64, 64, 3)


def test_the_camera_keys_move_every_controlnet_and_a_remote_one_or_all(steered_engine):
    sink = RecordingSink(keys={3: "x", 4: "x"})
    options = RuntimeOptions(prompts=("a watercolor",), pane_height=64, display_fps=30)
    runtime = Runtime(steered_engine, CountingSource(period=0.01), [sink], options)
    assert runtime.controls.control_scales == (0.8, 0.4)  # the engine's, not a default

    def perform():
        wait_until(lambda: steered_engine.control_scales == pytest.approx((0.6, 0.2)), "x x to reach both", 10.0)
        runtime.remote_change({"control_scale_2": 1.5})  # what /streamdiff/control_scale_2 1.5 hands over
        wait_until(lambda: steered_engine.control_scales == pytest.approx((0.6, 1.5)), "the second's scale", 10.0)
        with pytest.raises(ControlError, match="control_scale_3: this stream has 2 ControlNets; expected"):
            runtime.remote_change({"strength": 0.9, "control_scale_3": 1.0})
        runtime.remote_change({"control_scale": 1.0})
        wait_until(lambda: steered_engine.control_scales == (1.0, 1.0), "one scale for both", 10.0)

    run_while_performing(runtime, perform)
    assert runtime.controls.control_scales == (1.0, 1.0) and runtime.controls.strength == pytest.approx(0.6)
    lines = status_lines(runtime.display._overlay_info(), runtime.controls)
    assert "ControlNet canny 1.00  depth 1.00" in lines


def test_the_overlay_names_each_controlnets_scale_and_shows_none_without_one():
    info = OverlayInfo("a watercolor", 1, 1, 10.0, 30.0, 30.0, None, control_names=("canny", "depth"))
    lines = status_lines(info, Controls(control_scales=(0.8, 0.45)))
    assert lines[3] == "ControlNet canny 0.80  depth 0.45"
    assert status_lines(replace(info, control_names=("canny",)), Controls(control_scales=(0.6,)))[3] == \
        "ControlNet canny 0.60"
    assert not any("ControlNet" in line for line in status_lines(replace(info, control_names=()), Controls()))
