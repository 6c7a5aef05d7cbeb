"""An accelerated stream's number of steps changed live (set_steps): steps captured again at the new count, and
compiled code for a new count built in the background (upgrades.py), on the CPU.

Dynamo traces with its "eager" backend here, as in test_background.py; the device test (test_cuda.py) runs
Inductor and CUDA graphs.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest
from conftest import SIZE, gate_compilation, random_frames
from torch._dynamo.utils import counters

from streamdiff.backends.accelerate import accelerate
from streamdiff.backends.graphs import DirectCall
from streamdiff.backends.runner import AcceleratedStream


def run(stream, script, frames, *, on_wait=None) -> list[np.ndarray]:
    """Play a script on a stream: an int k is frame k, ("steps", n) a change, "wait" the background worker."""
    outputs = []
    for item in script:
        if isinstance(item, int):
            outputs.append(stream.img2img(frames[item], output_type="np"))
        elif item == "wait":
            if on_wait is not None:
                on_wait(stream)
        else:
            stream.set_steps(item[1])
    return outputs


def wait_for_worker(stream) -> None:
    assert stream.upgrade is not None, "no background compilation was started"
    assert stream.upgrade.wait(300) and stream.upgrade.error is None


def test_steps_are_captured_again_at_a_new_count_and_equal_the_engines(make_stream):
    eager = make_stream(t_index_list=(20,))
    fast = AcceleratedStream(make_stream(t_index_list=(20,)), DirectCall.capture, mode="direct")
    frames = random_frames(10, (SIZE, SIZE, 3))
    script = [0, 1, 2, ("steps", 2), 3, 4, 5, 6, ("steps", 1), 7, 8, 9]
    for k, (got, want) in enumerate(zip(run(fast, script, frames), run(eager, script, frames))):
        np.testing.assert_array_equal(got, want, err_msg=f"output {k}")
    assert fast.captured == ["img2img of 1 x 64x64 uint8 frames"] and fast.config.denoising_steps == 1


def test_a_refused_count_keeps_the_captured_step(make_stream):
    captures = []

    def counted(step, state):
        captures.append(step)
        return DirectCall.capture(step, state)

    fast = AcceleratedStream(make_stream(t_index_list=(47,)), counted, mode="direct")
    frames = random_frames(5, (SIZE, SIZE, 3))
    for frame in frames[:3]:
        fast.img2img(frame)
    with pytest.raises(ValueError, match="steps=4 does not fit strength=0.06"):
        fast.set_steps(4)
    for frame in frames[3:]:
        fast.img2img(frame)
    assert fast.config.t_index_list == (47,) and len(captures) == 1


def test_a_new_count_runs_uncompiled_until_its_background_compile_is_done(make_stream, eager_dynamo):
    """Where a stream compiles in the background, a new count switches to uncompiled steps at once, records its
    first calls, compiles them on the worker and switches back; a count compiled before switches at once, and
    a count changed while another compiles is compiled next. The pictures are the eager engine's throughout."""
    frames = random_frames(19, (SIZE, SIZE, 3))
    script = [0, 1, "wait", 2, ("steps", 2), 3, 4, "wait", 5, 6, ("steps", 1), 7, 8, ("steps", 2), 9, ("steps", 3), 10,
              11, ("steps", 1), "wait", 12, ("steps", 4), 13, 14, ("steps", 2), "wait", 15, 16, 17, 18]
    reference = make_stream(t_index_list=(20,))
    expected = run(reference, script, frames)  # before any worker runs: tracing patches every module's call
    stream, report = accelerate(make_stream(t_index_list=(20,)), "compile", background=True, fold_upsampling=False)
    modes: list[tuple[str, bool]] = []  # after each item of the script
    progress: list[str] = []
    stream._progress = progress.append
    outputs = []
    for item in script:
        outputs += run(stream, [item], frames, on_wait=wait_for_worker)
        modes.append((stream.mode, stream.upgrading))
    for k, (got, want) in enumerate(zip(outputs, expected)):
        np.testing.assert_array_equal(got, want, err_msg=f"output {k}")
    assert report.mode == "none"
    assert modes[script.index(2)] == ("compile", False)  # the first count, compiled in the background
    assert modes[script.index(("steps", 2))] == ("none", False)  # uncompiled at once, recording
    assert modes[script.index(3)] == ("none", False)  # its first frame, recorded
    assert modes[script.index(4)] == ("none", True)  # its step captured: compiling
    assert modes[script.index(5)] == ("compile", False)
    assert modes[script.index(("steps", 1))] == ("compile", False)  # compiled before: at once
    assert modes[script.index(9)] == ("compile", False)
    assert modes[script.index(11)] == ("none", True)  # 3 steps compiling ...
    assert modes[script.index(12)] == ("compile", False)  # ... while the stream went back to 1: installed
    assert modes[script.index(14)] == ("none", True)  # 4 steps compiling; then 2, compiled before, waits for it
    assert modes[script.index(15)] == ("compile", False)
    assert stream.config.denoising_steps == 2
    assert any("3 step(s) per frame: uncompiled steps now; compiling them in the background" in p for p in progress)


