"""A ControlNet steering the stream, on tiny random components: against diffusers' ControlNet img2img pipeline,
the scale, the slots of the stream batch, txt2img's control picture and the settings' checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamdiff import StreamPipeline
from streamdiff.config import StreamConfig
from streamdiff.edges import canny_edges
from streamdiff.models.controlnets import random_controlnet
from streamdiff.stream import Components

SIZE = 64
PROMPT = "a lighthouse at dusk"


def make(pipe, controlnet=None, **settings) -> StreamPipeline:
    settings = {"width": SIZE, "height": SIZE, "device": "cpu", "seed": 4, **settings}
    stream = StreamPipeline(Components.from_diffusers(pipe, controlnet), StreamConfig(**settings))
    stream.prepare(PROMPT, negative_prompt="fog")
    return stream


def picture(seed: int) -> torch.Tensor:
    """A (1, 3, 64, 64) picture in [0, 1] with shapes in it, so that it has edges."""
    g = torch.Generator().manual_seed(seed)
    image = torch.full((1, 3, SIZE, SIZE), 0.2) + 0.05 * torch.rand(1, 3, SIZE, SIZE, generator=g)
    x, y, size = (int(v) for v in torch.randint(4, 28, (3,), generator=g))
    image[:, :, y : y + size + 8, x : x + size + 8] = torch.rand(3, 1, 1, generator=g)
    return image


@pytest.fixture
def controlnet(tiny_pipe):
    return random_controlnet(tiny_pipe.unet)


@pytest.mark.parametrize("preprocess", ["none", "canny"])
def test_one_step_equals_diffusers_controlnet_img2img(tiny_pipe_factory, controlnet, preprocess):
    from diffusers import StableDiffusionControlNetImg2ImgPipeline

    image = picture(1)
    control = image if preprocess == "none" else canny_edges(image, 60.0, 120.0)
    assert preprocess == "none" or 0.01 < float(control.mean()) < 0.5  # the picture has edges, not noise
    ref = StableDiffusionControlNetImg2ImgPipeline(**tiny_pipe_factory().components, controlnet=controlnet)
    expected = ref(PROMPT, image=image, control_image=control, strength=1.0, num_inference_steps=1,
                   guidance_scale=1.0, controlnet_conditioning_scale=0.7, generator=torch.Generator().manual_seed(4),
                   output_type="pt").images
    stream = make(tiny_pipe_factory(), controlnet, t_index_list=(0,), control_scale=0.7,
                  control_preprocess=preprocess, canny_thresholds=(60.0, 120.0))
    torch.testing.assert_close(stream.img2img(image), expected, rtol=1e-4, atol=1e-4)
    plain = make(tiny_pipe_factory(), t_index_list=(0,))
    assert float((plain.img2img(image) - expected).abs().max()) > 1e-3  # the ControlNet did steer


def test_scale_zero_is_the_stream_without_controlnet_and_changes_live(tiny_pipe_factory, controlnet):
    image = picture(2)
    steered = make(tiny_pipe_factory(), controlnet, t_index_list=(20,))
    plain = make(tiny_pipe_factory(), t_index_list=(20,))
    full = steered.img2img(image)
    steered.set_control_scale(0.0)
    assert steered.config.control_scale == 0.0
    torch.testing.assert_close(steered.img2img(image), plain.img2img(image))
    steered.set_control_scale(1.0)
    torch.testing.assert_close(steered.img2img(image), full)
    with pytest.raises(ValueError, match=r"control_scale must be in \[0, 5\]; got -1"):
        steered.set_control_scale(-1.0)
    assert steered.config.control_scale == 1.0
    with pytest.raises(ValueError, match="has no ControlNet"):
        plain.set_control_scale(0.5)


def test_each_frame_of_a_call_is_steered_by_its_own_control_picture(tiny_pipe_factory, controlnet):
    """frame_buffer_size 2 with shared noise: each output equals its frame streamed alone (sample i takes
    control picture i % F, also when full guidance doubles the batch)."""
    settings = {"t_index_list": (25,), "cfg_type": "full", "guidance_scale": 1.5, "control_preprocess": "none"}
    first, second = picture(3), picture(4)
    pair = make(tiny_pipe_factory(), controlnet, frame_buffer_size=2, shared_noise=True, **settings)
    outs = pair.img2img(torch.cat([first, second]))
    for k, frame in enumerate((first, second)):
        alone = make(tiny_pipe_factory(), controlnet, **settings)
        torch.testing.assert_close(outs[k : k + 1], alone.img2img(frame), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cfg", ["none", "self", "initialize"])
def test_stream_batch_steers_every_slot_with_the_newest_frame(tiny_pipe_factory, controlnet, cfg):
    """With a still input the stream batch equals steps run one by one; with a moving one the frames in flight
    follow the newest control picture, so the output differs from the step-by-step run."""
    settings = {"t_index_list": (15, 30, 45), "cfg_type": cfg, "guidance_scale": 1.5, "canny_thresholds": (20, 60)}
    still = picture(5)
    edges = [canny_edges(picture(seed), 20.0, 60.0) for seed in (5, 6, 7)]
    assert all(0.01 < float(e.mean()) < 0.5 for e in edges) and float((edges[0] - edges[1]).abs().max()) == 1
    batched = make(tiny_pipe_factory(), controlnet, **settings)
    sequential = make(tiny_pipe_factory(), controlnet, use_denoising_batch=False, **settings)
    outs = [batched.img2img(still) for _ in range(4)]
    torch.testing.assert_close(outs[-1], sequential.img2img(still), rtol=1e-5, atol=1e-5)
    moving = make(tiny_pipe_factory(), controlnet, **settings)
    for seed in (6, 7):
        moving.img2img(picture(seed))
    late = moving.img2img(still)  # frame 6 leaves now, steered in its last steps by the still frame's edges
    by_steps = make(tiny_pipe_factory(), controlnet, use_denoising_batch=False, **settings).img2img(picture(6))
    assert float((late - by_steps).abs().max()) > 1e-4


def test_txt2img_takes_the_control_picture_it_is_given(tiny_pipe_factory, controlnet):
    stream = make(tiny_pipe_factory(), controlnet, t_index_list=(0,))
    blank = stream.txt2img(output_type="pt")  # no picture yet: black, no edges (a live page may start so)
    stream.set_control_image(torch.zeros(1, 3, SIZE, SIZE))
    torch.testing.assert_close(stream.txt2img(output_type="pt"), blank)
    stream.set_control_image(picture(8))
    a = stream.txt2img(output_type="pt")
    stream.set_control_image((picture(9)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    b = stream.txt2img(output_type="pt")
    assert a.shape == (1, 3, SIZE, SIZE) and float((a - b).abs().max()) > 1e-3
    stream.set_control_image(picture(8))
    torch.testing.assert_close(stream.txt2img(output_type="pt"), a)


def test_a_diffusers_controlnet_pipeline_brings_its_controlnet(tiny_pipe_factory, controlnet):
    from diffusers import StableDiffusionControlNetPipeline

    pipe = StableDiffusionControlNetPipeline(**tiny_pipe_factory().components, controlnet=controlnet)
    stream = StreamPipeline.from_diffusers(pipe, width=SIZE, height=SIZE, device="cpu")
    assert stream.control is not None and stream.control.controlnets == (controlnet,)
    with pytest.raises(ValueError, match=r"expected diffusers ControlNetModel\(s\); got Linear"):
        Components.from_diffusers(tiny_pipe_factory(), torch.nn.Linear(2, 2))


@pytest.mark.parametrize("settings,message", [
    ({"control_scale": 6.0}, r"control_scale must be in \[0, 5\]; got 6.0"),
    ({"control_preprocess": "midas"}, "control_preprocess must be one of canny, depth, none; got 'midas'"),
    ({"canny_thresholds": (200, 100)}, r"canny_thresholds must be two numbers with 0 <= low <= high; got \(200, 100\)"),
    ({"canny_thresholds": (1,)}, "canny_thresholds must be two numbers"),
])
def test_control_settings_are_checked(settings, message):
    with pytest.raises(ValueError, match=message):
        StreamConfig(**settings)
