"""Compiling on a thread of its own while the stream runs (background.py), on the CPU.

Dynamo traces with its "eager" backend here: the same tracing, guards and switch-over as with Inductor,
without minutes of C++ compilation on the test machine. The device test (test_cuda.py) runs Inductor.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

import numpy as np
import pytest
from conftest import SIZE, compile_with, gate_compilation, random_frames
from torch._dynamo.utils import counters

from streamdiff.backends import compile as compiling
from streamdiff.backends import graphs
from streamdiff.backends.accelerate import accelerate
from streamdiff.backends.background import SWITCH_INTERVAL, BackgroundCompile, CallRecorder, held_while_tracing


def test_the_stream_switches_to_the_compiled_modules_once_they_are_ready(make_stream, eager_dynamo):
    frames = random_frames(6, (SIZE, SIZE, 3))
    # The eager reference runs before the worker starts: while it traces, no module may run outside the
    # stream's lock (background.py), and the reference's modules are not under it.
    reference = make_stream(t_index_list=(20, 35))
    expected = [reference.img2img(frame, output_type="np") for frame in frames]
    pipe = make_stream(t_index_list=(20, 35))
    unet = pipe.components.unet
    stream, report = accelerate(pipe, "compile", background=True, fold_upsampling=False)  # bit-equal to eager
    assert (report.mode, stream.mode, stream.upgrading) == ("none", "none", True)
    assert not compiling.is_compiled(unet)
    for frame, want in zip(frames[:2], expected[:2]):
        np.testing.assert_array_equal(stream.img2img(frame, output_type="np"), want)
    assert stream.upgrade.wait(300)
    compiled_graphs = counters["stats"]["unique_graphs"]
    assert compiled_graphs >= 1
    for frame, want in zip(frames[2:], expected[2:]):
        np.testing.assert_array_equal(stream.img2img(frame, output_type="np"), want)
    assert (stream.mode, stream.upgrading) == ("compile", False)
    assert compiling.is_compiled(unet)
    assert counters["stats"]["unique_graphs"] == compiled_graphs  # the worker's trace is reused, not redone


def test_controlnets_are_compiled_as_the_stream_calls_them(make_controlled_stream, eager_dynamo):
    """Each ControlNet's recorded call read its stored projections, and the worker traces them so: after the
    switch their compiled code serves the frames with no new trace, and the eager stream's pictures."""
    frames = random_frames(5, (SIZE, SIZE, 3))
    settings = {"t_index_list": (20, 35), "count": 2, "control_scale": (0.9, 0.6)}
    reference = make_controlled_stream(**settings)
    expected = [reference.img2img(frame, output_type="np") for frame in frames]
    said: list[str] = []
    stream, _ = accelerate(make_controlled_stream(**settings), "compile", background=True, fold_upsampling=False,
                           progress=said.append)
    assert stream.upgrade.calls["controlnet"].conditioned and stream.upgrade.calls["controlnet.2"].conditioned
    assert any("compiling the UNet, 2 ControlNets and the codec in the background" in line for line in said), said
    np.testing.assert_array_equal(stream.img2img(frames[0], output_type="np"), expected[0])
    assert stream.upgrade.wait(300) and stream.upgrade.error is None
    compiled_graphs = counters["stats"]["unique_graphs"]
    for frame, want in zip(frames[1:], expected[1:]):
        np.testing.assert_array_equal(stream.img2img(frame, output_type="np"), want)
    assert stream.mode == "compile" and all(map(compiling.is_compiled, stream.pipe.components.controlnets))
    assert counters["stats"]["unique_graphs"] == compiled_graphs


