"""Loading from the registry, folders, single files and the hub cache, all offline on tiny components."""

import glob
import os
import shutil
from pathlib import Path

import pytest
import torch

from streamdiff.errors import ModelPathNotFoundError, ModelUnavailableError, UserError
from streamdiff.models.loading import load_model, resolve_source

CPU = dict(dtype=torch.float32, device="cpu")


def weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tiny_is_built_offline_with_its_own_taesd(offline_hub, tiny_reference):
    loaded = load_model("tiny", **CPU)
    pipe = loaded.pipe
    assert loaded.spec.name == "tiny" and loaded.spec.use_taesd
    assert [type(pipe.vae).__name__, type(pipe.scheduler).__name__] == ["AutoencoderTiny", "LCMScheduler"]
    assert type(pipe.tokenizer).__name__ == "CLIPTokenizer" and pipe.safety_checker is None
    assert weights_equal(pipe.unet, tiny_reference.unet)  # seeded: same weights every time
    assert not any(offline_hub.iterdir())  # nothing was fetched


def test_tiny_without_taesd_has_the_full_autoencoder_in_the_requested_dtype(offline_hub):
    loaded = load_model("tiny", dtype=torch.float16, device="cpu", taesd=False)
    assert type(loaded.pipe.vae).__name__ == "AutoencoderKL" and not loaded.spec.use_taesd
    assert {p.dtype for m in (loaded.pipe.unet, loaded.pipe.vae, loaded.pipe.text_encoder)
            for p in m.parameters()} == {torch.float16}


def test_random_weights_of_tiny_and_refusal_outside_the_registry(offline_hub, tiny_folder):
    loaded = load_model("tiny", random_weights=True, **CPU)
    assert "random weights" in loaded.spec.description
    with pytest.raises(UserError, match="registry model name"):
        load_model(str(tiny_folder), random_weights=True, **CPU)


def test_saved_folder_loads_back_with_the_same_unet(helpers, offline_hub, tiny_reference, tiny_folder):
    loaded = load_model(str(tiny_folder), taesd=False, **CPU)
    for name in ("unet", "vae", "text_encoder"):
        assert weights_equal(getattr(loaded.pipe, name), getattr(tiny_reference, name)), name
    # Same weights, same input: the same prediction (up to the summation order of freshly loaded tensors).
    assert torch.allclose(helpers.unet_output(loaded.pipe), helpers.unet_output(tiny_reference), rtol=0, atol=1e-5)
    assert loaded.pipe.safety_checker is None


def test_traits_of_a_folder_come_from_its_configs_not_its_name(offline_hub, tiny_folder):
    spec = load_model(str(tiny_folder), taesd=False, **CPU).spec  # the folder is called "sd-turbo-export"
    assert (spec.resolution, spec.family, spec.lcm_boundary, spec.t_index_list) == (64, "tiny", True, (32, 45))
    assert spec.repo_id == "" and not spec.use_taesd and spec.lora_repo is None


def test_caller_overrides_traits(offline_hub, tiny_folder):
    spec = load_model(str(tiny_folder), taesd=False, traits={"lcm_boundary": False, "t_index_list": (0,)}, **CPU).spec
    assert not spec.lcm_boundary and spec.t_index_list == (0,)
    with pytest.raises(ValueError, match="unknown model traits"):
        load_model("tiny", traits={"turbo": True}, **CPU)


def test_single_file_in_the_original_layout_loads_offline_with_a_local_config(
    helpers, offline_hub, tiny_reference, tiny_folder, tmp_path
):
    from safetensors.torch import save_file

    checkpoint = tmp_path / "tiny.safetensors"
    save_file(helpers.ldm_checkpoint(tiny_reference), str(checkpoint))
    config = Path(shutil.copytree(tiny_folder, tmp_path / "config"))
    for weights in glob.glob(str(config / "unet" / "*.safetensors")) + glob.glob(str(config / "text_encoder" / "*")):
        if not weights.endswith("config.json"):
            os.remove(weights)  # the UNet and text encoder can only come from the single file
    loaded = load_model(str(checkpoint), taesd=False, config=str(config), **CPU)
    assert weights_equal(loaded.pipe.unet, tiny_reference.unet)
    assert torch.allclose(helpers.unet_output(loaded.pipe), helpers.unet_output(tiny_reference), rtol=0, atol=1e-5)
    assert weights_equal(loaded.pipe.text_encoder, tiny_reference.text_encoder)
    assert loaded.spec.name == str(checkpoint) and loaded.spec.resolution == 64


