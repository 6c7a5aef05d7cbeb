"""Depth pictures for a depth ControlNet: the estimator's input against its published image processor, the
stretched output frame by frame, and the stream steered by the estimated depth of each frame."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamdiff import StreamPipeline
from streamdiff.config import StreamConfig
from streamdiff.depth import depth_input, depth_picture, estimator_size
from streamdiff.models.controlnets import random_controlnet
from streamdiff.models.depth_estimators import random_depth_estimator
from streamdiff.stream import Components

# The image processor published with depth-anything/Depth-Anything-V2-Small-hf (its preprocessor_config.json).
PUBLISHED_PROCESSOR = {"do_resize": True, "size": {"height": 518, "width": 518}, "keep_aspect_ratio": True,
                       "ensure_multiple_of": 14, "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255,
                       "do_normalize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
                       "do_pad": False}


def processed(pictures: torch.Tensor, **changes) -> torch.Tensor:
    from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil

    processor = DPTImageProcessorPil(**(PUBLISHED_PROCESSOR | changes))
    frames = [(p.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for p in pictures]
    return processor(images=frames, return_tensors="pt").pixel_values


def scene(size: int, seed: int, frames: int = 1) -> torch.Tensor:
    """Pictures (frames, 3, size, size) in [0, 1] on whole 1/255 steps: a gradient with a bright box in front."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0.1, 0.6, size).view(1, 1, size, 1).expand(frames, 3, size, size).clone()
    for k in range(frames):
        x, y = (int(v) for v in torch.randint(0, size // 2, (2,), generator=g))
        ramp[k, :, y : y + size // 3, x : x + size // 3] = torch.rand(3, 1, 1, generator=g) * 0.3 + 0.7
    return (ramp * 255).round() / 255


@pytest.fixture(scope="module")
def estimator():
    return random_depth_estimator(tiny=True)


def test_the_estimators_input_is_its_published_processors():
    """Whole patches at the frame's own size are normalised exactly as the processor does; at 512 both resize
    to 518 (the processor with PIL, here on the device), equal up to the resampling filters' difference."""
    small = scene(112, 1, frames=2)
    assert estimator_size(112, 112) == (112, 112)
    torch.testing.assert_close(depth_input(small, (112, 112)), processed(small, do_resize=False), rtol=0, atol=1e-5)
    frame = scene(512, 2)
    ours, theirs = depth_input(frame, estimator_size(512, 512)), processed(frame)
    assert ours.shape == theirs.shape == (1, 3, 518, 518)
    assert float((ours - theirs).abs().mean()) < 0.004 and float((ours - theirs).abs().max()) < 0.15
    assert estimator_size(384, 640) == (378, 644) and estimator_size(8, 8) == (14, 14)


def test_the_depth_picture_is_the_estimate_stretched_frame_by_frame(estimator):
    pictures = scene(112, 3, frames=2)
    with torch.no_grad():
        depth = depth_picture(estimator, pictures)
        estimate = estimator(pixel_values=processed(pictures, do_resize=False)).predicted_depth
    assert depth.shape == (2, 3, 112, 112) and torch.equal(depth[:, 0], depth[:, 2])
    low, high = estimate.amin(dim=(1, 2), keepdim=True), estimate.amax(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(depth[:, 0], (estimate - low) / (high - low), rtol=0, atol=1e-4)
    assert torch.equal(depth.amin(dim=(1, 2, 3)), torch.zeros(2)) and torch.allclose(depth.amax(dim=(1, 2, 3)),
                                                                                     torch.ones(2))
    with torch.no_grad():  # each frame alone: the stretch is per frame, not over the call
        torch.testing.assert_close(depth_picture(estimator, pictures[1:]), depth[1:], rtol=0, atol=1e-5)
        assert float((depth[0] - depth[1]).abs().max()) > 0.1


def test_a_frame_of_another_size_gets_a_depth_picture_of_its_own_size(estimator):
    with torch.no_grad():
        depth = depth_picture(estimator, scene(64, 4)[..., :48])
    assert depth.shape == (1, 3, 64, 48) and float(depth.std()) > 0.05


class _Flat(torch.nn.Module):
    """An estimator that sees no depth at all (a blank wall)."""

    def forward(self, pixel_values: torch.Tensor):
        n, _, h, w = pixel_values.shape
        return type("Out", (), {"predicted_depth": torch.full((n, h, w), 3.0)})()


def test_a_flat_estimate_gives_a_black_picture():
    assert torch.equal(depth_picture(_Flat(), scene(28, 5)), torch.zeros(1, 3, 28, 28))


def test_the_stream_is_steered_by_each_frames_estimated_depth(tiny_pipe_factory, estimator):
    from diffusers import StableDiffusionControlNetImg2ImgPipeline

    pipe = tiny_pipe_factory()
    controlnet = random_controlnet(pipe.unet)
    image = scene(64, 6)
    with torch.no_grad():
        control = depth_picture(estimator, image)
    ref = StableDiffusionControlNetImg2ImgPipeline(**tiny_pipe_factory().components, controlnet=controlnet)
    expected = ref("a lighthouse", image=image, control_image=control, strength=1.0, num_inference_steps=1,
                   guidance_scale=1.0, controlnet_conditioning_scale=0.8, generator=torch.Generator().manual_seed(4),
                   output_type="pt").images
    config = StreamConfig(width=64, height=64, device="cpu", seed=4, t_index_list=(0,), control_scale=0.8,
                          control_preprocess="depth")
    stream = StreamPipeline(Components.from_diffusers(pipe, controlnet, estimator), config)
    stream.prepare("a lighthouse")
    torch.testing.assert_close(stream.img2img(image), expected, rtol=1e-4, atol=1e-4)
    assert stream.control is not None
    torch.testing.assert_close(stream.control.images["depth"], control, rtol=0, atol=1e-5)
    itself = StreamPipeline(Components.from_diffusers(tiny_pipe_factory(), controlnet),
                            config.with_changes(control_preprocess="none"))
    itself.prepare("a lighthouse")
    assert float((itself.img2img(image) - expected).abs().max()) > 1e-3  # the depth, not the frame, steered
    stream.set_control_image(scene(64, 7))  # txt2img's picture is estimated too
    with torch.no_grad():
        torch.testing.assert_close(stream.control.images["depth"], depth_picture(estimator, scene(64, 7)))


def test_depth_without_an_estimator_is_refused(tiny_pipe_factory):
    pipe = tiny_pipe_factory()
    config = StreamConfig(width=64, height=64, device="cpu", control_preprocess="depth")
    with pytest.raises(ValueError, match="control_preprocess 'depth' needs a depth estimator"):
        StreamPipeline(Components.from_diffusers(pipe, random_controlnet(pipe.unet)), config)