def test_a_failed_background_compile_leaves_the_stream_as_it_was(make_stream, eager_dynamo, monkeypatch, caplog):
    def broken(module, preset="default"):
        def fail(*args, **kwargs):
            raise RuntimeError("backend compiler failed\nC++ compile error: ...")
        return fail

    monkeypatch.setattr(compiling, "compiled_forward", broken)
    reference = make_stream(t_index_list=(30,))
    pipe = make_stream(t_index_list=(30,))
    interval = sys.getswitchinterval()
    stream, _ = accelerate(pipe, "compile", background=True, fold_upsampling=False)
    assert stream.upgrade.wait(60)
    assert sys.getswitchinterval() == interval  # restored after a failure too
    frame = random_frames(1, (SIZE, SIZE, 3))[0]
    with caplog.at_level(logging.WARNING, logger="streamdiff.backends"):
        out = stream.img2img(frame, output_type="np")
    assert "compiling in the background failed (RuntimeError: backend compiler failed); staying with none" in caplog.text
    np.testing.assert_array_equal(out, reference.img2img(frame, output_type="np"))
    assert (stream.mode, stream.upgrading) == ("none", False)
    assert not compiling.is_compiled(pipe.components.unet)


def test_a_failed_capture_of_the_compiled_step_goes_back_to_the_uncompiled_modules(make_stream, eager_dynamo,
                                                                                    monkeypatch, caplog):
    """The compilation succeeded, but capturing its step fails (as a CUDA graph capture can): the frame is
    stylized uncompiled, as the stream ran before the switch, and later step counts compile nothing."""
    frames = random_frames(3, (SIZE, SIZE, 3))
    reference = make_stream(t_index_list=(20, 35))
    expected = [reference.img2img(frame, output_type="np") for frame in frames]
    pipe = make_stream(t_index_list=(20, 35))
    capture = graphs.DirectCall.capture

    def refused_when_compiled(step, state):
        if compiling.is_compiled(pipe.components.unet):
            raise RuntimeError("operation not permitted when stream is capturing\nCUDA error ...")
        return capture(step, state)

    monkeypatch.setattr(graphs.DirectCall, "capture", staticmethod(refused_when_compiled))
    stream, _ = accelerate(pipe, "compile", background=True, fold_upsampling=False)
    np.testing.assert_array_equal(stream.img2img(frames[0], output_type="np"), expected[0])
    assert stream.upgrade.wait(300) and stream.upgrade.error is None
    with caplog.at_level(logging.WARNING, logger="streamdiff.backends"):
        for frame, want in zip(frames[1:], expected[1:]):
            np.testing.assert_array_equal(stream.img2img(frame, output_type="np"), want)
    assert (f"capturing the compiled step (img2img of 1 x {SIZE}x{SIZE} uint8 frames) failed (RuntimeError: "
            "operation not permitted when stream is capturing); staying with none") in caplog.text
    assert (stream.mode, stream.upgrading) == ("none", False)
    assert not compiling.is_compiled(pipe.components.unet)
    stream.set_steps(1)
    for frame in frames[:2]:  # the first warms the new count, the second captures its step
        stream.img2img(frame, output_type="np")
    assert (stream.mode, stream.upgrading) == ("none", False)
    assert stream.captured == [f"img2img of 1 x {SIZE}x{SIZE} uint8 frames"]


def test_the_worker_shortens_the_interpreters_switch_interval_while_it_runs(make_stream, eager_dynamo,
                                                                           monkeypatch):
    seen = []
    real = compiling.compiled_forward

    def watched(module, preset="default"):
        seen.append(sys.getswitchinterval())
        return real(module, preset)

    monkeypatch.setattr(compiling, "compiled_forward", watched)
    interval = sys.getswitchinterval()
    stream, _ = accelerate(make_stream(t_index_list=(30,)), "compile", background=True)
    assert stream.upgrade.wait(300) and stream.upgrade.error is None
    assert seen and all(value == pytest.approx(SWITCH_INTERVAL) for value in seen) and SWITCH_INTERVAL < interval
    assert sys.getswitchinterval() == interval


def _free_on_another_thread(lock) -> bool:
    """Whether another thread could take `lock` now."""
    answer = []

    def probe() -> None:
        taken = lock.acquire(blocking=False)
        if taken:
            lock.release()
        answer.append(taken)

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return answer[0]


