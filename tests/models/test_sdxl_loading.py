"""SDXL pipelines from the registry, folders and the hub cache, offline on the tiny SDXL components."""

import pytest
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
