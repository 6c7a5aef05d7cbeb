"""IP-Adapter streams on the tiny pipelines with a random-weight adapter: held to diffusers' own pipelines given the
same style picture, with live picture and scale changes equal to streams made with them."""

from __future__ import annotations

import pytest
import torch
from denoisers import RecordingDenoiser

from streamdiff import StreamPipeline, ip_adapter
from streamdiff.backends.torch import TorchDenoiser
from streamdiff.config import StreamConfig
from streamdiff.errors import UserError
from streamdiff.ip_adapter import StylePixels
from streamdiff.models.controlnets import random_controlnet
from streamdiff.models.ip_adapters import load_ip_adapter, locate_ip_adapter
from streamdiff.models.registry import get_spec
from streamdiff.stream import Components

SIZE = 64
PROMPT = "a lighthouse at dusk"
SCALE = 0.7


def picture(seed: int, size: int = SIZE) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def style_picture(seed: int, size: tuple[int, int] = (48, 40)):
    """A PIL picture: diffusers preprocesses only pictures (it hands tensors to the encoder as they are)."""
    from PIL import Image

    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=torch.Generator().manual_seed(seed))
    return Image.fromarray(pixels.to(torch.uint8).numpy())


def with_adapter(pipe):
    load_ip_adapter(pipe, "base", get_spec("tiny"), random_weights=True)
    return pipe


def make(pipe, style=None, controlnet=None, negative: str = "", **settings) -> StreamPipeline:
    settings = {"width": SIZE, "height": SIZE, "device": "cpu", "seed": 4, "t_index_list": (0,),
                "ip_adapter_scale": SCALE, **settings}
    stream = StreamPipeline(Components.from_diffusers(pipe, controlnet or ()), StreamConfig(**settings))
    if style is not None:
        stream.set_style_image(style)
    stream.prepare(PROMPT, negative_prompt=negative)
    return stream


def reference(pipe, image, style, *, sdxl: bool = False, controlnet=None, **call) -> torch.Tensor:
    import diffusers

    kind = "XL" if sdxl else ""
    parts = dict(pipe.components)
    if controlnet is not None:
        parts["controlnet"] = controlnet
        call.update(control_image=image, controlnet_conditioning_scale=1.0)  # its default is 0.8
    name = f"StableDiffusion{kind}{'ControlNet' if controlnet is not None else ''}Img2ImgPipeline"
    ref = getattr(diffusers, name)(**parts)
    ref.set_progress_bar_config(disable=True)
    ref.set_ip_adapter_scale(SCALE)
    return ref(PROMPT, image=image, ip_adapter_image=style, generator=torch.Generator().manual_seed(4),
               output_type="pt", strength=1.0, num_inference_steps=1, **call).images


def with_plus_adapter(pipe):
    """The base adapter with IP-Adapter Plus's projection in place of its own (random, seeded): tokens made from
    the image encoder's penultimate hidden states by a small Perceiver, as `plus` adapters make them."""
    from diffusers.models.embeddings import IPAdapterPlusImageProjection

    pipe = with_adapter(pipe)
    width = pipe.image_encoder.config.hidden_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        plus = IPAdapterPlusImageProjection(embed_dims=width, output_dims=pipe.unet.config.cross_attention_dim,
                                            hidden_dims=64, depth=1, dim_head=16, heads=4, num_queries=4)
    pipe.unet.encoder_hid_proj.image_projection_layers[0] = plus.eval()
    return pipe


