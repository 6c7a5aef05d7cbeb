"""The number of denoising steps as a live control, on the real tiny stream: the runner's changes, their
order with the strength, refusals, the latency record (after new steps or a new strength), and the camera
runtime's keys and overlay."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest
from app_fakes import CountingSource, RecordingSink

from streamdiff.app.engine_io import EngineRunner
from streamdiff.app.frames import Frame
from streamdiff.app.keys import Controls
from streamdiff.app.overlay import OverlayInfo, status_lines
from streamdiff.app.runtime import Runtime, RuntimeOptions


def engine_with(tiny_pipe, strength: float, steps: int):
    from streamdiff.stream import StreamPipeline

    pipe = StreamPipeline.from_diffusers(tiny_pipe, width=64, height=64, strength=strength, steps=steps, seed=1,
                                         fit="crop", device="cpu")
    pipe.prepare("a watercolor")
    return pipe


def started(engine) -> tuple[EngineRunner, Controls]:
    """A runner that has applied the engine's own controls, as the apps start."""
    runner = EngineRunner(engine, ["a watercolor"], transition_frames=0)
    controls = Controls(strength=engine.strength, steps=engine.config.denoising_steps)
    runner.apply(controls)
    return runner, controls


def frame(index: int) -> Frame:
    return Frame(np.full((64, 64, 3), index, np.uint8), "rgb", index, float(index))


def test_a_new_count_reaches_the_engine_and_keeps_its_strength(tiny_engine):
    runner, controls = started(tiny_engine)
    runner.step(frame(0))
    runner.apply(replace(controls, steps=3))
    assert tiny_engine.config.denoising_steps == 3 and tiny_engine.strength == pytest.approx(0.6)
    assert runner.step(frame(1)).image.shape == (64, 64, 3)
    runner.apply(replace(controls, steps=1))
    assert tiny_engine.config.t_index_list == (20,)


def test_the_latency_record_follows_the_new_count(tiny_engine):
    runner, controls = started(tiny_engine)
    assert [runner.step(frame(i)).source_index for i in range(3)] == [0, 0, 1]  # two steps: one frame late
    runner.apply(replace(controls, steps=3))
    # The stream batch starts again from frame 3, filled from it: two frames late from there on.
    assert [runner.step(frame(i)).source_index for i in range(3, 7)] == [3, 3, 3, 4]


def test_the_latency_record_follows_a_count_the_engine_applied_by_itself(tiny_engine):
    """A count set while an accelerated engine compiled is applied inside a later frame, not by the runner's call."""
    runner, _ = started(tiny_engine)
    assert [runner.step(frame(i)).source_index for i in range(3)] == [0, 0, 1]
    tiny_engine.set_steps(3)  # as the engine does at the first frame after its compilation
    assert [runner.step(frame(i)).source_index for i in range(3, 7)] == [3, 3, 3, 4]


def test_the_latency_record_starts_again_after_a_strength_change_refills_the_stream(tiny_engine, caplog):
    runner, controls = started(tiny_engine)
    assert [runner.step(frame(i)).source_index for i in range(3)] == [0, 0, 1]  # two steps: one frame late
    runner.apply(replace(controls, strength=0.8))
    # A new schedule sends the frames in flight away: the stream batch fills again from frame 3.
    assert [runner.step(frame(i)).source_index for i in range(3, 6)] == [3, 3, 4]
    runner.apply(replace(controls, strength=0.805))  # the same schedule indices: the stream goes on as it was
    assert tiny_engine.config.t_index_list == (10, 30) and runner.step(frame(6)).source_index == 5
    with caplog.at_level(logging.WARNING, logger="streamdiff.app.engine_io"):
        runner.apply(replace(controls, strength=0.01))  # refused (no room for two steps): nothing starts again
    assert caplog.records and runner.step(frame(7)).source_index == 6


def test_a_count_that_does_not_fit_the_strength_is_refused_and_the_stream_keeps_its_own(tiny_pipe, caplog):
    engine = engine_with(tiny_pipe, strength=0.05, steps=2)  # 0.05 of 50 steps leaves room for two
    runner, controls = started(engine)
    with caplog.at_level(logging.WARNING, logger="streamdiff.app.engine_io"):
        runner.apply(replace(controls, steps=4))
    assert engine.config.denoising_steps == 2 and engine.strength == pytest.approx(0.04)
    [record] = caplog.records
    assert record.getMessage().startswith("steps=4 does not fit strength=0.04")
    assert runner.step(frame(0)).image.shape == (64, 64, 3)


def test_fewer_steps_go_before_a_lower_strength(tiny_pipe):
    engine = engine_with(tiny_pipe, strength=1.0, steps=4)
    runner, controls = started(engine)
    runner.apply(replace(controls, strength=0.05, steps=1))  # 0.05 does not fit 4 steps, only fewer
    assert engine.config.t_index_list == (48,)


def test_more_steps_go_after_a_higher_strength(tiny_pipe):
    engine = engine_with(tiny_pipe, strength=0.05, steps=1)
    runner, controls = started(engine)
    runner.apply(replace(controls, strength=1.0, steps=4))  # 4 steps do not fit 0.05, only the new strength
    assert engine.config.t_index_list == (0, 12, 25, 37)


def test_the_camera_runtime_starts_from_the_engines_count_and_its_keys_change_it(tiny_engine):
    sink = RecordingSink(keys={3: "3"})
    options = RuntimeOptions(prompts=("a watercolor",), pane_height=64, display_fps=30)
    runtime = Runtime(tiny_engine, CountingSource(period=0.01), [sink], options)
    assert runtime.controls.steps == 2  # the engine's, not a default
    summary = runtime.run(duration=2.0)
    assert summary.inferred >= 3 and runtime.controls.steps == 3 and tiny_engine.config.denoising_steps == 3
    info = OverlayInfo("a watercolor", 1, 1, 10.0, 30.0, 30.0, None)
    assert "strength 0.60  steps 3  blend" in status_lines(info, runtime.controls)[2]
