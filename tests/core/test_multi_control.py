"""Several ControlNets steering one stream, on tiny random components: against diffusers' MultiControlNetModel,
each one's live scale, shared control pictures, loading by name and the checks of their settings."""

from __future__ import annotations

import pytest
import torch
from test_control import SIZE, picture

from streamdiff import StreamPipeline
from streamdiff.config import StreamConfig
from streamdiff.edges import canny_edges
from streamdiff.models.controlnets import random_controlnet
from streamdiff.stream import Components

PROMPT = "a harbour in fog"


def make(pipe, controlnets=(), **settings) -> StreamPipeline:
    settings = {"width": SIZE, "height": SIZE, "device": "cpu", "seed": 4, **settings}
    stream = StreamPipeline(Components.from_diffusers(pipe, controlnets), StreamConfig(**settings))
    stream.prepare(PROMPT)
    return stream


@pytest.fixture
def nets(tiny_pipe):
    """Two ControlNets of the tiny UNet's architecture with different random weights."""
    return [random_controlnet(tiny_pipe.unet, seed) for seed in (1, 2)]


def test_two_controlnets_equal_diffusers_multicontrolnet_img2img(tiny_pipe_factory, nets):
    from diffusers import StableDiffusionControlNetImg2ImgPipeline

    image = picture(1)
    edges = canny_edges(image, 60.0, 120.0)
    assert 0.01 < float(edges.mean()) < 0.5
    ref = StableDiffusionControlNetImg2ImgPipeline(**tiny_pipe_factory().components, controlnet=list(nets))
    expected = ref(PROMPT, image=image, control_image=[edges, image], strength=1.0, num_inference_steps=1,
                   guidance_scale=1.0, controlnet_conditioning_scale=[0.7, 0.4],
                   generator=torch.Generator().manual_seed(4), output_type="pt").images
    stream = make(tiny_pipe_factory(), nets, t_index_list=(0,), control_scale=(0.7, 0.4),
                  control_preprocess=("canny", "none"), canny_thresholds=(60.0, 120.0))
    torch.testing.assert_close(stream.img2img(image), expected, rtol=1e-4, atol=1e-4)
    first_alone = make(tiny_pipe_factory(), nets[:1], t_index_list=(0,), control_scale=0.7, control_preprocess="canny",
                       canny_thresholds=(60.0, 120.0))
    assert float((first_alone.img2img(image) - expected).abs().max()) > 1e-3  # the second one did steer too


def test_each_controlnets_scale_changes_live_on_its_own(tiny_pipe_factory, nets):
    settings = {"t_index_list": (20, 35), "control_preprocess": ("canny", "none"), "canny_thresholds": (40, 90)}
    image = picture(2)
    both = make(tiny_pipe_factory(), nets, control_scale=(0.8, 0.5), **settings)
    assert both.control_scales == (0.8, 0.5) and both.control_names == ("controlnet 1", "controlnet 2")
    edges_alone = make(tiny_pipe_factory(), nets[:1], control_scale=0.8, control_preprocess="canny",
                       canny_thresholds=(40, 90), t_index_list=(20, 35))
    plain = make(tiny_pipe_factory(), t_index_list=(20, 35))
    def second(stream: StreamPipeline):  # with two steps, the first output that entered after a change
        return [stream.img2img(image) for _ in range(2)][-1]

    steered = second(both)
    both.set_control_scale(0.0, index=1)
    assert both.control_scales == (0.8, 0.0) and both.config.control_scale == (0.8, 0.0)
    torch.testing.assert_close(second(both), second(edges_alone))
    both.set_control_scale(0.0)  # every one: the stream without ControlNets
    assert both.control_scales == (0.0, 0.0)
    torch.testing.assert_close(second(both), second(plain))
    both.set_control_scale(0.8, index=0)
    both.set_control_scale(0.5, index=1)
    torch.testing.assert_close(second(both), steered)


@pytest.mark.parametrize("index,scale,message", [
    (2, 0.5, r"expected a ControlNet index in \[0, 1\] \(controlnet 1, controlnet 2\); got 2"),
    (-1, 0.5, r"got -1"),
    (True, 0.5, r"got True"),
    (0, 6.0, r"control_scale must be in \[0, 5\]"),
])
def test_a_bad_index_or_scale_is_refused_and_changes_nothing(tiny_pipe_factory, nets, index, scale, message):
    stream = make(tiny_pipe_factory(), nets, control_scale=(0.8, 0.5), control_preprocess="none")
    with pytest.raises(ValueError, match=message):
        stream.set_control_scale(scale, index=index)
    assert stream.control_scales == (0.8, 0.5)
    assert stream.control is not None and stream.control.scales.tolist() == pytest.approx([0.8, 0.5])


def test_controlnets_reading_the_same_kind_of_picture_share_it(tiny_pipe_factory, nets):
    shared = make(tiny_pipe_factory(), nets, control_preprocess="canny")
    own = make(tiny_pipe_factory(), nets, control_preprocess=("canny", "none"))
    assert shared.control is not None and list(shared.control.images) == ["canny"]
    assert own.control is not None and list(own.control.images) == ["canny", "none"]
    shared.img2img(picture(3))
    edges = canny_edges(picture(3), 100.0, 200.0)
    torch.testing.assert_close(shared.control.images["canny"], edges)