def test_a_count_set_while_another_compiles_applies_after_it_and_compiles_next(make_stream, eager_dynamo):
    frames = random_frames(9, (SIZE, SIZE, 3))
    script = [0, "wait", 1, ("steps", 2), 2, 3, ("steps", 3), "wait", 4, 5, "wait", 6, 7, 8]
    expected = run(make_stream(t_index_list=(20,)), script, frames)
    stream, _ = accelerate(make_stream(t_index_list=(20,)), "compile", background=True, fold_upsampling=False)
    progress: list[str] = []
    stream._progress = progress.append
    pending = []

    def waited(stream) -> None:
        pending.append(stream.pending_steps)
        wait_for_worker(stream)

    outputs = run(stream, script, frames, on_wait=waited)
    for k, (got, want) in enumerate(zip(outputs, expected)):
        np.testing.assert_array_equal(got, want, err_msg=f"output {k}")
    assert pending == [None, 3, None]  # 3 waited for the compilation of 2, and was applied at the frame after it
    assert any("3 step(s) per frame once the compilation under way is done; 2 until then" in p for p in progress)
    assert any("compiled 2 step(s) per frame in the background" in p for p in progress)
    assert (stream.mode, stream.upgrading, stream.config.denoising_steps) == ("compile", False, 3)
    graphs = counters["stats"]["unique_graphs"]
    stream.set_steps(2)
    run(stream, [0, 1], frames)
    assert stream.mode == "compile" and counters["stats"]["unique_graphs"] == graphs  # nothing traced again


def test_set_steps_during_a_compilation_returns_at_once_and_applies_when_it_is_done(make_stream, eager_dynamo,
                                                                                   monkeypatch):
    """The count is checked and remembered, not applied: applying it needs the modules, which wait for the worker
    (before, the call itself waited for the whole compilation)."""
    gate = gate_compilation(monkeypatch)
    frames = random_frames(4, (SIZE, SIZE, 3))
    reference = make_stream(t_index_list=(20,))
    reference.set_steps(3)
    expected = [reference.img2img(frame, output_type="np") for frame in frames]
    stream, _ = accelerate(make_stream(t_index_list=(20,)), "compile", background=True, fold_upsampling=False)
    try:
        while not stream.upgrade.lock.locked():
            time.sleep(0.001)
        caller = threading.Thread(target=stream.set_steps, args=(3,))
        caller.start()
        caller.join(10)
        returned = not caller.is_alive()
        assert returned and not stream.upgrade.done.is_set()
        with pytest.raises(ValueError, match="steps must be at least 1; got 0"):
            stream.set_steps(0)  # still checked at once
        assert (stream.pending_steps, stream.config.denoising_steps) == (3, 1)
    finally:
        gate.set()
    wait_for_worker(stream)
    outputs = [stream.img2img(frames[0], output_type="np")]
    # Applied at that first frame, uncompiled: the new count is recorded, then compiled, as any new count.
    assert (stream.pending_steps, stream.config.denoising_steps, stream.mode) == (None, 3, "none")
    outputs += [stream.img2img(frame, output_type="np") for frame in frames[1:]]
    for k, (got, want) in enumerate(zip(outputs, expected)):
        np.testing.assert_array_equal(got, want, err_msg=f"output {k}")


def test_a_count_that_no_longer_fits_when_the_compilation_ends_is_not_applied(make_stream, eager_dynamo, monkeypatch,
                                                                             caplog):
    gate = gate_compilation(monkeypatch)
    stream, _ = accelerate(make_stream(t_index_list=(20,)), "compile", background=True, fold_upsampling=False)
    try:
        stream.set_steps(4)
        stream.set_strength(0.06)  # room for one step only
    finally:
        gate.set()
    wait_for_worker(stream)
    with caplog.at_level(logging.WARNING, logger="streamdiff.backends"):
        stream.img2img(random_frames(1, (SIZE, SIZE, 3))[0], output_type="np")
    assert "kept 1 step(s) per frame: ValueError: steps=4 does not fit strength=0.06:" in caplog.text
    assert (stream.pending_steps, stream.config.denoising_steps, stream.mode) == (None, 1, "compile")