def test_an_sdxl_single_file_loads_offline_with_a_local_config(helpers, offline_hub, tiny_sdxl_factory, tmp_path):
    """SDXL's original layout: the UNet with its "text_time" embedding, CLIP-L as conditioner.embedders.0 and
    the second text encoder in OpenCLIP's layout as conditioner.embedders.1; the folder only configures, and
    TAESDXL (from the hub cache) replaces the autoencoder, as by default."""
    from safetensors.torch import save_file

    reference = tiny_sdxl_factory()
    checkpoint = tmp_path / "tiny-xl.safetensors"
    save_file(helpers.ldm_checkpoint(reference), str(checkpoint))
    config = tmp_path / "config"
    reference.save_pretrained(config)
    for part in ("unet", "text_encoder", "text_encoder_2"):
        for weights in glob.glob(str(config / part / "*.safetensors")):
            os.remove(weights)  # these can only come from the single file
    reference.vae.save_pretrained(tmp_path / "taesdxl")
    helpers.add_to_hub_cache(offline_hub, "madebyollin/taesdxl", tmp_path / "taesdxl")
    loaded = load_model(str(checkpoint), config=str(config), **CPU)
    pipe = loaded.pipe
    assert type(pipe).__name__ == "StableDiffusionXLPipeline" and loaded.spec.family == "sdxl"
    for part in ("unet", "text_encoder", "text_encoder_2", "vae"):
        assert weights_equal(getattr(pipe, part), getattr(reference, part)), part
    tokens = reference.tokenizer_2("a red fox", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        ours, theirs = pipe.text_encoder_2(tokens), reference.text_encoder_2(tokens)
    assert torch.equal(ours.text_embeds, theirs.text_embeds)  # the pooled, projected embedding SDXL adds


def test_single_file_without_config_offline_names_the_base_config_repo(helpers, offline_hub, tiny_reference, tmp_path):
    from safetensors.torch import save_file

    checkpoint = tmp_path / "tiny.safetensors"
    save_file(helpers.ldm_checkpoint(tiny_reference), str(checkpoint))
    with pytest.raises(ModelUnavailableError) as info:
        load_model(str(checkpoint), taesd=False, **CPU)
    message = str(info.value)
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5 (the configuration of its base model)" in message
    assert "config= a local diffusers folder" in message and "offline mode is on" in message


def test_folder_offline_without_cached_taesd_says_how_to_keep_the_own_vae(offline_hub, tiny_folder):
    with pytest.raises(ModelUnavailableError) as info:
        load_model(str(tiny_folder), **CPU)
    message = str(info.value)
    assert "madebyollin/taesd (TAESD, replacing its VAE)" in message
    assert "--no-taesd (taesd=False) to keep the model's own VAE" in message and "\n" not in message


def test_no_taesd_is_offered_only_where_taesd_alone_is_missing(helpers, offline_hub, tiny_folder):
    with pytest.raises(ModelUnavailableError) as info:
        load_model("sd-turbo", **CPU)
    missing = str(info.value)
    assert "stabilityai/sd-turbo (the pipeline) and madebyollin/taesd" in missing and "--no-taesd" not in missing
    helpers.add_to_hub_cache(offline_hub, "stabilityai/sd-turbo", tiny_folder)
    with pytest.raises(ModelUnavailableError) as info:
        load_model("sd-turbo", **CPU)
    taesd_only = str(info.value)
    assert "stabilityai/sd-turbo" not in taesd_only and "Instead, pass --no-taesd (taesd=False)" in taesd_only


def test_registry_model_loads_offline_from_the_hub_cache(helpers, offline_hub, tiny_reference, tiny_folder, tmp_path):
    from streamdiff.models.tiny import build_tiny_taesd

    taesd = build_tiny_taesd()
    taesd_folder = tmp_path / "taesd"
    taesd.save_pretrained(taesd_folder)
    helpers.add_to_hub_cache(offline_hub, "madebyollin/taesd", taesd_folder)
    helpers.add_to_hub_cache(offline_hub, "stabilityai/sd-turbo", tiny_folder)
    loaded = load_model("sd-turbo", **CPU)
    assert loaded.spec.name == "sd-turbo" and not loaded.spec.lcm_boundary
    assert weights_equal(loaded.pipe.unet, tiny_reference.unet)
    assert torch.allclose(helpers.unet_output(loaded.pipe), helpers.unet_output(tiny_reference), rtol=0, atol=1e-5)
    assert weights_equal(loaded.pipe.vae, taesd)  # the cached TAESD, not the pipeline's own VAE


def test_lcm_lora_is_fused_into_the_unet(helpers, offline_hub, tiny_reference, tiny_folder, tmp_path):
    import copy

    from diffusers import StableDiffusionPipeline

    pytest.importorskip("peft")
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from streamdiff.models.tiny import build_tiny_taesd

    adapted = copy.deepcopy(tiny_reference.unet)
    adapted.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                   target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    lora_folder = tmp_path / "lora"
    StableDiffusionPipeline.save_lora_weights(lora_folder, unet_lora_layers=get_peft_model_state_dict(adapted))
    taesd_folder = tmp_path / "taesd"
    build_tiny_taesd().save_pretrained(taesd_folder)
    helpers.add_to_hub_cache(offline_hub, "stable-diffusion-v1-5/stable-diffusion-v1-5", tiny_folder)
    helpers.add_to_hub_cache(offline_hub, "madebyollin/taesd", taesd_folder)
    helpers.add_to_hub_cache(offline_hub, "latent-consistency/lcm-lora-sdv1-5", lora_folder)

    loaded = load_model("sd15-lcm", **CPU)
    expected = helpers.unet_output(adapted)  # the adapter applied on the fly by peft
    fused = helpers.unet_output(loaded.pipe)
    assert not torch.allclose(fused, helpers.unet_output(tiny_reference), atol=1e-4)
    assert torch.allclose(fused, expected, atol=1e-5)
    assert not any("lora" in name for name, _ in loaded.pipe.unet.named_parameters())  # adapter dropped


def test_missing_peft_is_named_before_any_download(offline_hub, monkeypatch):
    import diffusers.utils

    monkeypatch.setattr(diffusers.utils, "is_peft_available", lambda: False)
    with pytest.raises(UserError, match="pip install peft") as info:
        load_model("sd15-lcm", **CPU)
    assert not isinstance(info.value, ModelUnavailableError)


@pytest.mark.parametrize("path", ["./missing-model", "/no/such/dir", "models/sd/extra", "missing.safetensors",
                                  "~/nothing-here.ckpt"])
def test_missing_paths_are_file_not_found_user_errors(path):
    with pytest.raises(ModelPathNotFoundError) as info:
        resolve_source(path)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, UserError)


def test_what_is_not_a_model_is_refused_clearly(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="model_index.json"):
        resolve_source(str(tmp_path))
    with pytest.raises(UserError, match=".safetensors or .ckpt"):
        resolve_source(str(tmp_path / "notes.txt"))
    with pytest.raises(UserError, match="sdxs-512") as info:
        resolve_source("turbo")
    assert not isinstance(info.value, ModelPathNotFoundError)


def test_sources_resolve_in_order(tmp_path, tiny_folder):
    assert resolve_source("tiny").kind == "registry"
    assert resolve_source(str(tiny_folder)).kind == "folder"
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert resolve_source(str(tmp_path / "model.safetensors")).kind == "single_file"
    assert resolve_source("someone/some-model").kind == "hub"


def test_missing_config_folder_for_a_single_file_is_a_missing_path(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelPathNotFoundError, match="config folder"):
        load_model(str(tmp_path / "model.safetensors"), config=str(tmp_path / "no-config"), **CPU)


def test_unreadable_checkpoint_is_a_one_line_user_error(tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="could not load .*broken.safetensors") as info:
        load_model(str(broken), **CPU)
    assert "\n" not in str(info.value)
