"""The accelerated runner computes exactly what the engine computes (CPU, float32: bit for bit).

The runner here replays each captured step by calling it again on its static buffers (DirectCall),
as it does on devices without CUDA graphs; the GPU tests compare real CUDA graphs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_frames

from streamdiff.backends.graphs import DirectCall
from streamdiff.backends.runner import AcceleratedStream

CASES = [
    {"t_index_list": (32, 45)},
    {"t_index_list": (10, 25, 40), "cfg_type": "initialize", "guidance_scale": 1.4, "feedback": 0.3, "ema": 0.4},
    {"t_index_list": (0,), "cfg_type": "full", "guidance_scale": 1.5, "frame_buffer_size": 2},
    {"t_index_list": (20, 40), "use_denoising_batch": False, "cfg_type": "self", "guidance_scale": 1.3},
]


def _pair(make_stream, **settings):
    eager, fast = make_stream(**settings), make_stream(**settings)
    return eager, AcceleratedStream(fast, DirectCall.capture, mode="direct")


@pytest.mark.parametrize("settings", CASES, ids=["lcm-2", "initialize-feedback-ema", "full-fbs2", "sequential-self"])
def test_img2img_flush_and_txt2img_equal_the_engine(make_stream, settings):
    eager, fast = _pair(make_stream, **settings)
    f = eager.config.frame_buffer_size
    shape = (f, 64, 64, 3) if f > 1 else (64, 64, 3)
    for k, frame in enumerate(random_frames(6, shape)):
        if k == 3:  # a prompt transition runs outside the captured step
            for stream in (eager, fast):
                stream.update_prompt("a cat", transition_frames=2)
        np.testing.assert_array_equal(fast.img2img(frame), eager.img2img(frame), err_msg=f"frame {k}")
    assert fast.captured == [f"img2img of {f} x 64x64 uint8 frames"]
    for a, b in zip(fast.flush(), eager.flush(), strict=True):
        np.testing.assert_array_equal(a, b)
    for _ in range(3):
        np.testing.assert_array_equal(fast.txt2img("np"), eager.txt2img("np"))
    assert fast.stats == eager.stats


def test_live_controls_between_replays_take_effect(make_stream):
    eager, fast = _pair(make_stream, t_index_list=(20, 40))
    frames = random_frames(8, (64, 64, 3), seed=1)
    for k, frame in enumerate(frames):
        if k == 3:
            for stream in (eager, fast):
                stream.set_temporal(feedback=0.5, ema=0.3)
        if k == 5:
            for stream in (eager, fast):
                stream.set_seed(11)
        if k == 6:
            for stream in (eager, fast):
                stream.reset()
        np.testing.assert_array_equal(fast.img2img(frame), eager.img2img(frame), err_msg=f"frame {k}")


@pytest.mark.parametrize("settings", [{"t_index_list": (0,)},
                                      {"t_index_list": (10, 30), "cfg_type": "self", "guidance_scale": 1.4,
                                       "feedback": 0.3}], ids=["1-step", "2-step-self"])
def test_strength_changes_between_replays_keep_the_captured_step(make_stream, settings):
    """The schedule's tensors change in place: the step captured before reads the new strength."""
    eager, fast = _pair(make_stream, **settings)
    for k, frame in enumerate(random_frames(9, (64, 64, 3), seed=2)):
        if k == 3:
            for stream in (eager, fast):
                stream.set_strength(0.55)
        if k == 6:
            for stream in (eager, fast):
                stream.set_t_index_list(eager.config.t_index_list[:-1] + (47,))
        np.testing.assert_array_equal(fast.img2img(frame), eager.img2img(frame), err_msg=f"frame {k}")
    assert fast.captured == ["img2img of 1 x 64x64 uint8 frames"]
    assert fast.config.t_index_list == eager.config.t_index_list != settings["t_index_list"]


def test_float_tensor_and_pil_inputs_keep_their_kinds(make_stream):
    from PIL import Image

    eager, fast = _pair(make_stream, t_index_list=(30,))
    for frame in random_frames(4, (64, 64, 3), seed=2):
        tensor = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255.0
        out_fast, out_eager = fast.img2img(tensor), eager.img2img(tensor)
        assert out_fast.dtype == torch.float32
        torch.testing.assert_close(out_fast, out_eager, rtol=0, atol=0)
        # A PIL picture takes the uint8 path. The engine lays PIL pixels out channel-first (numpy ones
        # channel-last), and its convolutions round a little differently for the two layouts: one level.
        pil_fast, pil_eager = fast.img2img(Image.fromarray(frame)), eager.img2img(Image.fromarray(frame))
        assert isinstance(pil_fast, Image.Image)
        difference = np.abs(np.asarray(pil_fast).astype(int) - np.asarray(pil_eager).astype(int))
        assert difference.max() <= 1 and difference.mean() < 0.01
    assert sorted(fast.captured) == ["img2img of 1 x 64x64 float frames", "img2img of 1 x 64x64 uint8 frames"]


def test_returned_frames_do_not_change_with_later_frames(make_stream):
    _, fast = _pair(make_stream, t_index_list=(30,))
    frames = random_frames(4, (64, 64, 3), seed=3)
    kept = [fast.img2img(frame) for frame in frames[:3]]
    copies = [k.copy() for k in kept]
    pt = fast.img2img(torch.rand(1, 3, 64, 64))
    pt_copy = pt.clone()
    fast.img2img(frames[3])
    fast.img2img(torch.rand(1, 3, 64, 64))
    for a, b in zip(kept, copies):
        np.testing.assert_array_equal(a, b)
    torch.testing.assert_close(pt, pt_copy, rtol=0, atol=0)


@pytest.mark.parametrize("preprocess", ["canny", "depth", ("canny", "depth")])
def test_controlnet_replays_make_each_frames_control_picture(_tiny_cache, preprocess):
    """A replayed step computes the new frame's Canny edges or estimated depth itself: a step that kept the
    control picture of its capture would drift from the engine here. (That a replay reads a changed scale
    needs real CUDA graphs: the GPU tests check it.)"""
    import copy

    from streamdiff import StreamPipeline
    from streamdiff.config import StreamConfig
    from streamdiff.models.controlnets import random_controlnet
    from streamdiff.models.depth_estimators import random_depth_estimator
    from streamdiff.stream import Components

    def make() -> StreamPipeline:
        pipe = copy.deepcopy(_tiny_cache["taesd"])
        config = StreamConfig(device="cpu", seed=3, width=64, height=64, t_index_list=(20, 40),
                              canny_thresholds=(40, 120), control_preprocess=preprocess)
        estimator = random_depth_estimator(tiny=True) if "depth" in preprocess else None
        count = 1 if isinstance(preprocess, str) else len(preprocess)
        nets = [random_controlnet(pipe.unet, seed) for seed in range(1, count + 1)]
        stream = StreamPipeline(Components.from_diffusers(pipe, nets, estimator), config)
        stream.prepare("a red fox")
        return stream

    eager, fast = make(), AcceleratedStream(make(), DirectCall.capture, mode="direct")
    for k, frame in enumerate(random_frames(7, (64, 64, 3), seed=2)):
        if k == 4:
            for stream in (eager, fast):
                stream.set_control_scale(0.3)
        if k == 5 and not isinstance(preprocess, str):
            for stream in (eager, fast):
                stream.set_control_scale(1.4, index=1)
        np.testing.assert_array_equal(fast.img2img(frame), eager.img2img(frame), err_msg=f"frame {k}")
    assert len(fast.captured) == 1
