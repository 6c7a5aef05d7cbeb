"""ControlNets by kind, folder and hub id: loaded offline from a hub cache or a folder, checked against the
model they steer, and refused with one clear line where they cannot be had or do not fit."""

from __future__ import annotations

import pytest
import torch

from streamdiff import StreamPipeline
from streamdiff.errors import ModelPathNotFoundError, ModelUnavailableError, UserError
from streamdiff.models.controlnets import CONTROL_KINDS, random_controlnet

CPU = {"device": "cpu", "dtype": torch.float32}
SD21_CANNY = CONTROL_KINDS["canny"].repos["sd21"]


@pytest.fixture(scope="module")
def tiny_controlnet(tiny_reference):
    return random_controlnet(tiny_reference.unet)


@pytest.fixture
def controlnet_folder(tmp_path, tiny_controlnet):
    folder = tmp_path / "controlnet"
    tiny_controlnet.save_pretrained(folder)
    return folder


def _with_taesd_cached(helpers, offline_hub, tmp_path) -> None:
    from streamdiff.models.tiny import build_tiny_taesd

    taesd_folder = tmp_path / "taesd"
    build_tiny_taesd().save_pretrained(taesd_folder)
    helpers.add_to_hub_cache(offline_hub, "madebyollin/taesd", taesd_folder)


def test_a_kind_loads_the_published_controlnet_of_the_family_from_the_hub_cache(
        helpers, offline_hub, tiny_folder, controlnet_folder, tiny_controlnet, tmp_path):
    _with_taesd_cached(helpers, offline_hub, tmp_path)
    helpers.add_to_hub_cache(offline_hub, "stabilityai/sd-turbo", tiny_folder)
    helpers.add_to_hub_cache(offline_hub, SD21_CANNY, controlnet_folder)
    stream = StreamPipeline.from_model("sd-turbo", controlnet="canny", **CPU)
    (loaded,) = stream.components.controlnets
    assert stream.config.control_preprocess == "canny" and stream.control is not None
    state, expected = loaded.state_dict(), tiny_controlnet.state_dict()
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)
    told = StreamPipeline.from_model("sd-turbo", controlnet=str(controlnet_folder), control_preprocess="canny", **CPU)
    assert told.config.control_preprocess == "canny"  # the setting wins over a folder's default (none)


def test_a_folder_or_hub_id_takes_the_picture_itself_unless_told(helpers, offline_hub, controlnet_folder):
    helpers.add_to_hub_cache(offline_hub, "someone/tiny-controlnet", controlnet_folder)
    for ref in (str(controlnet_folder), "someone/tiny-controlnet"):
        stream = StreamPipeline.from_model("tiny", controlnet=ref, **CPU)
        assert stream.config.control_preprocess == "none" and stream.control is not None


def test_a_missing_controlnet_is_named_before_the_model_loads(helpers, offline_hub, tiny_folder, tmp_path):
    _with_taesd_cached(helpers, offline_hub, tmp_path)
    helpers.add_to_hub_cache(offline_hub, "stabilityai/sd-turbo", tiny_folder)
    with pytest.raises(ModelUnavailableError) as info:
        StreamPipeline.from_model("sd-turbo", controlnet="canny", **CPU)
    message = str(info.value)
    assert message.startswith(f"ControlNet 'canny' cannot be loaded: {SD21_CANNY} (the ControlNet)")
    assert "a local ControlNet folder (one with config.json)" in message and "model_index.json" not in message


def test_a_controlnet_of_another_architecture_is_refused(tmp_path):
    from diffusers import ControlNetModel

    other = ControlNetModel(block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8, layers_per_block=1)
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(UserError, match=r"does not fit this model: its block_out_channels is \[16, 32\], "
                                        r"the model's is \[32, 64\]"):
        StreamPipeline.from_model("tiny", controlnet=str(tmp_path / "other"), **CPU)


@pytest.mark.parametrize("model,ref,error,message", [
    ("sdxs-512", "canny", UserError, "model 'sdxs-512' has no middle stage for a ControlNet to feed"),
    ("tiny-sd", "canny", UserError, "model 'tiny-sd' has no middle stage"),
    ("tiny", "scribble", UserError, r"unknown ControlNet 'scribble': give a kind \(canny, depth\)"),
    ("tiny", "./no/such/folder", ModelPathNotFoundError, "ControlNet path ./no/such/folder does not exist"),
])
def test_what_cannot_be_steered_or_found_says_so(offline_hub, model, ref, error, message):
    with pytest.raises(error, match=message):
        StreamPipeline.from_model(model, controlnet=ref, random_weights=model != "tiny", **CPU)