def test_txt2img_steers_every_controlnet_with_the_picture_it_is_given(tiny_pipe_factory, nets):
    settings = {"t_index_list": (0,), "control_preprocess": ("canny", "none"), "canny_thresholds": (60.0, 120.0)}
    stream = make(tiny_pipe_factory(), nets, control_scale=(0.9, 0.6), **settings)
    stream.set_control_image(picture(5))
    both = stream.txt2img(output_type="pt")
    torch.testing.assert_close(stream.control.images["none"], picture(5))
    torch.testing.assert_close(stream.control.images["canny"], canny_edges(picture(5), 60.0, 120.0))
    stream.set_control_scale(0.0, index=1)
    without_second = stream.txt2img(output_type="pt")
    assert float((both - without_second).abs().max()) > 1e-3
    first_alone = make(tiny_pipe_factory(), nets, control_scale=(0.9, 0.0), **settings)
    first_alone.set_control_image(picture(5))
    torch.testing.assert_close(first_alone.txt2img(output_type="pt"), without_second)


def test_txt2img_takes_a_picture_per_controlnet(tiny_pipe_factory, nets):
    """A sketch's edges for the first ControlNet and another picture itself for the second: each reads its own,
    and the result is the stream given both pictures in one call where they happen to be the same."""
    settings = {"t_index_list": (0,), "control_preprocess": ("canny", "none"), "canny_thresholds": (60.0, 120.0)}
    stream = make(tiny_pipe_factory(), nets, **settings)
    stream.set_control_image(picture(5), index=0)
    stream.set_control_image(picture(6), index=1)
    torch.testing.assert_close(stream.control.images["canny"], canny_edges(picture(5), 60.0, 120.0))
    torch.testing.assert_close(stream.control.images["none"], picture(6))
    apart = stream.txt2img(output_type="pt")
    stream.set_control_image(picture(6), index=0)
    same = make(tiny_pipe_factory(), nets, **settings)
    same.set_control_image(picture(6))
    torch.testing.assert_close(stream.txt2img(output_type="pt"), same.txt2img(output_type="pt"))
    assert float((apart - same.txt2img(output_type="pt")).abs().max()) > 1e-3
    with pytest.raises(ValueError, match=r"expected a ControlNet index in \[0, 1\]"):
        stream.set_control_image(picture(7), index=2)
    torch.testing.assert_close(stream.control.images["none"], picture(6))  # the refused call changed nothing


def test_a_diffusers_multicontrolnet_pipeline_brings_every_controlnet(tiny_pipe_factory, nets):
    from diffusers import StableDiffusionControlNetPipeline

    pipe = StableDiffusionControlNetPipeline(**tiny_pipe_factory().components, controlnet=list(nets))
    stream = StreamPipeline.from_diffusers(pipe, width=SIZE, height=SIZE, device="cpu", control_scale=(1.0, 0.5),
                                           control_preprocess="none")
    assert stream.control is not None and stream.control.controlnets == tuple(nets)


def test_from_model_loads_several_by_name_with_one_depth_estimator():
    stream = StreamPipeline.from_model("tiny", controlnet=["canny", "depth"], device="cpu", control_scale=(1.0, 0.5))
    assert stream.control_names == ("canny", "depth") and stream.control_scales == (1.0, 0.5)
    assert stream.config.control_preprocess == ("canny", "depth")
    first, second = stream.components.controlnets
    assert stream.components.depth_estimator is not None
    assert not torch.equal(first.controlnet_mid_block.weight, second.controlnet_mid_block.weight)
    stream.prepare("a street")
    assert stream.img2img(picture(6), output_type="pt").shape == (1, 3, stream.config.height, stream.config.width)


@pytest.mark.parametrize("controlnet,settings,message", [
    (["canny", "canny"], {}, "ControlNet 'canny' is given twice"),
    (["canny", "depth"], {"control_scale": (1.0, 0.5, 0.2)}, "control_scale gives 3 values for 2 ControlNet"),
    (["canny", "depth"], {"control_preprocess": ("canny",)}, "control_preprocess gives 1 values for 2 ControlNet"),
])
def test_from_model_refuses_what_does_not_fit_before_loading(controlnet, settings, message):
    with pytest.raises(Exception, match=message):
        StreamPipeline.from_model("tiny", controlnet=controlnet, device="cpu", **settings)


@pytest.mark.parametrize("settings,message", [
    ({"control_scale": (0.5, 6.0)}, r"control_scale must be in \[0, 5\]; got \(0.5, 6.0\)"),
    ({"control_scale": ()}, "control_scale must be one value or a non-empty sequence"),
    ({"control_scale": ("a",)}, "control_scale must be in"),
    ({"control_preprocess": ("canny", "midas")}, "control_preprocess must be one of canny, depth, none"),
])
def test_per_controlnet_settings_are_checked(settings, message):
    with pytest.raises(ValueError, match=message):
        StreamConfig(**settings)


def test_per_controlnet_settings_are_kept_as_tuples_and_spread():
    config = StreamConfig(control_scale=[1, 0.5], control_preprocess=["canny", "none"])
    assert config.control_scale == (1.0, 0.5) and config.control_preprocess == ("canny", "none")
    assert config.control_scales(2) == (1.0, 0.5) and StreamConfig(control_scale=0.3).control_scales(3) == (0.3,) * 3
    with pytest.raises(ValueError, match="control_scale gives 2 values for 3 ControlNet"):
        config.control_scales(3)
