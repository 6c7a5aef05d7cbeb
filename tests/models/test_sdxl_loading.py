"""SDXL pipelines from the registry, folders and the hub cache, offline on the tiny SDXL components."""

import copy

import pytest
import torch
from test_loading import CPU, weights_equal

from streamdiff.errors import ModelUnavailableError
from streamdiff.models.loading import load_model


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    """The tiny SDXL pipeline and a diffusers folder of it, under a misleading name (traits must not follow it)."""
    from streamdiff.models.tiny import build_tiny_sdxl_pipeline

    pipe, folder = build_tiny_sdxl_pipeline(seed=0), tmp_path_factory.mktemp("tiny-sdxl") / "sd15-export"
    pipe.save_pretrained(folder)
    return pipe, folder


def test_tiny_sdxl_is_built_offline(offline_hub, sdxl):
    sdxl_reference, _ = sdxl
    loaded = load_model("tiny-sdxl", **CPU)
    assert type(loaded.pipe).__name__ == "StableDiffusionXLPipeline" and loaded.spec.use_taesd
    assert weights_equal(loaded.pipe.text_encoder_2, sdxl_reference.text_encoder_2)
    assert not any(offline_hub.iterdir())


def test_an_sdxl_folder_loads_as_sdxl_with_both_text_towers(offline_hub, sdxl):
    sdxl_reference, sdxl_folder = sdxl
    loaded = load_model(str(sdxl_folder), taesd=False, **CPU)
    assert type(loaded.pipe).__name__ == "StableDiffusionXLPipeline"
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert weights_equal(getattr(loaded.pipe, name), getattr(sdxl_reference, name)), name
    assert loaded.spec.family == "sdxl" and loaded.spec.resolution == 64


def test_an_sdxl_folder_takes_the_taesd_of_sdxl_latents(helpers, offline_hub, sdxl, tmp_path):
    _, sdxl_folder = sdxl
    from streamdiff.models.tiny import build_tiny_taesd

    with pytest.raises(ModelUnavailableError) as info:
        load_model(str(sdxl_folder), **CPU)
    assert "madebyollin/taesdxl (TAESD, replacing its VAE)" in str(info.value)
    taesd = build_tiny_taesd()
    taesd.save_pretrained(tmp_path / "taesdxl")
    helpers.add_to_hub_cache(offline_hub, "madebyollin/taesdxl", tmp_path / "taesdxl")
    assert weights_equal(load_model(str(sdxl_folder), **CPU).pipe.vae, taesd)


def test_sdxl_turbo_offline_names_its_pipeline_and_its_taesd(offline_hub):
    with pytest.raises(ModelUnavailableError) as info:
        load_model("sdxl-turbo", **CPU)
    message = str(info.value)
    assert message.startswith("model 'sdxl-turbo' cannot be loaded:")
    assert "stabilityai/sdxl-turbo (the pipeline)" in message and "madebyollin/taesdxl" in message


def test_sdxl_turbo_loads_from_the_hub_cache(helpers, offline_hub, sdxl, tmp_path):
    sdxl_reference, sdxl_folder = sdxl
    from streamdiff.models.tiny import build_tiny_taesd

    build_tiny_taesd().save_pretrained(tmp_path / "taesdxl")
    helpers.add_to_hub_cache(offline_hub, "madebyollin/taesdxl", tmp_path / "taesdxl")
    helpers.add_to_hub_cache(offline_hub, "stabilityai/sdxl-turbo", sdxl_folder)
    loaded = load_model("sdxl-turbo", **CPU)
    assert type(loaded.pipe).__name__ == "StableDiffusionXLPipeline" and not loaded.spec.lcm_boundary
    assert weights_equal(loaded.pipe.unet, sdxl_reference.unet)


def sdxl_unet_output(unet) -> torch.Tensor:
    """An SDXL UNet's prediction for a fixed random input (with its added conditions), in float32."""
    generator = torch.Generator().manual_seed(0)
    size, config = unet.config.sample_size, unet.config
    sample = torch.randn(1, 4, size, size, generator=generator)
    context = torch.randn(1, 77, config.cross_attention_dim, generator=generator)
    pooled = torch.randn(1, config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim,
                         generator=generator)
    time_ids = torch.tensor([[8.0 * size, 8.0 * size, 0.0, 0.0, 8.0 * size, 8.0 * size]])
    with torch.no_grad():
        return unet(sample, 500, context, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample


def test_sdxl_lcm_loads_from_the_hub_cache_with_its_lcm_lora_fused(helpers, offline_hub, sdxl, tmp_path):
    pytest.importorskip("peft")
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from streamdiff.models.tiny import build_tiny_taesd

    sdxl_reference, sdxl_folder = sdxl
    adapted = copy.deepcopy(sdxl_reference.unet)
    adapted.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                   target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    StableDiffusionXLPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=get_peft_model_state_dict(adapted))
    build_tiny_taesd().save_pretrained(tmp_path / "taesdxl")
    helpers.add_to_hub_cache(offline_hub, "madebyollin/taesdxl", tmp_path / "taesdxl")
    helpers.add_to_hub_cache(offline_hub, "stabilityai/stable-diffusion-xl-base-1.0", sdxl_folder)
    helpers.add_to_hub_cache(offline_hub, "latent-consistency/lcm-lora-sdxl", tmp_path / "lora")
    loaded = load_model("sdxl-lcm", **CPU)
    assert type(loaded.pipe).__name__ == "StableDiffusionXLPipeline"
    assert loaded.spec.lcm_boundary and loaded.spec.t_index_list == (32, 45) and loaded.spec.resolution == 1024
    fused = sdxl_unet_output(loaded.pipe.unet)
    assert not torch.allclose(fused, sdxl_unet_output(sdxl_reference.unet), atol=1e-4)
    assert torch.allclose(fused, sdxl_unet_output(adapted), atol=1e-5)
    assert not any("lora" in name for name, _ in loaded.pipe.unet.named_parameters())  # adapter dropped


def test_sdxl_lcm_offline_names_its_pipeline_taesd_and_lora(offline_hub):
    with pytest.raises(ModelUnavailableError) as info:
        load_model("sdxl-lcm", **CPU)
    message = str(info.value)
    assert "stabilityai/stable-diffusion-xl-base-1.0 (the pipeline)" in message
    assert "madebyollin/taesdxl" in message and "latent-consistency/lcm-lora-sdxl (its LoRA)" in message