def test_the_trace_lock_is_held_while_an_fx_tracer_patches_module_calls():
    import torch

    lock = threading.RLock()
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(_free_on_another_thread(lock))  # runs inside the tracer, while it patches Module.__call__
            return x + 1

    with held_while_tracing(lock):
        torch.fx.symbolic_trace(Probe())
        seen.append(_free_on_another_thread(lock))
    torch.fx.symbolic_trace(Probe())
    assert seen == [False, True, True]


def test_a_prompt_change_waits_only_while_the_compiler_traces_not_for_the_compilation(make_stream, monkeypatch,
                                                                                      tmp_path):
    """AOTAutograd traces with FX (unlike the other tests' "eager" backend), patching torch.nn.Module.__call__ for
    the process meanwhile: a text encoder run on this thread then would fail. Prompt and strength changes in a
    loop while the modules compile: some complete before the UNet's compilation (the first) ends, none fails,
    and the stream ends on the last ones."""
    compile_with("aot_eager", monkeypatch, tmp_path)
    frames = random_frames(3, (SIZE, SIZE, 3))
    reference = make_stream(t_index_list=(30,))
    reference.update_prompt("a cat")
    expected = [reference.img2img(frame, output_type="np") for frame in frames]
    stream, _ = accelerate(make_stream(t_index_list=(30,)), "compile", background=True, fold_upsampling=False)
    upgrade = stream.upgrade
    assert list(upgrade.parts)[0] == "unet"
    compiled = counters["stats"]["unique_graphs"]
    while not upgrade.lock.locked() and not upgrade.done.is_set():
        time.sleep(0.001)  # the worker takes the stream's eager lock when it starts compiling: no event for that
    changes = early = 0
    while not upgrade.done.is_set():
        stream.update_prompt("ink wash" if changes % 2 else "a cat")
        stream.set_strength(0.5 if changes % 2 else 0.3)
        changes += 1
        early += counters["stats"]["unique_graphs"] == compiled  # the UNet's compilation has not ended yet
    assert upgrade.error is None and early >= 1, (changes, early)
    stream.update_prompt("a cat")
    stream.set_strength(reference.strength)
    for frame, want in zip(frames, expected):
        np.testing.assert_array_equal(stream.img2img(frame, output_type="np"), want)
    assert stream.mode == "compile"


def test_frames_run_while_the_modules_compile_and_equal_the_engines(make_stream, monkeypatch, tmp_path):
    """Every frame here runs the modules eagerly (no CUDA graphs on the CPU), as the first frame of a restarted
    stream does on a GPU. Frames and prompt changes in a loop while the modules compile with FX tracing
    (aot_eager): some frames complete before the UNet's compilation ends (they used to wait for all of it), the
    compiled code is not traced again after the switch (a frame leaving the conditioning cache's `active()` does
    not switch it off for the worker's trace), and every picture is the eager engine's for the same script."""
    compile_with("aot_eager", monkeypatch, tmp_path)
    frames = random_frames(3, (SIZE, SIZE, 3))
    stream, _ = accelerate(make_stream(t_index_list=(30,)), "compile", background=True, fold_upsampling=False)
    upgrade = stream.upgrade
    assert upgrade.calls["unet"].conditioned  # the worker traces the UNet reading the stored projections
    compiled = counters["stats"]["unique_graphs"]
    while not upgrade.lock.locked() and not upgrade.done.is_set():
        time.sleep(0.001)
    script: list[int | str] = []
    outputs, early = [], 0
    while not upgrade.done.is_set():
        k = len(outputs)
        if k % 3 == 1:
            script.append("ink wash" if k % 2 else "a cat")
            stream.update_prompt(script[-1])
        script.append(k)
        outputs.append(stream.img2img(frames[k % 3], output_type="np"))
        early += counters["stats"]["unique_graphs"] == compiled  # the UNet's compilation has not ended yet
    assert upgrade.error is None and early >= 1, (len(outputs), early)
    traced = counters["stats"]["unique_graphs"]
    for k in range(len(outputs), len(outputs) + 3):
        script.append(k)
        outputs.append(stream.img2img(frames[k % 3], output_type="np"))
    assert stream.mode == "compile" and counters["stats"]["unique_graphs"] == traced
    reference = make_stream(t_index_list=(30,))  # only now: while the worker traces, other modules may not run
    for item in script:
        if isinstance(item, str):
            reference.update_prompt(item)
            continue
        np.testing.assert_array_equal(outputs[item], reference.img2img(frames[item % 3], output_type="np"),
                                      err_msg=f"frame {item}")