@pytest.mark.parametrize("guidance", [1.0, 3.0])
@pytest.mark.parametrize("kind", ["sd", "sdxl", "plus"])  # plus: the SD pipeline with IP-Adapter Plus's projection
def test_a_style_picture_steers_as_in_diffusers_img2img(tiny_pipe_factory, tiny_sdxl_factory, kind, guidance):
    def pipe():
        if kind == "sdxl":
            return with_adapter(tiny_sdxl_factory())
        return (with_plus_adapter if kind == "plus" else with_adapter)(tiny_pipe_factory())

    image, style = picture(1), style_picture(2)
    expected = reference(pipe(), image, style, sdxl=kind == "sdxl", guidance_scale=guidance)
    stream = make(pipe(), style, cfg_type="full", guidance_scale=guidance)
    torch.testing.assert_close(stream.img2img(image), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("batched", [True, False])  # False: steps one by one, no conditioning cache
def test_with_a_controlnet_as_in_diffusers_controlnet_img2img(tiny_pipe_factory, batched):
    image, style = picture(5), style_picture(6)
    controlnet = random_controlnet(tiny_pipe_factory().unet)  # as from_model makes it: before the adapter loads
    pipe = with_adapter(tiny_pipe_factory())
    expected = reference(pipe, image, style, controlnet=controlnet, guidance_scale=1.0)
    stream = make(with_adapter(tiny_pipe_factory()), style, controlnet=controlnet, control_preprocess="none",
                  use_denoising_batch=batched)
    torch.testing.assert_close(stream.img2img(image), expected, rtol=1e-4, atol=1e-4)


def test_without_a_picture_or_at_scale_0_the_stream_draws_as_without_adapter(tiny_pipe_factory):
    image = picture(7)
    plain = make(tiny_pipe_factory()).img2img(image)
    waiting = make(with_adapter(tiny_pipe_factory()))
    assert waiting.has_ip_adapter and not waiting.has_style_image
    torch.testing.assert_close(waiting.img2img(image), plain)
    off = make(with_adapter(tiny_pipe_factory()), style_picture(8), ip_adapter_scale=0.0)
    torch.testing.assert_close(off.img2img(image), plain)
    steered = make(with_adapter(tiny_pipe_factory()), style_picture(8)).img2img(image)
    assert (steered - plain).abs().max() > 1e-3


def test_live_picture_and_scale_changes_equal_streams_made_with_them(tiny_pipe_factory):
    image, first, second = picture(9), style_picture(10), style_picture(11)
    live = make(with_adapter(tiny_pipe_factory()), first, t_index_list=(10, 30))
    live.img2img(image)
    live.set_style_image(second)
    live.set_ip_adapter_scale(1.2)
    made = make(with_adapter(tiny_pipe_factory()), second, t_index_list=(10, 30), ip_adapter_scale=1.2)
    torch.testing.assert_close(live._cond, made._cond)
    torch.testing.assert_close(live._uncond, made._uncond)
    live.reset()
    for _ in range(2):
        torch.testing.assert_close(live.img2img(image), made.img2img(image))
    assert live.ip_adapter_scale == 1.2 and live.config.ip_adapter_scale == 1.2


def test_pixels_prepared_on_another_thread_are_the_picture_given_directly(tiny_pipe_factory):
    from concurrent.futures import ThreadPoolExecutor

    image, style = picture(9), style_picture(10)
    direct = make(with_adapter(tiny_pipe_factory()), style)
    prepared = make(with_adapter(tiny_pipe_factory()))
    with ThreadPoolExecutor(1) as beside:  # as a live app prepares a picture beside its frames
        pixels = beside.submit(prepared.style_pixels, style).result()
    size = prepared.components.image_encoder.config.image_size
    assert isinstance(pixels, StylePixels) and pixels.values.shape == (1, 3, size, size)
    assert not prepared.has_style_image  # preparing changes nothing
    prepared.set_style_image(pixels)
    torch.testing.assert_close(prepared._cond, direct._cond)
    torch.testing.assert_close(prepared.img2img(image), direct.img2img(image))


def test_a_picture_given_during_a_prompt_transition_holds_to_its_end(tiny_pipe_factory):
    image, style = picture(12), style_picture(13)
    moving = make(with_adapter(tiny_pipe_factory()), t_index_list=(10, 30))
    moving.update_prompt("a red balloon", transition_frames=3)
    moving.img2img(image)
    moving.set_style_image(style)
    for _ in range(2):
        moving.img2img(image)
    direct = make(with_adapter(tiny_pipe_factory()), style, t_index_list=(10, 30))
    direct.update_prompt("a red balloon")
    torch.testing.assert_close(moving._cond, direct._cond)


def test_the_image_tokens_follow_the_text_and_precede_sdxls_pooled_token(tiny_sdxl_factory):
    style = style_picture(14)
    stream = make(with_adapter(tiny_sdxl_factory()), style)
    tokens = stream.ip_adapter.tokens
    text = stream.prompts.encode(PROMPT)
    assert stream._cond.shape[1] == text.shape[1] + tokens
    torch.testing.assert_close(stream._cond[:1, :77], text[:, :77])
    torch.testing.assert_close(stream._cond[:1, -1], text[:, -1])  # the pooled token stays last
    torch.testing.assert_close(stream._cond[:1, 77:77 + tokens], stream._style_tokens)
    torch.testing.assert_close(stream._uncond[:1, 77:77 + tokens], stream._no_style_tokens)


@pytest.mark.parametrize("sdxl", [False, True])
def test_the_conditioning_cache_gives_the_same_numbers(tiny_pipe_factory, tiny_sdxl_factory, sdxl):
    pipe = with_adapter(tiny_sdxl_factory() if sdxl else tiny_pipe_factory())
    stream = make(pipe, style_picture(15), ip_adapter_scale=0.9)
    latents, timesteps = torch.randn(2, 4, 8, 8), torch.tensor([999.0, 499.0])
    embeddings = stream._cond[:1].expand(2, -1, -1)
    cached = stream.denoiser
    cached.condition(timesteps, embeddings)
    plain = TorchDenoiser(pipe.unet, cache_conditioning=False)
    plain.ip_adapter_scale = 0.9
    expected = plain(latents, timesteps, embeddings)
    torch.testing.assert_close(cached(latents, timesteps, embeddings), expected)
    attentions = cached.caches[0]._installed[1]  # stored by the call above at the latest (SDXL: it tells the size)
    assert attentions and all(isinstance(a.processor, ip_adapter.ImagePromptAttention) for a, _ in attentions)


@pytest.mark.parametrize("how", ["assigned", "set_backend"])
def test_a_denoiser_handed_to_a_styled_stream_takes_its_scale(tiny_pipe_factory, how):
    """A new denoiser starts at scale 0; `stream.denoiser = d`, as set_backend(denoiser=d), hands it the scale
    in use, so the picture keeps steering."""
    image, style = picture(18), style_picture(19)
    made = make(with_adapter(tiny_pipe_factory()), style, t_index_list=(10, 30))
    pipe = with_adapter(tiny_pipe_factory())
    later = make(pipe, style, t_index_list=(10, 30))
    new = RecordingDenoiser(pipe.unet)
    if how == "assigned":
        later.denoiser = new
    else:
        later.set_backend(denoiser=new)
    assert new.ip_adapter_scale == SCALE
    for _ in range(2):
        torch.testing.assert_close(later.img2img(image), made.img2img(image))
    assert new.log == ["condition", "call", "call"]


def test_streams_sharing_a_unet_each_keep_their_scale(tiny_pipe_factory):
    image, style = picture(16), style_picture(17)
    pipe = with_adapter(tiny_pipe_factory())
    strong = make(pipe, style, ip_adapter_scale=1.5)
    weak = make(pipe, style, ip_adapter_scale=0.2)
    alone = make(with_adapter(tiny_pipe_factory()), style, ip_adapter_scale=1.5)
    weak.img2img(image)
    torch.testing.assert_close(strong.img2img(image), alone.img2img(image))


def test_refusals(tiny_pipe):
    stream = make(tiny_pipe)
    with pytest.raises(ValueError, match="no IP-Adapter"):
        stream.set_style_image(style_picture(1))
    with pytest.raises(ValueError, match="no IP-Adapter"):
        stream.style_pixels(style_picture(1))
    with pytest.raises(ValueError, match="ip_adapter_scale must be a number in"):
        StreamConfig(ip_adapter_scale=6.0)
    with pytest.raises(UserError, match="no base IP-Adapter is published for sd21"):
        locate_ip_adapter("base", "sd21")
    with pytest.raises(UserError, match="random weights build the base IP-Adapter only"):
        locate_ip_adapter("plus", "sd15", random_weights=True)
    with pytest.raises(UserError, match="unknown IP-Adapter 'styled'"):
        locate_ip_adapter("styled", "sd15")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        locate_ip_adapter("/nowhere/ip-adapter.safetensors", "sd15")


def test_a_bad_style_picture_is_named(tiny_pipe_factory, tmp_path):
    stream = make(with_adapter(tiny_pipe_factory()))
    with pytest.raises(FileNotFoundError, match="style picture not found"):
        stream.set_style_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="expected one style picture"):
        stream.set_style_image(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"expected style pixels of shape \(1, 3, \d+, \d+\) for this image encoder"):
        stream.set_style_image(StylePixels(torch.zeros(1, 3, 7, 7)))
    assert not stream.has_style_image
