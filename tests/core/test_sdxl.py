"""SDXL streams on the tiny random-weight SDXL pipeline: held to diffusers' own SDXL pipelines on the same weights,
with the pooled text embedding and the size numbers reaching the UNet (and its ControlNets)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from streamdiff import StreamPipeline, added_conditions
from streamdiff.backends.torch import TorchDenoiser
from streamdiff.config import StreamConfig
from streamdiff.models.controlnets import random_controlnet
from streamdiff.stream import Components

SIZE = 64
PROMPT = "a lighthouse at dusk"


def make(pipe, controlnet=None, negative: str = "", **settings) -> StreamPipeline:
    settings = {"width": SIZE, "height": SIZE, "device": "cpu", "seed": 4, **settings}
    stream = StreamPipeline(Components.from_diffusers(pipe, controlnet or ()), StreamConfig(**settings))
    stream.prepare(PROMPT, negative_prompt=negative)
    return stream


def picture(seed: int) -> torch.Tensor:
    return torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def reference(pipe, image: torch.Tensor, **call) -> torch.Tensor:
    from diffusers import StableDiffusionXLImg2ImgPipeline

    ref = StableDiffusionXLImg2ImgPipeline(**pipe.components)
    ref.set_progress_bar_config(disable=True)
    return ref(PROMPT, image=image, generator=torch.Generator().manual_seed(4), output_type="pt", **call).images


@pytest.mark.parametrize(("strength", "steps", "t_index"), [(1.0, 1, (0,)), (0.5, 2, (25,))])
def test_img2img_equals_diffusers_sdxl_img2img(tiny_sdxl_factory, strength, steps, t_index):
    image = picture(9)
    expected = reference(tiny_sdxl_factory(), image, strength=strength, num_inference_steps=steps,
                         guidance_scale=1.0)
    stream = make(tiny_sdxl_factory(), t_index_list=t_index)
    torch.testing.assert_close(stream.img2img(image), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("negative", ["", "fog"])
def test_full_guidance_equals_diffusers_with_its_negative_prompt_or_zeros_without(tiny_sdxl_factory, negative):
    image = picture(3)
    call = {"negative_prompt": negative} if negative else {}  # none given: SDXL's zero negative embeddings
    expected = reference(tiny_sdxl_factory(), image, strength=1.0, num_inference_steps=1, guidance_scale=3.0, **call)
    stream = make(tiny_sdxl_factory(), negative=negative, t_index_list=(0,), cfg_type="full", guidance_scale=3.0)
    torch.testing.assert_close(stream.img2img(image), expected, rtol=1e-4, atol=1e-4)


def test_an_empty_negative_prompt_is_zeros_only_where_the_model_says_so(tiny_sdxl_factory, tiny_pipe):
    sdxl = make(tiny_sdxl_factory(), t_index_list=(0,))
    assert sdxl.components.zero_empty_negative and not sdxl.prompts.encode_negative("").any()
    assert sdxl.prompts.encode("").abs().sum() > 0  # a positive empty prompt is encoded as usual
    plain = make(tiny_pipe, t_index_list=(0,))
    assert not plain.components.zero_empty_negative
    torch.testing.assert_close(plain.prompts.encode_negative(""), plain.prompts.encode(""))


def test_prompt_embeddings_carry_both_towers_and_the_pooled_embedding(tiny_sdxl_factory):
    stream = make(tiny_sdxl_factory(), t_index_list=(0,))
    components = stream.components
    packed = stream.prompts.encode(PROMPT)
    width = components.text_encoder.config.hidden_size + components.text_encoder_2.config.hidden_size
    assert packed.shape == (1, 78, width) == (1, 78, components.unet.config.cross_attention_dim)
    ids = components.tokenizer_2(PROMPT, padding="max_length", max_length=77, return_tensors="pt").input_ids
    pooled = components.text_encoder_2(ids).text_embeds
    hidden, token = added_conditions.unpack(packed, added_conditions.pooled_width(components.unet))
    torch.testing.assert_close(token, pooled)
    assert hidden.shape == (1, 77, width) and not packed[:, -1, pooled.shape[-1]:].any()  # zero-padded


def test_size_numbers_follow_the_render_size():
    numbers = added_conditions.size_numbers(torch.zeros(3, 4, 96 // 8, 160 // 8, dtype=torch.float16))
    assert numbers.dtype == torch.float16
    assert numbers.tolist() == [[96.0, 160.0, 0.0, 0.0, 96.0, 160.0]] * 3


def test_a_prompt_transition_ends_where_a_direct_change_goes(tiny_sdxl_factory):
    image = picture(5)
    moving = make(tiny_sdxl_factory(), t_index_list=(20, 35))
    moving.update_prompt("a red balloon", transition_frames=3)
    for _ in range(3):
        moving.img2img(image)
    direct = make(tiny_sdxl_factory(), t_index_list=(20, 35))
    direct.update_prompt("a red balloon")
    torch.testing.assert_close(moving._cond, direct._cond)
    halfway = make(tiny_sdxl_factory(), t_index_list=(20, 35))
    halfway.update_prompt("a red balloon", transition_frames=4)
    halfway.img2img(image)
    assert (halfway._cond - direct._cond).abs().max() > 1e-3  # the pooled token blends with the rest


def _sdxl_inputs(pipe, size: tuple[int, int] = (8, 8), prompt: str = PROMPT):
    latents = torch.randn(2, 4, *size, generator=torch.Generator().manual_seed(size[0]))
    embeddings = make(pipe, t_index_list=(0,)).prompts.encode(prompt).expand(2, -1, -1)
    return latents, torch.tensor([999.0, 499.0]), embeddings


@torch.no_grad()
def test_the_conditioning_cache_stores_the_time_projections_too_and_gives_the_same_numbers(tiny_sdxl_factory):
    """The time projections depend on the pooled embedding and the size numbers as well as the timesteps: they are
    stored once the first call tells the size, and the calls read them, not their own pooled embedding."""
    from diffusers.models.resnet import ResnetBlock2D

    from streamdiff.backends.conditioning import StoredProjection

    pipe = tiny_sdxl_factory()
    unet = pipe.unet
    latents, timesteps, embeddings = _sdxl_inputs(pipe)
    plain = TorchDenoiser(unet, cache_conditioning=False)
    cached = TorchDenoiser(unet)
    cached.condition(timesteps, embeddings)
    assert torch.equal(cached(latents, timesteps, embeddings), plain(latents, timesteps, embeddings))
    resnets = [m for m in unet.modules() if isinstance(m, ResnetBlock2D)]
    assert resnets and all(isinstance(m.time_emb_proj, StoredProjection) for m in resnets)
    other = embeddings.clone()
    other[:, -1] += 1.0  # another pooled embedding, the hidden states alike: only the time path sees it
    assert torch.equal(cached(latents, timesteps, other), plain(latents, timesteps, embeddings))
    assert not torch.allclose(plain(latents, timesteps, other), plain(latents, timesteps, embeddings))
    bigger = torch.randn(2, 4, 12, 16)  # another size: other size numbers, stored at its first call
    assert torch.equal(cached(bigger, timesteps, embeddings), plain(bigger, timesteps, embeddings))
    assert torch.equal(cached(latents, timesteps, embeddings), plain(latents, timesteps, embeddings))


@torch.no_grad()
def test_a_new_conditioning_is_stored_for_every_size_called_so_far(tiny_sdxl_factory):
    """A captured step reads its size's stored values by address: after a prompt change those of a size not called
    last are new as well."""
    from streamdiff.backends.conditioning import StoredProjection

    pipe = tiny_sdxl_factory()
    unet = pipe.unet
    latents, timesteps, embeddings = _sdxl_inputs(pipe)
    _, _, changed = _sdxl_inputs(pipe, prompt="a red balloon")
    cached = TorchDenoiser(unet)
    cached.condition(timesteps, embeddings)
    cached(latents, timesteps, embeddings)
    read = [m.value for m in unet.modules() if isinstance(m, StoredProjection)]  # what a step of 8x8 would read
    cached(torch.randn(2, 4, 12, 16), timesteps, embeddings)
    cached.condition(timesteps, changed)
    fresh = TorchDenoiser(tiny_sdxl_factory().unet)
    fresh.condition(timesteps, changed)
    fresh(latents, timesteps, changed)
    expected = [m.value for m in fresh.unet.modules() if isinstance(m, StoredProjection)]
    assert len(read) == len(expected) > 0
    for value, want in zip(read, expected):
        assert torch.equal(value, want)


def test_storing_sdxl_conditioning_without_the_pooled_embedding_or_the_size_is_refused(tiny_sdxl_factory):
    from streamdiff.backends.conditioning import ConditioningCache

    pipe = tiny_sdxl_factory()
    _, timesteps, embeddings = _sdxl_inputs(pipe)
    hidden, pooled = added_conditions.unpack(embeddings, added_conditions.pooled_width(pipe.unet))
    cache = ConditioningCache.of(pipe.unet)
    for given in ({}, {"pooled": pooled}, {"size": (8, 8)}):
        with pytest.raises(ValueError, match="expected the pooled text embedding and the latents' size"):
            cache.refresh(timesteps, hidden, owner=None, **given)
    cache.refresh(timesteps, hidden, owner=None, pooled=pooled, size=(8, 8))


def test_sdxl_streams_with_the_cache_equal_streams_without(tiny_sdxl_factory):
    streams = []
    for cache in (False, True):
        stream = make(tiny_sdxl_factory(), t_index_list=(20, 35))
        stream.denoiser = TorchDenoiser(stream.components.unet, cache_conditioning=cache)
        streams.append(stream)
    for k in range(5):
        if k == 1:
            for stream in streams:
                stream.update_prompt("a red balloon", transition_frames=2)
        image = picture(10 + k)
        assert torch.equal(streams[1].img2img(image), streams[0].img2img(image)), f"frame {k}"
    assert torch.equal(streams[1].txt2img("pt"), streams[0].txt2img("pt"))


def test_a_controlnet_steers_as_diffusers_sdxl_controlnet_img2img(tiny_sdxl_factory):
    from diffusers import StableDiffusionXLControlNetImg2ImgPipeline

    controlnet = random_controlnet(tiny_sdxl_factory().unet)
    image = picture(1)
    ref = StableDiffusionXLControlNetImg2ImgPipeline(**tiny_sdxl_factory().components, controlnet=controlnet)
    ref.set_progress_bar_config(disable=True)
    expected = ref(PROMPT, image=image, control_image=image, strength=1.0, num_inference_steps=1,
                   guidance_scale=1.0, controlnet_conditioning_scale=0.7, generator=torch.Generator().manual_seed(4),
                   output_type="pt").images
    stream = make(tiny_sdxl_factory(), controlnet, t_index_list=(0,), control_scale=0.7, control_preprocess="none")
    torch.testing.assert_close(stream.img2img(image), expected, rtol=1e-4, atol=1e-4)
    plain = make(tiny_sdxl_factory(), t_index_list=(0,))
    assert float((plain.img2img(image) - expected).abs().max()) > 1e-3  # the ControlNet did steer


def test_sdxl_autoencoder_runs_in_float32_in_a_half_precision_stream(tiny_sdxl_factory):
    image = picture(7)
    half = make(tiny_sdxl_factory(full_vae=True), t_index_list=(0,), dtype="float16")
    assert half.components.vae.dtype == torch.float32 and half.components.unet.dtype == torch.float16
    pixels = torch.zeros(1, 3, SIZE, SIZE, dtype=torch.float16)
    assert half.codec.encode(pixels).dtype == torch.float16  # handed over in the stream's dtype
    out = half.img2img(image)
    assert torch.isfinite(out).all()
    full = make(tiny_sdxl_factory(full_vae=True), t_index_list=(0,), dtype="float32")
    assert float((out.float() - full.img2img(image)).abs().max()) < 0.05
    taesd = make(tiny_sdxl_factory(), t_index_list=(0,), dtype="float16")
    assert taesd.components.vae.dtype == torch.float16  # TAESD never asks for it


def test_a_unet_whose_added_conditions_do_not_fit_is_refused(tiny_sdxl_factory):
    pipe = tiny_sdxl_factory()
    refiner_like = pipe.unet.config.addition_time_embed_dim  # one more number, as a refiner's aesthetic score
    pipe.unet.register_to_config(projection_class_embeddings_input_dim=6 * refiner_like + 32 - refiner_like)
    with pytest.raises(ValueError, match="aesthetic score"):
        make(pipe)
    without = dataclasses.replace(Components.from_diffusers(tiny_sdxl_factory()), text_encoder_2=None)
    with pytest.raises(ValueError, match="second text tower"):
        StreamPipeline(without, StreamConfig(width=SIZE, height=SIZE, device="cpu"))
