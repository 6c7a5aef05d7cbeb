"""The baselines and the stage breakdown against the stream itself, on the tiny SD and SDXL models on the CPU: the
diffusers baseline makes the stream's picture where their schedules agree, and the unet stage replays the UNet
call the step makes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamdiff.bench.baselines import diffusers_call
from streamdiff.bench.clips import make_clip
from streamdiff.bench.run import BenchOptions, ModelPool, prepared_stream
from streamdiff.bench.scenario import Scenario
from streamdiff.bench.stages import record_inputs, stage_call, stage_times
from streamdiff.config import StreamConfig
from streamdiff.stream import StreamPipeline

SIZE = 32
PROMPT = "a watercolor painting of a lighthouse at dusk"
CPU = torch.device("cpu")


def _pool() -> ModelPool:
    return ModelPool(BenchOptions(device="cpu", random_weights=True), CPU, torch.float32)


def _frame() -> np.ndarray:
    return make_clip("moving", 1, SIZE, SIZE)[0]


@pytest.mark.parametrize("model, task, controlnet, preprocess", [
    ("tiny", "img2img", None, None),
    ("tiny-sdxl", "img2img", None, None),
    ("tiny-sdxl", "txt2img", None, None),
    ("tiny-sdxl", "img2img", "canny", None),
    ("tiny-sdxl", "txt2img", "canny", None),
    pytest.param("tiny-sdxl", "img2img", ("canny", "depth"), ("canny", "none"), id="tiny-sdxl-img2img-canny+depth"),
])
def test_the_diffusers_baseline_makes_the_streams_picture_where_their_schedules_agree(model, task, controlnet,
                                                                                    preprocess):
    """One step of the baseline (img2img: 2 steps at strength 0.5, so LCM's timestep 499 of [999, 499]; txt2img:
    999) against the stream at the same timestep (index 25 or 0 of the 50-step schedule), with its seed."""
    entry = _pool().get(model, True, pristine=True, controlnet=controlnet, control_preprocess=preprocess)
    control = {"control_preprocess": entry.control_preprocess} if controlnet else {}
    config = StreamConfig(width=SIZE, height=SIZE, t_index_list=(25,) if task == "img2img" else (0,), seed=2,
                          device="cpu", **control)
    frame = _frame()
    expected = np.asarray(diffusers_call(entry.components, config, PROMPT, task)(frame)[0]).astype(np.int16)
    stream = StreamPipeline(entry.components, config, lcm_boundary=entry.spec.lcm_boundary,
                            control_names=entry.control_names)
    stream.prepare(PROMPT)
    got = stream.img2img(frame, output_type="np") if task == "img2img" else stream.txt2img(output_type="np")
    assert got.shape == expected.shape and expected.std() > 5  # a picture, not a flat field
    assert int(np.abs(got.astype(np.int16) - expected).max()) <= 1  # uint8 rounding of equal float pictures


def _compare_calls(replayed: tuple[tuple, dict], recorded: tuple[tuple, dict]) -> None:
    """The same positional and keyword inputs (tensors equal in shape and value)."""
    (args, kwargs), (expected_args, expected_kwargs) = replayed, recorded
    assert set(kwargs) == set(expected_kwargs)
    torch.testing.assert_close(list(args), list(expected_args), rtol=0, atol=0)
    for name, value in expected_kwargs.items():
        if value is None or isinstance(value, bool):
            assert kwargs[name] == value, name
        else:
            torch.testing.assert_close(kwargs[name], value, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("model, controlnet", [("tiny", None), ("tiny-sdxl", None), ("tiny-sdxl", "canny")])
def test_the_unet_stage_replays_the_unet_call_the_step_makes(model, controlnet):
    entry = _pool().get(model, True, pristine=True, controlnet=controlnet)
    pipe = prepared_stream(Scenario(model=model, resolution=SIZE, controlnet=controlnet), entry, CPU,
                           BenchOptions(device="cpu"))
    unet = pipe.components.unet
    (step,) = record_inputs(pipe, _frame(), {"unet": unet})["unet"]
    assert ("added_cond_kwargs" in step[1]) == (model == "tiny-sdxl")  # SDXL's pooled text and size numbers
    replays: list[tuple[tuple, dict]] = []
    handle = unet.register_forward_pre_hook(lambda _m, args, kwargs: replays.append((args, kwargs)), with_kwargs=True)
    try:
        with torch.no_grad():
            stage_call(pipe, "unet", unet, *step)()
    finally:
        handle.remove()
    assert len(replays) == 1
    _compare_calls(replays[0], step)


def test_every_stage_of_a_tiny_sdxl_step_is_timed():
    entry = _pool().get("tiny-sdxl", True, pristine=True)
    pipe = prepared_stream(Scenario(model="tiny-sdxl", resolution=SIZE), entry, CPU, BenchOptions(device="cpu"))
    times = stage_times(pipe, _frame(), graphs=False, repeats=1)
    assert set(times) == {"upload", "preprocess", "encode", "unet", "decode", "postprocess", "download"}
    assert all(np.isfinite(t) and t >= 0 for t in times.values()) and times["unet"] > 0