SETTINGS = {
    "temporal": lambda stream: stream.set_temporal(feedback=0.3, ema=0.4),
    "seed": lambda stream: stream.set_seed(7),
    "similarity filter": lambda stream: stream.set_similarity_filter(0.9, max_skip=2),
    "reset": lambda stream: stream.reset(),
}


def test_settings_return_while_the_modules_compile_and_apply_at_the_next_frame(make_stream, eager_dynamo,
                                                                             monkeypatch):
    """Settings that only rewrite values the step reads run no module: each returns while the worker holds the
    stream's lock (they used to wait for the whole compilation), and the frames after them are the eager engine's
    with the same settings."""
    gate = gate_compilation(monkeypatch)
    frames = random_frames(len(SETTINGS) + 3, (SIZE, SIZE, 3))
    reference = make_stream(t_index_list=(30,))
    expected = [reference.img2img(frames[0], output_type="np")]
    for k, setting in enumerate(SETTINGS.values(), start=1):
        setting(reference)
        expected.append(reference.img2img(frames[k], output_type="np"))
    expected += [reference.img2img(frame, output_type="np") for frame in frames[len(expected):]]
    stream, _ = accelerate(make_stream(t_index_list=(30,)), "compile", background=True, fold_upsampling=False)
    upgrade = stream.upgrade
    try:
        while not upgrade.lock.locked():
            time.sleep(0.001)
        outputs = [stream.img2img(frames[0], output_type="np")]
        for k, (name, setting) in enumerate(SETTINGS.items(), start=1):
            caller = threading.Thread(target=setting, args=(stream,), daemon=True)
            caller.start()
            caller.join(10)
            assert not caller.is_alive(), f"the {name} setting waited for the compilation"
            outputs.append(stream.img2img(frames[k], output_type="np"))
        assert not upgrade.done.is_set()
    finally:
        gate.set()
    assert upgrade.wait(300) and upgrade.error is None
    outputs += [stream.img2img(frame, output_type="np") for frame in frames[len(outputs):]]
    assert stream.mode == "compile"
    for k, (got, want) in enumerate(zip(outputs, expected, strict=True)):
        np.testing.assert_array_equal(got, want, err_msg=f"frame {k}")


def test_recording_keeps_copies_of_the_first_call_and_compiling_needs_one(make_stream):
    import torch

    module = torch.nn.Linear(3, 2)
    x = torch.ones(4, 3)
    with CallRecorder({"m": module}) as recorder:
        module(x)
        module(torch.zeros(1, 3))
    x.fill_(5.0)
    assert recorder.calls["m"].args[0].tolist() == [[1.0] * 3] * 4
    assert not module._forward_pre_hooks
    with pytest.raises(ValueError, match="no recorded call for m: run a frame while recording first"):
        BackgroundCompile({"m": module}, {}, "default", lock=None, trace_lock=None)


def test_the_camera_app_compiles_in_the_background_unless_told_not_to():
    from streamdiff.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["camera"]).compile_in_background is True
    assert parser.parse_args(["camera", "--no-compile-in-background"]).compile_in_background is False
    assert not parser.parse_args(["video", "in.mp4", "out.mp4", "--prompt", "ink"]).compile_in_background
    assert parser.parse_args(["video", "in.mp4", "out.mp4", "--prompt", "ink", "--compile-in-background"]).compile_in_background