def test_a_folder_without_a_configuration_is_refused(offline_hub, tmp_path):
    with pytest.raises(UserError, match="is a folder but not a diffusers ControlNet: it has no config.json"):
        StreamPipeline.from_model("tiny", controlnet=str(tmp_path), **CPU)


def test_random_weights_build_the_published_architecture_of_the_model():
    from streamdiff.models.architectures import build_random_pipeline
    from streamdiff.models.registry import get_spec

    pipe = build_random_pipeline(get_spec("sd-turbo"), taesd=True, dtype=torch.float16, device="meta")
    controlnet = random_controlnet(pipe.unet)
    # SD 2.1's ControlNets: the UNet's encoder and middle stage, 364 M parameters.
    assert 360e6 < sum(p.numel() for p in controlnet.parameters()) < 368e6
    assert list(controlnet.config.block_out_channels) == [320, 640, 1280, 1280]
    assert controlnet.config.cross_attention_dim == 1024


def _depth_in_hub(helpers, offline_hub, tiny_folder, controlnet_folder, tmp_path, repo: str, seed: int):
    """sd-turbo (the tiny architecture), TAESD, its depth ControlNet and a seeded tiny estimator as `repo` in the
    offline hub cache; the estimator's folder is tmp_path / "depth"."""
    from streamdiff.models.depth_estimators import random_depth_estimator

    estimator = random_depth_estimator(tiny=True, seed=seed)
    estimator.save_pretrained(tmp_path / "depth")
    _with_taesd_cached(helpers, offline_hub, tmp_path)
    helpers.add_to_hub_cache(offline_hub, "stabilityai/sd-turbo", tiny_folder)
    helpers.add_to_hub_cache(offline_hub, CONTROL_KINDS["depth"].repos["sd21"], controlnet_folder)
    helpers.add_to_hub_cache(offline_hub, repo, tmp_path / "depth")
    return estimator


def test_depth_loads_the_depth_estimator_from_the_hub_cache(helpers, offline_hub, tiny_folder, controlnet_folder,
                                                           tmp_path):
    from streamdiff.models.depth_estimators import DEPTH_ESTIMATOR_REPO

    estimator = _depth_in_hub(helpers, offline_hub, tiny_folder, controlnet_folder, tmp_path, DEPTH_ESTIMATOR_REPO, 5)
    stream = StreamPipeline.from_model("sd-turbo", controlnet="depth", **CPU)
    loaded = stream.components.depth_estimator
    assert stream.config.control_preprocess == "depth" and stream.control.estimator is loaded
    state, expected = loaded.state_dict(), estimator.state_dict()
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)
    told = StreamPipeline.from_model("sd-turbo", controlnet="depth", control_preprocess="none", **CPU)
    assert told.components.depth_estimator is None and told.control.estimator is None


def test_a_missing_depth_estimator_is_named_before_the_model_loads(helpers, offline_hub, controlnet_folder):
    helpers.add_to_hub_cache(offline_hub, CONTROL_KINDS["depth"].repos["sd21"], controlnet_folder)
    with pytest.raises(ModelUnavailableError) as info:
        StreamPipeline.from_model("sd-turbo", controlnet="depth", **CPU)  # the model is not cached either
    message = str(info.value)
    assert message.startswith("depth estimator cannot be loaded: depth-anything/Depth-Anything-V2-Small-hf")
    assert "--control-preprocess none with a depth picture as the input" in message
    assert "stabilityai/sd-turbo" not in message


def test_the_tiny_model_and_random_weights_build_an_estimator_without_a_download(offline_hub, controlnet_folder):
    from streamdiff.models.depth_estimators import random_depth_estimator

    tiny = StreamPipeline.from_model("tiny", controlnet=str(controlnet_folder), control_preprocess="depth", **CPU)
    assert sum(p.numel() for p in tiny.components.depth_estimator.parameters()) < 1e6
    # Depth Anything V2 Small: a DINOv2 ViT-S/14 with a DPT head, 24.8 M parameters.
    full = random_depth_estimator()
    assert 24.7e6 < sum(p.numel() for p in full.parameters()) < 24.9e6
    assert full.config.backbone_config.hidden_size == 384 and full.config.neck_hidden_sizes == [48, 96, 192, 384]


@pytest.mark.parametrize("size,parameters,hidden", [("base", 97.5e6, 768), ("large", 335.3e6, 1024)])
def test_the_larger_estimators_have_their_published_architectures(size, parameters, hidden):
    """Depth Anything V2 Base (DINOv2 ViT-B/14) and Large (ViT-L/14) with their DPT heads, as published."""
    from transformers import DepthAnythingForDepthEstimation

    from streamdiff.models.depth_estimators import depth_anything_config

    with torch.device("meta"):
        module = DepthAnythingForDepthEstimation(depth_anything_config(size=size))
    assert abs(sum(p.numel() for p in module.parameters()) - parameters) < 0.1e6
    assert module.config.backbone_config.hidden_size == hidden


def test_a_chosen_estimator_size_or_folder_is_the_one_loaded(helpers, offline_hub, tiny_folder, controlnet_folder,
                                                             tmp_path):
    from streamdiff.models.depth_estimators import DEPTH_SIZES

    base = _depth_in_hub(helpers, offline_hub, tiny_folder, controlnet_folder, tmp_path, DEPTH_SIZES["base"].repo, 6)
    for choice in ("base", str(tmp_path / "depth")):
        stream = StreamPipeline.from_model("sd-turbo", controlnet="depth", depth_estimator=choice, **CPU)
        state, expected = stream.components.depth_estimator.state_dict(), base.state_dict()
        assert all(torch.equal(state[k], expected[k]) for k in expected)
    with pytest.raises(ModelUnavailableError, match="depth estimator cannot be loaded: depth-anything/Depth-Anything-"
                                                   "V2-Large-hf"):
        StreamPipeline.from_model("sd-turbo", controlnet="depth", depth_estimator="large", **CPU)


def test_random_weights_take_the_chosen_estimators_architecture(tiny_reference):
    from streamdiff.models.controlnets import load_controlnets
    from streamdiff.models.depth_estimators import load_depth_estimator
    from streamdiff.models.registry import REGISTRY

    nets = load_controlnets(["canny", "depth"], REGISTRY["sd-turbo"], tiny_reference.unet, random_weights=True,
                            depth_estimator="base", **CPU)
    assert nets.estimator.config.backbone_config.hidden_size == 768 and nets.estimator.config.fusion_hidden_size == 128
    tiny = load_depth_estimator("tiny", estimator="large", **CPU)  # the tiny model keeps its tiny estimator
    assert tiny.config.backbone_config.hidden_size == 16


@pytest.mark.parametrize("settings,error,message", [
    ({"controlnet": "depth", "depth_estimator": "huge"}, UserError, "unknown depth estimator 'huge': give a size "
                                                                    "(small, base, large)"),
    ({"controlnet": "depth", "depth_estimator": "./no/such"}, ModelPathNotFoundError,
     "depth estimator path ./no/such does not exist"),
    ({"controlnet": "canny", "depth_estimator": "base"}, UserError,
     "--depth-estimator serves a ControlNet that reads estimated depth"),
    ({"depth_estimator": "base"}, UserError, "--depth-estimator serves a ControlNet that reads estimated depth"),
])
def test_a_depth_estimator_that_cannot_serve_is_refused_before_the_model_loads(settings, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        StreamPipeline.from_model("sd-turbo", random_weights=True, **settings, **CPU)


def test_unreadable_controlnet_and_estimator_files_name_what_was_expected(helpers, offline_hub, tiny_folder,
                                                                         controlnet_folder, tmp_path):
    from streamdiff.models.depth_estimators import DEPTH_ESTIMATOR_REPO

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{ not json")
    with pytest.raises(UserError, match=f"could not load {broken} as a diffusers ControlNet: "):
        StreamPipeline.from_model("tiny", controlnet=str(broken), **CPU)
    snapshot = helpers.add_to_hub_cache(offline_hub, DEPTH_ESTIMATOR_REPO, broken)
    with pytest.raises(UserError, match=f"could not load {snapshot} as a Depth Anything depth estimator: "):
        StreamPipeline.from_model(str(tiny_folder), taesd=False, controlnet=str(controlnet_folder),
                                  control_preprocess="depth", **CPU)
